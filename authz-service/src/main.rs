//! The `gatehouse` binary: parses arguments and hands over to the library.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use gatehouse_service::cli::LogFormat;

/// mimalloc rather than glibc's malloc: a Check allocates and frees many small buffers across
/// threads (the gRPC codec, the record, the writer thread), where glibc spent ~15 % of the
/// service's CPU consolidating free lists in a profile under load (ARCHITECTURE.md,
/// Performance notes).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = gatehouse_service::cli::Cli::parse();
    let mut filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    // The AWS SDK's debug and trace output shows HTTP exchanges with STS, whose answers hold
    // session credentials: never below info, whatever RUST_LOG asks.
    for directive in [
        "aws_smithy_runtime=info",
        "aws_smithy_http_client=info",
        "aws_sigv4=info",
        "aws_config=info",
        "aws_sdk_sts=info",
        "hyper_util=info",
        "h2=info",
    ] {
        if let Ok(d) = directive.parse() {
            filter = filter.add_directive(d);
        }
    }
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        // Colour escapes only for a person at a terminal, never into a file or a pipe.
        LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => logs.json().init(),
    }
    match cli.run().await {
        Ok(code) => code,
        Err(error) => {
            eprintln!("gatehouse: {error:#}");
            ExitCode::from(2)
        }
    }
}
