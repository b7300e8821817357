//! The gRPC listener's mTLS, with certificates that can be rotated while it runs.
//!
//! The service's certificate and key and the CA that signs Envoy's client certificates are
//! read from `service.grpc_tls`'s files when the service starts, and again whenever one of
//! them changes (looked at every [`RELOAD_EVERY`]): new connections get the new ones, open
//! connections keep theirs. Files that do not read (a half-written rotation) leave the
//! current ones in force, said in the log, until they do. Replace the files by renaming new
//! ones into place (as Kubernetes updates a mounted Secret), so that no read sees half a file.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use anyhow::Context;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls::{self, pki_types::pem::PemObject};

use crate::config::GrpcTls;

/// How often the certificate files are looked at.
pub const RELOAD_EVERY: Duration = Duration::from_secs(2);
/// The longest a client may take to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// The TLS settings in force, swapped whole when the files change.
#[derive(Clone)]
pub struct Reloading {
    files: GrpcTls,
    current: Arc<RwLock<Arc<rustls::ServerConfig>>>,
}

impl Reloading {
    /// Reads the files now; an error here stops the service from starting.
    pub fn load(files: &GrpcTls) -> anyhow::Result<Self> {
        Ok(Self {
            files: files.clone(),
            current: Arc::new(RwLock::new(Arc::new(server_config(files)?))),
        })
    }

    fn config(&self) -> Arc<rustls::ServerConfig> {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Looks at the files every [`RELOAD_EVERY`] and takes new ones in, until `stop`.
    pub async fn watch(self, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut seen = stamps(&self.files);
        loop {
            tokio::select! {
                () = tokio::time::sleep(RELOAD_EVERY) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            let now = stamps(&self.files);
            if now == seen {
                continue;
            }
            match server_config(&self.files) {
                Ok(config) => {
                    *self.current.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(config);
                    seen = now;
                    tracing::info!(
                        cert_file = %self.files.cert_file.display(),
                        ca_file = %self.files.ca_file.display(),
                        "Reloaded the gRPC listener's certificates: new connections use them."
                    );
                }
                // Looked at again next time: a rotation may be half done.
                Err(error) => {
                    tracing::error!(error = %format!("{error:#}"), "The gRPC listener's new certificates do not read; keeping the current ones.")
                }
            }
        }
    }

    /// The listener's connections, each after a TLS handshake with the settings in force
    /// when it came; a client that fails or stalls its handshake is dropped.
    pub fn incoming(
        self,
        listener: TcpListener,
    ) -> tokio_stream::wrappers::ReceiverStream<std::io::Result<tokio_rustls::server::TlsStream<TcpStream>>> {
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let (tcp, peer) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        tracing::warn!(%error, "Could not accept a gRPC connection.");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                // Without it small Check answers wait on delayed ACKs (~40 ms).
                let _ = tcp.set_nodelay(true);
                if tx.is_closed() {
                    return;
                }
                let acceptor = tokio_rustls::TlsAcceptor::from(self.config());
                let tx = tx.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send(Ok(tls)).await;
                        }
                        Ok(Err(error)) => tracing::debug!(%peer, %error, "A gRPC client's TLS handshake failed."),
                        Err(_) => tracing::debug!(%peer, "A gRPC client did not finish its TLS handshake in time."),
                    }
                });
            }
        });
        tokio_stream::wrappers::ReceiverStream::new(rx)
    }
}

/// When each file last changed, and its size: a change of either means "read again".
fn stamps(files: &GrpcTls) -> Vec<Option<(SystemTime, u64)>> {
    [&files.cert_file, &files.key_file, &files.ca_file]
        .into_iter()
        .map(|path| {
            std::fs::metadata(path)
                .ok()
                .and_then(|m| Some((m.modified().ok()?, m.len())))
        })
        .collect()
}

/// The listener's certificate, and the CA every client must present a certificate of
/// (HTTP/2 only, TLS 1.2 or newer).
fn server_config(files: &GrpcTls) -> anyhow::Result<rustls::ServerConfig> {
    let read = |path: &PathBuf| std::fs::read(path).with_context(|| format!("cannot read {}", path.display()));
    let certs = rustls::pki_types::CertificateDer::pem_slice_iter(&read(&files.cert_file)?)
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{}: not a PEM certificate chain", files.cert_file.display()))?;
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(&read(&files.key_file)?)
        .with_context(|| format!("{}: not a PEM private key", files.key_file.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    for ca in rustls::pki_types::CertificateDer::pem_slice_iter(&read(&files.ca_file)?) {
        let ca = ca.with_context(|| format!("{}: not a PEM certificate", files.ca_file.display()))?;
        roots
            .add(ca)
            .with_context(|| format!("{}: not a usable CA certificate", files.ca_file.display()))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .context("cannot check client certificates against the CA")?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("no TLS version in common")?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .with_context(|| {
            format!(
                "{} does not go with {}",
                files.key_file.display(),
                files.cert_file.display()
            )
        })?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}
