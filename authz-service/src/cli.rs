//! The `gatehouse` command line.

use std::{collections::BTreeSet, path::PathBuf, process::ExitCode};

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::{
    audit::{Store, verify},
    config::Config,
    envoy_config,
    identity::dev_issuer::DevIssuer,
    server::Server,
};

#[derive(Parser)]
#[command(
    name = "gatehouse",
    version,
    about = "Identity-aware audit gateway for MCP servers"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
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
        /// Audience (defaults to identity.audience).
        #[arg(long)]
        aud: Option<String>,
    },
    /// Work with the audit trail.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Recompute every writer's hash chain; exits 1 and names the first broken record.
    Verify {
        #[arg(long, default_value = "gatehouse.yaml")]
        config: PathBuf,
    },
}

fn load(path: &PathBuf) -> anyhow::Result<Config> {
    Config::load(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

impl Cli {
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        match self.command {
            Command::Serve { config } => {
                let server = Server::start(load(&config)?).await?;
                server.run_until(shutdown_signal()).await?;
            }
            Command::CheckConfig { file } => match Config::load(&file) {
                Ok(_) => println!("{}: OK", file.display()),
                Err(errors) => {
                    eprint!("{}: {errors}", file.display());
                    return Ok(ExitCode::from(1));
                }
            },
            Command::EnvoyConfig { config, out } => {
                let yaml = envoy_config::render(&load(&config)?)?;
                match out {
                    Some(path) => std::fs::write(&path, yaml)
                        .with_context(|| format!("cannot write {}", path.display()))?,
                    None => print!("{yaml}"),
                }
            }
            Command::DevToken {
                config,
                sub,
                groups,
                ttl,
                aud,
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
                let audience = aud.unwrap_or_else(|| config.identity.audience.clone());
                println!("{}", issuer.mint(&sub, &groups, &audience, ttl)?);
            }
            Command::Audit {
                command: AuditCommand::Verify { config },
            } => {
                let config = load(&config)?;
                let store =
                    Store::open(&config.audit.database, std::time::Duration::from_secs(5)).await?;
                match verify::verify_store(&store).await {
                    Ok(v) => {
                        let total: u64 = v.writers.iter().map(|(_, n)| n).sum();
                        println!("Audit trail verified: {total} records.");
                        for (writer, n) in v.writers {
                            println!("  writer {writer}: {n} records, chain intact");
                        }
                    }
                    Err(verify::VerifyError::Broken(b)) => {
                        println!("Audit trail BROKEN at record {}: {b}", b.seq());
                        return Ok(ExitCode::from(1));
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Ok(ExitCode::SUCCESS)
    }
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
