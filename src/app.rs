//! The composition root: builds the hub's parts, binds the listeners, serves, and shuts
//! down. `main` and the tests call [`Server`]; nothing inside the crate imports this module.
//!
//! `Server::bind` opens the store and binds the listener (port 0 works, which is how tests
//! run many hubs at once); `Server::run` serves until the shutdown future resolves, then
//! closes every socket with 1012 and waits for their tasks (with a deadline), because
//! axum's graceful shutdown does not wait for upgraded WebSockets.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use tokio::net::TcpListener;

use crate::auth::Keyring;
use crate::config::{AuthMode, Config};
use crate::doors::SocketDoors;
use crate::doors::phoenix::longpoll::LongPoll;
use crate::net::upgrade::Edge;
use crate::services::Hub;
use crate::store::Store;

/// A bound, not yet running hub.
pub struct Server {
    hub: Arc<Hub>,
    bester_door: Arc<crate::doors::bester::Ctx>,
    listener: TcpListener,
    bester: crate::doors::bester::Listeners,
    listen: crate::net::listener::ListenOptions,
}

impl Server {
    pub async fn bind(config: Config) -> anyhow::Result<Server> {
        crate::net::listener::install_crypto_provider();
        if config.auth == AuthMode::Open
            && !config.bind.ip().is_loopback()
            && !config.allow_open_network
        {
            anyhow::bail!(
                "refusing to serve open mode (no device authentication) on the non-loopback \
                 address {}: set HOMEHUB_AUTH=token, bind a loopback address, or set \
                 HOMEHUB_ALLOW_OPEN_NETWORK=true if the network is trusted",
                config.bind
            );
        }
        let cluster = crate::cluster::Options::from_config(&config);
        if cluster.is_some()
            && crate::store::Kind::of(&config.database_url) != crate::store::Kind::Postgres
        {
            anyhow::bail!(
                "HOMEHUB_CLUSTER needs a store every node shares: set DATABASE_URL to a \
                 postgres:// URL (a SQLite file belongs to one process; docs/cluster.md)"
            );
        }
        let tls = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => Some(crate::net::listener::tls_acceptor(cert, key)?),
            (None, None) => None,
            _ => anyhow::bail!("HOMEHUB_TLS_CERT and HOMEHUB_TLS_KEY must be set together"),
        };
        let listen = crate::net::listener::ListenOptions {
            tls,
            handshake_timeout: config.handshake_timeout,
            max_per_ip: config.max_conns_per_ip,
            send_timeout: config.send_timeout,
        };
        let store_options = crate::store::StoreOptions {
            // `HOMEHUB_LOCK_FEATURE_FLAGS=` (empty) means no flags.
            new_lock_flags: config
                .lock_feature_flags
                .iter()
                .map(|f| f.trim().to_owned())
                .filter(|f| !f.is_empty())
                .collect(),
        };
        let store = Store::open_with(&config.database_url, &store_options)
            .await
            .with_context(|| format!("opening database {}", config.database_url))?;
        let listener = crate::net::listener::bind(config.bind, listen.send_timeout)
            .with_context(|| format!("binding {}", config.bind))?;
        let bester = crate::doors::bester::Bester::load(&config)?;
        let bester_listeners = crate::doors::bester::Listeners::bind(&config).await?;
        let key = match &config.secret_key {
            Some(k) if k.len() >= 32 => k.as_bytes().to_vec(),
            Some(_) => anyhow::bail!("HOMEHUB_SECRET_KEY must be at least 32 characters"),
            None => store.token_key().await.context("loading the token key")?,
        };
        let keyring = Keyring::new(key, store.revoked_token_ids().await?);
        let hub = match cluster {
            None => Hub::new(config, store, keyring),
            Some(cluster) => {
                let (client, events) = crate::cluster::connect(&cluster).await?;
                Hub::with_fabric(config, store, keyring, |parts| {
                    Arc::new(crate::cluster::NatsFabric::start(
                        client, events, cluster, parts,
                    ))
                })
            }
        };
        let hub = Arc::new(hub);
        let bester = Arc::new(crate::doors::bester::Ctx {
            bester,
            store: hub.store.clone(),
            registry: hub.registry.clone(),
            fabric: hub.fabric.clone(),
            metrics: hub.metrics.clone(),
            tracker: hub.tracker.clone(),
            shutdown: hub.shutdown.clone(),
            send_timeout: hub.config.send_timeout,
        });
        Ok(Server {
            hub,
            bester_door: bester,
            listener,
            bester: bester_listeners,
            listen,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The Bester TCP listener's address, when it is enabled.
    pub fn bester_addr(&self) -> Option<SocketAddr> {
        self.bester.tcp_addr()
    }

    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    /// Serves until `signal` resolves, then shuts down gracefully.
    pub async fn run(
        self,
        signal: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let hub = self.hub;
        self.bester.spawn(&self.bester_door);
        // One admission gate for the WebSocket doors and long-poll.
        let gate = Arc::new(crate::doors::admission::Gate::new(&hub));
        spawn_idle_sweep(&hub);
        let edge = Edge {
            doors: Arc::new(SocketDoors::new(&hub, gate.clone())),
            tracker: hub.tracker.clone(),
            shutdown: hub.shutdown.clone(),
            registry: hub.registry.clone(),
        };
        let app = router(&hub, self.bester_door.clone(), edge.clone(), gate);
        let token = hub.shutdown.clone();
        tokio::spawn(async move {
            signal.await;
            tracing::info!("shutting down: closing sockets");
            token.cancel();
        });
        crate::net::listener::serve(self.listener, app, edge, self.listen).await;
        hub.tracker.close();
        let grace = hub.config.shutdown_grace;
        if tokio::time::timeout(grace, hub.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                remaining = hub.tracker.len(),
                "shutdown deadline passed; dropping remaining sockets"
            );
        }
        if tokio::time::timeout(grace, hub.relay.finish())
            .await
            .is_err()
        {
            tracing::warn!("shutdown deadline passed; relay device records still queued are lost");
        }
        hub.store.close().await;
        tracing::info!("stopped");
        Ok(())
    }
}

/// The shared idle clock of every WebSocket: one task sweeping the registry when the
/// earliest socket deadline is due, instead of a timer per socket that would wake every
/// idle socket's task. A silent socket is closed at `idle` (+ up to 25 ms); a fleet that
/// heartbeats is swept about twice per idle period, not once a second.
fn spawn_idle_sweep(hub: &Arc<Hub>) {
    let idle = hub.config.idle_timeout;
    let hub = hub.clone();
    tokio::spawn(async move {
        loop {
            // Until the earliest deadline of any socket, but at most half the idle time (a
            // socket that connects meanwhile is due no sooner than that); not more often
            // than every 25 ms.
            let wait = hub
                .registry
                .sweep_idle(idle)
                .clamp(SWEEP_AT_MOST_EVERY, idle / 2);
            tokio::select! {
                _ = hub.shutdown.cancelled() => break,
                _ = tokio::time::sleep(wait) => {}
                _ = hub.registry.sweep_woken() => {}
            }
        }
    });
}

/// Shortest pause of the idle sweep.
const SWEEP_AT_MOST_EVERY: Duration = Duration::from_millis(25);

/// Every HTTP route of the hub.
pub fn router(
    hub: &Hub,
    bester: Arc<crate::doors::bester::Ctx>,
    edge: Edge,
    gate: Arc<crate::doors::admission::Gate>,
) -> Router {
    // WebSocket upgrades are normally answered by the listener before this router sees
    // them (net::upgrade); these routes answer everything else on the socket paths.
    let sockets = Router::new()
        .route(
            "/socket/websocket",
            axum::routing::any(crate::net::upgrade::fallback),
        )
        .route("/relay", axum::routing::get(crate::net::upgrade::fallback))
        .route(
            "/compendium",
            axum::routing::get(crate::net::upgrade::fallback),
        )
        .with_state(edge);
    let longpoll = Router::new()
        .route(
            "/socket/longpoll",
            axum::routing::any(crate::doors::phoenix::longpoll::handle),
        )
        .with_state(LongPoll::new(hub, gate));
    let admin = crate::admin::AdminState::new(hub, bester);
    Router::new()
        .nest("/api", crate::admin::router(&admin))
        .merge(crate::admin::metrics_router(&admin))
        .merge(crate::admin::health_router())
        .with_state(admin)
        .merge(sockets)
        .merge(longpoll)
}
