//! The filter's plugin configuration (the JSON string in Envoy's wasm `PluginConfig`): one
//! type that the service renders (`gatehouse envoy-config`) and the filter parses, so the
//! two cannot drift apart. Unknown fields are refused, also inside `masking`.
//!
//! Every field is optional: a field left out takes its default. The numbers' defaults and
//! the ranges the filter accepts are [`bounds`]; the filter validates the rest (it compiles
//! the masking rules, reads the token key from its VM's environment, lower-cases the host
//! names) and reports every problem at once, naming its field.

use serde::{Deserialize, Serialize};

use crate::mask::MaskConfig;

/// The default Envoy cluster of the service's audit ingest (the one `gatehouse
/// envoy-config` renders).
pub const DEFAULT_INGEST_CLUSTER: &str = "gatehouse_ingest";

/// The plugin configuration as it travels: what the service writes, what the filter reads.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginConfig {
    /// Largest request body accepted (413 above it). Also bounds one SSE event of an answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_body_bytes: Option<u64>,
    /// Envoy cluster (HTTP/2) of the service's audit ingest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingest_cluster: Option<String>,
    /// How long one ingest call may take before its batch is retried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingest_timeout_ms: Option<u64>,
    /// How often queued records are flushed (the root context's tick).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flush_interval_ms: Option<u64>,
    /// Records in one ingest call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_max_records: Option<u64>,
    /// Records waiting that make the next ingest call go as soon as the last one is
    /// answered; fewer wait for the tick, so a light load ships a batch per tick, not a
    /// call per record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_min_records: Option<u64>,
    /// Records the filter keeps queued for the ingest (per VM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_max_records: Option<u64>,
    /// Largest message kept in one response record (`truncated` beyond it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record_message_max_bytes: Option<u64>,
    /// Bytes of records in one ingest call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_max_bytes: Option<u64>,
    /// Bytes of records the filter keeps queued (per VM; wasm memory never shrinks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_max_bytes: Option<u64>,
    /// Largest JSON (or other non-SSE) answer buffered to be masked; a larger one is
    /// refused with a 502, never passed unmasked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_response_bytes: Option<u64>,
    /// The masking rules; absent: the built-in ones. Masking is always on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub masking: Option<MaskConfig>,
    /// The VM environment variable that holds `masking.token_key`. Envoy's admin
    /// `/config_dump` shows the plugin configuration to anyone who reaches it; the VM's
    /// environment (`vm_config.environment_variables.host_env_keys`) shows only the name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_key_env: Option<String>,
    /// The `Host` (`:authority`) values every request must carry; absent: not checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_hosts: Option<Vec<String>>,
    /// The `Origin` values a request may carry (none is fine); absent: not checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_origins: Option<Vec<String>>,
}

/// A number of the configuration: its default and the range the filter accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bound {
    pub field: &'static str,
    pub default: u64,
    pub min: u64,
    pub max: u64,
}

impl Bound {
    /// `value` (the default when it is unset) if it is in range; else the problem, naming
    /// the field.
    pub fn check(&self, value: Option<u64>) -> Result<u64, String> {
        let value = value.unwrap_or(self.default);
        if value < self.min || value > self.max {
            return Err(format!(
                "{}: {value} is outside {}..={}",
                self.field, self.min, self.max
            ));
        }
        Ok(value)
    }
}

/// The numbers' defaults and ranges. The limits keep one value sane inside a wasm VM
/// (linear memory is at most 4 GiB, and the host ABI takes milliseconds as `u32`).
pub mod bounds {
    use super::Bound;

    const MAX_BYTES: u64 = 256 << 20;
    const MAX_MS: u64 = u32::MAX as u64;

    const fn bound(field: &'static str, default: u64, min: u64, max: u64) -> Bound {
        Bound {
            field,
            default,
            min,
            max,
        }
    }

    pub const MAX_BODY_BYTES: Bound = bound("max_body_bytes", 1 << 20, 1, MAX_BYTES);
    pub const INGEST_TIMEOUT_MS: Bound = bound("ingest_timeout_ms", 5_000, 1, MAX_MS);
    pub const FLUSH_INTERVAL_MS: Bound = bound("flush_interval_ms", 100, 1, MAX_MS);
    pub const BATCH_MAX_RECORDS: Bound = bound("batch_max_records", 256, 1, 1 << 20);
    pub const BATCH_MIN_RECORDS: Bound = bound("batch_min_records", 16, 1, 1 << 20);
    pub const QUEUE_MAX_RECORDS: Bound = bound("queue_max_records", 131_072, 1, 1 << 24);
    pub const RECORD_MESSAGE_MAX_BYTES: Bound = bound("record_message_max_bytes", 64 << 10, 0, MAX_BYTES);
    /// Well under tonic's default 4 MiB limit on a decoded message.
    pub const BATCH_MAX_BYTES: Bound = bound("batch_max_bytes", 1 << 20, 1, MAX_BYTES);
    /// Wasm memory never shrinks, so the queue is bounded in bytes as well as records.
    pub const QUEUE_MAX_BYTES: Bound = bound("queue_max_bytes", 16 << 20, 1, MAX_BYTES);
    pub const MAX_RESPONSE_BYTES: Bound = bound("max_response_bytes", 16 << 20, 1, MAX_BYTES);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn unset_fields_are_left_out_and_unknown_ones_refused() {
        assert_eq!(serde_json::to_string(&PluginConfig::default()).unwrap(), "{}");
        let c = PluginConfig {
            max_body_bytes: Some(10),
            token_key_env: Some("K".into()),
            ..Default::default()
        };
        let text = serde_json::to_string(&c).unwrap();
        assert_eq!(serde_json::from_str::<PluginConfig>(&text).unwrap(), c);
        let e = serde_json::from_value::<PluginConfig>(json!({"max_body_byte": 1})).unwrap_err();
        assert!(e.to_string().contains("unknown field `max_body_byte`"), "{e}");
        let e = serde_json::from_value::<PluginConfig>(json!({"masking": {"reveal": []}})).unwrap_err();
        assert!(e.to_string().contains("unknown field `reveal`"), "{e}");
    }

    #[test]
    fn a_number_takes_its_default_and_must_be_in_range() {
        let b = bounds::MAX_RESPONSE_BYTES;
        assert_eq!(b.check(None), Ok(16 << 20));
        assert_eq!(b.check(Some(1)), Ok(1));
        assert_eq!(b.check(Some(256 << 20)), Ok(256 << 20));
        assert_eq!(
            b.check(Some(0)),
            Err("max_response_bytes: 0 is outside 1..=268435456".to_owned())
        );
        assert!(b.check(Some((256 << 20) + 1)).is_err());
        assert_eq!(bounds::RECORD_MESSAGE_MAX_BYTES.check(Some(0)), Ok(0));
        for b in [
            bounds::MAX_BODY_BYTES,
            bounds::INGEST_TIMEOUT_MS,
            bounds::FLUSH_INTERVAL_MS,
            bounds::BATCH_MAX_RECORDS,
            bounds::BATCH_MIN_RECORDS,
            bounds::QUEUE_MAX_RECORDS,
            bounds::RECORD_MESSAGE_MAX_BYTES,
            bounds::BATCH_MAX_BYTES,
            bounds::QUEUE_MAX_BYTES,
            bounds::MAX_RESPONSE_BYTES,
        ] {
            assert_eq!(b.check(None), Ok(b.default), "{} defaults within its range", b.field);
        }
    }
}
