//! The plugin configuration: the JSON string in the Envoy wasm `PluginConfig`, whose type
//! (`gatehouse_core::plugin_config::PluginConfig`, shared with the service that renders it)
//! refuses unknown fields and gives each number its default and range.
//!
//! Parsed once, in `on_configure`. Every problem is reported at once with the name of the
//! bad field, because the only place an operator sees it is one line of the Envoy log. The masking rules are compiled
//! here too, so a bad rule refuses the whole configuration (fail closed) and is listed with
//! the other problems.

use std::fmt;
use std::time::Duration;

use gatehouse_core::mask::{MaskConfig, Masker};
use gatehouse_core::plugin_config::{Bound, DEFAULT_INGEST_CLUSTER, PluginConfig, bounds};

use crate::queue;
use crate::request::Origins;

/// The validated configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Largest POST body accepted (413 above it). Also bounds one SSE event.
    pub max_body_bytes: usize,
    /// Envoy cluster (HTTP/2) of the service's audit ingest.
    pub ingest_cluster: String,
    pub ingest_timeout: Duration,
    /// How often queued records are flushed (the root context's tick).
    pub flush_interval: Duration,
    pub batch_max_records: usize,
    pub batch_min_records: usize,
    pub batch_max_bytes: usize,
    pub queue_max_records: usize,
    pub queue_max_bytes: usize,
    /// Largest message kept in one response record (`truncated` beyond it).
    pub record_message_max_bytes: usize,
    /// Largest JSON (or other non-SSE) answer buffered to be masked; a larger one is
    /// refused with a 502 rather than passed unmasked.
    pub max_response_bytes: usize,
    pub masking: Masking,
    /// The `Host` and `Origin` values the gateway answers to (DNS-rebinding protection).
    pub origins: Origins,
}

/// The masking rules as configured, and compiled. Always present: without a `masking`
/// field the built-in rules apply.
#[derive(Debug, Clone, Default)]
pub struct Masking {
    pub rules: MaskConfig,
    pub masker: Masker,
}

/// Two compiled rule sets are the same when their rules are.
impl PartialEq for Masking {
    fn eq(&self, other: &Self) -> bool {
        self.rules == other.rules
    }
}

impl Eq for Masking {}

impl Default for Config {
    fn default() -> Self {
        let number = |bound: Bound| to_usize(bound.default);
        Self {
            max_body_bytes: number(bounds::MAX_BODY_BYTES),
            ingest_cluster: DEFAULT_INGEST_CLUSTER.to_owned(),
            ingest_timeout: Duration::from_millis(bounds::INGEST_TIMEOUT_MS.default),
            flush_interval: Duration::from_millis(bounds::FLUSH_INTERVAL_MS.default),
            batch_max_records: number(bounds::BATCH_MAX_RECORDS),
            batch_min_records: number(bounds::BATCH_MIN_RECORDS),
            batch_max_bytes: number(bounds::BATCH_MAX_BYTES),
            queue_max_records: number(bounds::QUEUE_MAX_RECORDS),
            queue_max_bytes: number(bounds::QUEUE_MAX_BYTES),
            record_message_max_bytes: number(bounds::RECORD_MESSAGE_MAX_BYTES),
            max_response_bytes: number(bounds::MAX_RESPONSE_BYTES),
            masking: Masking::default(),
            origins: Origins::default(),
        }
    }
}

impl Config {
    /// The record queue's bounds.
    pub fn queue_limits(&self) -> queue::Limits {
        queue::Limits {
            queue_max_records: self.queue_max_records,
            queue_max_bytes: self.queue_max_bytes,
            batch_max_records: self.batch_max_records,
            batch_min_records: self.batch_min_records,
            batch_max_bytes: self.batch_max_bytes,
            call_timeout_ms: u64::try_from(self.ingest_timeout.as_millis()).unwrap_or(u64::MAX),
        }
    }
}

fn to_usize(v: u64) -> usize {
    usize::try_from(v).unwrap_or(usize::MAX)
}

/// Why a configuration was refused: every problem found, each naming its field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub Vec<String>);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid gatehouse filter configuration: {}", self.0.join("; "))
    }
}

impl std::error::Error for ConfigError {}

