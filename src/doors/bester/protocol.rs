//! The Bester wire contract (seed: Bester protocol; `docs/bester.md`): the only code that
//! reads or writes a client's or a peer's JSON. A frame is decoded once into a
//! [`Message`]: a lenient [`Header`] (after the first message the seed allows a bogus
//! authentication block) and a typed [`Request`]. `payload.data` stays raw JSON, forwarded
//! byte for byte to handlers and recipients.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};

/// `payload.type` values the hub answers itself; no handler may take them.
pub const BUILTIN_TYPES: &[&str] = &[
    "builtin",
    "authenticate",
    "logout",
    "change_password",
    "close",
    "list_clients",
];

/// `header.scope`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    Client,
    Server,
    /// Anything else (refused on a first message, ignored later).
    Unknown(String),
}

/// A username and password (or a peer name and shared secret).
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<hidden>")
            .finish()
    }
}

/// What the hub reads from `header`. Ill-typed fields read as absent: only a first message
/// needs them, and the seed lets later messages carry anything there.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Header {
    pub scope: Option<Scope>,
    pub auth: Option<Credentials>,
    /// Server-to-server forwards so far (`header.hops`, an extension; 0 when absent).
    pub hops: usize,
}

/// One decoded message.
#[derive(Debug)]
pub struct Message {
    pub header: Header,
    /// Absent only on a message that just authenticates.
    pub payload: Option<Payload>,
}

/// `payload`: the request, with what the status response echoes.
#[derive(Debug)]
pub struct Payload {
    /// `payload.type` as sent.
    pub kind: String,
    /// `payload.id`, echoed in the status response.
    pub id: Option<Value>,
    pub request: Request,
}

/// What a message asks for.
#[derive(Debug)]
pub enum Request {
    /// A built-in command (`payload.type` is its name, or `builtin`).
    Builtin(Builtin),
    /// Anything else: `payload.data` for the handler of `payload.type`.
    Handler(Box<RawValue>),
}

/// Built-in commands.
#[derive(Debug, PartialEq, Eq)]
pub enum Builtin {
    /// Log in (again) as a user; without credentials, tells who is logged in.
    Authenticate(Option<Credentials>),
    /// Forget the user; the connection stays open and must authenticate again.
    Logout,
    ChangePassword {
        old: String,
        new: String,
    },
    /// Answer, then close the connection.
    Close,
    /// Usernames connected right now.
    ListClients,
}

