//! The `homehub` binary: parses the command line and either runs the hub or calls the
//! admin API. Everything else lives in the library.

use clap::Parser;
use homehub::app::Server;
use homehub::cli::{Cli, Command};

/// jemalloc rather than the system allocator: a join storm allocates and frees many
/// short-lived buffers of mixed sizes per connection, where glibc's malloc spent ≈ 15 % of
/// the hub's CPU (much of it consolidating free chunks); jemalloc cut the CPU per join by
/// 15–20 % with the same memory per idle socket and no growth in the soak (bench/README.md).
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    // `.env` is optional: a missing file is not an error.
    let _ = dotenvy::dotenv();
    let cli = Cli::parse();
    let runtime = match runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(cli))
}

/// One worker thread per CPU the process may run on; on a single CPU (a small box, or a
/// hub pinned with `taskset`) a current-thread runtime, which skips the work-stealing
/// scheduler's bookkeeping. Blocking work (password hashing) has its own threads either way.
fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cpus == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(cpus)
            .enable_all()
            .build()
    }
}

async fn run(cli: Cli) -> std::process::ExitCode {
    // Held until exit so queued log lines are flushed.
    let _log_guard = homehub::telemetry::init();
    let result = match cli.command {
        None => serve(cli.config).await.map(|()| 0),
        Some(Command::Serve(args)) => serve(args.config).await.map(|()| 0),
        Some(Command::Db { action }) => homehub::cli::db::run(&action).await,
        Some(command) => homehub::cli::run_admin(&command).await,
    };
    match result {
        Ok(code) => std::process::ExitCode::from(code as u8),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn serve(config: homehub::config::Config) -> anyhow::Result<()> {
    let tls = config.tls_cert.is_some();
    let server = Server::bind(config).await?;
    let addr = server.local_addr()?;
    tracing::info!(%addr, "listening");
    // Scripts and tests read this line to find the port when binding port 0.
    let scheme = if tls { "https" } else { "http" };
    println!("homehub listening on {scheme}://{addr}");
    server.run(homehub::shutdown::signal()).await
}
