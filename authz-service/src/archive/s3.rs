//! The S3 calls the archive makes, on the AWS SDK with the service's HTTP client (rustls
//! with ring, as for STS) and the standard credential chain. Errors come back as text safe to
//! show on `/healthz` (S3's code and message, or why the request did not get through).

use std::path::Path;
use std::time::Duration;

use aws_config::{BehaviorVersion, Region, retry::RetryConfig, timeout::TimeoutConfig};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::{ByteStream, DateTime, DateTimeFormat};
use aws_sdk_s3::types::{ChecksumAlgorithm, ObjectLockMode};
use base64::Engine as _;
use sha2::{Digest as _, Sha256};

/// An S3 bucket the archive reads or writes.
#[derive(Clone, Debug)]
pub struct Bucket {
    client: aws_sdk_s3::Client,
    pub name: String,
}

/// One version of an object (or a delete marker), as ListObjectVersions shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    pub key: String,
    pub version_id: String,
    pub delete_marker: bool,
    pub is_latest: bool,
    /// RFC 3339.
    pub last_modified: String,
}

/// An object version's bytes and the retention it carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    pub bytes: Vec<u8>,
    pub lock_mode: Option<String>,
    /// RFC 3339.
    pub retain_until: Option<String>,
}

/// Where the S3 client goes and how it trusts it.
#[derive(Debug, Clone, Default)]
pub struct Endpoint<'a> {
    /// `None`: the standard chain's region (the environment, a profile), else us-east-1.
    pub region: Option<&'a str>,
    /// Another endpoint than AWS's (an S3-compatible store), addressed path-style.
    pub url: Option<&'a str>,
    /// Trust only this CA (PEM) rather than the system's roots.
    pub ca_file: Option<&'a Path>,
}

