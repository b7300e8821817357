//! Splunk's HTTP Event Collector: one `POST` per batch to the configured URL (normally
//! `/services/collector/event`) with `Authorization: Splunk <token>`, the body the batch's
//! events as concatenated JSON objects, one a line, gzip'd (`content-encoding: gzip`) unless
//! `gzip: false`:
//!
//! ```json
//! {"time":1772600767.089,"host":"<writer>","source":…,"sourcetype":…,"index":…,"event":{…},"fields":{"gatehouse_id":"<writer>:<seq>"}}
//! ```
//!
//! `time` is the record's `recorded_at` in epoch seconds with milliseconds; `host` the
//! record's writer (the instance that saw what happened, whichever replica exports it);
//! `source`, `sourcetype` and `index` only when configured (else the token's defaults);
//! `gatehouse_id` an indexed field for finding the duplicates a resent batch makes.
//!
//! Acknowledgement: HTTP 200 with `{"code":0}`, i.e. HEC took the batch. That is not "indexed":
//! indexer acknowledgement (`useAck` on the token, polled on `/services/collector/ack`) is not
//! used, so a batch HEC took and its indexer lost before indexing is not sent again. Anything
//! else is an error naming the HTTP status and Splunk's `text` and `code` (never the token),
//! retried by the exporter.

use std::io::Write;

use flate2::{Compression, write::GzEncoder};
use reqwest::header::{AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE, HeaderValue};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use url::Url;

use crate::config::export;

use super::{super::Outgoing, SinkError};
use super::{clip, describe, http_client, recorded_at, redact};

#[derive(Debug)]
pub struct HecSink {
    url: Url,
    /// `Splunk <token>`, marked sensitive.
    authorization: HeaderValue,
    index: Option<String>,
    source: Option<String>,
    sourcetype: Option<String>,
    gzip: bool,
    client: reqwest::Client,
    /// The token, scrubbed from any error text.
    secrets: super::Secrets,
}

impl HecSink {
    /// Fails on a token that cannot be sent in a header or a CA file without a certificate.
    pub fn new(config: &export::HecSink) -> Result<Self, SinkError> {
        let mut authorization = HeaderValue::from_str(&format!("Splunk {}", config.token.0))
            .map_err(|_| SinkError::new("the HEC token cannot be sent in an HTTP header"))?;
        authorization.set_sensitive(true);
        Ok(Self {
            url: config.url.clone(),
            authorization,
            index: config.index.clone(),
            source: config.source.clone(),
            sourcetype: config.sourcetype.clone(),
            gzip: config.gzip,
            client: http_client(config.ca_file.as_deref(), config.timeout)?,
            secrets: super::Secrets(vec![config.token.0.clone()]),
        })
    }

    pub async fn send(&mut self, batch: &[Outgoing]) -> Result<(), SinkError> {
        let result = self.post(batch).await;
        result.map_err(|e| SinkError {
            message: redact(&e.message, &self.secrets),
            ..e
        })
    }

    async fn post(&self, batch: &[Outgoing]) -> Result<(), SinkError> {
        let body = self.body(batch);
        let mut request = self
            .client
            .post(self.url.clone())
            .header(AUTHORIZATION, self.authorization.clone())
            .header(CONTENT_TYPE, "application/json");
        request = if self.gzip {
            request
                .header(CONTENT_ENCODING, "gzip")
                .body(gzip(&body).map_err(SinkError::new)?)
        } else {
            request.body(body)
        };
        let response = request
            .send()
            .await
            .map_err(|e| SinkError::new(format!("cannot reach Splunk HEC: {}", describe(e))))?;
        let status = response.status();
        let answer = response
            .bytes()
            .await
            .map_err(|e| SinkError::new(format!("Splunk HEC's answer ({status}) was cut: {}", describe(e))))?;
        // Too large for HEC's max_content_length: the events themselves, every time.
        let error = match status {
            reqwest::StatusCode::PAYLOAD_TOO_LARGE => SinkError::refused,
            _ => SinkError::new,
        };
        match serde_json::from_slice::<Answer>(&answer) {
            Ok(Answer { code: Some(0), .. }) if status == reqwest::StatusCode::OK => Ok(()),
            Ok(Answer { text, code }) => Err(error(format!(
                "Splunk HEC answered HTTP {status}: {} (code {})",
                clip(&redact(text.as_deref().unwrap_or("no text"), &self.secrets)),
                code.map_or("none".to_owned(), |c| c.to_string())
            ))),
            Err(_) => Err(error(format!(
                "Splunk HEC answered HTTP {status} without its JSON: {}",
                clip(&redact(&String::from_utf8_lossy(&answer), &self.secrets))
            ))),
        }
    }

    /// The batch as HEC events, one JSON object a line.
    fn body(&self, batch: &[Outgoing]) -> Vec<u8> {
        let mut body = Vec::new();
        for o in batch {
            let event = Event {
                time: recorded_at(&o.record).map(|t| (t.unix_timestamp_nanos() / 1_000_000) as f64 / 1000.0),
                host: &o.record.writer,
                source: self.source.as_deref(),
                sourcetype: self.sourcetype.as_deref(),
                index: self.index.as_deref(),
                event: &o.event,
                fields: Fields { gatehouse_id: &o.id },
            };
            // Serializing borrowed strings and a Value into memory cannot fail.
            let _ = serde_json::to_writer(&mut body, &event);
            body.push(b'\n');
        }
        body
    }
}