/// Why a frame is not a message.
#[derive(Debug, PartialEq)]
pub enum DecodeError {
    /// Empty, not UTF-8 or not JSON: answered with `malformed`, then the connection closes.
    Malformed(&'static str),
    /// JSON, but not a Bester message (missing or ill-typed fields, unknown built-in):
    /// answered with `bad_request`; an authenticated connection stays open.
    Invalid {
        kind: Option<String>,
        id: Option<Value>,
        reason: String,
    },
}

impl DecodeError {
    fn invalid(kind: Option<&str>, id: Option<&Value>, reason: impl Into<String>) -> DecodeError {
        DecodeError::Invalid {
            kind: kind.map(str::to_owned),
            id: id.cloned(),
            reason: reason.into(),
        }
    }
}

#[derive(Deserialize)]
struct WireMessage {
    #[serde(default)]
    header: Option<Box<RawValue>>,
    #[serde(default)]
    payload: Option<Box<RawValue>>,
}

#[derive(Deserialize)]
struct WireHeader {
    #[serde(default)]
    authentication: Option<Value>,
    #[serde(default)]
    scope: Option<Value>,
    #[serde(default)]
    hops: Option<Value>,
}

#[derive(Deserialize)]
struct WirePayload {
    #[serde(rename = "type", default)]
    kind: Option<Value>,
    #[serde(default)]
    data: Option<Box<RawValue>>,
    /// Any JSON, `null` included (echoed as `null`); absent is `None`.
    #[serde(default, deserialize_with = "present")]
    id: Option<Value>,
}

/// A field that is present, whatever its value (`null` too).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

/// `payload.data` of `builtin` in the original server's shape:
/// `{"command": {"type": name, "args": ...}}` or `{"command": name, "args": ...}`.
#[derive(Deserialize)]
struct WireBuiltin {
    command: WireBuiltinCommand,
    #[serde(default)]
    args: Option<Value>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum WireBuiltinCommand {
    Name(String),
    Block {
        #[serde(rename = "type")]
        kind: String,
        #[serde(default)]
        args: Option<Value>,
        /// The original's documentation calls the arguments `command`.
        #[serde(default)]
        command: Option<Value>,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChangePasswordArgs {
    old_password: String,
    new_password: String,
}

/// Decodes one frame.
pub fn decode(frame: &[u8]) -> Result<Message, DecodeError> {
    if frame.is_empty() {
        return Err(DecodeError::Malformed("empty message"));
    }
    let text = std::str::from_utf8(frame).map_err(|_| DecodeError::Malformed("not UTF-8"))?;
    // Syntax first, over the whole frame, so "not JSON" and "not a message" differ.
    let raw: &RawValue =
        serde_json::from_str(text).map_err(|_| DecodeError::Malformed("not JSON"))?;
    if !raw.get().trim_start().starts_with('{') {
        return Err(DecodeError::invalid(
            None,
            None,
            "message must be a JSON object",
        ));
    }
    let wire: WireMessage = serde_json::from_str(raw.get())
        .map_err(|e| DecodeError::invalid(None, None, format!("invalid message: {e}")))?;
    let header = wire.header.as_deref().map(header).unwrap_or_default();
    let payload = match wire.payload {
        Some(p) => Some(payload(&p)?),
        None => None,
    };
    Ok(Message { header, payload })
}

fn header(raw: &RawValue) -> Header {
    let Ok(h) = serde_json::from_str::<WireHeader>(raw.get()) else {
        return Header::default();
    };
    let scope = match h.scope {
        Some(Value::String(s)) if s == "client" => Some(Scope::Client),
        Some(Value::String(s)) if s == "server" => Some(Scope::Server),
        Some(Value::String(s)) => Some(Scope::Unknown(s)),
        _ => None,
    };
    Header {
        scope,
        auth: h
            .authentication
            .and_then(|a| serde_json::from_value::<Credentials>(a).ok()),
        hops: h
            .hops
            .and_then(|h| h.as_u64())
            .and_then(|h| usize::try_from(h).ok())
            .unwrap_or(0),
    }
}

fn payload(raw: &RawValue) -> Result<Payload, DecodeError> {
    let p: WirePayload = serde_json::from_str(raw.get())
        .map_err(|_| DecodeError::invalid(None, None, "payload must be a JSON object"))?;
    let id = p.id;
    let kind = match p.kind {
        Some(Value::String(k)) if !k.is_empty() => k,
        _ => {
            return Err(DecodeError::invalid(
                None,
                id.as_ref(),
                "payload.type must be a non-empty string",
            ));
        }
    };
    let data = p.data;
    let request = if BUILTIN_TYPES.contains(&kind.as_str()) {
        let args = data
            .as_deref()
            .map(|d| serde_json::from_str::<Value>(d.get()))
            .transpose()
            .map_err(|e| DecodeError::invalid(Some(&kind), id.as_ref(), e.to_string()))?
            .unwrap_or(Value::Null);
        Request::Builtin(
            builtin(&kind, args)
                .map_err(|reason| DecodeError::invalid(Some(&kind), id.as_ref(), reason))?,
        )
    } else {
        Request::Handler(data.unwrap_or_else(null))
    };
    Ok(Payload { kind, id, request })
}

/// `null` as a raw value.
pub fn null() -> Box<RawValue> {
    RawValue::from_string("null".to_owned()).unwrap_or_else(|_| unreachable!("null is JSON"))
}

fn builtin(kind: &str, data: Value) -> Result<Builtin, String> {
    let (name, args) = if kind == "builtin" {
        let b: WireBuiltin = serde_json::from_value(data).map_err(|_| {
            "builtin needs data {\"command\": {\"type\": name, \"args\": ...}}".to_owned()
        })?;
        match b.command {
            WireBuiltinCommand::Name(name) => (name, b.args.unwrap_or(Value::Null)),
            WireBuiltinCommand::Block {
                kind,
                args,
                command,
            } => (kind, args.or(command).or(b.args).unwrap_or(Value::Null)),
        }
    } else {
        (kind.to_owned(), data)
    };
    match name.as_str() {
        "authenticate" | "login" => match args {
            Value::Null => Ok(Builtin::Authenticate(None)),
            Value::Object(ref o) if o.is_empty() => Ok(Builtin::Authenticate(None)),
            other => serde_json::from_value(other)
                .map(|c| Builtin::Authenticate(Some(c)))
                .map_err(|_| "authenticate needs {\"username\", \"password\"}".to_owned()),
        },
        "logout" => Ok(Builtin::Logout),
        "change_password" => serde_json::from_value::<ChangePasswordArgs>(args)
            .map(|a| Builtin::ChangePassword {
                old: a.old_password,
                new: a.new_password,
            })
            .map_err(|_| "change_password needs {\"old_password\", \"new_password\"}".to_owned()),
        "close" => Ok(Builtin::Close),
        "list_clients" => Ok(Builtin::ListClients),
        other => Err(format!("unknown built-in command {other:?}")),
    }
}

/// The `header.status` values the hub sends (`docs/bester.md` lists them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Done.
    Ok,
    /// A first message (or one after `logout`) without credentials or a valid scope; closes.
    AuthenticationRequired,
    /// Wrong username or password, or an unknown peer or wrong secret; closes.
    AuthenticationFailed,
    /// Too many failed logins lately from this address or for this username: refused
    /// without checking the password; `data.retry_after_ms` says when to try again.
    /// Closes.
    Throttled,
    /// The hub is overloaded: no password-hashing slot became free in time, or too many
    /// connections from this address. Try again later. Closes during login.
    Busy,
    /// `change_password` with a wrong old password.
    WrongPassword,
    /// JSON, but not a valid message or arguments.
    BadRequest,
    /// Empty, not UTF-8, not JSON, or a truncated frame; closes.
    Malformed,
    /// Length prefix over the cap; closes.
    TooLarge,
    /// No handler for `payload.type` (or for a `sendHandler` target).
    UnknownType,
    /// The handler's socket refused the connection, or it closed without replying.
    HandlerUnavailable,
    /// The handler did not reply in time.
    HandlerTimeout,
    /// The handler's reply is not a valid reply.
    HandlerInvalidReply,
    /// The handler replied with a failure status.
    HandlerError,
    /// More `sendHandler` steps (or server hops) than allowed.
    ChainTooDeep,
    /// Some `sendClients`/`sendServers` targets were not reached.
    Undelivered,
    /// The hub failed (database); logged.
    InternalError,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::AuthenticationRequired => "authentication_required",
            Status::AuthenticationFailed => "authentication_failed",
            Status::Throttled => "throttled",
            Status::Busy => "busy",
            Status::WrongPassword => "wrong_password",
            Status::BadRequest => "bad_request",
            Status::Malformed => "malformed",
            Status::TooLarge => "too_large",
            Status::UnknownType => "unknown_type",
            Status::HandlerUnavailable => "handler_unavailable",
            Status::HandlerTimeout => "handler_timeout",
            Status::HandlerInvalidReply => "handler_invalid_reply",
            Status::HandlerError => "handler_error",
            Status::ChainTooDeep => "chain_too_deep",
            Status::Undelivered => "undelivered",
            Status::InternalError => "internal_error",
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The outcome of a request: a status and the response's `payload.data`.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub status: Status,
    pub data: Value,
}

impl Outcome {
    pub fn ok(data: Value) -> Outcome {
        Outcome {
            status: Status::Ok,
            data,
        }
    }

    /// An error whose data is `{"error": message}`.
    pub fn error(status: Status, message: impl Into<String>) -> Outcome {
        Outcome {
            status,
            data: json!({ "error": message.into() }),
        }
    }

    /// An error whose data is `{"error": message, ...extra}`.
    pub fn error_with(
        status: Status,
        message: impl Into<String>,
        extra: Map<String, Value>,
    ) -> Outcome {
        let mut data = extra;
        data.insert("error".into(), Value::String(message.into()));
        Outcome {
            status,
            data: Value::Object(data),
        }
    }
}

#[derive(Serialize)]
struct OutFrame<'a, D: Serialize + ?Sized> {
    header: OutHeader<'a>,
    payload: OutPayload<'a, D>,
}

#[derive(Serialize)]
struct OutHeader<'a> {
    status: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    from: Option<&'a str>,
}

#[derive(Serialize)]
struct OutPayload<'a, D: Serialize + ?Sized> {
    #[serde(rename = "type")]
    kind: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a Value>,
    data: &'a D,
}