/// Parses the plugin configuration, reading `token_key_env` from the VM's environment.
/// No configuration (or only whitespace) means defaults.
pub fn parse(bytes: &[u8]) -> Result<Config, ConfigError> {
    parse_with_env(bytes, |name| std::env::var(name).ok())
}

/// [`parse`], with the environment given (tests).
pub fn parse_with_env(bytes: &[u8], env: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return validate(PluginConfig::default());
    }
    let mut raw: PluginConfig = serde_json::from_slice(bytes).map_err(|e| ConfigError(vec![e.to_string()]))?;
    if let Some(name) = raw.token_key_env.take() {
        let masking = raw.masking.get_or_insert_with(MaskConfig::default);
        if masking.token_key.is_some() {
            return Err(ConfigError(vec![
                "token_key_env: masking.token_key is set too; give the key one way".to_owned(),
            ]));
        }
        match env(&name).filter(|v| !v.trim().is_empty()) {
            Some(key) => masking.token_key = Some(key),
            None => {
                return Err(ConfigError(vec![format!(
                    "token_key_env: the environment variable {name} is not set in the wasm VM (set it in \
                     Envoy's environment; the rendered vm_config passes it in host_env_keys)"
                )]));
            }
        }
    }
    validate(raw)
}

/// Checks every field of a parsed configuration (`token_key_env` already read) and compiles
/// the masking rules; every problem is listed, in the order of the fields.
fn validate(raw: PluginConfig) -> Result<Config, ConfigError> {
    let mut problems = Vec::new();
    let mut number = |bound: Bound, value: Option<u64>| {
        bound.check(value).unwrap_or_else(|problem| {
            problems.push(problem);
            bound.default
        })
    };
    let max_body_bytes = number(bounds::MAX_BODY_BYTES, raw.max_body_bytes);
    let ingest_timeout_ms = number(bounds::INGEST_TIMEOUT_MS, raw.ingest_timeout_ms);
    let flush_interval_ms = number(bounds::FLUSH_INTERVAL_MS, raw.flush_interval_ms);
    let batch_max_records = number(bounds::BATCH_MAX_RECORDS, raw.batch_max_records);
    let batch_min_records = number(bounds::BATCH_MIN_RECORDS, raw.batch_min_records);
    let queue_max_records = number(bounds::QUEUE_MAX_RECORDS, raw.queue_max_records);
    let record_message_max_bytes = number(bounds::RECORD_MESSAGE_MAX_BYTES, raw.record_message_max_bytes);
    let batch_max_bytes = number(bounds::BATCH_MAX_BYTES, raw.batch_max_bytes);
    let queue_max_bytes = number(bounds::QUEUE_MAX_BYTES, raw.queue_max_bytes);
    let max_response_bytes = number(bounds::MAX_RESPONSE_BYTES, raw.max_response_bytes);
    let ingest_cluster = raw.ingest_cluster.unwrap_or_else(|| DEFAULT_INGEST_CLUSTER.to_owned());
    if ingest_cluster.trim().is_empty() {
        problems.push("ingest_cluster: must not be empty".to_owned());
    }
    if queue_max_bytes < record_message_max_bytes {
        problems.push(format!(
            "queue_max_bytes: {queue_max_bytes} is smaller than record_message_max_bytes \
             ({record_message_max_bytes}), so a full-size record could never be queued"
        ));
    }
    let mut names = |field: &str, values: Option<Vec<String>>| {
        values.map(|values| {
            for (i, v) in values.iter().enumerate() {
                if v.is_empty() || v.contains(|c: char| c.is_whitespace() || c.is_control()) {
                    problems.push(format!("{field}[{i}]: {v:?} is empty or has whitespace"));
                }
            }
            values.iter().map(|v| v.to_ascii_lowercase()).collect()
        })
    };
    let origins = Origins {
        hosts: names("allowed_hosts", raw.allowed_hosts),
        origins: names("allowed_origins", raw.allowed_origins),
    };
    let rules = raw.masking.unwrap_or_default();
    let masker = match Masker::new(&rules) {
        Ok(masker) => Some(masker),
        Err(e) if e.problems.is_empty() => {
            problems.push(format!("masking: {e}"));
            None
        }
        Err(e) => {
            problems.extend(e.problems.iter().map(|p| format!("masking: {p}")));
            None
        }
    };
    let (Some(masker), true) = (masker, problems.is_empty()) else {
        return Err(ConfigError(problems));
    };
    Ok(Config {
        max_body_bytes: to_usize(max_body_bytes),
        ingest_cluster,
        ingest_timeout: Duration::from_millis(ingest_timeout_ms),
        flush_interval: Duration::from_millis(flush_interval_ms),
        batch_max_records: to_usize(batch_max_records),
        batch_min_records: to_usize(batch_min_records),
        batch_max_bytes: to_usize(batch_max_bytes),
        queue_max_records: to_usize(queue_max_records),
        queue_max_bytes: to_usize(queue_max_bytes),
        record_message_max_bytes: to_usize(record_message_max_bytes),
        max_response_bytes: to_usize(max_response_bytes),
        masking: Masking { rules, masker },
        origins,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_configuration_means_defaults() {
        let c = parse(b"").unwrap();
        assert_eq!(c, parse(b" {} ").unwrap());
        assert_eq!(c, validate(PluginConfig::default()).unwrap());
        assert_eq!(c.max_body_bytes, 1 << 20);
        assert_eq!(c.ingest_cluster, "gatehouse_ingest");
        assert_eq!(c.ingest_timeout, Duration::from_secs(5));
        assert_eq!(c.flush_interval, Duration::from_millis(100));
        assert_eq!(c.batch_max_records, 256);
        assert_eq!(c.queue_max_records, 131_072);
        assert_eq!(c.record_message_max_bytes, 65536);
    }

    #[test]
    fn the_token_key_comes_from_the_environment_it_names() {
        let config = br#"{"masking": {"styles": {"email": "token"}}, "token_key_env": "GH_KEY"}"#;
        let key = "00112233445566778899aabbccddeeff";
        let c = parse_with_env(config, |name| (name == "GH_KEY").then(|| key.to_owned())).unwrap();
        assert_eq!(c.masking.rules.token_key.as_deref(), Some(key));
        // Unset or empty: refused, naming the variable, never a value.
        for missing in [None, Some(" ".to_owned())] {
            let e = parse_with_env(config, |_| missing.clone()).unwrap_err();
            assert!(e.to_string().contains("GH_KEY"), "{e}");
        }
        // The key given both ways is ambiguous.
        let both = br#"{"masking": {"token_key": "00112233445566778899aabbccddeeff"}, "token_key_env": "GH_KEY"}"#;
        assert!(parse_with_env(both, |_| Some(key.to_owned())).is_err());
    }

    #[test]
    fn the_documented_example_parses() {
        let c = parse(
            br#"{"max_body_bytes": 1048576, "ingest_cluster": "gatehouse_ingest", "ingest_timeout_ms": 5000,
                 "flush_interval_ms": 100, "batch_max_records": 256, "queue_max_records": 131072,
                 "record_message_max_bytes": 65536}"#,
        )
        .unwrap();
        assert_eq!(c, Config::default());
        let c = parse(br#"{"max_body_bytes": 10, "ingest_cluster": "audit"}"#).unwrap();
        assert_eq!((c.max_body_bytes, c.ingest_cluster.as_str()), (10, "audit"));
    }

    #[test]
    fn unknown_fields_and_bad_json_are_refused() {
        let e = parse(br#"{"max_body_byte": 1}"#).unwrap_err();
        assert!(e.to_string().contains("unknown field `max_body_byte`"), "{e}");
        assert!(parse(b"{").is_err());
        assert!(parse(br#"{"max_body_bytes": -1}"#).is_err());
        assert!(parse(br#"{"ingest_cluster": 5}"#).is_err());
    }

    #[test]
    fn every_bad_value_is_reported_at_once() {
        let e = parse(
            br#"{"max_body_bytes": 0, "flush_interval_ms": 0, "ingest_cluster": " ",
                 "ingest_timeout_ms": 99999999999, "batch_max_records": 0}"#,
        )
        .unwrap_err();
        let fields: Vec<&str> = e.0.iter().filter_map(|p| p.split(':').next()).collect();
        assert_eq!(
            fields,
            [
                "max_body_bytes",
                "ingest_timeout_ms",
                "flush_interval_ms",
                "batch_max_records",
                "ingest_cluster"
            ]
        );
    }

    #[test]
    fn max_response_bytes_defaults_to_16_mib_and_is_bounded() {
        assert_eq!(parse(b"{}").unwrap().max_response_bytes, 16 << 20);
        assert_eq!(parse(br#"{"max_response_bytes": 10}"#).unwrap().max_response_bytes, 10);
        let e = parse(br#"{"max_response_bytes": 0}"#).unwrap_err();
        assert!(e.0[0].starts_with("max_response_bytes:"), "{e}");
        let e = parse(br#"{"max_response_bytes": 268435457}"#).unwrap_err();
        assert!(e.0[0].starts_with("max_response_bytes:"), "{e}");
    }

    #[test]
    fn masking_defaults_to_the_built_in_rules() {
        let c = parse(b"{}").unwrap();
        assert_eq!(c.masking.rules, MaskConfig::default());
        assert_eq!(c, parse(br#"{"masking": {}}"#).unwrap());
        let c = parse(
            br#"{"masking": {"disabled": ["phone"], "sensitive_keys": ["pin"], "default_style": "last4",
                 "styles": {"email": "redact"}, "custom": [{"name": "employee_id", "pattern": "EMP-[0-9]{6}"}]}}"#,
        )
        .unwrap();
        assert_eq!(c.masking.rules.disabled, ["phone"]);
        assert_eq!(c.masking.rules.custom[0].name, "employee_id");
        assert_ne!(c, Config::default());
    }

    #[test]
    fn unknown_masking_fields_are_refused() {
        let e = parse(br#"{"masking": {"reveal": []}}"#).unwrap_err();
        assert!(e.to_string().contains("unknown field `reveal`"), "{e}");
        let e = parse(br#"{"masking": {"default_style": "shout"}}"#).unwrap_err();
        assert!(e.to_string().contains("shout"), "{e}");
    }

    #[test]
    fn every_masking_problem_is_listed_with_the_others() {
        let e = parse(
            br#"{"max_body_bytes": 0, "masking": {"default_style": "token",
                 "custom": [{"name": "bad", "pattern": "(unclosed"}]}}"#,
        )
        .unwrap_err();
        assert!(e.0[0].starts_with("max_body_bytes:"), "{e}");
        let masking: Vec<&String> = e.0.iter().filter(|p| p.starts_with("masking: ")).collect();
        // A bad regex, and the token style without a key.
        assert!(masking.len() >= 2, "{e}");
    }

    #[test]
    fn hosts_and_origins_are_checked_only_when_configured() {
        assert_eq!(parse(b"{}").unwrap().origins, Origins::default());
        let c = parse(br#"{"allowed_hosts": ["GW.example.com:8443"], "allowed_origins": []}"#).unwrap();
        assert_eq!(c.origins.hosts, Some(vec!["gw.example.com:8443".to_owned()]));
        assert_eq!(c.origins.origins, Some(vec![]));
        let e = parse(br#"{"allowed_hosts": ["", "a b"], "allowed_origins": ["x y"]}"#).unwrap_err();
        assert_eq!(e.0.len(), 3, "{e}");
        assert!(e.0.iter().any(|p| p.starts_with("allowed_origins[0]")), "{e}");
    }

    #[test]
    fn the_queue_gets_its_bounds_from_the_configuration() {
        let c = parse(
            br#"{"queue_max_records": 5, "queue_max_bytes": 70000, "batch_max_records": 2,
                            "batch_min_records": 7, "batch_max_bytes": 600, "ingest_timeout_ms": 250}"#,
        )
        .unwrap();
        assert_eq!(
            c.queue_limits(),
            queue::Limits {
                queue_max_records: 5,
                queue_max_bytes: 70000,
                batch_max_records: 2,
                batch_min_records: 7,
                batch_max_bytes: 600,
                call_timeout_ms: 250,
            }
        );
    }

    #[test]
    fn queue_must_hold_a_full_size_record() {
        let e = parse(br#"{"queue_max_bytes": 10, "record_message_max_bytes": 11}"#).unwrap_err();
        assert!(e.0[0].starts_with("queue_max_bytes:"), "{e}");
    }
}
