//! The `homehub` command line: `serve` (the default) runs the hub; `db` works on the
//! databases themselves (`cli::db`); every other command is a thin client of the admin API
//! (spec §5) that prints the JSON answer.

pub mod bester;
pub mod db;

use clap::{Args, Parser, Subcommand};
use serde_json::Value;

use crate::config::Config;

#[derive(Debug, Parser)]
#[command(
    name = "homehub",
    version,
    about = "Smart-home hub: Phoenix Channels, device relays, admin API"
)]
pub struct Cli {
    /// The hub's settings, for `homehub` with no command.
    #[command(flatten)]
    pub config: Config,

    #[command(subcommand)]
    pub command: Option<Command>,
}

/// `homehub serve`: the hub's settings.
#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub config: Config,
}

/// What the admin commands use: where the hub is and how to authenticate. Nothing else
/// of the hub's settings applies to them.
#[derive(Debug, Clone, Args)]
pub struct Api {
    /// Base URL of a running hub (default: http://<HOMEHUB_BIND>, https:// when
    /// HOMEHUB_TLS_CERT is set).
    #[arg(long, env = "HOMEHUB_URL", global = true)]
    pub url: Option<String>,

    /// The hub's admin token (`HOMEHUB_ADMIN_TOKEN`), sent as a bearer token.
    #[arg(
        long,
        env = "HOMEHUB_ADMIN_TOKEN",
        hide_env_values = true,
        global = true
    )]
    pub admin_token: Option<String>,

    /// CA certificate (PEM) to trust for an `https://` URL, e.g. the hub's own
    /// self-signed certificate.
    #[arg(long, env = "HOMEHUB_CA_CERT", global = true)]
    pub ca_cert: Option<std::path::PathBuf>,

    /// The hub's listener, to build the default URL.
    #[arg(
        long,
        env = "HOMEHUB_BIND",
        default_value = "127.0.0.1:4000",
        global = true
    )]
    pub bind: std::net::SocketAddr,

    /// The hub's TLS certificate: when set, the default URL is `https://`.
    #[arg(long, env = "HOMEHUB_TLS_CERT", global = true)]
    pub tls_cert: Option<std::path::PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the hub (the default when no command is given).
    Serve(Box<ServeArgs>),
    /// List locks.
    Locks(Api),
    /// One lock: show it or change its intended state.
    Lock {
        #[command(flatten)]
        api: Api,
        #[command(subcommand)]
        action: LockAction,
    },
    /// Start pairing an item with a lock (pushes `mode:pair` to it now, or right after its
    /// next join if it is offline), or cancel a pending request with `--cancel PAIR_ID`.
    Pair {
        #[command(flatten)]
        api: Api,
        #[arg(required_unless_present = "cancel")]
        serial: Option<String>,
        /// Cancel this pending pairing request instead of starting one.
        #[arg(long, value_name = "PAIR_ID", conflicts_with_all = ["serial", "name", "kind", "ttl"])]
        cancel: Option<String>,
        /// Label of the item being paired.
        #[arg(long)]
        name: Option<String>,
        /// `tag` or `mobile_phone`.
        #[arg(long = "type")]
        kind: Option<String>,
        /// Seconds the request stays valid.
        #[arg(long)]
        ttl: Option<u64>,
    },
    /// Pairing requests and paired items.
    Pairings(Api),
    /// Connected devices, their doors and topics.
    Devices(Api),
    /// Act on one connected device.
    Device {
        #[command(flatten)]
        api: Api,
        #[command(subcommand)]
        action: DeviceAction,
    },
    /// Device tokens (token mode): issue, list, revoke.
    Token {
        #[command(flatten)]
        api: Api,
        #[command(subcommand)]
        action: TokenAction,
    },
    /// Bester users: list, add, passwd, remove.
    Users {
        #[command(flatten)]
        api: Api,
        #[command(subcommand)]
        action: crate::cli::bester::UsersAction,
    },
    /// The databases themselves: `db copy --from URL --to URL` moves a home to another
    /// store (SQLite to PostgreSQL, or back). Not an admin API command: stop the hub first.
    Db {
        #[command(subcommand)]
        action: crate::cli::db::DbAction,
    },
}

