//! Starts the service: the gRPC listener (ext_authz + audit ingest) and the REST listener.
//! Tests start it in-process on port 0 through [`Server::start`].

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context;
use envoy_types::ext_authz::v3::pb::AuthorizationServer;
use gatehouse_proto::audit::v1::audit_ingest_server::AuditIngestServer;
use tokio::{net::TcpListener, sync::watch, task::JoinHandle};

use crate::{
    AppState,
    approvals::{ApprovalStore, Approvals, CallKeys, Limits, Notifier, Replicas},
    audit::{AuditLog, Checkpointer, Store, checkpoint::CheckpointSigner},
    authz::AuthzService,
    config::Config,
    identity::{Verifier, dev_issuer::DevIssuer},
    ingest::IngestService,
    metrics::Metrics,
    rest,
};

/// A running service.
pub struct Server {
    pub rest_addr: SocketAddr,
    pub grpc_addr: SocketAddr,
    pub state: Arc<AppState>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<anyhow::Result<()>>>,
    /// The gRPC health service's state: NOT_SERVING while draining.
    health: tonic_health::server::HealthReporter,
    /// The indexer's, exporters' and archive's thread ([`crate::background`]).
    _background: crate::background::Background,
}

/// How long a write may wait for SQLite's lock before the request is refused. Well under
/// Envoy's ext_authz timeout, so the client gets the service's clear error, not a timeout.
const STORE_BUSY_TIMEOUT: Duration = Duration::from_millis(500);

