//! `homehub users ...`: Bester users through the admin API. Passwords are read from the
//! terminal without echo (asked twice), or as one line from stdin when stdin is not a
//! terminal (scripts: `echo "$PW" | homehub users add alice`); never from the command line,
//! where other local users could see them.

use std::io::{BufRead, IsTerminal};

use clap::Subcommand;
use serde_json::{Value, json};

use crate::doors::bester::auth;

#[derive(Debug, Subcommand)]
pub enum UsersAction {
    /// List Bester users (and how many connections each has).
    List,
    /// Add a user; the password is prompted for (or read from stdin).
    Add { name: String },
    /// Set a user's password; it takes effect at the next login.
    Passwd { name: String },
    /// Remove a user and close its connections.
    Remove { name: String },
}

/// Percent-encodes one path segment.
fn seg(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

/// The admin request for `action`: method, path and body.
pub fn admin_request(
    action: &UsersAction,
) -> anyhow::Result<(reqwest::Method, String, Option<Value>)> {
    Ok(match action {
        UsersAction::List => (reqwest::Method::GET, "/api/bester/users".into(), None),
        UsersAction::Add { name } => {
            let password = read_password(name)?;
            (
                reqwest::Method::POST,
                "/api/bester/users".into(),
                Some(json!({ "username": name, "password": password })),
            )
        }
        UsersAction::Passwd { name } => {
            let password = read_password(name)?;
            (
                reqwest::Method::PUT,
                format!("/api/bester/users/{}/password", seg(name)),
                Some(json!({ "password": password })),
            )
        }
        UsersAction::Remove { name } => (
            reqwest::Method::DELETE,
            format!("/api/bester/users/{}", seg(name)),
            None,
        ),
    })
}

fn read_password(name: &str) -> anyhow::Result<String> {
    let password = if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password(format!("New password for {name}: "))?;
        let again = rpassword::prompt_password("Again: ")?;
        anyhow::ensure!(first == again, "the passwords differ");
        first
    } else {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)?;
        line.trim_end_matches(['\n', '\r']).to_owned()
    };
    auth::check_new_password(&password).map_err(anyhow::Error::msg)?;
    Ok(password)
}