impl Bucket {
    /// A client for `bucket` on the standard chain's credentials; nothing is sent yet.
    pub async fn new(bucket: &str, endpoint: Endpoint<'_>) -> Result<Self, String> {
        let mut http =
            aws_smithy_http_client::Builder::new().tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
            ));
        if let Some(path) = endpoint.ca_file {
            let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            let trust = aws_smithy_http_client::tls::TrustStore::empty().with_pem_certificate(pem);
            let context = aws_smithy_http_client::tls::TlsContext::builder()
                .with_trust_store(trust)
                .build()
                .map_err(|e| format!("{}: {e}", path.display()))?;
            http = http.tls_context(context);
        }
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .http_client(http.build_https())
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(2))
                    .operation_attempt_timeout(Duration::from_secs(60))
                    .operation_timeout(Duration::from_secs(180))
                    .build(),
            )
            .retry_config(
                RetryConfig::standard()
                    .with_max_attempts(3)
                    .with_initial_backoff(Duration::from_millis(200)),
            );
        if let Some(region) = endpoint.region {
            // Set, so that loading never asks the instance metadata service for one.
            loader = loader.region(Region::new(region.to_owned()));
        }
        let base = loader.load().await;
        let mut s3 = aws_sdk_s3::config::Builder::from(&base);
        if base.region().is_none() {
            s3 = s3.region(Region::new("us-east-1"));
        }
        if let Some(url) = endpoint.url {
            s3 = s3.endpoint_url(url.trim_end_matches('/')).force_path_style(true);
        }
        Ok(Self {
            client: aws_sdk_s3::Client::from_conf(s3.build()),
            name: bucket.to_owned(),
        })
    }

    /// Puts `bytes` at `key` under Object Lock retention. The SHA-256 goes along (the
    /// checksum Object Lock requires): S3 refuses the object if what arrived differs.
    pub async fn put_locked(
        &self,
        key: &str,
        bytes: Vec<u8>,
        content_type: &str,
        mode: &str,
        retain_until: time::OffsetDateTime,
    ) -> Result<(), String> {
        let sha256 = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(&bytes));
        self.client
            .put_object()
            .bucket(&self.name)
            .key(key)
            .content_type(content_type)
            .checksum_algorithm(ChecksumAlgorithm::Sha256)
            .checksum_sha256(sha256)
            .object_lock_mode(ObjectLockMode::from(mode))
            .object_lock_retain_until_date(DateTime::from_secs(retain_until.unix_timestamp()))
            .body(ByteStream::from(bytes))
            .send()
            .await
            .map(|_| ())
            .map_err(|e| describe("PutObject", key, &e))
    }

    /// The newest version of `key`; `None` when there is none (or a delete marker hides it).
    pub async fn get_latest(&self, key: &str) -> Result<Option<Vec<u8>>, String> {
        match self.client.get_object().bucket(&self.name).key(key).send().await {
            Ok(out) => Ok(Some(read_body(key, out.body).await?)),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => Ok(None),
            Err(e) => Err(describe("GetObject", key, &e)),
        }
    }

    /// One version of `key`, with its retention.
    pub async fn get_version(&self, key: &str, version_id: &str) -> Result<Fetched, String> {
        let out = self
            .client
            .get_object()
            .bucket(&self.name)
            .key(key)
            .version_id(version_id)
            .send()
            .await
            .map_err(|e| describe("GetObject", key, &e))?;
        let lock_mode = out.object_lock_mode().map(|m| m.as_str().to_owned());
        let retain_until = out
            .object_lock_retain_until_date()
            .and_then(|t| t.fmt(DateTimeFormat::DateTime).ok());
        Ok(Fetched {
            bytes: read_body(key, out.body).await?,
            lock_mode,
            retain_until,
        })
    }

    /// The keys under `prefix` after `start_after` (S3's order: by key).
    pub async fn keys(&self, prefix: &str, start_after: Option<&str>) -> Result<Vec<String>, String> {
        let mut keys = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let out = self
                .client
                .list_objects_v2()
                .bucket(&self.name)
                .prefix(prefix)
                .set_start_after(start_after.map(str::to_owned))
                .set_continuation_token(token.take())
                .send()
                .await
                .map_err(|e| describe("ListObjectsV2", prefix, &e))?;
            keys.extend(out.contents().iter().filter_map(|o| o.key().map(str::to_owned)));
            match out.next_continuation_token() {
                Some(next) if out.is_truncated() == Some(true) => token = Some(next.to_owned()),
                _ => return Ok(keys),
            }
        }
    }

    /// Every version and delete marker under `prefix`.
    pub async fn versions(&self, prefix: &str) -> Result<Vec<Version>, String> {
        let mut all = Vec::new();
        let (mut key_marker, mut version_marker): (Option<String>, Option<String>) = (None, None);
        loop {
            let out = self
                .client
                .list_object_versions()
                .bucket(&self.name)
                .prefix(prefix)
                .set_key_marker(key_marker.take())
                .set_version_id_marker(version_marker.take())
                .send()
                .await
                .map_err(|e| describe("ListObjectVersions", prefix, &e))?;
            let time = |t: Option<&DateTime>| t.and_then(|t| t.fmt(DateTimeFormat::DateTime).ok()).unwrap_or_default();
            for v in out.versions() {
                all.push(Version {
                    key: v.key().unwrap_or_default().to_owned(),
                    version_id: v.version_id().unwrap_or("null").to_owned(),
                    delete_marker: false,
                    is_latest: v.is_latest() == Some(true),
                    last_modified: time(v.last_modified()),
                });
            }
            for m in out.delete_markers() {
                all.push(Version {
                    key: m.key().unwrap_or_default().to_owned(),
                    version_id: m.version_id().unwrap_or("null").to_owned(),
                    delete_marker: true,
                    is_latest: m.is_latest() == Some(true),
                    last_modified: time(m.last_modified()),
                });
            }
            if out.is_truncated() != Some(true) {
                return Ok(all);
            }
            key_marker = out.next_key_marker().map(str::to_owned);
            version_marker = out.next_version_id_marker().map(str::to_owned);
            if key_marker.is_none() {
                return Ok(all);
            }
        }
    }
}

async fn read_body(key: &str, body: ByteStream) -> Result<Vec<u8>, String> {
    body.collect()
        .await
        .map(|b| b.into_bytes().to_vec())
        .map_err(|e| format!("S3 GetObject {key}: the body was cut short: {e}"))
}

/// S3's error code and message, or why the request did not get through (each cause's
/// message, without the SDK's debug dump).
fn describe<E, R>(op: &str, key: &str, e: &SdkError<E, R>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    if let Some(s) = e.as_service_error() {
        return format!(
            "S3 {op} {key}: {}: {}",
            s.code().unwrap_or("error"),
            s.message().unwrap_or("no message")
        );
    }
    let mut causes: Vec<String> = Vec::new();
    let mut next: Option<&dyn std::error::Error> = Some(e);
    while let Some(cause) = next {
        let text = cause.to_string();
        if !text.is_empty() && causes.last() != Some(&text) {
            causes.push(text);
        }
        next = cause.source();
    }
    format!("S3 {op} {key}: {}", causes.join(": "))
}
