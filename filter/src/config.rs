//! The plugin configuration: the JSON string in the Envoy wasm `PluginConfig`.
//!
//! Parsed once, in `on_configure`. Every field is optional; unknown fields are refused, and
//! every problem is reported at once with the name of the bad field, because the only
//! place an operator sees it is one line of the Envoy log. The masking rules are compiled
//! here too, so a bad rule refuses the whole configuration (fail closed) and is listed with
//! the other problems.

use std::fmt;
use std::time::Duration;

use gatehouse_core::mask::{MaskConfig, Masker};
use serde::Deserialize;

use crate::request::Origins;

/// Defaults, as documented in docs/CONTRACTS.md.
pub mod defaults {
    pub const MAX_BODY_BYTES: u64 = 1 << 20;
    pub const INGEST_CLUSTER: &str = "gatehouse_ingest";
    pub const INGEST_TIMEOUT_MS: u64 = 5_000;
    pub const FLUSH_INTERVAL_MS: u64 = 100;
    pub const BATCH_MAX_RECORDS: u64 = 256;
    pub const QUEUE_MAX_RECORDS: u64 = 131_072;
    pub const RECORD_MESSAGE_MAX_BYTES: u64 = 64 << 10;
    /// Well under tonic's default 4 MiB limit on a decoded message.
    pub const BATCH_MAX_BYTES: u64 = 1 << 20;
    /// Wasm memory never shrinks, so the queue is bounded in bytes as well as records.
    pub const QUEUE_MAX_BYTES: u64 = 16 << 20;
    /// The largest non-SSE answer buffered to be masked (the answer is refused above it).
    pub const MAX_RESPONSE_BYTES: u64 = 16 << 20;
}

/// Limits that keep one value sane inside a wasm VM (linear memory is at most 4 GiB, and
/// the host ABI takes milliseconds as `u32`).
const MAX_BYTES_LIMIT: u64 = 256 << 20;
const MAX_MS_LIMIT: u64 = u32::MAX as u64;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    max_body_bytes: Option<u64>,
    ingest_cluster: Option<String>,
    ingest_timeout_ms: Option<u64>,
    flush_interval_ms: Option<u64>,
    batch_max_records: Option<u64>,
    queue_max_records: Option<u64>,
    record_message_max_bytes: Option<u64>,
    batch_max_bytes: Option<u64>,
    queue_max_bytes: Option<u64>,
    max_response_bytes: Option<u64>,
    masking: Option<MaskConfig>,
    /// The VM environment variable that holds `masking.token_key`. Envoy's admin
    /// `/config_dump` shows the plugin configuration to anyone who reaches it; the VM's
    /// environment (`vm_config.environment_variables.host_env_keys`) shows only the name.
    token_key_env: Option<String>,
    allowed_hosts: Option<Vec<String>>,
    allowed_origins: Option<Vec<String>>,
}

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
        use defaults as d;
        let to_usize = |v: u64| usize::try_from(v).unwrap_or(usize::MAX);
        Self {
            max_body_bytes: to_usize(d::MAX_BODY_BYTES),
            ingest_cluster: d::INGEST_CLUSTER.to_owned(),
            ingest_timeout: Duration::from_millis(d::INGEST_TIMEOUT_MS),
            flush_interval: Duration::from_millis(d::FLUSH_INTERVAL_MS),
            batch_max_records: to_usize(d::BATCH_MAX_RECORDS),
            batch_max_bytes: to_usize(d::BATCH_MAX_BYTES),
            queue_max_records: to_usize(d::QUEUE_MAX_RECORDS),
            queue_max_bytes: to_usize(d::QUEUE_MAX_BYTES),
            record_message_max_bytes: to_usize(d::RECORD_MESSAGE_MAX_BYTES),
            max_response_bytes: to_usize(d::MAX_RESPONSE_BYTES),
            masking: Masking::default(),
            origins: Origins::default(),
        }
    }
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
        return Config::try_from(RawConfig::default());
    }
    let mut raw: RawConfig = serde_json::from_slice(bytes).map_err(|e| ConfigError(vec![e.to_string()]))?;
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
    Config::try_from(raw)
}

struct Checker(Vec<String>);

impl Checker {
    fn range(&mut self, field: &str, value: Option<u64>, default: u64, min: u64, max: u64) -> u64 {
        let value = value.unwrap_or(default);
        if value < min || value > max {
            self.0.push(format!("{field}: {value} is outside {min}..={max}"));
            return default;
        }
        value
    }
}

