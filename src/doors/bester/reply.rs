//! A message handler's reply, decoded once, in either shape the spec names:
//!
//! * the seed's: `{"header": {"status", "command": "sendClients", "commandData": [...]},
//!   "payload": {"type", "data"}}`;
//! * the original server's (besterd): `{"header": {"status": "0", "command": {"type":
//!   "sendClients", "data": [...]}}, "data": ...}`.
//!
//! Success is status `"0"` (or `0`), `"ok"` or `"success"`; anything else is the handler
//! reporting a failure, passed on to the client. The data to forward is `payload.data`,
//! else the top-level `data`, else `null`; it stays raw JSON.

use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;

use super::protocol::null;

/// What the handler asks the hub to do with its reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Deliver to these users (or relay devices).
    SendClients(Vec<String>),
    /// Deliver to these peer servers (`host:port` or peer names).
    SendServers(Vec<String>),
    /// Pass the data on to the handler of this type.
    SendHandler(String),
}

/// A decoded reply.
#[derive(Debug)]
pub enum HandlerReply {
    /// Success: run `command` with `data`.
    Success {
        command: Command,
        /// `payload.type` of the reply, when the handler named one.
        kind: Option<String>,
        data: Box<RawValue>,
    },
    /// The handler reported a failure with this status.
    Failure { status: String, data: Box<RawValue> },
}

#[derive(Deserialize)]
struct WireReply {
    header: WireHeader,
    #[serde(default)]
    payload: Option<WirePayload>,
    #[serde(default)]
    data: Option<Box<RawValue>>,
}

#[derive(Deserialize)]
struct WireHeader {
    status: WireStatus,
    #[serde(default)]
    command: Option<WireCommand>,
    #[serde(default, rename = "commandData")]
    command_data: Option<Value>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum WireStatus {
    Text(String),
    Number(i64),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum WireCommand {
    Name(String),
    Block {
        #[serde(rename = "type")]
        kind: String,
        #[serde(default)]
        data: Option<Value>,
    },
}

#[derive(Deserialize)]
struct WirePayload {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default)]
    data: Option<Box<RawValue>>,
}

/// Decodes a reply frame; the error says what is wrong with it.
pub fn decode(frame: &[u8]) -> Result<HandlerReply, String> {
    let text = std::str::from_utf8(frame).map_err(|_| "reply is not UTF-8".to_owned())?;
    let reply: WireReply = serde_json::from_str(text).map_err(|e| {
        if e.is_data() {
            format!("reply is not a handler reply: {e}")
        } else {
            "reply is not JSON".to_owned()
        }
    })?;
    let (kind, payload_data) = match reply.payload {
        Some(p) => (p.kind.filter(|k| !k.is_empty()), p.data),
        None => (None, None),
    };
    let data = payload_data.or(reply.data).unwrap_or_else(null);
    let status = match reply.header.status {
        WireStatus::Text(s) => s,
        WireStatus::Number(n) => n.to_string(),
    };
    if !is_success(&status) {
        return Ok(HandlerReply::Failure { status, data });
    }
    let (name, args) = match reply.header.command {
        Some(WireCommand::Name(name)) => (name, reply.header.command_data),
        Some(WireCommand::Block { kind, data }) => (kind, data.or(reply.header.command_data)),
        None => return Err("reply has no header.command".to_owned()),
    };
    let command = match name.as_str() {
        "sendClients" => Command::SendClients(targets(args, "sendClients")?),
        "sendServers" => Command::SendServers(targets(args, "sendServers")?),
        "sendHandler" => {
            let mut t = targets(args, "sendHandler")?;
            match (t.pop(), t.is_empty()) {
                (Some(next), true) => Command::SendHandler(next),
                _ => return Err("sendHandler needs exactly one handler type".to_owned()),
            }
        }
        other => return Err(format!("unknown command {other:?}")),
    };
    Ok(HandlerReply::Success {
        command,
        kind,
        data,
    })
}

fn is_success(status: &str) -> bool {
    let s = status.trim();
    s == "0" || s.eq_ignore_ascii_case("ok") || s.eq_ignore_ascii_case("success")
}

/// Command data: one string or a list of strings.
fn targets(args: Option<Value>, command: &str) -> Result<Vec<String>, String> {
    match args {
        Some(Value::String(s)) => Ok(vec![s]),
        Some(Value::Array(items)) => items
            .into_iter()
            .map(|v| match v {
                Value::String(s) => Ok(s),
                _ => Err(format!("{command} data must be strings")),
            })
            .collect(),
        _ => Err(format!("{command} needs a string or a list of strings")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_shape() {
        let r = decode(
            br#"{"header": {"status": "ok", "command": "sendClients", "commandData": ["bob"]},
                 "payload": {"type": "upper", "data": {"text": "HI"}}}"#,
        )
        .unwrap();
        match r {
            HandlerReply::Success {
                command,
                kind,
                data,
            } => {
                assert_eq!(command, Command::SendClients(vec!["bob".into()]));
                assert_eq!(kind.as_deref(), Some("upper"));
                assert_eq!(data.get(), r#"{"text": "HI"}"#);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn original_shape() {
        let r = decode(
            br#"{"header": {"status": "0", "command": {"type": "sendServers", "data": ["10.0.0.2:2222"]}},
                 "data": [1, 2]}"#,
        )
        .unwrap();
        match r {
            HandlerReply::Success { command, data, .. } => {
                assert_eq!(command, Command::SendServers(vec!["10.0.0.2:2222".into()]));
                assert_eq!(data.get(), "[1, 2]");
            }
            other => panic!("{other:?}"),
        }
        let r = decode(
            br#"{"header": {"status": 0, "command": {"type": "sendHandler", "data": "b"}}}"#,
        )
        .unwrap();
        assert!(
            matches!(r, HandlerReply::Success { command: Command::SendHandler(h), .. } if h == "b")
        );
    }

    #[test]
    fn failures_and_invalid_replies() {
        assert!(matches!(
            decode(br#"{"header": {"status": "7"}}"#).unwrap(),
            HandlerReply::Failure { status, .. } if status == "7"
        ));
        assert!(decode(b"nope").unwrap_err().contains("not JSON"));
        assert!(
            decode(br#"{"hello": 1}"#)
                .unwrap_err()
                .contains("not a handler reply")
        );
        assert!(
            decode(br#"{"header": {"status": "0"}}"#)
                .unwrap_err()
                .contains("command")
        );
        assert!(
            decode(br#"{"header": {"status": "0", "command": "reboot"}}"#)
                .unwrap_err()
                .contains("reboot")
        );
        assert!(
            decode(br#"{"header": {"status": "0", "command": "sendClients", "commandData": [1]}}"#)
                .is_err()
        );
        assert!(decode(br#"{"header": {"status": "0", "command": "sendHandler", "commandData": ["a", "b"]}}"#)
            .is_err());
    }
}
