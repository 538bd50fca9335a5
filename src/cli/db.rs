//! `homehub db …`: commands on the databases themselves (not on a running hub, so not admin
//! API calls). `homehub db copy --from URL --to URL [--replace]` moves a home to another
//! store (`store::copy`).

use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum DbAction {
    /// Copy every table of the hub (locks with their UUIDs, pairings, the audit log,
    /// devices, Bester users, the token-signing key and issued tokens) from one store to
    /// another, in one transaction, then check the row counts. Stop the hub first.
    ///
    /// Example: homehub db copy --from sqlite://homehub.db --to postgres://hub@db/homehub
    Copy {
        /// The store to copy from (`sqlite://path` or `postgres://…`); a SQLite file must
        /// exist.
        #[arg(long, value_name = "URL")]
        from: String,
        /// The store to copy into (`sqlite://path`, created if missing, or `postgres://…`,
        /// an existing database); it must be empty unless `--replace` is given.
        #[arg(long, value_name = "URL")]
        to: String,
        /// Empty the target's tables first (in the same transaction) if it holds data.
        #[arg(long)]
        replace: bool,
    },
}

/// Runs a `db` command; returns the process exit code.
pub async fn run(action: &DbAction) -> anyhow::Result<i32> {
    match action {
        DbAction::Copy { from, to, replace } => {
            let report = crate::store::copy::copy(from, to, *replace).await?;
            println!(
                "copied {} to {}; row counts match:",
                crate::store::copy::redact(from),
                crate::store::copy::redact(to)
            );
            for (table, count) in report {
                println!("{table} {count}");
            }
            Ok(0)
        }
    }
}
