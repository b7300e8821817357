//! The `gatehouse` command line.

use std::{collections::BTreeSet, path::PathBuf, process::ExitCode};

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::{
    audit::{
        Store,
        checkpoint::{self, CheckpointSigner},
        verify,
    },
    config::Config,
    envoy_config,
    identity::dev_issuer::DevIssuer,
    server::Server,
};

#[derive(Parser)]
#[command(name = "gatehouse", version, about = "Identity-aware audit gateway for MCP servers")]
pub struct Cli {
    /// How log lines are written to standard error: `text` (colours only on a terminal) or
    /// `json` (one object per line, for log shippers).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

/// The form of the service's log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service: ext_authz and audit ingest (gRPC), REST.
    Serve {
        #[arg(long, default_value = "gatehouse.yaml")]
        config: PathBuf,
    },
    /// Validate a config file and report every problem in it.
    CheckConfig { file: PathBuf },
    /// Bring the audit database's schema up to date and exit (`serve` does it too at start;
    /// on PostgreSQL one replica at a time). A database from a newer Gatehouse is refused.
    Migrate {
        #[arg(long, default_value = "gatehouse.yaml")]
        config: PathBuf,
    },
    /// Which policy rule decides a call and why the rules before it did not match (for
    /// operators writing policy; nothing is sent anywhere).
    Explain {
        #[arg(long, default_value = "gatehouse.yaml")]
        config: PathBuf,
        /// The caller's subject (`sub`).
        #[arg(long = "as", value_name = "SUBJECT")]
        subject: String,
        /// The caller's groups, comma-separated.
        #[arg(long, value_delimiter = ',')]
        groups: Vec<String>,
        /// The upstream's name (default: the first in the file).
        #[arg(long)]
        upstream: Option<String>,
        /// The MCP method (default: `tools/call` with `--tool`, else `tools/list`).
        #[arg(long)]
        method: Option<String>,
        /// The tool of a `tools/call`.
        #[arg(long)]
        tool: Option<String>,
        /// The call's arguments, as JSON.
        #[arg(long)]
        args: Option<String>,
    },
    /// Render the Envoy bootstrap for a config file.
    EnvoyConfig {
        #[arg(long, default_value = "gatehouse.yaml")]
        config: PathBuf,
        /// Write here instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Mint a token from the dev issuer (demos and tests only).
    DevToken {
        #[arg(long, default_value = "gatehouse.yaml")]
        config: PathBuf,
        #[arg(long)]
        sub: String,
        /// Comma-separated groups.
        #[arg(long, default_value = "")]
        groups: String,
        #[arg(long, default_value_t = 3600)]
        ttl: u64,
        /// Audience (defaults to identity.audience, approvals.audience with --approver, or
        /// audit.audience with --auditor).
        #[arg(long)]
        aud: Option<String>,
        /// For the approvers' API and page (approvals.audience): such a token cannot call MCP.
        #[arg(long, conflicts_with_all = ["aud", "auditor"])]
        approver: bool,
        /// For the audit REST API (audit.audience): such a token cannot call MCP.
        #[arg(long, conflicts_with = "aud")]
        auditor: bool,
    },
    /// Work with the audit trail.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Write a SOC 2 evidence pack for a period: an HTML report and a CSV per table (CC6.1,
    /// CC6.2/6.3, CC6.7, CC7.2, CC8.1), signed like a session export.
    Evidence {
        /// The period's start (RFC 3339, included).
        #[arg(long)]
        from: String,
        /// The period's end (RFC 3339, excluded).
        #[arg(long)]
        to: String,
        /// A new (or empty) directory.
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value = "gatehouse.yaml")]
        config: PathBuf,
    },
    /// List and read sessions (the exchanges of one MCP session, masked) from the trail.
    Sessions {
        #[command(subcommand)]
        command: SessionsCommand,
    },
    /// Mask secrets and personal data with the gateway's engine: reads JSON lines
    /// `{"id", "format": "text"|"mcp_json", "input"}` on stdin, writes `{"id", "output"}`.
    Mask {
        /// Read JSON lines (the only mode).
        #[arg(long, required = true)]
        jsonl: bool,
        /// Use this file's `masking:` rules instead of the built-in defaults.
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Recompute every writer's hash chain and check its signed checkpoints; exits 1 and
    /// names the first broken record, records of an unknown writer, an unvouched tail longer
    /// than `every_records + max_batch`, or conflicting filter records.
    ///
    /// With `--archive s3://bucket/prefix`, verifies the S3 archive alone instead (no config,
    /// no database): every segment against its signed digest, the digests as one chain, and
    /// each writer's hash chain across segments; exits 1 naming the first broken or missing
    /// object per writer. AWS credentials come from the standard chain.
    Verify {
        #[arg(long, default_value = "gatehouse.yaml")]
        config: PathBuf,
        /// The checkpoint public key (PEM). Defaults to the key of audit.checkpoint.key_file.
        #[arg(long)]
        public_key: Option<PathBuf>,
        /// A checkpoint log kept outside the store. Defaults to audit.checkpoint.log_file.
        #[arg(long, conflicts_with = "archive")]
        checkpoints: Option<PathBuf>,
        /// Verify the archive at s3://bucket/prefix rather than the database.
        #[arg(long, value_name = "S3_URL", requires = "public_key")]
        archive: Option<String>,
        /// The archive bucket's region (default: the AWS environment's, else us-east-1).
        #[arg(long, requires = "archive")]
        region: Option<String>,
        /// Another S3 endpoint than AWS's (an S3-compatible store), addressed path-style.
        #[arg(long, value_name = "URL", requires = "archive")]
        endpoint: Option<String>,
        /// Trust only this CA (PEM) for the S3 endpoint rather than the system's roots.
        #[arg(long, requires = "archive")]
        ca_file: Option<PathBuf>,
    },
    /// List requests with conflicting filter records (several different answers recorded
    /// for one response part, or several rejections); exits 1 if there are any.
    Conflicts {
        #[arg(long, default_value = "gatehouse.yaml")]
        config: PathBuf,
    },
    /// Check a session export or an evidence pack offline: the manifest's signature, every
    /// file's SHA-256, and (for a session) each record's place in its writer's chain up to a
    /// signed checkpoint. Exits 1 naming the first problem, or the records no checkpoint
    /// vouches for yet.
    VerifyExport {
        dir: PathBuf,
        /// The checkpoint public key (PEM), from `gatehouse audit public-key`.
        #[arg(long)]
        public_key: PathBuf,
    },
    /// Print the checkpoint public key (PEM) for auditors to keep apart from the store.
    PublicKey {
        #[arg(long, default_value = "gatehouse.yaml")]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum SessionsCommand {
    /// Sessions, most recently active first.
    List {
        #[arg(long, default_value = "gatehouse.yaml")]
        config: PathBuf,
        #[command(flatten)]
        query: crate::sessions::SessionQuery,
    },
    /// A session as a transcript: time offsets, who, method and tool, arguments and answers
    /// (masked), decisions and approvals.
    Show {
        id: String,
        #[arg(long, default_value = "gatehouse.yaml")]
        config: PathBuf,
    },
    /// Write a verifiable export of a session: its records as stored, the chain links to a
    /// signed checkpoint, the checkpoints, and a manifest signed with the checkpoint key
    /// (check it with `gatehouse audit verify-export`).
    Export {
        id: String,
        /// A new (or empty) directory.
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value = "gatehouse.yaml")]
        config: PathBuf,
    },
}