fn gzip(body: &[u8]) -> Result<Vec<u8>, String> {
    let mut encoder = GzEncoder::new(Vec::with_capacity(body.len() / 4), Compression::fast());
    encoder
        .write_all(body)
        .and_then(|()| encoder.finish())
        .map_err(|e| format!("cannot gzip the batch: {e}"))
}

/// One event as HEC takes it.
#[derive(Serialize)]
struct Event<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    time: Option<f64>,
    host: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    source: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sourcetype: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    index: Option<&'a str>,
    event: &'a Value,
    fields: Fields<'a>,
}

#[derive(Serialize)]
struct Fields<'a> {
    gatehouse_id: &'a str,
}

/// HEC's answer: `{"text":"Success","code":0}`, or a failure's text and code.
#[derive(Deserialize)]
struct Answer {
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    code: Option<i64>,
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::time::Duration;

    use super::super::otlp::tests::{answer_once, outgoing, tool_call};
    use super::*;
    use crate::config::Secret;

    const TOKEN: &str = "11111111-2222-3333-4444-555555555555";

    fn config(url: Url, gzip: bool) -> export::HecSink {
        export::HecSink {
            url,
            token: Secret(TOKEN.into()),
            index: Some("audit".into()),
            source: None,
            sourcetype: Some("gatehouse:record".into()),
            gzip,
            ca_file: None,
            timeout: Duration::from_secs(5),
        }
    }

    fn events(body: &[u8]) -> Vec<Value> {
        serde_json::Deserializer::from_slice(body)
            .into_iter::<Value>()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    #[test]
    fn the_body_is_one_hec_event_per_record_and_gzips_back_to_itself() {
        let sink = HecSink::new(&config(
            "https://splunk:8088/services/collector/event".parse().unwrap(),
            true,
        ))
        .unwrap();
        let batch = [
            outgoing("w1", 1, "request", tool_call("allow")),
            outgoing("w1", 2, "request", tool_call("deny")),
        ];
        let body = sink.body(&batch);
        let mut unzipped = Vec::new();
        flate2::read::GzDecoder::new(gzip(&body).unwrap().as_slice())
            .read_to_end(&mut unzipped)
            .unwrap();
        assert_eq!(unzipped, body);
        let events = events(&body);
        assert_eq!(events.len(), 2);
        let first = events[0].as_object().unwrap();
        assert_eq!(
            first.keys().collect::<Vec<_>>(),
            ["event", "fields", "host", "index", "sourcetype", "time"],
            "no source: none was configured"
        );
        assert_eq!(first["time"], serde_json::json!(1_772_600_767.089));
        assert_eq!(first["host"], "w1");
        assert_eq!(first["index"], "audit");
        assert_eq!(first["sourcetype"], "gatehouse:record");
        assert_eq!(first["event"], batch[0].event);
        assert_eq!(events[1]["fields"], serde_json::json!({"gatehouse_id": "w1:2"}));
    }

    #[tokio::test]
    async fn only_code_0_is_an_ack() {
        let (url, server) = answer_once(
            "HTTP/1.1 200 OK",
            "application/json",
            br#"{"text":"Success","code":0}"#.to_vec(),
        )
        .await;
        let mut sink = HecSink::new(&config(url, false)).unwrap();
        sink.send(&[outgoing("w", 1, "request", tool_call("allow"))])
            .await
            .unwrap();
        let request = server.await.unwrap();
        assert!(request.contains(&format!("authorization: Splunk {TOKEN}")), "{request}");
        assert!(request.contains(r#""gatehouse_id":"w:1""#));

        let (url, _server) = answer_once("HTTP/1.1 200 OK", "text/html", b"<html>proxy</html>".to_vec()).await;
        let mut sink = HecSink::new(&config(url, false)).unwrap();
        let error = sink
            .send(&[outgoing("w", 1, "request", tool_call("allow"))])
            .await
            .unwrap_err();
        assert!(error.message.contains("without its JSON"), "{error}");
    }

    #[tokio::test]
    async fn a_refusal_names_status_text_and_code_and_never_the_token() {
        let answer = format!(r#"{{"text":"Invalid token {TOKEN}","code":4}}"#);
        let (url, server) = answer_once("HTTP/1.1 403 Forbidden", "application/json", answer.into_bytes()).await;
        let mut sink = HecSink::new(&config(url, true)).unwrap();
        let error = sink
            .send(&[outgoing("w", 1, "request", tool_call("allow"))])
            .await
            .unwrap_err();
        let request = server.await.unwrap();
        assert!(request.contains("content-encoding: gzip"), "{request}");
        assert!(
            error.message.contains("403")
                && error.message.contains("Invalid token")
                && error.message.contains("code 4"),
            "{error}"
        );
        assert!(!error.message.contains(TOKEN), "{error}");
        assert!(!error.refused, "a refused token is retried, never split or stubbed");
    }

    #[tokio::test]
    async fn a_413_refuses_the_events_themselves() {
        let answer = r#"{"text":"Content length too large","code":27}"#.as_bytes().to_vec();
        let (url, _server) = answer_once("HTTP/1.1 413 Payload Too Large", "application/json", answer).await;
        let mut sink = HecSink::new(&config(url, true)).unwrap();
        let error = sink
            .send(&[outgoing("w", 1, "request", tool_call("allow"))])
            .await
            .unwrap_err();
        assert!(error.refused && error.message.contains("413"), "{error:?}");
    }
}