impl Server {
    /// Opens the store, binds both listeners and starts serving.
    pub async fn start(config: Config) -> anyhow::Result<Self> {
        let metrics = Metrics::default();
        let store = Store::open(&config.audit.database, STORE_BUSY_TIMEOUT)
            .await
            .with_context(|| {
                format!(
                    "cannot open the audit store {}",
                    crate::db::redact(&config.audit.database)
                )
            })?;
        let checkpoints = match &config.audit.checkpoint {
            Some(policy) => Some(Checkpointer {
                signer: CheckpointSigner::load_or_create(&policy.key_file)?,
                every_records: policy.every_records,
                every: Duration::from_secs(policy.every_seconds),
                log_file: policy.log_file.clone(),
            }),
            None => {
                tracing::warn!(
                    "audit.checkpoint is not configured: a rewrite of the whole chain or a deleted tail cannot be detected."
                );
                None
            }
        };
        let audit = AuditLog::start(
            store,
            &config.audit.writer_id,
            config.audit.max_batch,
            checkpoints,
            metrics.clone(),
        )
        .await
        .context("cannot read the audit chain head")?;
        let dev_issuer = match &config.identity.dev_issuer {
            Some(d) => Some(DevIssuer::load_or_create(&d.key_file, &config.identity.issuer)?),
            None => None,
        };
        if dev_issuer.is_some() {
            tracing::warn!(
                "The dev issuer is enabled: anyone with its key file can mint tokens. Never enable it in production."
            );
        }
        let identity = Verifier::new(config.identity.clone());
        let masker = config.masking.masker()?;
        for note in &config.masking.notes {
            tracing::warn!(note = %note, "masking.gitleaks: part of the file is left out");
        }
        // Approval keys are keyed hashes under the masking token key when there is one.
        let approval_key = config.masking.rules_with_key()?.token_key.map(String::into_bytes);
        let sessions = crate::authz::SessionSecret::load(&config)?;
        // The clear arguments of show_clear approvals are sealed for the replicas of a
        // PostgreSQL database under a key from the session key file they share (a Secret, not
        // on the database's disks); one SQLite service seals them under a key of this process
        // only, never written anywhere, so its file, WAL and backups hold nothing readable.
        let seal_key = match audit.store().pool() {
            crate::db::Pool::Postgres(_) => sessions.derive(crate::approvals::replicas::SEAL_LABEL),
            crate::db::Pool::Sqlite(_) => rand::random(),
        };
        let replicas = Replicas::new(audit.store().pool().clone(), &config.audit.writer_id, &seal_key);
        replicas
            .start()
            .await
            .context("cannot tell the other replicas this one is alive")?;
        let approvals = Arc::new(Approvals::new(
            ApprovalStore::new(audit.store().pool().clone()),
            CallKeys::new(approval_key),
            Limits::from(&config.approvals),
            audit.clone(),
            metrics.clone(),
            Notifier::new(&config.approvals, audit.clone(), metrics.clone()),
            replicas,
        ));
        let session_index = crate::sessions::Sessions::of(audit.store(), config.audit.session_idle_seconds)
            .await
            .context("cannot open the session index")?;
        if let Err(e) = session_index.ensure_search_index().await {
            tracing::warn!(
                error = %e,
                "session search has no index, a search reads every exchange: as the database's \
                 owner, CREATE EXTENSION pg_trgm; then restart the service (it creates the index)"
            );
        }
        // Each exporter's sink, built before anything starts: one that cannot work (a CA file
        // without a certificate) stops the start with its reason.
        let mut sinks = std::collections::BTreeMap::new();
        for exporter in &config.export {
            let sink = crate::export::sinks::Sink::new(&exporter.sink)
                .map_err(|e| anyhow::anyhow!("export {:?}: {e}", exporter.name))?;
            sinks.insert(exporter.name.clone(), sink);
        }
        let policy = crate::policy::InForce::new(config.policy.clone().map(Arc::new));
        let recording = crate::policy::InForce::new(Arc::new(config.recording.clone()));
        // The configuration it starts with is a record, compared with the newest one: a file
        // edited while the service was down shows what changed. No record, no start.
        let previous = crate::config::changes::newest(audit.store())
            .await
            .context("cannot read the newest configuration record")?;
        let loaded = crate::config::changes::event(
            "loaded",
            &config.source,
            config.text.as_bytes(),
            previous.as_ref(),
            &[],
            &masker,
        );
        let config_digests = loaded.digests.clone();
        audit
            .append_event(
                &crate::authz::check::new_request_id(),
                gatehouse_core::events::AuditEvent::ConfigChanged(loaded),
            )
            .await
            .context("cannot record the configuration in the audit trail")?;
        let aws = crate::aws::AwsSessions::new(&config).await;
        let rest_listener = TcpListener::bind(config.service.rest_listen)
            .await
            .with_context(|| format!("cannot listen on {} (service.rest_listen)", config.service.rest_listen))?;
        let grpc_listener = TcpListener::bind(config.service.grpc_listen)
            .await
            .with_context(|| format!("cannot listen on {} (service.grpc_listen)", config.service.grpc_listen))?;
        let (rest_addr, grpc_addr) = (rest_listener.local_addr()?, grpc_listener.local_addr()?);
        let state = Arc::new(AppState {
            config,
            identity,
            audit,
            metrics,
            dev_issuer,
            masker,
            policy,
            recording,
            approvals,
            aws,
            sessions,
            session_index,
            export: crate::export::Statuses::default(),
        });
        let (shutdown, watch_rx) = watch::channel(false);

        let max_check_bytes = state.config.envoy.max_request_bytes as usize + 256 * 1024;
        let grpc = tonic::transport::Server::builder();
        // mTLS with certificates reread when their files change (rotation without a restart).
        let tls = match &state.config.service.grpc_tls {
            Some(files) => Some(crate::grpc_tls::Reloading::load(files).context("cannot use service.grpc_tls")?),
            None => None,
        };
        if tls.is_none() {
            tracing::warn!(
                grpc_listen = %grpc_addr,
                "The gRPC listener has no TLS (service.grpc_plaintext): any local process can call the Check and write to the trail."
            );
        }
        let (health, health_service) = tonic_health::server::health_reporter();
        let grpc = grpc
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .add_service(health_service)
            // A Check carries the whole request body: allow the configured body size.
            .add_service(
                AuthorizationServer::new(AuthzService::new(state.clone())).max_decoding_message_size(max_check_bytes),
            )
            .add_service(AuditIngestServer::new(IngestService::new(state.clone())));
        let mut rx = watch_rx.clone();
        let grpc_task = match tls {
            Some(tls) => {
                tokio::spawn(tls.clone().watch(watch_rx.clone()));
                let incoming = tls.incoming(grpc_listener);
                tokio::spawn(async move {
                    grpc.serve_with_incoming_shutdown(incoming, async move {
                        let _ = rx.wait_for(|stop| *stop).await;
                    })
                    .await
                    .context("gRPC server failed")
                })
            }
            None => tokio::spawn(async move {
                // TCP_NODELAY: without it small Check answers wait on delayed ACKs (~40 ms).
                let incoming = tonic::transport::server::TcpIncoming::from(grpc_listener).with_nodelay(Some(true));
                grpc.serve_with_incoming_shutdown(incoming, async move {
                    let _ = rx.wait_for(|stop| *stop).await;
                })
                .await
                .context("gRPC server failed")
            }),
        };
        let app = rest::router(state.clone());
        let mut rx = watch_rx;
        let rest_task = tokio::spawn(async move {
            axum::serve(rest_listener, app)
                .with_graceful_shutdown(async move {
                    let _ = rx.wait_for(|stop| *stop).await;
                })
                .await
                .context("REST server failed")
        });
        // Ends with the shutdown signal; a failure here must not stop serving.
        tokio::spawn(crate::policy::reload::watch(
            crate::policy::reload::Watched {
                policy: state.policy.clone(),
                recording: state.recording.clone(),
                audit: state.audit.clone(),
                masker: state.masker.clone(),
                metrics: state.metrics.clone(),
                path: state.config.source.clone(),
                digests: config_digests,
            },
            shutdown.subscribe(),
        ));
        tokio::spawn(crate::approvals::sweep(state.approvals.clone(), shutdown.subscribe()));
        let background = crate::background::Background::start().context("cannot start the background thread")?;
        let (main_store, main_index) = (state.audit.store().clone(), state.session_index.clone());
        let (store, index) = background
            .run(async move {
                let store = main_store.background_pool().await?;
                let index = main_index.background(&store).await?;
                Ok::<_, sqlx::Error>((store, index))
            })
            .await?
            .context("cannot open the audit database for the background work")?;
        background.spawn(crate::sessions::index::run(index, store.clone(), shutdown.subscribe()));
        for exporter in &state.config.export {
            background.spawn(crate::export::run(
                exporter.clone(),
                sinks.remove(&exporter.name).context("an exporter without its sink")?,
                store.clone(),
                state.export.clone(),
                shutdown.subscribe(),
            ));
        }
        if let Some(archive) = &state.config.archive {
            let key_file = &state
                .config
                .audit
                .checkpoint
                .as_ref()
                .context("archive: no checkpoint key")?
                .key_file;
            background.spawn(crate::archive::run(
                archive.clone(),
                store.clone(),
                crate::audit::checkpoint::CheckpointSigner::load(key_file)
                    .context("archive: cannot read the checkpoint key")?,
                state.export.clone(),
                shutdown.subscribe(),
            ));
        }
        tokio::spawn(crate::approvals::replicas::heartbeat(
            state.approvals.clone(),
            shutdown.subscribe(),
        ));
        if let crate::db::Pool::Postgres(pool) = state.audit.store().pool() {
            tokio::spawn(crate::approvals::listen_for_changes(
                state.approvals.clone(),
                pool.clone(),
                shutdown.subscribe(),
            ));
        }
        // Listening already, so a dev issuer served by this very service answers.
        let identity = state.identity.clone();
        tokio::spawn(async move { identity.prefetch().await });
        tracing::info!(%rest_addr, %grpc_addr, writer = %state.config.audit.writer_id, "Gatehouse service started.");
        Ok(Self {
            rest_addr,
            grpc_addr,
            state,
            shutdown,
            tasks: vec![grpc_task, rest_task],
            health,
            _background: background,
        })
    }

