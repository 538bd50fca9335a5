//! The `homehub` binary: parses the command line and either runs the hub or calls the
//! admin API. Everything else lives in the library.

use clap::Parser;
use homehub::cli::{Cli, Command};
use homehub::hub::Server;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // `.env` is optional: a missing file is not an error.
    let _ = dotenvy::dotenv();
    let cli = Cli::parse();
    // Held until exit so queued log lines are flushed.
    let _log_guard = homehub::telemetry::init();
    let result = match &cli.command {
        None | Some(Command::Serve) => serve(cli).await.map(|()| 0),
        Some(command) => homehub::cli::run_admin(&cli, command).await,
    };
    match result {
        Ok(code) => std::process::ExitCode::from(code as u8),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn serve(cli: Cli) -> anyhow::Result<()> {
    let tls = cli.config.tls_cert.is_some();
    let server = Server::bind(cli.config).await?;
    let addr = server.local_addr()?;
    tracing::info!(%addr, "listening");
    // Scripts and tests read this line to find the port when binding port 0.
    let scheme = if tls { "https" } else { "http" };
    println!("homehub listening on {scheme}://{addr}");
    server.run(homehub::shutdown::signal()).await
}