impl Command {
    /// The admin API settings of an admin command (`None` for `serve` and `db`).
    fn api(&self) -> Option<&Api> {
        match self {
            Command::Serve(_) | Command::Db { .. } => None,
            Command::Locks(api)
            | Command::Pairings(api)
            | Command::Devices(api)
            | Command::Lock { api, .. }
            | Command::Pair { api, .. }
            | Command::Device { api, .. }
            | Command::Token { api, .. }
            | Command::Users { api, .. } => Some(api),
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum LockAction {
    /// Show a lock: uuid, record, intended and reported state, holder, online.
    Show { serial: String },
    /// Set the intended state (a JSON object); pushed as `state` to a lock that joined with
    /// `{"accepts": ["state"]}`, given to any other lock in its next join or `reset` reply.
    SetState {
        serial: String,
        state: String,
        /// Only if the intended state is still at this version (`intended_version` in
        /// `lock show`); otherwise nothing changes and the command fails (HTTP 409).
        #[arg(long, value_name = "VERSION")]
        if_match: Option<i64>,
    },
    /// Change the lock's record (name, mode, feature flags, config); the lock gets it in its
    /// next join or `reset` reply.
    Set {
        serial: String,
        /// New name.
        #[arg(long)]
        name: Option<String>,
        /// 1 internal, 2 external, 3 pairing.
        #[arg(long, value_parser = clap::value_parser!(i64).range(1..=3))]
        mode: Option<i64>,
        /// Feature flags, comma-separated (`--flags lock,nfc`; `--flags ''` for none).
        #[arg(long, value_delimiter = ',', num_args = 0..)]
        flags: Option<Vec<String>>,
        /// Configuration, a JSON object (replaces the old one).
        #[arg(long)]
        config: Option<String>,
    },
    /// Reassign the lock to another device (token mode), or free it with `--clear`.
    SetHolder {
        serial: String,
        device: Option<String>,
        #[arg(long, conflicts_with = "device")]
        clear: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokenAction {
    /// Issue a signed token for a device; prints it once (JSON field `token`).
    Issue {
        device: String,
        /// Lifetime in seconds (default HOMEHUB_TOKEN_TTL_SECS).
        #[arg(long)]
        ttl: Option<u64>,
    },
    /// List issued tokens (ids, devices, expiry, revocation).
    List,
    /// Revoke a token by id; the device is disconnected.
    Revoke { id: String },
}

#[derive(Debug, Subcommand)]
pub enum DeviceAction {
    /// Close the device's connection (it may reconnect).
    Disconnect { name: String },
}

/// The HTTP client of the admin commands: rustls with the ring provider; the system's
/// roots, plus `--ca-cert` (e.g. the hub's self-signed certificate) when given.
fn http_client(api: &Api) -> anyhow::Result<reqwest::Client> {
    crate::net::listener::install_crypto_provider();
    let mut builder = reqwest::Client::builder();
    if let Some(path) = &api.ca_cert {
        let pem =
            std::fs::read(path).map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
        let cert = reqwest::Certificate::from_pem(&pem)
            .map_err(|e| anyhow::anyhow!("parsing {}: {e}", path.display()))?;
        builder = builder.add_root_certificate(cert);
    }
    Ok(builder.build()?)
}

/// Percent-encodes one path segment.
fn seg(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

/// Runs an admin command; returns the process exit code.
pub async fn run_admin(command: &Command) -> anyhow::Result<i32> {
    let api = command
        .api()
        .ok_or_else(|| anyhow::anyhow!("serve is not an admin command"))?;
    let base = api.url.clone().unwrap_or_else(|| {
        let bind = api.bind;
        let host = if bind.ip().is_unspecified() {
            "127.0.0.1".to_owned()
        } else {
            bind.ip().to_string()
        };
        let host = if bind.is_ipv6() && !bind.ip().is_unspecified() {
            format!("[{host}]")
        } else {
            host
        };
        let scheme = if api.tls_cert.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{host}:{}", bind.port())
    });
    let base = base.trim_end_matches('/').to_owned();
    let (method, path, body): (reqwest::Method, String, Option<Value>) = match command {
        Command::Serve(_) => anyhow::bail!("serve is not an admin command"),
        Command::Db { .. } => anyhow::bail!("db is not an admin command"),
        Command::Locks(_) => (reqwest::Method::GET, "/api/locks".into(), None),
        Command::Lock { action, .. } => match action {
            LockAction::Show { serial } => (
                reqwest::Method::GET,
                format!("/api/locks/{}", seg(serial)),
                None,
            ),
            LockAction::SetState { serial, state, .. } => {
                let state: Value = serde_json::from_str(state)
                    .map_err(|e| anyhow::anyhow!("state is not valid JSON: {e}"))?;
                (
                    reqwest::Method::PUT,
                    format!("/api/locks/{}/state", seg(serial)),
                    Some(state),
                )
            }
            LockAction::Set {
                serial,
                name,
                mode,
                flags,
                config,
            } => {
                let mut body = serde_json::Map::new();
                if let Some(n) = name {
                    body.insert("name".into(), n.clone().into());
                }
                if let Some(m) = mode {
                    body.insert("mode".into(), (*m).into());
                }
                if let Some(f) = flags {
                    let flags: Vec<Value> = f
                        .iter()
                        .filter(|f| !f.is_empty())
                        .map(|f| f.clone().into())
                        .collect();
                    body.insert("feature_flags".into(), flags.into());
                }
                if let Some(c) = config {
                    let c: Value = serde_json::from_str(c)
                        .map_err(|e| anyhow::anyhow!("config is not valid JSON: {e}"))?;
                    body.insert("config".into(), c);
                }
                (
                    reqwest::Method::PATCH,
                    format!("/api/locks/{}", seg(serial)),
                    Some(Value::Object(body)),
                )
            }
            LockAction::SetHolder {
                serial,
                device,
                clear,
            } => {
                if device.is_none() && !clear {
                    anyhow::bail!("give a device name, or --clear to free the lock");
                }
                (
                    reqwest::Method::PUT,
                    format!("/api/locks/{}/holder", seg(serial)),
                    Some(serde_json::json!({ "device": device })),
                )
            }
        },
        Command::Pair {
            cancel: Some(pair_id),
            ..
        } => (
            reqwest::Method::DELETE,
            format!("/api/pairings/{}", seg(pair_id)),
            None,
        ),
        Command::Pair {
            serial,
            name,
            kind,
            ttl,
            cancel: None,
            ..
        } => {
            let serial = serial
                .as_deref()
                .ok_or_else(|| anyhow::anyhow!("give the lock's serial"))?;
            let mut body = serde_json::Map::new();
            if let Some(n) = name {
                body.insert("name".into(), n.clone().into());
            }
            if let Some(k) = kind {
                body.insert("type".into(), k.clone().into());
            }
            if let Some(t) = ttl {
                body.insert("ttl_secs".into(), (*t).into());
            }
            (
                reqwest::Method::POST,
                format!("/api/locks/{}/pair", seg(serial)),
                Some(Value::Object(body)),
            )
        }
        Command::Pairings(_) => (reqwest::Method::GET, "/api/pairings".into(), None),
        Command::Devices(_) => (reqwest::Method::GET, "/api/devices".into(), None),
        Command::Device {
            action: DeviceAction::Disconnect { name },
            ..
        } => (
            reqwest::Method::POST,
            format!("/api/devices/{}/disconnect", seg(name)),
            None,
        ),
        Command::Users { action, .. } => crate::cli::bester::admin_request(action)?,
        Command::Token { action, .. } => match action {
            TokenAction::Issue { device, ttl } => {
                let mut body = serde_json::Map::new();
                body.insert("device".into(), device.clone().into());
                if let Some(t) = ttl {
                    body.insert("ttl_secs".into(), (*t).into());
                }
                (
                    reqwest::Method::POST,
                    "/api/tokens".into(),
                    Some(Value::Object(body)),
                )
            }
            TokenAction::List => (reqwest::Method::GET, "/api/tokens".into(), None),
            TokenAction::Revoke { id } => (
                reqwest::Method::DELETE,
                format!("/api/tokens/{}", seg(id)),
                None,
            ),
        },
    };
    let client = http_client(api)?;
    let mut req = client.request(method, format!("{base}{path}"));
    if let Some(token) = &api.admin_token {
        req = req.bearer_auth(token);
    }
    if let Some(body) = body {
        req = req.json(&body);
    }
    if let Command::Lock {
        action: LockAction::SetState {
            if_match: Some(version),
            ..
        },
        ..
    } = command
    {
        req = req.header(reqwest::header::IF_MATCH, format!("\"{version}\""));
    }
    let resp = req
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach the hub at {base}: {e}"))?;
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    let pretty = serde_json::from_str::<Value>(&text)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or(text);
    if status.is_success() {
        if !pretty.is_empty() {
            println!("{pretty}");
        }
        Ok(0)
    } else {
        eprintln!("error: HTTP {status}: {pretty}");
        Ok(1)
    }
}