fn load(path: &std::path::Path) -> anyhow::Result<Config> {
    Config::load(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

impl Cli {
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        match self.command {
            Command::Serve { config } => {
                let server = Server::start(load(&config)?).await?;
                server.run_until(shutdown_signal()).await?;
            }
            Command::Mask { jsonl: _, config } => {
                let masker = match config {
                    Some(path) => load(&path)?.masking.masker()?,
                    None => gatehouse_core::mask::Masker::default(),
                };
                let summary = crate::masking::mask_jsonl(&masker, std::io::stdin().lock(), std::io::stdout().lock())
                    .context("cannot read standard input or write standard output")?;
                if summary.errors > 0 {
                    eprintln!("{} of {} lines could not be read", summary.errors, summary.lines);
                    return Ok(ExitCode::from(1));
                }
            }
            Command::Explain {
                config,
                subject,
                groups,
                upstream,
                method,
                tool,
                args,
            } => {
                let config = load(&config)?;
                let call = ExplainedCall {
                    subject,
                    groups: groups
                        .into_iter()
                        .map(|g| g.trim().to_owned())
                        .filter(|g| !g.is_empty())
                        .collect(),
                    upstream,
                    method,
                    tool,
                    args,
                };
                print!("{}", explain(&config, call)?);
            }
            Command::Sessions {
                command: SessionsCommand::List { config, query },
            } => return crate::sessions::cli::list(&load(&config)?, query).await,
            Command::Sessions {
                command: SessionsCommand::Show { id, config },
            } => return crate::sessions::cli::show(&load(&config)?, &id).await,
            Command::Sessions {
                command: SessionsCommand::Export { id, out, config },
            } => return crate::sessions::cli::export(&load(&config)?, &id, &out).await,
            Command::Audit {
                command: AuditCommand::VerifyExport { dir, public_key },
            } => return verify_export(&dir, &public_key),
            Command::Evidence { from, to, out, config } => {
                return evidence(&load(&config)?, &from, &to, &out).await;
            }
            Command::Migrate { config } => {
                let config = load(&config)?;
                let store = Store::connect(&config.audit.database, std::time::Duration::from_secs(5))
                    .await
                    .map_err(|e| {
                        anyhow::anyhow!("cannot open the audit database: {}", crate::db::redact(&e.to_string()))
                    })?;
                match crate::db::migrate(store.pool()).await {
                    Ok(version) => println!("The audit database's schema is at version {version}."),
                    Err(problem) => {
                        eprintln!("error: {problem}");
                        return Ok(ExitCode::FAILURE);
                    }
                }
            }
            Command::CheckConfig { file } => match Config::load(&file) {
                Ok(config) => {
                    for note in &config.masking.notes {
                        println!("note: masking.gitleaks: {note}");
                    }
                    println!("{}: OK", file.display());
                }
                Err(errors) => {
                    eprint!("{}: {errors}", file.display());
                    return Ok(ExitCode::from(1));
                }
            },
            Command::EnvoyConfig { config, out } => {
                let config = load(&config)?;
                match out {
                    // With the SDS files its mTLS certificates are watched through.
                    Some(path) => envoy_config::render_to(&config, &path)?,
                    None => print!("{}", envoy_config::render(&config)?),
                }
            }
            Command::DevToken {
                config,
                sub,
                groups,
                ttl,
                aud,
                approver,
                auditor,
            } => {
                let config = load(&config)?;
                let dev = config
                    .identity
                    .dev_issuer
                    .as_ref()
                    .context("identity.dev_issuer is not enabled in this config")?;
                let issuer = DevIssuer::load_or_create(&dev.key_file, &config.identity.issuer)?;
                let groups: BTreeSet<String> = groups
                    .split(',')
                    .map(str::trim)
                    .filter(|g| !g.is_empty())
                    .map(str::to_owned)
                    .collect();
                let audience = match (aud, approver, auditor) {
                    (Some(aud), _, _) => aud,
                    (None, true, _) => config.approvals.audience.clone(),
                    (None, false, true) => config.audit.audience.clone(),
                    (None, false, false) => config.identity.audience.clone(),
                };
                println!("{}", issuer.mint(&sub, &groups, &audience, ttl)?);
            }
            Command::Audit {
                command:
                    AuditCommand::Verify {
                        config,
                        public_key,
                        checkpoints,
                        archive,
                        region,
                        endpoint,
                        ca_file,
                    },
            } => {
                if let (Some(archive), Some(public_key)) = (&archive, &public_key) {
                    let endpoint = crate::archive::s3::Endpoint {
                        region: region.as_deref(),
                        url: endpoint.as_deref(),
                        ca_file: ca_file.as_deref(),
                    };
                    return verify_archive(archive, public_key, endpoint).await;
                }
                return audit_verify(&load(&config)?, public_key, checkpoints).await;
            }
            Command::Audit {
                command: AuditCommand::Conflicts { config },
            } => {
                return audit_conflicts(&load(&config)?).await;
            }
            Command::Audit {
                command: AuditCommand::PublicKey { config },
            } => {
                let config = load(&config)?;
                let policy = config
                    .audit
                    .checkpoint
                    .as_ref()
                    .context("audit.checkpoint is not configured")?;
                print!(
                    "{}",
                    CheckpointSigner::load_or_create(&policy.key_file)?.public_key_pem()?
                );
            }
        }
        Ok(ExitCode::SUCCESS)
    }
}

/// `gatehouse evidence`: the pack for a period, signed with the checkpoint key.
async fn evidence(config: &Config, from: &str, to: &str, out: &std::path::Path) -> anyhow::Result<ExitCode> {
    let (Some(from_n), Some(to_n)) = (crate::audit::normalize_time(from), crate::audit::normalize_time(to)) else {
        eprintln!("error: --from and --to must be RFC 3339 times (2026-12-01T00:00:00Z)");
        return Ok(ExitCode::from(2));
    };
    if from_n >= to_n {
        eprintln!("error: --from must be before --to");
        return Ok(ExitCode::from(2));
    }
    let policy = config
        .audit
        .checkpoint
        .as_ref()
        .context("an evidence pack is signed with the checkpoint key: configure audit.checkpoint.key_file")?;
    let signer = CheckpointSigner::load(&policy.key_file)?;
    let external = match &policy.log_file {
        Some(path) if path.exists() => checkpoint::read_log(path)?,
        _ => Vec::new(),
    };
    let store = Store::connect(&config.audit.database, std::time::Duration::from_secs(5)).await?;
    let built = crate::evidence::build(config, &store, &from_n, &to_n, &signer, &external).await?;
    built.write_dir(out)?;
    let summary: serde_json::Value = built
        .files
        .iter()
        .find(|(name, _)| name == "summary.json")
        .and_then(|(_, bytes)| serde_json::from_slice(bytes).ok())
        .unwrap_or_default();
    let n = |v: &serde_json::Value, what: &str| counted(v.as_u64().unwrap_or(0) as usize, what);
    println!(
        "Evidence for {from_n} to {to_n}: {}, {} by {}, {}, {} masked, {}; chain verified: {}.",
        n(&summary["records"], "record"),
        n(&summary["cc6_1"]["calls"], "call"),
        n(&summary["cc6_1"]["users"], "user"),
        n(&summary["cc6_2"]["approvals"], "approval"),
        n(&summary["cc6_7"]["masked"], "value"),
        n(&summary["cc8_1"]["config_changed"], "configuration record"),
        summary["cc7_2"]["chain"]["verified"],
    );
    println!("Wrote {} (open report.html).", out.display());
    for note in &built.manifest.notes {
        println!("note: {note}");
    }
    Ok(ExitCode::SUCCESS)
}

/// "1 record", "2 records".
fn counted(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

/// `gatehouse audit verify-export`: a bundle's signature and files, then its kind's checks.
fn verify_export(dir: &std::path::Path, public_key: &std::path::Path) -> anyhow::Result<ExitCode> {
    let key = checkpoint::load_public_key(public_key)?;
    let broken = |problem: String| {
        println!("BROKEN: {problem}");
        println!("The export does NOT verify.");
        Ok(ExitCode::from(1))
    };
    let opened = match crate::audit::bundle::open(dir, &key) {
        Ok(opened) => opened,
        Err(problem) => return broken(problem),
    };
    match opened.manifest.kind.as_str() {
        crate::sessions::export::KIND => {
            let checked = match crate::sessions::export::verify(&opened, &key) {
                Ok(checked) => checked,
                Err(problem) => return broken(problem),
            };
            println!(
                "Session {}: {}, {}, {}, {}.",
                checked.session,
                counted(checked.exchanges, "exchange"),
                counted(checked.records, "record"),
                counted(checked.links, "chain link"),
                counted(checked.checkpoints, "signed checkpoint"),
            );
            for w in &checked.writers {
                println!(
                    "  writer {}: records {} to {} in one chain, vouched for up to record {}",
                    w.writer, w.first, w.last, w.vouched
                );
            }
            for note in &opened.manifest.notes {
                println!("  note: {note}");
            }
            if !checked.unvouched.is_empty() {
                for (writer, from, to) in &checked.unvouched {
                    println!(
                        "UNVOUCHED: writer {writer}: records {from} to {to} come after every signed checkpoint in the export"
                    );
                }
                println!(
                    "The export is intact, but not every record is vouched for: export again after the next checkpoint."
                );
                return Ok(ExitCode::from(1));
            }
        }
        crate::evidence::KIND => match crate::evidence::verify(&opened, &key) {
            Ok(checkpoints) => println!(
                "Evidence pack {} to {}: {} files, {}.",
                opened.manifest.about["from"].as_str().unwrap_or("?"),
                opened.manifest.about["to"].as_str().unwrap_or("?"),
                opened.manifest.files.len(),
                counted(checkpoints, "signed checkpoint"),
            ),
            Err(problem) => return broken(problem),
        },
        other => return broken(format!("{}: unknown kind {other:?}", crate::audit::bundle::MANIFEST)),
    }
    println!("Export verified.");
    Ok(ExitCode::SUCCESS)
}

/// `gatehouse audit verify --archive`: the S3 archive alone, with the public key.
async fn verify_archive(
    url: &str,
    public_key: &std::path::Path,
    endpoint: crate::archive::s3::Endpoint<'_>,
) -> anyhow::Result<ExitCode> {
    use crate::archive::{s3, verify};
    let key = checkpoint::load_public_key(public_key)?;
    let (bucket, prefix) = verify::parse_archive_url(url).map_err(anyhow::Error::msg)?;
    let objects = verify::S3Objects {
        bucket: s3::Bucket::new(&bucket, endpoint).await.map_err(anyhow::Error::msg)?,
        prefix,
    };
    let report = verify::verify(&objects, &key)
        .await
        .map_err(|e| anyhow::anyhow!("cannot read the archive: {e}"))?;
    let segments: u64 = report.writers.iter().map(|w| w.segments).sum();
    let records: u64 = report.writers.iter().map(|w| w.records).sum();
    println!(
        "Archive s3://{bucket}/{}: {}, {}, {} verified.",
        objects.prefix,
        counted(report.writers.len(), "writer"),
        counted(segments as usize, "segment"),
        counted(records as usize, "record"),
    );
    for w in &report.writers {
        match (&w.newest_digest, &w.newest_uploaded, &w.newest_record_at) {
            (Some(digest), Some(uploaded), Some(recorded)) => println!(
                "  writer {}: {}, records {} to {} in one chain; newest digest {digest} (uploaded {uploaded}, last record {recorded})",
                w.writer,
                counted(w.segments as usize, "segment"),
                w.first_seq,
                w.last_seq,
            ),
            _ => println!("  writer {}: no segment verified", w.writer),
        }
    }
    for warning in &report.warnings {
        println!("WARNING: {warning}");
    }
    if report.writers.is_empty() {
        // Most likely a wrong bucket or prefix: nothing verified is not a verified archive.
        println!("The archive holds no segment here: is the bucket or prefix right?");
        return Ok(ExitCode::from(1));
    }
    if report.verified() {
        println!("Archive verified.");
        return Ok(ExitCode::SUCCESS);
    }
    for problem in &report.problems {
        println!("BROKEN: writer {}: {problem}", problem.writer);
    }
    println!("The archive does NOT verify.");
    Ok(ExitCode::from(1))
}

async fn audit_verify(
    config: &Config,
    public_key: Option<PathBuf>,
    checkpoint_log: Option<PathBuf>,
) -> anyhow::Result<ExitCode> {
    let key_path = public_key.or_else(|| config.audit.checkpoint.as_ref().map(|c| c.key_file.clone()));
    let key = match &key_path {
        Some(path) => Some(checkpoint::load_public_key(path)?),
        None => None,
    };
    // Read only: verifying never migrates (or otherwise changes) the database.
    let store = Store::connect(&config.audit.database, std::time::Duration::from_secs(5)).await?;
    let log = checkpoint_log.or_else(|| config.audit.checkpoint.as_ref().and_then(|c| c.log_file.clone()));
    let external = match &log {
        Some(path) if path.exists() => checkpoint::read_log(path)?,
        Some(path) => {
            println!(
                "Checkpoint log {} does not exist: checking the store's checkpoints only.",
                path.display()
            );
            Vec::new()
        }
        None => Vec::new(),
    };
    let verified = match verify::verify_store_with(&store, key.as_ref(), &external).await {
        Ok(v) => v,
        Err(verify::VerifyError::Broken(b)) => {
            println!("Audit trail BROKEN at record {}: {b}", b.seq());
            return Ok(ExitCode::from(1));
        }
        Err(e) => return Err(e.into()),
    };
    let total: u64 = verified.writers.iter().map(|w| w.records).sum();
    println!("Audit trail chains verified: {total} records.");
    for w in &verified.writers {
        println!(
            "  writer {}: {} records, chain intact, {} signed checkpoints, vouched for up to record {}, {} records after it",
            w.writer, w.records, w.checkpoints, w.vouched, w.unvouched
        );
        if key.is_some() {
            // What a checkpoint cannot show: records deleted from a tail it never saw.
            println!(
                "    nothing after record {} is vouched for by a checkpoint: records deleted after it would not show",
                w.vouched
            );
        }
    }
    if key.is_none() {
        println!("  (no checkpoint key: a rewritten chain or a deleted tail would not be detected)");
    }
    let trust = verify::Trust {
        writers: vec![config.audit.writer_id.clone()],
        checkpoints: key.is_some(),
        unvouched_limit: config
            .audit
            .checkpoint
            .as_ref()
            .map(|c| c.every_records + config.audit.max_batch as u64),
    };
    let untrusted = trust.check(&verified);
    for u in &untrusted {
        println!("Audit trail SUSPECT at record {}: {u}", u.seq());
    }
    let conflicts = store.conflicts(CONFLICTS_SHOWN).await?;
    print_conflicts(&conflicts);
    if !untrusted.is_empty() || !conflicts.is_empty() {
        return Ok(ExitCode::from(1));
    }
    println!("Audit trail verified.");
    Ok(ExitCode::SUCCESS)
}

/// The most conflicts `audit verify` and `audit conflicts` list.
const CONFLICTS_SHOWN: u32 = 1000;

fn print_conflicts(conflicts: &[crate::audit::Conflict]) {
    for c in conflicts {
        let records: Vec<String> = c.records.iter().map(|(w, seq)| format!("{w}:{seq}")).collect();
        let part = c.part.map_or_else(String::new, |p| format!(" part {p}"));
        println!(
            "Audit trail CONFLICT: request {} has {} different {}{part} records (writer:record {}); only one can be the filter's",
            c.request_id,
            c.records.len(),
            c.kind,
            records.join(", ")
        );
    }
}

async fn audit_conflicts(config: &Config) -> anyhow::Result<ExitCode> {
    // Read only: verifying never migrates (or otherwise changes) the database.
    let store = Store::connect(&config.audit.database, std::time::Duration::from_secs(5)).await?;
    let conflicts = store.conflicts(CONFLICTS_SHOWN).await?;
    if conflicts.is_empty() {
        println!("No conflicting records.");
        return Ok(ExitCode::SUCCESS);
    }
    print_conflicts(&conflicts);
    Ok(ExitCode::from(1))
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { () = ctrl_c => {}, () = term => {} }
}

/// A call as `gatehouse explain` is asked about it.
pub struct ExplainedCall {
    pub subject: String,
    pub groups: BTreeSet<String>,
    pub upstream: Option<String>,
    pub method: Option<String>,
    pub tool: Option<String>,
    pub args: Option<String>,
}

/// What decides `call` under `config`, in lines: the upstream's groups, then each rule the
/// call is looked at by (the same walk as the Check), then the outcome.
pub fn explain(config: &Config, call: ExplainedCall) -> anyhow::Result<String> {
    use std::fmt::Write as _;

    use crate::policy::{Facts, Outcome};

    let upstream = match &call.upstream {
        Some(name) => config
            .upstreams
            .iter()
            .find(|u| &u.name == name)
            .with_context(|| format!("no upstream named {name:?}"))?,
        None => config.upstreams.first().context("the config has no upstreams")?,
    };
    let method = call.method.clone().unwrap_or_else(|| {
        if call.tool.is_some() {
            "tools/call"
        } else {
            "tools/list"
        }
        .to_owned()
    });
    anyhow::ensure!(
        call.tool.is_none() || method == "tools/call",
        "--tool goes with a tools/call, not {method:?}"
    );
    let arguments: Option<serde_json::Value> = call
        .args
        .as_deref()
        .map(serde_json::from_str)
        .transpose()
        .context("--args is not JSON")?;
    let groups = call.groups.iter().cloned().collect::<Vec<_>>().join(", ");
    let mut out = String::new();
    let what = call.tool.as_deref().map_or(method.clone(), |t| format!("{method} {t}"));
    writeln!(
        out,
        "{} (groups: {}) calls {what} on upstream {:?}",
        call.subject,
        or_none(&groups),
        upstream.name
    )?;
    let allowed: Vec<&str> = upstream.allow_groups.iter().map(String::as_str).collect();
    if upstream.allow_groups.is_disjoint(&call.groups) {
        writeln!(
            out,
            "DENIED before any rule: no group of the caller may use upstream {:?} (allow_groups: {})",
            upstream.name,
            or_none(&allowed.join(", "))
        )?;
        return Ok(out);
    }
    writeln!(
        out,
        "upstream {:?}: allowed (allow_groups: {})",
        upstream.name,
        allowed.join(", ")
    )?;
    let Some(policy) = &config.policy else {
        writeln!(out, "ALLOWED: no policy, the upstream's allow_groups alone decide")?;
        return Ok(out);
    };
    let facts = Facts {
        subject: &call.subject,
        groups: &call.groups,
        upstream: &upstream.name,
        method: Some(&method),
        tool: call.tool.as_deref(),
        arguments: arguments.as_ref(),
    };
    let (seen, verdict) = policy.explain(&facts);
    for rule in &seen {
        match &rule.mismatch {
            Some(why) => writeln!(out, "  rule {:?}: no match: {why}", rule.rule_id)?,
            None => writeln!(out, "  rule {:?}: matches", rule.rule_id)?,
        }
    }
    let outcome = match verdict.outcome {
        Outcome::Allow => "ALLOWED".to_owned(),
        Outcome::Deny => "DENIED".to_owned(),
        Outcome::RequireApproval(spec) => format!(
            "NEEDS APPROVAL by a member of {:?} (the call is held {} s)",
            spec.approver_group, spec.hold_seconds
        ),
    };
    match verdict.rule_id {
        Some(rule) => writeln!(out, "{outcome} by rule {rule:?}")?,
        None => writeln!(out, "{outcome}: no rule matched (the policy denies by default)")?,
    }
    Ok(out)
}

fn or_none(list: &str) -> &str {
    if list.is_empty() { "none" } else { list }
}