fn to_bytes<T: Serialize>(value: &T) -> Bytes {
    // Serializing these structs (strings, `Value`s, raw JSON) cannot fail.
    Bytes::from(serde_json::to_vec(value).unwrap_or_default())
}

/// A status response: `{"header": {"status"}, "payload": {"type", "id"?, "data"}}`.
pub fn status_frame(outcome: &Outcome, kind: &str, id: Option<&Value>) -> Bytes {
    to_bytes(&OutFrame {
        header: OutHeader {
            status: outcome.status.as_str(),
            from: None,
        },
        payload: OutPayload {
            kind,
            id,
            data: &outcome.data,
        },
    })
}

/// A message delivered by `sendClients`:
/// `{"header": {"status": "ok", "from"}, "payload": {"type", "data"}}`.
pub fn delivery_frame(from: &str, kind: &str, data: &RawValue) -> Bytes {
    to_bytes(&OutFrame {
        header: OutHeader {
            status: Status::Ok.as_str(),
            from: Some(from),
        },
        payload: OutPayload {
            kind,
            id: None,
            data,
        },
    })
}

/// The relay packet payload of a bridged delivery: `{"type", "data"}`.
pub fn bridge_payload(kind: &str, data: &RawValue) -> Option<Box<RawValue>> {
    #[derive(Serialize)]
    struct Bridged<'a> {
        #[serde(rename = "type")]
        kind: &'a str,
        data: &'a RawValue,
    }
    serde_json::value::to_raw_value(&Bridged { kind, data }).ok()
}