impl TryFrom<RawConfig> for Config {
    type Error = ConfigError;

    fn try_from(raw: RawConfig) -> Result<Self, ConfigError> {
        use defaults as d;
        let mut c = Checker(Vec::new());
        let max_body_bytes = c.range(
            "max_body_bytes",
            raw.max_body_bytes,
            d::MAX_BODY_BYTES,
            1,
            MAX_BYTES_LIMIT,
        );
        let ingest_timeout_ms = c.range(
            "ingest_timeout_ms",
            raw.ingest_timeout_ms,
            d::INGEST_TIMEOUT_MS,
            1,
            MAX_MS_LIMIT,
        );
        let flush_interval_ms = c.range(
            "flush_interval_ms",
            raw.flush_interval_ms,
            d::FLUSH_INTERVAL_MS,
            1,
            MAX_MS_LIMIT,
        );
        let batch_max_records = c.range(
            "batch_max_records",
            raw.batch_max_records,
            d::BATCH_MAX_RECORDS,
            1,
            1 << 20,
        );
        let queue_max_records = c.range(
            "queue_max_records",
            raw.queue_max_records,
            d::QUEUE_MAX_RECORDS,
            1,
            1 << 24,
        );
        let record_message_max_bytes = c.range(
            "record_message_max_bytes",
            raw.record_message_max_bytes,
            d::RECORD_MESSAGE_MAX_BYTES,
            0,
            MAX_BYTES_LIMIT,
        );
        let batch_max_bytes = c.range(
            "batch_max_bytes",
            raw.batch_max_bytes,
            d::BATCH_MAX_BYTES,
            1,
            MAX_BYTES_LIMIT,
        );
        let queue_max_bytes = c.range(
            "queue_max_bytes",
            raw.queue_max_bytes,
            d::QUEUE_MAX_BYTES,
            1,
            MAX_BYTES_LIMIT,
        );
        let max_response_bytes = c.range(
            "max_response_bytes",
            raw.max_response_bytes,
            d::MAX_RESPONSE_BYTES,
            1,
            MAX_BYTES_LIMIT,
        );
        let ingest_cluster = raw.ingest_cluster.unwrap_or_else(|| d::INGEST_CLUSTER.to_owned());
        if ingest_cluster.trim().is_empty() {
            c.0.push("ingest_cluster: must not be empty".to_owned());
        }
        if queue_max_bytes < record_message_max_bytes {
            c.0.push(format!(
                "queue_max_bytes: {queue_max_bytes} is smaller than record_message_max_bytes \
                 ({record_message_max_bytes}), so a full-size record could never be queued"
            ));
        }
        let mut names = |field: &str, values: Option<Vec<String>>| {
            values.map(|values| {
                for (i, v) in values.iter().enumerate() {
                    if v.is_empty() || v.contains(|c: char| c.is_whitespace() || c.is_control()) {
                        c.0.push(format!("{field}[{i}]: {v:?} is empty or has whitespace"));
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
                c.0.push(format!("masking: {e}"));
                None
            }
            Err(e) => {
                c.0.extend(e.problems.iter().map(|p| format!("masking: {p}")));
                None
            }
        };
        let (Some(masker), true) = (masker, c.0.is_empty()) else {
            return Err(ConfigError(c.0));
        };
        let to_usize = |v: u64| usize::try_from(v).unwrap_or(usize::MAX);
        Ok(Self {
            max_body_bytes: to_usize(max_body_bytes),
            ingest_cluster,
            ingest_timeout: Duration::from_millis(ingest_timeout_ms),
            flush_interval: Duration::from_millis(flush_interval_ms),
            batch_max_records: to_usize(batch_max_records),
            batch_max_bytes: to_usize(batch_max_bytes),
            queue_max_records: to_usize(queue_max_records),
            queue_max_bytes: to_usize(queue_max_bytes),
            record_message_max_bytes: to_usize(record_message_max_bytes),
            max_response_bytes: to_usize(max_response_bytes),
            masking: Masking { rules, masker },
            origins,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_configuration_means_defaults() {
        let c = parse(b"").unwrap();
        assert_eq!(c, parse(b" {} ").unwrap());
        assert_eq!(c, Config::try_from(RawConfig::default()).unwrap());
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
    fn queue_must_hold_a_full_size_record() {
        let e = parse(br#"{"queue_max_bytes": 10, "record_message_max_bytes": 11}"#).unwrap_err();
        assert!(e.0[0].starts_with("queue_max_bytes:"), "{e}");
    }
}
