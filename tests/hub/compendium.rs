//! The Compendium relay `/compendium`: INIT/INITRESP, ROUTE/DELIVER, ERR codes (as
//! documented at the top of src/transport/compendium.rs), and the admin view.

use reqwest::Method;
use serde_json::{Value, json};

use crate::common::{TestClient, TestHub};
use crate::support::eventually;

fn is_address(a: &Value) -> bool {
    a.as_str().is_some_and(|s| {
        s.len() == 32
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// Sends INIT and returns the address of the INITRESP, checking its exact shape.
async fn init(c: &mut TestClient) -> String {
    let r = c.request(json!({"type": "INIT"})).await;
    assert_eq!(r.as_object().map(|o| o.len()), Some(2), "{r}");
    assert_eq!(r["type"], "INITRESP", "{r}");
    assert!(is_address(&r["EpheWssAddr"]), "{r}");
    r["EpheWssAddr"].as_str().unwrap().to_owned()
}

fn route(addr: &str, msg: Value) -> Value {
    json!({"type": "ROUTE", "EpheWssAddr": addr, "msg": msg})
}

/// Asserts `r` is `{"type":"ERR","errCode":code,"errMsg":<non-empty>}` and nothing else.
fn assert_err(r: &Value, code: u16, what: &str) {
    assert_eq!(r.as_object().map(|o| o.len()), Some(3), "{what} -> {r}");
    assert_eq!(r["type"], "ERR", "{what} -> {r}");
    assert_eq!(r["errCode"], code, "{what} -> {r}");
    assert!(
        r["errMsg"].as_str().is_some_and(|m| !m.is_empty()),
        "{what} -> {r}"
    );
}

/// Asserts the hub sent nothing to `c` since its last frame: an INIT now must be answered
/// by the very next frame (frames on one connection are in order).
async fn assert_nothing_pending(c: &mut TestClient) {
    let r = c.request(json!({"type": "INIT"})).await;
    assert_eq!(r["type"], "INITRESP", "unexpected frame {r}");
}

/// Waits until the admin API no longer lists a Compendium connection holding `addr`.
async fn wait_address_released(hub: &TestHub, addr: &str) {
    eventually(&format!("{addr} released"), async || {
        let (status, body) = hub.admin(Method::GET, "/api/devices", None).await;
        assert_eq!(status, 200);
        let held = body["devices"]
            .as_array()
            .expect("devices")
            .iter()
            .any(|d| d["compendium_address"] == addr);
        (!held).then_some(())
    })
    .await
}

#[tokio::test]
async fn init_gives_a_fresh_32_hex_digit_address_per_connection() {
    let hub = TestHub::start().await;
    let mut a = hub.compendium_ws().await;
    let mut b = hub.compendium_ws().await;
    let addr_a = init(&mut a).await;
    let addr_b = init(&mut b).await;
    assert_ne!(addr_a, addr_b);
}

#[tokio::test]
async fn route_delivers_to_the_holder_and_the_sender_gets_nothing() {
    let hub = TestHub::start().await;
    let mut pc = hub.compendium_ws().await;
    let mut phone = hub.compendium_ws().await;
    let addr = init(&mut phone).await;

    // ROUTE needs no INIT of the sender.
    let msg = json!({"hello": "phone", "nested": {"n": [1, 2, 3]}, "empty": {}});
    pc.send(route(&addr, msg.clone())).await;
    assert_eq!(phone.recv().await, json!({"type": "DELIVER", "msg": msg}));
    assert_nothing_pending(&mut pc).await;

    // Addresses are accepted in either case.
    pc.send(route(&addr.to_ascii_uppercase(), json!({"n": 2})))
        .await;
    assert_eq!(
        phone.recv().await,
        json!({"type": "DELIVER", "msg": {"n": 2}})
    );
    assert_nothing_pending(&mut pc).await;

    // Both ways: the phone answers the PC at its address.
    let pc_addr = init(&mut pc).await;
    phone.send(route(&pc_addr, json!({"reply": true}))).await;
    assert_eq!(
        pc.recv().await,
        json!({"type": "DELIVER", "msg": {"reply": true}})
    );
}

#[tokio::test]
async fn a_second_init_replaces_the_address() {
    let hub = TestHub::start().await;
    let mut sender = hub.compendium_ws().await;
    let mut holder = hub.compendium_ws().await;
    let old = init(&mut holder).await;
    let new = init(&mut holder).await;
    assert_ne!(old, new);

    let r = sender.request(route(&old, json!({"to": "old"}))).await;
    assert_err(&r, 404, "ROUTE to the replaced address");
    sender.send(route(&new, json!({"to": "new"}))).await;
    assert_eq!(
        holder.recv().await,
        json!({"type": "DELIVER", "msg": {"to": "new"}})
    );
}

#[tokio::test]
async fn route_to_an_address_whose_holder_left_is_404() {
    let hub = TestHub::start().await;
    let mut sender = hub.compendium_ws().await;
    let mut holder = hub.compendium_ws().await;
    let addr = init(&mut holder).await;
    holder.hang_up().await;
    wait_address_released(&hub, &addr).await;
    let r = sender.request(route(&addr, json!({"x": 1}))).await;
    assert_err(&r, 404, "ROUTE to a departed holder");

    // Never allocated: 404 as well.
    let r = sender
        .request(route("0123456789abcdef0123456789abcdef", json!({})))
        .await;
    assert_err(&r, 404, "ROUTE to an unknown address");
}

#[tokio::test]
async fn invalid_messages_get_err_and_the_connection_stays_open() {
    let hub = TestHub::start().await;
    let mut c = hub.compendium_ws().await;
    let mut holder = hub.compendium_ws().await;
    let addr = init(&mut holder).await;
    let cases: Vec<(String, u16)> = vec![
        ("not json".into(), 400),
        ("{\"type\": \"INIT\"".into(), 400),
        ("[1]".into(), 400),
        ("\"INIT\"".into(), 400),
        ("null".into(), 400),
        ("{}".into(), 400),
        (json!({"msg": {}}).to_string(), 400),
        (json!({"type": 5}).to_string(), 400),
        (json!({"type": null}).to_string(), 400),
        (json!({"type": "ROUTE", "msg": {}}).to_string(), 400),
        (
            json!({"type": "ROUTE", "EpheWssAddr": 5, "msg": {}}).to_string(),
            400,
        ),
        (
            json!({"type": "ROUTE", "EpheWssAddr": "xyz", "msg": {}}).to_string(),
            400,
        ),
        (
            json!({"type": "ROUTE", "EpheWssAddr": format!("{}0", addr), "msg": {}}).to_string(),
            400,
        ),
        (
            json!({"type": "ROUTE", "EpheWssAddr": "g".repeat(32), "msg": {}}).to_string(),
            400,
        ),
        (
            json!({"type": "ROUTE", "EpheWssAddr": addr}).to_string(),
            400,
        ),
        (
            json!({"type": "ROUTE", "EpheWssAddr": addr, "msg": "hi"}).to_string(),
            400,
        ),
        (
            json!({"type": "ROUTE", "EpheWssAddr": addr, "msg": [1]}).to_string(),
            400,
        ),
        (
            json!({"type": "ROUTE", "EpheWssAddr": addr, "msg": null}).to_string(),
            400,
        ),
        (json!({"type": "DELIVER", "msg": {}}).to_string(), 405),
        (
            json!({"type": "INITRESP", "EpheWssAddr": addr}).to_string(),
            405,
        ),
        (json!({"type": "HELLO"}).to_string(), 405),
        (json!({"type": "init"}).to_string(), 405),
    ];
    for (text, code) in &cases {
        c.send_plain(text).await;
        let r = c.recv().await;
        assert_err(&r, *code, text);
    }
    // Nothing reached the holder, and the connection still works.
    assert_nothing_pending(&mut holder).await;
    let holder_addr = init(&mut holder).await;
    c.send(route(&holder_addr, json!({"still": "open"}))).await;
    assert_eq!(
        holder.recv().await,
        json!({"type": "DELIVER", "msg": {"still": "open"}})
    );
    let own = init(&mut c).await;
    assert_ne!(own, holder_addr);
}

#[tokio::test]
async fn oversize_messages_get_err_413_and_the_connection_stays_open() {
    let hub = TestHub::start_with(|c| c.compendium.max_bytes = 1000).await;
    let mut c = hub.compendium_ws().await;
    let mut holder = hub.compendium_ws().await;
    let addr = init(&mut holder).await;

    let sized = |len: usize| {
        let base = route(&addr, json!({"p": ""})).to_string().len();
        let m = route(&addr, json!({"p": "x".repeat(len - base)}));
        assert_eq!(m.to_string().len(), len);
        m
    };
    // Exactly the limit: delivered.
    let at_limit = sized(1000);
    c.send(at_limit.clone()).await;
    assert_eq!(
        holder.recv().await,
        json!({"type": "DELIVER", "msg": at_limit["msg"]})
    );
    // One byte more, and well over: ERR 413, not delivered.
    for len in [1001, 1900] {
        let r = c.request(sized(len)).await;
        assert_err(&r, 413, &format!("{len} bytes"));
    }
    // Also when the oversize message is not even JSON.
    c.send_plain(&"z".repeat(1500)).await;
    assert_err(&c.recv().await, 413, "1500 bytes of garbage");
    assert_nothing_pending(&mut holder).await;
    let holder_addr = init(&mut holder).await;
    c.send(route(&holder_addr, json!({"small": 1}))).await;
    assert_eq!(
        holder.recv().await,
        json!({"type": "DELIVER", "msg": {"small": 1}})
    );
}

#[tokio::test]
async fn client_sent_err_and_error_get_no_answer() {
    let hub = TestHub::start().await;
    let mut c = hub.compendium_ws().await;
    c.send(json!({"type": "ERR", "errCode": 500, "errMsg": "client trouble"}))
        .await;
    c.send(json!({"type": "ERROR", "errCode": 0, "errMsg": ""}))
        .await;
    // The next frame is the answer to this INIT: nothing was sent for ERR/ERROR.
    assert_nothing_pending(&mut c).await;
}

#[tokio::test]
async fn admin_devices_shows_compendium_connections() {
    let hub = TestHub::start().await;
    let mut c = hub.compendium_ws().await;
    let addr = init(&mut c).await;
    let (status, body) = hub.admin(Method::GET, "/api/devices", None).await;
    assert_eq!(status, 200);
    let devices = body["devices"].as_array().expect("devices");
    let view = devices
        .iter()
        .find(|d| d["compendium_address"] == addr.as_str())
        .unwrap_or_else(|| panic!("no connection with {addr}: {body}"));
    assert_eq!(view["door"], "compendium");
    assert_eq!(view["relay_name"], Value::Null);

    // After a second INIT the admin view shows the new address.
    let new = init(&mut c).await;
    let (_, body) = hub.admin(Method::GET, "/api/devices", None).await;
    let addrs: Vec<&Value> = body["devices"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["door"] == "compendium")
        .map(|d| &d["compendium_address"])
        .collect();
    assert_eq!(addrs, vec![&json!(new)]);
}