    /// Serves until one listener fails or `stop` resolves, then stops both.
    pub async fn run_until(mut self, stop: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
        let tasks = std::mem::take(&mut self.tasks);
        let mut joined = Box::pin(futures_select(tasks));
        tokio::select! {
            result = &mut joined => result,
            () = stop => {
                let service = &self.state.config.service;
                // Draining: Envoy's health checks see NOT_SERVING and send new Checks and
                // records to the other replicas, while this one still answers what comes.
                self.health.set_service_status("", tonic_health::ServingStatus::NotServing).await;
                if !service.drain.is_zero() {
                    tracing::info!(drain = ?service.drain, "Draining: the health check says NOT_SERVING.");
                    tokio::select! {
                        () = tokio::time::sleep(service.drain) => {}
                        result = &mut joined => return result,
                    }
                }
                tracing::info!("Shutting down: no new connections; waiting for the Checks in flight.");
                let _ = self.shutdown.send(true);
                // Held calls may take a while; every record is durable before it is answered.
                if tokio::time::timeout(service.shutdown_grace, joined).await.is_err() {
                    tracing::warn!(grace = ?service.shutdown_grace, "Checks still in flight after the grace period; stopping.");
                }
                // Vouch for the last records before the process ends.
                let _ = tokio::time::timeout(Duration::from_secs(5), self.state.audit.checkpoint_now()).await;
                Ok(())
            }
        }
    }

    /// Stops serving (tests).
    pub fn stop(&self) {
        let _ = self.shutdown.send(true);
    }
}

async fn futures_select(tasks: Vec<JoinHandle<anyhow::Result<()>>>) -> anyhow::Result<()> {
    let (tx, mut rx) = tokio::sync::mpsc::channel(tasks.len().max(1));
    for task in tasks {
        let tx = tx.clone();
        tokio::spawn(async move {
            let result = match task.await {
                Ok(r) => r,
                Err(e) => Err(anyhow::anyhow!("server task panicked: {e}")),
            };
            let _ = tx.send(result).await;
        });
    }
    drop(tx);
    rx.recv().await.unwrap_or(Ok(()))
}
