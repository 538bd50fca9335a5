//! Logging through `tracing`: `RUST_LOG` filters (default `homehub=info`), output to stderr
//! so stdout stays free for command output.
//!
//! The hub logs one line per connection event; under a join storm that is tens of thousands
//! of lines a second. [`init`] therefore hands formatted lines to a writer thread
//! (`tracing-appender`), so a socket task never blocks on a `write` to stderr (the thread
//! writes each line as it comes; batching them was measured and did not pay, see
//! bench/README.md).

use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::EnvFilter;

fn filter() -> EnvFilter {
    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("homehub=info"))
}

/// Installs the subscriber with a background writer. Keep the guard alive until exit: when
/// it drops, the lines still queued are flushed.
pub fn init() -> Option<WorkerGuard> {
    let (writer, guard) = tracing_appender::non_blocking(std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter())
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(writer)
        .try_init()
        .ok()
        .map(|()| guard)
}

/// Installs the subscriber writing synchronously to stderr (tests, where nothing keeps a
/// guard alive).
pub fn init_blocking() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter())
        .with_writer(std::io::stderr)
        .try_init();
}