/// A message to a peer server (`sendServers`): the first and only message of a fresh
/// connection, so it carries the credentials.
pub fn server_frame(
    our_name: &str,
    secret: &str,
    hops: usize,
    kind: &str,
    data: &RawValue,
) -> Bytes {
    #[derive(Serialize)]
    struct Auth<'a> {
        username: &'a str,
        password: &'a str,
    }
    #[derive(Serialize)]
    struct Head<'a> {
        scope: &'a str,
        authentication: Auth<'a>,
        hops: usize,
    }
    #[derive(Serialize)]
    struct Body<'a> {
        #[serde(rename = "type")]
        kind: &'a str,
        data: &'a RawValue,
    }
    #[derive(Serialize)]
    struct Frame<'a> {
        header: Head<'a>,
        payload: Body<'a>,
    }
    to_bytes(&Frame {
        header: Head {
            scope: "server",
            authentication: Auth {
                username: our_name,
                password: secret,
            },
            hops,
        },
        payload: Body { kind, data },
    })
}

/// `header.status` of a status response (what a peer answered).
pub fn response_status(frame: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Head {
        status: String,
    }
    #[derive(Deserialize)]
    struct Resp {
        header: Head,
    }
    serde_json::from_slice::<Resp>(frame)
        .ok()
        .map(|r| r.header.status)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invalid_reason(frame: &str) -> String {
        match decode(frame.as_bytes()) {
            Err(DecodeError::Invalid { reason, .. }) => reason,
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn first_message_of_the_seed() {
        let m = decode(
            br#"{"header": {"authentication": {"username": "alice", "password": "pw"}, "scope": "client"},
                 "payload": {"type": "upper", "data": {"text": "hi", "n": 1.50}, "id": "r1"}}"#,
        )
        .unwrap();
        assert_eq!(m.header.scope, Some(Scope::Client));
        assert_eq!(m.header.auth.as_ref().unwrap().username, "alice");
        let p = m.payload.unwrap();
        assert_eq!(p.kind, "upper");
        assert_eq!(p.id, Some(json!("r1")));
        match p.request {
            // Forwarded byte for byte (1.50 stays 1.50).
            Request::Handler(d) => assert_eq!(d.get(), r#"{"text": "hi", "n": 1.50}"#),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn later_messages_may_carry_a_bogus_header() {
        let m = decode(br#"{"header": {"authentication": 7}, "payload": {"type": "x"}}"#).unwrap();
        assert_eq!(m.header, Header::default());
        assert!(matches!(m.payload.unwrap().request, Request::Handler(d) if d.get() == "null"));
        let m = decode(br#"{"payload": {"type": "x", "data": 1}}"#).unwrap();
        assert!(m.header.auth.is_none());
    }

    #[test]
    fn builtins_in_both_shapes() {
        let b = |s: &str| match decode(s.as_bytes()).unwrap().payload.unwrap().request {
            Request::Builtin(b) => b,
            other => panic!("{other:?}"),
        };
        assert_eq!(b(r#"{"payload": {"type": "close"}}"#), Builtin::Close);
        assert_eq!(
            b(r#"{"payload": {"type": "builtin", "data": {"command": {"type": "close"}}}}"#),
            Builtin::Close
        );
        assert_eq!(
            b(r#"{"payload": {"type": "builtin", "data": {"command": "list_clients"}}}"#),
            Builtin::ListClients
        );
        assert_eq!(
            b(
                r#"{"payload": {"type": "change_password", "data": {"old_password": "a", "new_password": "b"}}}"#
            ),
            Builtin::ChangePassword {
                old: "a".into(),
                new: "b".into()
            }
        );
        assert_eq!(
            b(
                r#"{"payload": {"type": "builtin", "data": {"command": {"type": "authenticate", "args": {"username": "u", "password": "p"}}}}}"#
            ),
            Builtin::Authenticate(Some(Credentials {
                username: "u".into(),
                password: "p".into()
            }))
        );
        assert_eq!(
            b(r#"{"payload": {"type": "authenticate"}}"#),
            Builtin::Authenticate(None)
        );
    }

    #[test]
    fn errors() {
        let malformed = |f: &[u8]| match decode(f) {
            Err(DecodeError::Malformed(what)) => what,
            other => panic!("expected Malformed, got {other:?}"),
        };
        assert_eq!(malformed(b""), "empty message");
        assert_eq!(malformed(b"\xff\xfe"), "not UTF-8");
        assert_eq!(malformed(b"{\"header\":"), "not JSON");
        assert_eq!(malformed(b"{} x"), "not JSON");
        assert!(invalid_reason("[1, 2]").contains("object"));
        assert!(invalid_reason(r#"{"payload": 3}"#).contains("payload"));
        assert!(invalid_reason(r#"{"payload": {"type": 3}}"#).contains("type"));
        assert!(
            invalid_reason(r#"{"payload": {"type": "change_password", "data": {}}}"#)
                .contains("change_password")
        );
        assert!(
            invalid_reason(r#"{"payload": {"type": "builtin", "data": {"command": "reboot"}}}"#)
                .contains("reboot")
        );
        match decode(br#"{"payload": {"type": "close", "id": 9, "data": {"x": }}}"#) {
            Err(DecodeError::Malformed(_)) => {}
            other => panic!("{other:?}"),
        }
        match decode(br#"{"payload": {"type": "logout!", "id": 9, "data": 1}, "x": [}"#) {
            Err(DecodeError::Malformed(_)) => {}
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_null_id_is_an_id_and_is_echoed() {
        match decode(br#"{"payload": {"type": "change_password", "id": null, "data": 1}}"#) {
            Err(DecodeError::Invalid { id, .. }) => assert_eq!(id, Some(Value::Null)),
            other => panic!("{other:?}"),
        }
        let out = status_frame(&Outcome::ok(json!({})), "close", Some(&Value::Null));
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            v["payload"],
            json!({"type": "close", "id": null, "data": {}})
        );
        match decode(br#"{"payload": {"type": "change_password", "data": 1}}"#) {
            Err(DecodeError::Invalid { id, .. }) => assert_eq!(id, None),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn invalid_requests_echo_type_and_id() {
        match decode(br#"{"payload": {"type": "change_password", "id": 4, "data": 1}}"#) {
            Err(DecodeError::Invalid { kind, id, .. }) => {
                assert_eq!(kind.as_deref(), Some("change_password"));
                assert_eq!(id, Some(json!(4)));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn frames() {
        let out = status_frame(&Outcome::ok(json!({"a": 1})), "upper", Some(&json!("r1")));
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            v,
            json!({"header": {"status": "ok"}, "payload": {"type": "upper", "id": "r1", "data": {"a": 1}}})
        );
        let data = RawValue::from_string(r#"{"z": 1, "a": 2}"#.into()).unwrap();
        let out = delivery_frame("alice", "upper", &data);
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            r#"{"header":{"status":"ok","from":"alice"},"payload":{"type":"upper","data":{"z": 1, "a": 2}}}"#
        );
        let out = server_frame("a", "s", 1, "t", &data);
        let m = decode(&out).unwrap();
        assert_eq!(m.header.scope, Some(Scope::Server));
        assert_eq!(m.header.hops, 1);
        assert_eq!(
            response_status(br#"{"header": {"status": "ok"}}"#).as_deref(),
            Some("ok")
        );
    }
}
