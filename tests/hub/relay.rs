//! The device relay: the Phoenix `relay` topic, the raw `/relay` door, packets between the
//! two, back-pressure, and what administrators see (admin API, `device_overview`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use reqwest::Method;
use serde_json::{Value, json};
use tokio::time::{Instant, sleep, timeout};
use tokio_tungstenite::tungstenite::Message;

use crate::common::{TestClient, TestHub, reply_of};
use crate::support::eventually;

/// Upper bound for anything that happens "eventually" (generous: CI machines are slow).
const LIMIT: Duration = Duration::from_secs(10);

fn server(payload: Value) -> Value {
    json!({"target": "server", "payload": payload})
}

fn fail(message: &str) -> Value {
    json!({"success": false, "error_message": message})
}

/// A packet to `target` whose JSON text is exactly `len` characters.
fn packet_of_len(target: &str, len: usize) -> Value {
    let base = json!({"target": target, "payload": ""}).to_string().len();
    let p = json!({"target": target, "payload": "x".repeat(len - base)});
    assert_eq!(p.to_string().chars().count(), len);
    p
}

/// A raw `/relay` device registered as `name` (with the explicit `register` command).
async fn raw_device(hub: &TestHub, name: &str) -> TestClient {
    let mut c = hub.relay_ws().await;
    let r = c
        .request(server(json!({"command": "register", "device_name": name})))
        .await;
    assert_eq!(r, json!({"success": true}), "register {name}");
    c
}

/// A Phoenix device named `name` joined to `relay` (join_ref "1") with `params`.
async fn phx_device(hub: &TestHub, name: &str, params: Value) -> TestClient {
    let mut c = hub.client(name).await;
    let r = c.join("relay", "1", params).await;
    assert_eq!(
        r,
        json!(["1", "1", "relay", "phx_reply", {"status": "ok", "response": {}}])
    );
    c
}

/// An event on the `relay` channel joined with join_ref "1": (status, response).
async fn phx(c: &mut TestClient, r: &str, event: &str, payload: Value) -> (String, Value) {
    let f = c.push("1", r, "relay", event, payload).await;
    assert_eq!((&f[0], &f[2]), (&json!("1"), &json!("relay")), "{f}");
    let (status, response) = reply_of(&f);
    (status.to_owned(), response.clone())
}

async fn phx_devices(c: &mut TestClient) -> Value {
    let (status, resp) = phx(c, "gd", "get_devices", json!({})).await;
    assert_eq!(status, "ok", "{resp}");
    assert_eq!(resp.as_object().map(|o| o.len()), Some(1), "{resp}");
    resp["devices"].clone()
}

async fn raw_devices(c: &mut TestClient) -> Value {
    let r = c.request(server(json!({"command": "get_devices"}))).await;
    assert_eq!(r["success"], true, "{r}");
    r["response"].clone()
}

/// Asks over the raw door until `get_devices` equals `want` (bounded).
async fn raw_devices_become(raw: &mut TestClient, want: Value) {
    let what = format!("get_devices becomes {want}");
    eventually(&what, async || {
        (raw_devices(raw).await == want).then_some(())
    })
    .await
}

/// Asks over the Phoenix `relay` topic until `get_devices` equals `want` (bounded).
async fn phx_devices_become(c: &mut TestClient, want: Value) {
    let what = format!("get_devices becomes {want}");
    eventually(&what, async || (phx_devices(c).await == want).then_some(())).await
}

/// The admin API's live connections.
async fn admin_devices(hub: &TestHub) -> Vec<Value> {
    let (status, body) = hub.admin(Method::GET, "/api/devices", None).await;
    assert_eq!(status, 200, "{body}");
    body["devices"].as_array().expect("devices array").clone()
}

// ---------------------------------------------------------------------------------------
// Phoenix `relay` topic
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn phoenix_join_registers_the_socket_name_and_get_devices_lists_it() {
    let hub = TestHub::start().await;
    let mut a = phx_device(
        &hub,
        "kitchen-lamp",
        json!({"description": "Lamp", "version": "2.1", "interface": "https://x/if"}),
    )
    .await;
    assert_eq!(phx_devices(&mut a).await, json!(["kitchen-lamp"]));
    let mut b = phx_device(&hub, "hall-switch", json!({})).await;
    // Sorted, every registered device, seen the same from both members.
    assert_eq!(
        phx_devices(&mut b).await,
        json!(["hall-switch", "kitchen-lamp"])
    );
    assert_eq!(
        phx_devices(&mut a).await,
        json!(["hall-switch", "kitchen-lamp"])
    );
    // A socket that has not joined `relay` is not registered.
    let mut bystander = hub.client("bystander").await;
    let hb = bystander
        .push("h", "h", "phoenix", "heartbeat", json!({}))
        .await;
    assert_eq!(reply_of(&hb).0, "ok");
    assert_eq!(
        phx_devices(&mut a).await,
        json!(["hall-switch", "kitchen-lamp"])
    );
}

#[tokio::test]
async fn phoenix_join_with_null_payload_is_accepted() {
    let hub = TestHub::start().await;
    let mut c = hub.client("nullparams").await;
    let r = c.join("relay", "1", Value::Null).await;
    assert_eq!(reply_of(&r), ("ok", &json!({})));
    assert_eq!(phx_devices(&mut c).await, json!(["nullparams"]));
}

#[tokio::test]
async fn phoenix_get_device_info_returns_metadata_or_unknown_device() {
    let hub = TestHub::start().await;
    let _a = phx_device(
        &hub,
        "led_strip",
        json!({"description": "A simple commandable LED strip", "version": "1.0.1",
               "interface": "https://example.com/led.md"}),
    )
    .await;
    let mut b = phx_device(&hub, "asker", json!({})).await;

    let (status, resp) = phx(
        &mut b,
        "2",
        "get_device_info",
        json!({"device_name": "led_strip"}),
    )
    .await;
    assert_eq!(status, "ok");
    assert_eq!(
        resp,
        json!({"name": "led_strip", "description": "A simple commandable LED strip",
               "version": "1.0.1", "interface": "https://example.com/led.md"})
    );

    // Joined without params: every field is present and null.
    let (status, resp) = phx(
        &mut b,
        "3",
        "get_device_info",
        json!({"device_name": "asker"}),
    )
    .await;
    assert_eq!(status, "ok");
    assert_eq!(
        resp,
        json!({"name": "asker", "description": null, "version": null, "interface": null})
    );

    // Names are case-insensitive; the answer carries the stored (lower-case) name.
    let (status, resp) = phx(
        &mut b,
        "4",
        "get_device_info",
        json!({"device_name": "LED_Strip"}),
    )
    .await;
    assert_eq!(status, "ok");
    assert_eq!(resp["name"], "led_strip");

    let (status, resp) = phx(
        &mut b,
        "5",
        "get_device_info",
        json!({"device_name": "ghost"}),
    )
    .await;
    assert_eq!(
        (status.as_str(), resp),
        ("error", json!({"reason": "unknown device"}))
    );
}

#[tokio::test]
async fn phoenix_send_pushes_a_packet_to_the_target_and_replies_ok() {
    let hub = TestHub::start().await;
    let mut switch = phx_device(&hub, "smart_switch_3", json!({})).await;
    // The target joins with a different join_ref: the push must carry the target's own.
    let mut strip = hub.client("led_strip").await;
    let r = strip.join("relay", "7", json!({})).await;
    assert_eq!(reply_of(&r), ("ok", &json!({})));

    let payload = json!({"command": "on", "color": [128, 0, 255]});
    let f = switch
        .push(
            "1",
            "2",
            "relay",
            "send",
            json!({"target": "led_strip", "payload": payload}),
        )
        .await;
    assert_eq!(
        f,
        json!(["1", "2", "relay", "phx_reply", {"status": "ok", "response": {}}])
    );
    let push = strip.recv().await;
    assert_eq!(
        push,
        json!(["7", null, "relay", "packet", {"sender": "smart_switch_3", "payload": payload}])
    );

    // Any JSON payload is forwarded as is: strings, numbers, arrays, null.
    for (i, p) in [json!("hi"), json!(42), json!([1, {"a": null}]), Value::Null]
        .into_iter()
        .enumerate()
    {
        let (status, _) = phx(
            &mut switch,
            &format!("p{i}"),
            "send",
            json!({"target": "led_strip", "payload": p}),
        )
        .await;
        assert_eq!(status, "ok");
        let push = strip.recv().await;
        assert_eq!(push[3], "packet");
        assert_eq!(push[4], json!({"sender": "smart_switch_3", "payload": p}));
    }
    // The sender receives nothing besides its replies.
    switch.expect_silence(100).await;
}

#[tokio::test]
async fn phoenix_send_to_an_unknown_target_is_refused() {
    let hub = TestHub::start().await;
    let mut a = phx_device(&hub, "lonely", json!({})).await;
    // A connected Phoenix device that has not joined `relay` is not a relay target either.
    let mut other = hub.client("not-on-relay").await;
    let hb = other
        .push("h", "h", "phoenix", "heartbeat", json!({}))
        .await;
    assert_eq!(reply_of(&hb).0, "ok");
    for target in ["nobody", "not-on-relay"] {
        let f = a
            .push(
                "1",
                "2",
                "relay",
                "send",
                json!({"target": target, "payload": {}}),
            )
            .await;
        assert_eq!(
            f,
            json!(["1", "2", "relay", "phx_reply",
                   {"status": "error", "response": {"reason": "unknown target"}}])
        );
    }
    other.expect_silence(100).await;
}

#[tokio::test]
async fn phoenix_send_of_1024_chars_or_more_is_refused() {
    let hub = TestHub::start().await;
    let mut a = phx_device(&hub, "a", json!({})).await;
    let mut b = phx_device(&hub, "b", json!({})).await;

    // 1023 characters: delivered.
    let small = packet_of_len("b", 1023);
    let (status, resp) = phx(&mut a, "2", "send", small.clone()).await;
    assert_eq!((status.as_str(), &resp), ("ok", &json!({})));
    let push = b.recv().await;
    assert_eq!(push[4], json!({"sender": "a", "payload": small["payload"]}));

    // 1024 and more: refused, and not delivered.
    for len in [1024, 5000] {
        let (status, resp) = phx(&mut a, "3", "send", packet_of_len("b", len)).await;
        assert_eq!(
            (status.as_str(), resp),
            ("error", json!({"reason": "packet too large"}))
        );
    }
    // The channel still works, and the next thing b receives is this packet.
    let (status, _) = phx(
        &mut a,
        "4",
        "send",
        json!({"target": "b", "payload": "after"}),
    )
    .await;
    assert_eq!(status, "ok");
    let push = b.recv().await;
    assert_eq!(push[4], json!({"sender": "a", "payload": "after"}));
}

#[tokio::test]
async fn relay_max_packet_can_be_configured_lower_on_both_doors() {
    let hub = TestHub::start_with(|c| c.relay.max_packet = 64).await;
    let mut a = phx_device(&hub, "a", json!({})).await;
    let mut b = phx_device(&hub, "b", json!({})).await;
    let (status, _) = phx(&mut a, "2", "send", packet_of_len("b", 63)).await;
    assert_eq!(status, "ok");
    assert_eq!(b.recv().await[3], "packet");
    let (status, resp) = phx(&mut a, "3", "send", packet_of_len("b", 64)).await;
    assert_eq!(
        (status.as_str(), resp),
        ("error", json!({"reason": "packet too large"}))
    );

    // The raw door measures the whole packet against the same limit (the register packet
    // itself must fit: the seed's short form, without `command`).
    let mut raw = hub.relay_ws().await;
    let r = raw.request(server(json!({"device_name": "r"}))).await;
    assert_eq!(r, json!({"success": true}));
    let r = raw.request(packet_of_len("b", 63)).await;
    assert_eq!(r, json!({"success": true}));
    assert_eq!(b.recv().await[4]["sender"], "r");
    let r = raw.request(packet_of_len("b", 64)).await;
    assert_eq!(r, fail("packet too large"));
    b.expect_silence(100).await;
}

#[tokio::test]
async fn phoenix_register_may_only_register_itself() {
    let hub = TestHub::start().await;
    let _victim = phx_device(&hub, "victim", json!({"description": "original"})).await;
    let mut me = phx_device(&hub, "me", json!({})).await;

    let (status, resp) = phx(
        &mut me,
        "2",
        "register",
        json!({"device_name": "victim", "description": "hijacked"}),
    )
    .await;
    assert_eq!(
        (status.as_str(), resp),
        (
            "error",
            json!({"reason": "a device may only register itself"})
        )
    );
    let (_, info) = phx(
        &mut me,
        "3",
        "get_device_info",
        json!({"device_name": "victim"}),
    )
    .await;
    assert_eq!(info["description"], "original");

    // Registering itself (any case) updates its metadata.
    let (status, resp) = phx(
        &mut me,
        "4",
        "register",
        json!({"device_name": "ME", "description": "new", "version": "9"}),
    )
    .await;
    assert_eq!((status.as_str(), resp), ("ok", json!({})));
    let (_, info) = phx(
        &mut me,
        "5",
        "get_device_info",
        json!({"device_name": "me"}),
    )
    .await;
    assert_eq!(
        info,
        json!({"name": "me", "description": "new", "version": "9", "interface": null})
    );
    assert_eq!(phx_devices(&mut me).await, json!(["me", "victim"]));
}

#[tokio::test]
async fn phoenix_unregister_makes_the_device_unreachable() {
    let hub = TestHub::start().await;
    let mut a = phx_device(&hub, "a", json!({})).await;
    let mut b = phx_device(&hub, "b", json!({})).await;

    let (status, resp) = phx(&mut b, "2", "unregister", json!({})).await;
    assert_eq!((status.as_str(), resp), ("ok", json!({})));
    assert_eq!(phx_devices(&mut a).await, json!(["a"]));
    let (status, resp) = phx(&mut a, "3", "send", json!({"target": "b", "payload": 1})).await;
    assert_eq!(
        (status.as_str(), resp),
        ("error", json!({"reason": "unknown target"}))
    );
    let (status, resp) = phx(&mut a, "4", "get_device_info", json!({"device_name": "b"})).await;
    assert_eq!(
        (status.as_str(), resp),
        ("error", json!({"reason": "unknown device"}))
    );
    b.expect_silence(100).await;

    // Registering again makes it reachable again.
    let (status, _) = phx(&mut b, "5", "register", json!({})).await;
    assert_eq!(status, "ok");
    let (status, _) = phx(&mut a, "6", "send", json!({"target": "b", "payload": 2})).await;
    assert_eq!(status, "ok");
    assert_eq!(
        b.recv().await,
        json!(["1", null, "relay", "packet", {"sender": "a", "payload": 2}])
    );
}

#[tokio::test]
async fn leaving_relay_unregisters_the_device() {
    let hub = TestHub::start().await;
    let mut a = phx_device(&hub, "a", json!({})).await;
    let mut b = phx_device(&hub, "b", json!({})).await;
    assert_eq!(phx_devices(&mut a).await, json!(["a", "b"]));

    b.send(json!(["1", "9", "relay", "phx_leave", {}])).await;
    let r = b.recv_reply("9").await;
    assert_eq!(reply_of(&r).0, "ok");
    // The leave has been processed once its reply is out: b is gone at once.
    assert_eq!(phx_devices(&mut a).await, json!(["a"]));
    let (status, resp) = phx(&mut a, "2", "send", json!({"target": "b", "payload": {}})).await;
    assert_eq!(
        (status.as_str(), resp),
        ("error", json!({"reason": "unknown target"}))
    );
}

#[tokio::test]
async fn disconnecting_unregisters_the_device() {
    let hub = TestHub::start().await;
    let mut a = phx_device(&hub, "a", json!({})).await;
    let b = phx_device(&hub, "b", json!({})).await;
    assert_eq!(phx_devices(&mut a).await, json!(["a", "b"]));
    b.hang_up().await;
    phx_devices_become(&mut a, json!(["a"])).await;
    let (status, resp) = phx(&mut a, "2", "send", json!({"target": "b", "payload": {}})).await;
    assert_eq!(
        (status.as_str(), resp),
        ("error", json!({"reason": "unknown target"}))
    );
    // The name is free again.
    let _b2 = phx_device(&hub, "b", json!({})).await;
    assert_eq!(phx_devices(&mut a).await, json!(["a", "b"]));
}

#[tokio::test]
async fn phoenix_join_is_refused_when_a_raw_device_holds_the_name() {
    let hub = TestHub::start().await;
    let _raw = raw_device(&hub, "taken").await;
    let mut c = hub.client("taken").await;
    let r = c.join("relay", "1", json!({})).await;
    assert_eq!(
        r,
        json!(["1", "1", "relay", "phx_reply", {"status": "error", "response": {"reason": "name taken"}}])
    );
}

// ---------------------------------------------------------------------------------------
// Raw `/relay`
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn raw_register_with_and_without_the_command_key() {
    let hub = TestHub::start().await;
    let mut a = hub.relay_ws().await;
    let r = a
        .request(server(
            json!({"command": "register", "device_name": "smart_switch_3"}),
        ))
        .await;
    assert_eq!(r, json!({"success": true}));

    // The seed's own example: no `command`, a bare `device_name` registers.
    let mut b = hub.relay_ws().await;
    let r = b
        .request(server(json!({"device_name": "led_strip",
                               "description": "A simple commandable LED strip.",
                               "version": "1.0.1"})))
        .await;
    assert_eq!(r, json!({"success": true}));

    let r = a.request(server(json!({"command": "get_devices"}))).await;
    assert_eq!(
        r,
        json!({"success": true, "response": ["led_strip", "smart_switch_3"]})
    );
    let r = a
        .request(server(
            json!({"command": "get_device_info", "device_name": "led_strip"}),
        ))
        .await;
    assert_eq!(
        r,
        json!({"success": true, "response": {"name": "led_strip",
               "description": "A simple commandable LED strip.", "version": "1.0.1",
               "interface": null}})
    );
}

#[tokio::test]
async fn raw_names_are_case_insensitive() {
    let hub = TestHub::start().await;
    let mut strip = hub.relay_ws().await;
    let r = strip
        .request(server(
            json!({"command": "register", "device_name": "LED_Strip"}),
        ))
        .await;
    assert_eq!(r, json!({"success": true}));
    let mut switch = raw_device(&hub, "Smart_Switch_3").await;

    assert_eq!(
        raw_devices(&mut switch).await,
        json!(["led_strip", "smart_switch_3"])
    );
    for target in ["led_strip", "LED_STRIP", "LED_Strip"] {
        let r = switch
            .request(json!({"target": target, "payload": {"command": "on"}}))
            .await;
        assert_eq!(r, json!({"success": true}), "target {target}");
        assert_eq!(
            strip.recv().await,
            json!({"sender": "smart_switch_3", "payload": {"command": "on"}})
        );
    }
    // The same name in another case is the same name: taken.
    let mut other = hub.relay_ws().await;
    let r = other
        .request(server(
            json!({"command": "register", "device_name": "led_STRIP"}),
        ))
        .await;
    assert_eq!(r, fail("name taken"));
}

#[tokio::test]
async fn raw_server_is_a_reserved_name_and_names_follow_the_socket_name_rule() {
    let hub = TestHub::start().await;
    let mut c = hub.relay_ws().await;
    for name in [
        "server",
        "SERVER",
        "Server",
        "bad name!",
        "",
        &"n".repeat(65),
    ] {
        let r = c
            .request(server(json!({"command": "register", "device_name": name})))
            .await;
        assert_eq!(r, fail("invalid device_name"), "name {name:?}");
    }
    assert_eq!(raw_devices(&mut c).await, json!([]));
    // The connection survives and can still register a valid name.
    let r = c
        .request(server(
            json!({"command": "register", "device_name": "ok.name:1-x_y"}),
        ))
        .await;
    assert_eq!(r, json!({"success": true}));
    assert_eq!(raw_devices(&mut c).await, json!(["ok.name:1-x_y"]));
}

#[tokio::test]
async fn raw_taken_name_is_refused_and_force_takes_it_over() {
    let hub = TestHub::start().await;
    let mut old = raw_device(&hub, "lamp").await;
    let mut sender = raw_device(&hub, "sender").await;

    let mut new = hub.relay_ws().await;
    let r = new
        .request(server(
            json!({"command": "register", "device_name": "lamp"}),
        ))
        .await;
    assert_eq!(r, fail("name taken"));
    // Refused: the old holder still receives the packets.
    let r = sender
        .request(json!({"target": "lamp", "payload": 1}))
        .await;
    assert_eq!(r, json!({"success": true}));
    assert_eq!(old.recv().await, json!({"sender": "sender", "payload": 1}));

    let r = new
        .request(server(json!({"command": "register", "device_name": "lamp",
                                "force": true, "description": "new lamp"})))
        .await;
    assert_eq!(r, json!({"success": true}));
    // The old holder is told, then dropped: its socket is closed (1001).
    assert_eq!(
        old.recv().await,
        fail("name taken over by another connection")
    );
    let close = old.expect_close().await.expect("a close frame");
    assert_eq!(u16::from(close.code), 1001);

    // Wait until the old connection is gone from the hub, so its clean-up has run and
    // cannot have taken the name away from the new holder.
    eventually("the old connection is no longer listed", async || {
        let relay_conns = admin_devices(&hub)
            .await
            .into_iter()
            .filter(|d| d["door"] == "relay")
            .count();
        (relay_conns == 2).then_some(())
    })
    .await;
    assert_eq!(raw_devices(&mut sender).await, json!(["lamp", "sender"]));
    let r = sender
        .request(json!({"target": "lamp", "payload": 2}))
        .await;
    assert_eq!(r, json!({"success": true}));
    assert_eq!(new.recv().await, json!({"sender": "sender", "payload": 2}));
    let r = sender
        .request(server(
            json!({"command": "get_device_info", "device_name": "lamp"}),
        ))
        .await;
    assert_eq!(r["response"]["description"], "new lamp");
}

#[tokio::test]
async fn raw_sending_before_register_is_refused_but_server_commands_work() {
    let hub = TestHub::start().await;
    let mut target = raw_device(&hub, "target").await;
    let mut c = hub.relay_ws().await;
    let r = c.request(json!({"target": "target", "payload": {}})).await;
    assert_eq!(r, fail("register before sending"));
    assert_eq!(raw_devices(&mut c).await, json!(["target"]));
    target.expect_silence(100).await;

    // Registered, then unregistered: refused again, and no longer listed.
    let r = c
        .request(server(json!({"command": "register", "device_name": "me"})))
        .await;
    assert_eq!(r, json!({"success": true}));
    let r = c
        .request(json!({"target": "target", "payload": "hi"}))
        .await;
    assert_eq!(r, json!({"success": true}));
    assert_eq!(
        target.recv().await,
        json!({"sender": "me", "payload": "hi"})
    );
    let r = c.request(server(json!({"command": "unregister"}))).await;
    assert_eq!(r, json!({"success": true}));
    assert_eq!(raw_devices(&mut target).await, json!(["target"]));
    let r = c.request(json!({"target": "target", "payload": {}})).await;
    assert_eq!(r, fail("register before sending"));
    let r = target.request(json!({"target": "me", "payload": {}})).await;
    assert_eq!(r, fail("unknown target"));
}

#[tokio::test]
async fn raw_get_device_info_and_its_device_info_alias() {
    let hub = TestHub::start().await;
    let mut strip = hub.relay_ws().await;
    let r = strip
        .request(server(
            json!({"command": "register", "device_name": "led_strip",
                                "description": "A simple commandable LED strip",
                                "version": "1.0.1", "interface": "https://x/led"}),
        ))
        .await;
    assert_eq!(r, json!({"success": true}));
    let mut c = hub.relay_ws().await;
    let want = json!({"success": true, "response": {"name": "led_strip",
        "description": "A simple commandable LED strip", "version": "1.0.1",
        "interface": "https://x/led"}});
    for command in ["get_device_info", "device_info"] {
        let r = c
            .request(server(
                json!({"command": command, "device_name": "led_strip"}),
            ))
            .await;
        assert_eq!(r, want, "{command}");
        let r = c
            .request(server(json!({"command": command, "device_name": "ghost"})))
            .await;
        assert_eq!(r, fail("unknown device"), "{command}");
        let r = c.request(server(json!({"command": command}))).await;
        assert_eq!(r, fail("missing device_name"), "{command}");
    }
}

#[tokio::test]
async fn raw_send_to_an_unknown_target_is_refused() {
    let hub = TestHub::start().await;
    let mut a = raw_device(&hub, "a").await;
    let r = a
        .request(json!({"target": "nobody", "payload": {"x": 1}}))
        .await;
    assert_eq!(r, fail("unknown target"));
}

#[tokio::test]
async fn raw_packets_of_1024_chars_or_more_are_refused() {
    let hub = TestHub::start().await;
    let mut a = raw_device(&hub, "a").await;
    let mut b = raw_device(&hub, "b").await;
    let ok = packet_of_len("b", 1023);
    let r = a.request(ok.clone()).await;
    assert_eq!(r, json!({"success": true}));
    assert_eq!(
        b.recv().await,
        json!({"sender": "a", "payload": ok["payload"]})
    );
    for len in [1024, 10_000] {
        let r = a.request(packet_of_len("b", len)).await;
        assert_eq!(r, fail("packet too large"), "len {len}");
    }
    // Server commands are packets too.
    let mut big = server(json!({"command": "get_devices", "pad": ""}));
    let pad = 1024 - big.to_string().len();
    big["payload"]["pad"] = json!("p".repeat(pad));
    assert_eq!(big.to_string().len(), 1024);
    assert_eq!(a.request(big).await, fail("packet too large"));
    b.expect_silence(100).await;
    let r = a
        .request(json!({"target": "b", "payload": "still here"}))
        .await;
    assert_eq!(r, json!({"success": true}));
    assert_eq!(
        b.recv().await,
        json!({"sender": "a", "payload": "still here"})
    );
}

#[tokio::test]
async fn raw_malformed_packets_get_an_error_and_the_connection_survives() {
    let hub = TestHub::start().await;
    let mut a = raw_device(&hub, "a").await;
    let mut b = raw_device(&hub, "b").await;
    let bad_texts = [
        "not json",
        "{\"target\": \"b\", ",
        "[1, 2]",
        "\"b\"",
        "null",
        "{}",
        r#"{"payload": {}}"#,
        r#"{"target": "b"}"#,
        r#"{"target": 5, "payload": {}}"#,
        r#"{"target": null, "payload": {}}"#,
        r#"{"target": ["b"], "payload": {}}"#,
        r#"{"target": "server", "payload": "get_devices"}"#,
        r#"{"target": "server", "payload": [1]}"#,
        r#"{"target": "server", "payload": {}}"#,
        r#"{"target": "server", "payload": {"command": "dance"}}"#,
        r#"{"target": "server", "payload": {"command": 7}}"#,
        r#"{"target": "server", "payload": {"command": "register", "device_name": 5}}"#,
        r#"{"target": "server", "payload": {"command": "register"}}"#,
        r#"{"target": "server", "payload": {"command": "get_device_info", "device_name": 1}}"#,
        r#"{"target": "server", "payload": {"command": "register", "device_name": "a", "force": "yes"}}"#,
    ];
    for text in bad_texts {
        a.send_plain(text).await;
        let r = a.recv().await;
        let obj = r.as_object().expect("an object");
        assert_eq!(obj.len(), 2, "{text} -> {r}");
        assert_eq!(r["success"], false, "{text} -> {r}");
        assert!(
            r["error_message"].as_str().is_some_and(|m| !m.is_empty()),
            "{text} -> {r}"
        );
    }
    // A binary frame is refused the same way.
    a.send_raw(Message::Binary(
        br#"{"target":"b","payload":1}"#.to_vec().into(),
    ))
    .await;
    let r = a.recv().await;
    assert_eq!(r["success"], false, "{r}");
    assert!(r["error_message"].is_string());

    // Nothing reached b, a is still registered, and a valid packet still works.
    b.expect_silence(100).await;
    assert_eq!(raw_devices(&mut b).await, json!(["a", "b"]));
    let r = a
        .request(json!({"target": "b", "payload": {"ok": true}}))
        .await;
    assert_eq!(r, json!({"success": true}));
    assert_eq!(
        b.recv().await,
        json!({"sender": "a", "payload": {"ok": true}})
    );
}

#[tokio::test]
async fn raw_closed_connection_unregisters_at_once() {
    let hub = TestHub::start().await;
    let mut watcher = raw_device(&hub, "watcher").await;
    let gone = raw_device(&hub, "gone").await;
    assert_eq!(raw_devices(&mut watcher).await, json!(["gone", "watcher"]));
    gone.hang_up().await;
    raw_devices_become(&mut watcher, json!(["watcher"])).await;
    let r = watcher
        .request(json!({"target": "gone", "payload": 1}))
        .await;
    assert_eq!(r, fail("unknown target"));
    // The name is free: registering it again needs no force.
    let _again = raw_device(&hub, "gone").await;

    // Dropping the TCP connection without a close handshake unregisters as well.
    let dropped = raw_device(&hub, "dropped").await;
    assert_eq!(
        raw_devices(&mut watcher).await,
        json!(["dropped", "gone", "watcher"])
    );
    drop(dropped);
    raw_devices_become(&mut watcher, json!(["gone", "watcher"])).await;
}

#[tokio::test]
async fn raw_registering_a_second_name_drops_the_first() {
    let hub = TestHub::start().await;
    let mut c = raw_device(&hub, "first").await;
    let r = c
        .request(server(
            json!({"command": "register", "device_name": "second"}),
        ))
        .await;
    assert_eq!(r, json!({"success": true}));
    assert_eq!(raw_devices(&mut c).await, json!(["second"]));
}

// ---------------------------------------------------------------------------------------
// Cross-door
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn raw_and_phoenix_devices_exchange_packets_both_ways() {
    let hub = TestHub::start().await;
    let mut raw = raw_device(&hub, "raw-dev").await;
    let mut phx_dev = phx_device(&hub, "phx-dev", json!({"version": "3"})).await;

    // get_devices lists both, from either door.
    assert_eq!(raw_devices(&mut raw).await, json!(["phx-dev", "raw-dev"]));
    assert_eq!(
        phx_devices(&mut phx_dev).await,
        json!(["phx-dev", "raw-dev"])
    );
    let r = raw
        .request(server(
            json!({"command": "get_device_info", "device_name": "phx-dev"}),
        ))
        .await;
    assert_eq!(
        r,
        json!({"success": true, "response": {"name": "phx-dev", "description": null,
               "version": "3", "interface": null}})
    );

    // raw -> Phoenix: a `packet` push.
    let r = raw
        .request(json!({"target": "phx-dev", "payload": {"cmd": "ping", "n": [1, 2]}}))
        .await;
    assert_eq!(r, json!({"success": true}));
    assert_eq!(
        phx_dev.recv().await,
        json!(["1", null, "relay", "packet",
               {"sender": "raw-dev", "payload": {"cmd": "ping", "n": [1, 2]}}])
    );

    // Phoenix -> raw: a `{"sender", "payload"}` text frame.
    let (status, resp) = phx(
        &mut phx_dev,
        "2",
        "send",
        json!({"target": "RAW-DEV", "payload": {"cmd": "pong"}}),
    )
    .await;
    assert_eq!((status.as_str(), resp), ("ok", json!({})));
    let frame = raw.recv_msg().await.expect("a frame");
    let Message::Text(text) = frame else {
        panic!("expected a text frame, got {frame:?}")
    };
    let got: Value = serde_json::from_str(&text).expect("JSON");
    assert_eq!(
        got,
        json!({"sender": "phx-dev", "payload": {"cmd": "pong"}})
    );
}

// ---------------------------------------------------------------------------------------
// Back-pressure
// ---------------------------------------------------------------------------------------

/// Checks one answer to a flood packet: delivered, or refused because the target that
/// does not read is (being) disconnected.
fn flood_answer_ok(r: &Value) -> bool {
    *r == json!({"success": true}) || *r == fail("target busy") || *r == fail("unknown target")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_from_one_device_does_not_stall_the_others() {
    // The per-socket rate limit would stop the flood at the door; this test is about what
    // the relay does when a flood gets through.
    let hub = TestHub::start_with(|c| c.rate_limit = 0).await;
    // A target that never reads.
    let _sink = raw_device(&hub, "sink").await;
    let flooder = raw_device(&hub, "flooder").await;
    let mut ping = raw_device(&hub, "ping").await;
    let mut pong = phx_device(&hub, "pong", json!({})).await;

    let (mut tx, mut rx) = flooder.ws.split();
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    const CAP: u64 = 10_000_000;
    let writer = tokio::spawn({
        let (stop, done, sent) = (stop.clone(), done.clone(), sent.clone());
        async move {
            let pkt = json!({"target": "sink", "payload": "f".repeat(200)}).to_string();
            while !stop.load(Ordering::Acquire) && sent.load(Ordering::Acquire) < CAP {
                tx.send(Message::Text(pkt.clone().into()))
                    .await
                    .expect("flood send");
                sent.fetch_add(1, Ordering::AcqRel);
            }
            done.store(true, Ordering::Release);
            tx
        }
    });
    let reader = tokio::spawn({
        let (done, sent) = (done.clone(), sent.clone());
        async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            let mut answered = 0u64;
            loop {
                match timeout(Duration::from_millis(100), rx.next()).await {
                    Ok(Some(Ok(Message::Text(t)))) => {
                        let r: Value = serde_json::from_str(&t).expect("JSON answer");
                        assert!(flood_answer_ok(&r), "unexpected flood answer {r}");
                        answered += 1;
                    }
                    Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => {}
                    Ok(other) => panic!("flooder socket: {other:?}"),
                    Err(_) => {}
                }
                if done.load(Ordering::Acquire) && answered == sent.load(Ordering::Acquire) {
                    return answered;
                }
                assert!(
                    Instant::now() < deadline,
                    "flood answers: {answered} of {}",
                    sent.load(Ordering::Acquire)
                );
            }
        }
    });

    // Let the flood get going before the ping-pong starts.
    eventually("the flood starts", async || {
        (sent.load(Ordering::Acquire) >= 1000).then_some(())
    })
    .await;

    // No latency number: on a loaded 2-core machine the test's own flood client competes
    // with the hub for the CPU (round trips take tens of ms there). A starved ping-pong
    // never completes while the flood runs, which this bound detects.
    const ROUNDS: usize = 20;
    const PING_PONG_LIMIT: Duration = Duration::from_secs(20);
    let rounds = timeout(PING_PONG_LIMIT, async {
        for i in 0..ROUNDS {
            let r = ping
                .request(json!({"target": "pong", "payload": {"seq": i}}))
                .await;
            assert_eq!(r, json!({"success": true}));
            let push = pong.recv_event("packet").await;
            assert_eq!(push[4], json!({"sender": "ping", "payload": {"seq": i}}));
            let (status, _) = phx(
                &mut pong,
                &format!("r{i}"),
                "send",
                json!({"target": "ping", "payload": {"seq": i}}),
            )
            .await;
            assert_eq!(status, "ok");
            assert_eq!(
                ping.recv().await,
                json!({"sender": "pong", "payload": {"seq": i}})
            );
        }
    })
    .await;
    assert!(
        rounds.is_ok(),
        "ping-pong did not complete {ROUNDS} round trips within {PING_PONG_LIMIT:?} during the flood"
    );
    // The flood was still running the whole time (the writer stops only when told).
    assert!(!writer.is_finished(), "the flood writer stopped early");
    stop.store(true, Ordering::Release);
    let _tx = timeout(LIMIT, writer)
        .await
        .expect("flood writer stops")
        .expect("flood writer ok");
    // Every flood packet was answered.
    let answered = timeout(Duration::from_secs(70), reader)
        .await
        .expect("flood reader ends")
        .expect("flood reader ok");
    assert_eq!(answered, sent.load(Ordering::Acquire));
}

/// Sends ~1000-char packets from `send` until one is refused; returns the refusal.
/// Every packet before it must have been accepted.
async fn fill_target<F, Fut>(mut send: F) -> (usize, Value)
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = Result<(), Value>>,
{
    const MAX_PACKETS: usize = 200_000;
    let deadline = Instant::now() + Duration::from_secs(60);
    for i in 0..MAX_PACKETS {
        if let Err(refusal) = send(i).await {
            return (i, refusal);
        }
        assert!(
            Instant::now() < deadline,
            "{i} packets accepted, none refused"
        );
    }
    panic!("{MAX_PACKETS} packets to a target that does not read were all accepted");
}

#[tokio::test]
async fn a_raw_sender_is_told_when_the_target_queue_is_full() {
    let hub = TestHub::start_with(|c| {
        c.outbound_queue = 4;
        c.rate_limit = 0;
    })
    .await;
    // Registered, then never read from again.
    let _sink = raw_device(&hub, "sink").await;
    let src = Arc::new(tokio::sync::Mutex::new(raw_device(&hub, "src").await));
    let pkt = packet_of_len("sink", 1000);
    let (_, refusal) = fill_target(|_| {
        let (src, pkt) = (src.clone(), pkt.clone());
        async move {
            let r = src.lock().await.request(pkt).await;
            if r == json!({"success": true}) {
                Ok(())
            } else {
                Err(r)
            }
        }
    })
    .await;
    assert!(
        refusal == fail("target busy") || refusal == fail("unknown target"),
        "refusal: {refusal}"
    );
    // The target that did not read is disconnected, hence unregistered.
    let mut src = src.lock().await;
    raw_devices_become(&mut src, json!(["src"])).await;
    let r = src.request(pkt).await;
    assert_eq!(r, fail("unknown target"));
}

#[tokio::test]
async fn a_phoenix_sender_is_told_when_the_target_queue_is_full() {
    let hub = TestHub::start_with(|c| {
        c.outbound_queue = 4;
        c.rate_limit = 0;
    })
    .await;
    let _sink = phx_device(&hub, "psink", json!({})).await;
    let src = Arc::new(tokio::sync::Mutex::new(
        phx_device(&hub, "psrc", json!({})).await,
    ));
    let pkt = packet_of_len("psink", 1000);
    let (_, refusal) = fill_target(|i| {
        let (src, pkt) = (src.clone(), pkt.clone());
        async move {
            let (status, resp) = phx(&mut *src.lock().await, &format!("s{i}"), "send", pkt).await;
            if status == "ok" { Ok(()) } else { Err(resp) }
        }
    })
    .await;
    assert!(
        refusal == json!({"reason": "target busy"})
            || refusal == json!({"reason": "unknown target"}),
        "refusal: {refusal}"
    );
    let mut src = src.lock().await;
    phx_devices_become(&mut src, json!(["psrc"])).await;
}

// ---------------------------------------------------------------------------------------
// Seen by administrators
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn admin_devices_shows_raw_relay_devices() {
    let hub = TestHub::start().await;
    let mut lamp = raw_device(&hub, "Lamp").await;
    let _anon = hub.relay_ws().await;
    let _phx = phx_device(&hub, "phx-dev", json!({})).await;
    // Make sure the anonymous connection is known to the hub before listing.
    let devices = crate::common::eventually("both raw connections are listed", || async {
        let d = admin_devices(&hub).await;
        (d.iter().filter(|d| d["door"] == "relay").count() == 2).then_some(d)
    })
    .await;
    let lamp_view = devices
        .iter()
        .find(|d| d["relay_name"] == "lamp")
        .expect("the registered raw device is listed");
    assert_eq!(lamp_view["door"], "relay");
    assert_eq!(lamp_view["name"], "lamp");
    assert_eq!(lamp_view["compendium_address"], Value::Null);
    let anon = devices
        .iter()
        .find(|d| d["door"] == "relay" && d["relay_name"].is_null())
        .expect("the unregistered raw connection is listed");
    assert_ne!(anon["name"], "lamp");
    let phx_view = devices
        .iter()
        .find(|d| d["name"] == "phx-dev")
        .expect("the Phoenix device is listed");
    assert_eq!(phx_view["door"], "phoenix");
    assert_eq!(phx_view["relay_name"], "phx-dev");
    assert_eq!(phx_view["topics"], json!(["relay"]));

    // Packet counts follow the traffic.
    let r = lamp
        .request(json!({"target": "phx-dev", "payload": 1}))
        .await;
    assert_eq!(r, json!({"success": true}));
    let devices = admin_devices(&hub).await;
    let lamp_view = devices.iter().find(|d| d["relay_name"] == "lamp").unwrap();
    assert_eq!(lamp_view["packets_sent"], 1);
    let phx_view = devices.iter().find(|d| d["name"] == "phx-dev").unwrap();
    assert_eq!(phx_view["packets_received"], 1);
}

type OverviewRow = (
    String,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    String,
    i64,
);

/// Polls `device_overview` until `name`'s row satisfies `ok` (the store is written in the
/// background).
async fn overview_row(hub: &TestHub, name: &str, ok: impl Fn(&OverviewRow) -> bool) -> OverviewRow {
    let sql = format!(
        "SELECT name, door, description, version, interface, last_seen_at, \
         CAST(packets_sent AS TEXT) FROM device_overview WHERE name = '{name}'"
    );
    eventually(&format!("the device_overview row for {name}"), async || {
        let rows = hub.rows(&sql).await;
        let r = rows.into_iter().next()?;
        let text = |i: usize| r[i].clone().unwrap_or_default();
        let row: OverviewRow = (
            text(0),
            text(1),
            r[2].clone(),
            r[3].clone(),
            r[4].clone(),
            text(5),
            text(6).parse().expect("packets_sent"),
        );
        ok(&row).then_some(row)
    })
    .await
}

#[tokio::test]
async fn device_overview_records_relay_registrations() {
    let hub = TestHub::start().await;
    let mut c = hub.relay_ws().await;
    let r = c
        .request(server(
            json!({"device_name": "LED_Strip", "description": "A strip",
                                "version": "1.0.1"}),
        ))
        .await;
    assert_eq!(r, json!({"success": true}));
    let _p = phx_device(&hub, "phx-dev", json!({"interface": "https://x"})).await;

    let (name, door, description, version, interface, last_seen_at, _) =
        overview_row(&hub, "led_strip", |_| true).await;
    assert_eq!(name, "led_strip");
    assert_eq!(door, "relay");
    assert_eq!(description.as_deref(), Some("A strip"));
    assert_eq!(version.as_deref(), Some("1.0.1"));
    assert_eq!(interface, None);
    assert!(!last_seen_at.is_empty());

    let row = overview_row(&hub, "phx-dev", |_| true).await;
    assert_eq!(row.1, "phoenix");
    assert_eq!(row.4.as_deref(), Some("https://x"));

    // When the session ends, its packet count is added up.
    let r = c.request(json!({"target": "phx-dev", "payload": 1})).await;
    assert_eq!(r, json!({"success": true}));
    c.hang_up().await;
    let row = overview_row(&hub, "led_strip", |r| r.6 == 1).await;
    assert_eq!(row.6, 1);
}

#[tokio::test]
async fn a_relay_rejoin_adds_each_packet_to_the_device_totals_once() {
    let hub = TestHub::start().await;
    let _peer = phx_device(&hub, "rj-peer", json!({})).await;
    let mut dev = phx_device(&hub, "rj-dev", json!({})).await;
    let send =
        |r: &'static str| json!(["1", r, "relay", "send", {"target": "rj-peer", "payload": r}]);
    dev.send(send("a")).await;
    dev.recv_reply("a").await;
    dev.send(send("b")).await;
    dev.recv_reply("b").await;
    // Leave the relay (a departure: 2 packets), join it again and send one more.
    let r = dev.push("1", "l", "relay", "phx_leave", json!({})).await;
    assert_eq!(reply_of(&r).0, "ok", "{r}");
    overview_row(&hub, "rj-dev", |r| r.6 == 2).await;
    let r = dev.join("relay", "1", json!({})).await;
    assert_eq!(reply_of(&r).0, "ok", "{r}");
    dev.send(send("c")).await;
    dev.recv_reply("c").await;
    dev.hang_up().await;
    // 3, not 2 + 3.
    overview_row(&hub, "rj-dev", |r| r.6 != 2).await;
    let row = overview_row(&hub, "rj-dev", |_| true).await;
    assert_eq!(row.6, 3);
}

#[tokio::test]
async fn force_takeover_of_a_phoenix_holder_closes_only_its_relay_channel() {
    let hub = TestHub::start().await;
    let mut phx = phx_device(&hub, "porch", json!({})).await;
    let r = phx.join("lock:PORCH-1", "9", json!({})).await;
    assert_eq!(reply_of(&r).0, "ok");
    let mut raw = hub.relay_ws().await;
    let r = raw
        .request(server(
            json!({"command": "register", "device_name": "porch", "force": true}),
        ))
        .await;
    assert_eq!(r, json!({"success": true}));
    // The Phoenix device is told its relay channel ended (no rejoin into a taken name)...
    let close = phx.recv_event("phx_close").await;
    assert_eq!(close[2], "relay");
    // ...and keeps its socket and its lock channel.
    let r = phx
        .push("9", "10", "lock:PORCH-1", "reset", json!({}))
        .await;
    assert_eq!(reply_of(&r).0, "ok");
    let r = phx.push("1", "11", "relay", "get_devices", json!({})).await;
    assert_eq!(reply_of(&r).1["reason"], "unmatched topic");
    assert_eq!(raw_devices(&mut raw).await, json!(["porch"]));
}

/// The raw relay has no heartbeat of its own: the hub pings a silent device at half the
/// idle time, the client's automatic pong keeps it connected, and a device that answers
/// nothing is closed (1001) once the idle time has passed.
#[tokio::test]
async fn silent_raw_devices_are_pinged_and_only_mute_ones_time_out() {
    let hub = TestHub::start_with(|c| c.idle_timeout = std::time::Duration::from_secs(1)).await;
    let mut answering = raw_device(&hub, "answering").await;
    let started = Instant::now();
    // Reading lets tungstenite answer each ping with a pong (an inbound frame for the hub).
    let mut pings = 0;
    while started.elapsed() < Duration::from_millis(2500) {
        match tokio::time::timeout(Duration::from_millis(100), answering.ws.next()).await {
            Ok(Some(Ok(Message::Ping(_)))) => pings += 1,
            Ok(Some(Ok(other))) => panic!("unexpected frame {other:?}"),
            Ok(other) => panic!("socket ended: {other:?}"),
            Err(_) => {}
        }
    }
    assert!(pings >= 2, "{pings} pings in 2.5 s with a 1 s idle time");
    // Still registered and working after 2.5 idle times.
    assert_eq!(raw_devices(&mut answering).await, json!(["answering"]));

    // A device that never reads never answers the ping: closed as idle.
    let mute = hub.relay_ws().await;
    sleep(Duration::from_millis(2000)).await;
    let mut mute = mute;
    let mut code = None;
    while let Ok(Some(Ok(m))) = tokio::time::timeout(Duration::from_secs(5), mute.ws.next()).await {
        if let Message::Close(f) = m {
            code = f.map(|f| (u16::from(f.code), f.reason.to_string()));
            break;
        }
    }
    assert_eq!(code, Some((1001, "idle timeout".to_owned())));
}

#[tokio::test]
async fn departures_at_shutdown_are_written_before_the_store_closes() {
    let hub = TestHub::start().await;
    let _sink = raw_device(&hub, "sink").await;
    let mut senders = Vec::new();
    for i in 0..30 {
        let mut c = raw_device(&hub, &format!("sender-{i}")).await;
        let r = c.request(json!({"target": "sink", "payload": i})).await;
        assert_eq!(r, json!({"success": true}));
        senders.push(c);
    }
    // Every device is still connected: shutdown closes them all, queueing their departures
    // (which carry the packet counts) just before the store closes.
    let url = hub.database_url.clone();
    let _dir = hub.dir.clone(); // the SQLite file outlives the hub
    hub.stop().await;
    let recorded = crate::support::text_rows(
        &url,
        "SELECT CAST(count(*) AS TEXT) FROM device_overview \
         WHERE name LIKE 'sender-%' AND packets_sent = 1",
    )
    .await;
    assert_eq!(
        recorded,
        [[Some("30".to_owned())]],
        "every departure written at shutdown"
    );
}

// ---------------------------------------------------------------------------------------
// One relay rule on every door (issue 12, item 4): reserved names, case, takeover,
// `name taken` and Presence are the same whichever door a device comes through.
// ---------------------------------------------------------------------------------------

/// The reply to a `relay` join refused with `reason` (join_ref = ref = `jr`).
fn refused_join(jr: &str, reason: &str) -> Value {
    json!([jr, jr, "relay", "phx_reply", {"status": "error", "response": {"reason": reason}}])
}

/// The reply to an accepted `relay` join (join_ref = ref = `jr`).
fn accepted_join(jr: &str) -> Value {
    json!([jr, jr, "relay", "phx_reply", {"status": "ok", "response": {}}])
}

/// Waits (bounded) until a raw device's `get_device_info` of `name` says `description`.
async fn holder_description_becomes(raw: &mut TestClient, name: &str, description: &str) {
    eventually(&format!("{name} is described {description}"), async || {
        let r = raw
            .request(server(
                json!({"command": "get_device_info", "device_name": name}),
            ))
            .await;
        (r["response"]["description"] == description).then_some(())
    })
    .await
}

#[tokio::test]
async fn reserved_names_are_refused_on_both_doors_with_the_same_reason() {
    let hub = TestHub::start().await;
    let mut raw = hub.relay_ws().await;
    for name in ["server", "SERVER", "Server", "bester:alice", "Bester:Bob"] {
        let r = raw
            .request(server(json!({"command": "register", "device_name": name})))
            .await;
        assert_eq!(r, fail("invalid device_name"), "raw door, {name:?}");
        let r = raw
            .request(server(
                json!({"command": "register", "device_name": name, "force": true}),
            ))
            .await;
        assert_eq!(
            r,
            fail("invalid device_name"),
            "raw door with force, {name:?}"
        );

        // A Phoenix socket may be called so, but may not join the relay as that name.
        let mut phx = hub.client(name).await;
        let r = phx.join("relay", "1", json!({})).await;
        assert_eq!(
            r,
            refused_join("1", "invalid device_name"),
            "Phoenix, {name:?}"
        );
        let r = phx.join("relay", "2", json!({"force": true})).await;
        assert_eq!(
            r,
            refused_join("2", "invalid device_name"),
            "Phoenix with force, {name:?}"
        );
        // Its socket stays usable.
        let r = phx
            .push("hb", "hb", "phoenix", "heartbeat", json!({}))
            .await;
        assert_eq!(reply_of(&r).0, "ok");
    }
    // Nobody holds a reserved name, so `server` still means the hub on the raw door.
    assert_eq!(raw_devices(&mut raw).await, json!([]));
    let mut peer = phx_device(&hub, "peer", json!({})).await;
    assert_eq!(phx_devices(&mut peer).await, json!(["peer"]));
    let (status, resp) = phx(
        &mut peer,
        "s",
        "send",
        json!({"target": "server", "payload": {}}),
    )
    .await;
    assert_eq!(
        (status.as_str(), resp),
        ("error", json!({"reason": "unknown target"}))
    );
}

#[tokio::test]
async fn relay_names_are_case_insensitive_across_doors() {
    let hub = TestHub::start().await;
    let mut lamp = phx_device(&hub, "Porch-Lamp", json!({"description": "phoenix lamp"})).await;
    let mut raw = hub.relay_ws().await;
    for spelling in ["porch-lamp", "PORCH-LAMP", "Porch-lamp"] {
        let r = raw
            .request(server(
                json!({"command": "register", "device_name": spelling}),
            ))
            .await;
        assert_eq!(r, fail("name taken"), "raw door, {spelling}");
    }
    let r = raw
        .request(server(
            json!({"command": "register", "device_name": "Garage"}),
        ))
        .await;
    assert_eq!(r, json!({"success": true}));

    // One lower-case name on both doors, reached by any spelling.
    assert_eq!(raw_devices(&mut raw).await, json!(["garage", "porch-lamp"]));
    assert_eq!(
        phx_devices(&mut lamp).await,
        json!(["garage", "porch-lamp"])
    );
    let r = raw
        .request(server(
            json!({"command": "get_device_info", "device_name": "PORCH-LAMP"}),
        ))
        .await;
    assert_eq!(r["response"]["name"], "porch-lamp", "{r}");
    let r = raw
        .request(json!({"target": "PORCH-Lamp", "payload": "on"}))
        .await;
    assert_eq!(r, json!({"success": true}));
    assert_eq!(
        lamp.recv().await,
        json!(["1", null, "relay", "packet", {"sender": "garage", "payload": "on"}])
    );
    let (status, _) = phx(
        &mut lamp,
        "2",
        "send",
        json!({"target": "GARAGE", "payload": "ok"}),
    )
    .await;
    assert_eq!(status, "ok");
    assert_eq!(
        raw.recv().await,
        json!({"sender": "porch-lamp", "payload": "ok"})
    );

    // A Phoenix socket named in another case is the same relay name: taken without
    // force, taken over with it, on the Phoenix door as on the raw one.
    let mut upper = hub.client("PORCH-LAMP").await;
    let r = upper.join("relay", "1", json!({})).await;
    assert_eq!(r, refused_join("1", "name taken"));
    let mut garage = hub.client("GARAGE").await;
    let r = garage.join("relay", "1", json!({})).await;
    assert_eq!(r, refused_join("1", "name taken"));
    let r = upper
        .join("relay", "2", json!({"force": true, "description": "upper"}))
        .await;
    assert_eq!(r, accepted_join("2"));
    let close = lamp.recv_event("phx_close").await;
    assert_eq!(close, json!(["1", "1", "relay", "phx_close", {}]));
    holder_description_becomes(&mut raw, "porch-lamp", "upper").await;
    assert_eq!(raw_devices(&mut raw).await, json!(["garage", "porch-lamp"]));
}

#[tokio::test]
async fn phoenix_force_takes_a_name_over_from_a_raw_device() {
    let hub = TestHub::start().await;
    let mut sender = raw_device(&hub, "sender").await;
    let mut old = raw_device(&hub, "garage").await;

    // On the join, with `force` among the join params.
    let mut phx = hub.client("Garage").await;
    let r = phx.join("relay", "1", json!({})).await;
    assert_eq!(r, refused_join("1", "name taken"));
    let r = phx
        .join(
            "relay",
            "2",
            json!({"force": true, "description": "phoenix garage"}),
        )
        .await;
    assert_eq!(r, accepted_join("2"));
    // The raw holder is told as the raw door tells it: a notice, then 1001.
    assert_eq!(
        old.recv().await,
        fail("name taken over by another connection")
    );
    let close = old.expect_close().await.expect("a close frame");
    assert_eq!(
        (u16::from(close.code), close.reason.as_str()),
        (1001, "name taken over")
    );
    holder_description_becomes(&mut sender, "garage", "phoenix garage").await;
    let r = sender
        .request(json!({"target": "garage", "payload": 1}))
        .await;
    assert_eq!(r, json!({"success": true}));
    assert_eq!(
        phx.recv().await,
        json!(["2", null, "relay", "packet", {"sender": "sender", "payload": 1}])
    );

    // On a `register` event, with `force` in its body.
    let f = phx.push("2", "3", "relay", "unregister", json!({})).await;
    assert_eq!(reply_of(&f).0, "ok");
    let mut again = raw_device(&hub, "GARAGE").await;
    let f = phx.push("2", "4", "relay", "register", json!({})).await;
    assert_eq!(reply_of(&f), ("error", &json!({"reason": "name taken"})));
    let f = phx
        .push("2", "5", "relay", "register", json!({"force": true}))
        .await;
    assert_eq!(reply_of(&f), ("ok", &json!({})));
    assert_eq!(
        again.recv().await,
        fail("name taken over by another connection")
    );
    let close = again.expect_close().await.expect("a close frame");
    assert_eq!(u16::from(close.code), 1001);
    let r = sender
        .request(json!({"target": "GARAGE", "payload": 2}))
        .await;
    assert_eq!(r, json!({"success": true}));
    assert_eq!(
        phx.recv().await,
        json!(["2", null, "relay", "packet", {"sender": "sender", "payload": 2}])
    );
}

#[tokio::test]
async fn phoenix_force_takes_a_name_over_from_another_phoenix_socket() {
    let hub = TestHub::start().await;
    let mut old = phx_device(&hub, "attic", json!({"description": "old"})).await;
    let r = old.join("lock:ATTIC-1", "9", json!({})).await;
    assert_eq!(reply_of(&r).0, "ok");
    let mut new = hub.client("ATTIC").await;
    let r = new
        .join("relay", "1", json!({"force": true, "description": "new"}))
        .await;
    assert_eq!(r, accepted_join("1"));
    // The Phoenix holder is told as the Phoenix door tells it: phx_close on `relay`, and
    // it keeps its socket and its other channels.
    let close = old.recv_event("phx_close").await;
    assert_eq!(close, json!(["1", "1", "relay", "phx_close", {}]));
    let r = old
        .push("9", "10", "lock:ATTIC-1", "reset", json!({}))
        .await;
    assert_eq!(reply_of(&r).0, "ok");
    let mut raw = hub.relay_ws().await;
    holder_description_becomes(&mut raw, "attic", "new").await;
    let r = raw.request(json!({"target": "attic", "payload": 3})).await;
    assert_eq!(r, fail("register before sending"));
    let r = raw
        .request(server(json!({"command": "register", "device_name": "spy"})))
        .await;
    assert_eq!(r, json!({"success": true}));
    let r = raw.request(json!({"target": "attic", "payload": 3})).await;
    assert_eq!(r, json!({"success": true}));
    assert_eq!(
        new.recv().await,
        json!(["1", null, "relay", "packet", {"sender": "spy", "payload": 3}])
    );
}

#[tokio::test]
async fn a_taken_over_phoenix_device_has_its_departure_recorded() {
    let hub = TestHub::start().await;
    let mut sink = raw_device(&hub, "sink").await;
    let mut porch = phx_device(&hub, "porch", json!({})).await;
    let (status, _) = phx(
        &mut porch,
        "2",
        "send",
        json!({"target": "sink", "payload": 1}),
    )
    .await;
    assert_eq!(status, "ok");
    assert_eq!(sink.recv().await, json!({"sender": "porch", "payload": 1}));
    let mut raw = hub.relay_ws().await;
    let r = raw
        .request(server(
            json!({"command": "register", "device_name": "porch", "force": true}),
        ))
        .await;
    assert_eq!(r, json!({"success": true}));
    porch.recv_event("phx_close").await;
    // The displaced session's packet is added up, as for a raw holder taken over.
    let row = overview_row(&hub, "porch", |r| r.1 == "relay" && r.6 == 1).await;
    assert_eq!((row.1.as_str(), row.6), ("relay", 1));
}

#[tokio::test]
async fn a_name_held_on_one_door_is_taken_on_the_other_without_force() {
    let hub = TestHub::start().await;
    let mut porch = phx_device(&hub, "porch", json!({})).await;
    let mut kitchen = raw_device(&hub, "kitchen").await;

    // Held on the Phoenix door: `name taken` on the raw door.
    for body in [
        json!({"command": "register", "device_name": "PORCH"}),
        json!({"command": "register", "device_name": "porch", "force": false}),
        json!({"device_name": "Porch"}),
    ] {
        let r = kitchen.request(server(body.clone())).await;
        assert_eq!(r, fail("name taken"), "{body}");
    }
    // Held on the raw door: `name taken` on the Phoenix door.
    let mut other = hub.client("Kitchen").await;
    let r = other.join("relay", "1", json!({})).await;
    assert_eq!(r, refused_join("1", "name taken"));
    let r = other.join("relay", "2", json!({"force": false})).await;
    assert_eq!(r, refused_join("2", "name taken"));

    // A refused registration changes nothing: the raw device that asked for `porch` is
    // still `kitchen`, and both still reach each other.
    assert_eq!(raw_devices(&mut kitchen).await, json!(["kitchen", "porch"]));
    let r = kitchen
        .request(json!({"target": "porch", "payload": "hi"}))
        .await;
    assert_eq!(r, json!({"success": true}));
    assert_eq!(
        porch.recv().await,
        json!(["1", null, "relay", "packet", {"sender": "kitchen", "payload": "hi"}])
    );
    let (status, _) = phx(
        &mut porch,
        "2",
        "send",
        json!({"target": "kitchen", "payload": "yo"}),
    )
    .await;
    assert_eq!(status, "ok");
    assert_eq!(
        kitchen.recv().await,
        json!({"sender": "porch", "payload": "yo"})
    );

    // A Phoenix `register` without force, while a raw device holds the name.
    let (status, _) = phx(&mut porch, "3", "unregister", json!({})).await;
    assert_eq!(status, "ok");
    let _raw_porch = raw_device(&hub, "PORCH").await;
    let (status, resp) = phx(&mut porch, "4", "register", json!({})).await;
    assert_eq!(
        (status.as_str(), resp),
        ("error", json!({"reason": "name taken"}))
    );
    let (status, resp) = phx(
        &mut porch,
        "5",
        "send",
        json!({"target": "kitchen", "payload": 1}),
    )
    .await;
    assert_eq!(
        (status.as_str(), resp),
        ("error", json!({"reason": "not registered"}))
    );
}

/// Presence as a client sees it: `presence_state`, then every `presence_diff` applied.
struct PresenceView {
    c: TestClient,
    /// key → metas
    state: serde_json::Map<String, Value>,
}

impl PresenceView {
    async fn join(hub: &TestHub) -> PresenceView {
        let mut c = hub.client("observer").await;
        let r = c.join("presence:devices", "p", json!({})).await;
        assert_eq!(reply_of(&r).0, "ok");
        PresenceView {
            c,
            state: serde_json::Map::new(),
        }
    }

    fn apply(&mut self, frame: &Value) {
        match frame[3].as_str() {
            Some("presence_state") => {
                self.state = frame[4]
                    .as_object()
                    .expect("state object")
                    .iter()
                    .map(|(k, v)| (k.clone(), v["metas"].clone()))
                    .collect();
            }
            Some("presence_diff") => {
                let diff = &frame[4];
                for (key, v) in diff["leaves"].as_object().expect("leaves") {
                    let gone: Vec<&Value> = v["metas"]
                        .as_array()
                        .expect("metas")
                        .iter()
                        .map(|m| &m["phx_ref"])
                        .collect();
                    if let Some(Value::Array(metas)) = self.state.get_mut(key) {
                        metas.retain(|m| !gone.contains(&&m["phx_ref"]));
                        if metas.is_empty() {
                            self.state.remove(key);
                        }
                    }
                }
                for (key, v) in diff["joins"].as_object().expect("joins") {
                    let metas = self.state.entry(key.clone()).or_insert_with(|| json!([]));
                    for m in v["metas"].as_array().expect("metas") {
                        metas.as_array_mut().expect("metas").push(m.clone());
                    }
                }
            }
            _ => {}
        }
    }

    /// `(door, relay)` of every meta under `key`, sorted.
    fn relay_metas(&self, key: &str) -> Vec<(String, bool)> {
        let mut out: Vec<(String, bool)> = self
            .state
            .get(key)
            .and_then(Value::as_array)
            .map(|metas| {
                metas
                    .iter()
                    .map(|m| {
                        (
                            m["door"].as_str().unwrap_or("?").to_owned(),
                            m["relay"].as_bool().expect("relay is a boolean"),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.sort();
        out
    }

    /// Applies frames until `key`'s metas are `want` (bounded).
    async fn until(&mut self, key: &str, want: &[(&str, bool)]) {
        let want: Vec<(String, bool)> = want.iter().map(|(d, r)| (d.to_string(), *r)).collect();
        let deadline = Instant::now() + LIMIT;
        while self.relay_metas(key) != want {
            let left = deadline.saturating_duration_since(Instant::now());
            let frame = match timeout(left, self.c.ws.next()).await {
                Ok(Some(Ok(Message::Text(t)))) => serde_json::from_str(&t).expect("JSON"),
                Ok(Some(Ok(_))) => continue,
                Ok(other) => panic!("presence observer's socket ended: {other:?}"),
                Err(_) => panic!(
                    "Presence of {key} is {:?}, expected {want:?}",
                    self.relay_metas(key)
                ),
            };
            self.apply(&frame);
        }
    }
}

#[tokio::test]
async fn presence_shows_relay_membership_the_same_way_whichever_door_holds_the_name() {
    let hub = TestHub::start().await;
    let mut view = PresenceView::join(&hub).await;

    let mut porch = phx_device(&hub, "porch", json!({})).await;
    view.until("porch", &[("phoenix", true)]).await;
    // Raw takes it over: its meta says relay, the Phoenix one no longer does.
    let mut raw = hub.relay_ws().await;
    let r = raw
        .request(server(
            json!({"command": "register", "device_name": "PORCH", "force": true}),
        ))
        .await;
    assert_eq!(r, json!({"success": true}));
    view.until("porch", &[("phoenix", false), ("relay", true)])
        .await;
    // Phoenix takes it back: the raw device is closed and leaves, the Phoenix meta says
    // relay again.
    porch.recv_event("phx_close").await;
    let r = porch.join("relay", "3", json!({"force": true})).await;
    assert_eq!(r, accepted_join("3"));
    assert_eq!(
        raw.recv().await,
        fail("name taken over by another connection")
    );
    raw.expect_close().await.expect("a close frame");
    view.until("porch", &[("phoenix", true)]).await;

    // A refused join (reserved name, taken name) is not relay membership on either door.
    let mut srv = hub.client("server").await;
    let r = srv.join("relay", "1", json!({})).await;
    assert_eq!(r, refused_join("1", "invalid device_name"));
    view.until("server", &[("phoenix", false)]).await;
    let mut twin = hub.client("PORCH").await;
    let r = twin.join("relay", "1", json!({})).await;
    assert_eq!(r, refused_join("1", "name taken"));
    view.until("PORCH", &[("phoenix", false)]).await;
    let mut raw2 = hub.relay_ws().await;
    let r = raw2
        .request(server(
            json!({"command": "register", "device_name": "porch"}),
        ))
        .await;
    assert_eq!(r, fail("name taken"));
    view.until("porch", &[("phoenix", true)]).await;
    // Unregistering: relay false on the Phoenix door, gone on the raw door (which lists
    // only registered devices).
    let r = raw2
        .request(server(
            json!({"command": "register", "device_name": "shed"}),
        ))
        .await;
    assert_eq!(r, json!({"success": true}));
    view.until("shed", &[("relay", true)]).await;
    let r = raw2.request(server(json!({"command": "unregister"}))).await;
    assert_eq!(r, json!({"success": true}));
    view.until("shed", &[]).await;
    let f = porch.push("3", "u", "relay", "unregister", json!({})).await;
    assert_eq!(reply_of(&f).0, "ok");
    view.until("porch", &[("phoenix", false)]).await;
}

#[tokio::test]
async fn the_bester_bridge_resolves_relay_names_by_the_same_rule() {
    use crate::bester_common::{HubBuilder, PASSWORD, status};
    let hub = HubBuilder::new().example_handler("upper").start().await;
    hub.add_user("alice", PASSWORD).await;
    let mut alice = hub.login("alice").await;
    // A Phoenix socket named `server` cannot be on the relay, so the bridge cannot reach
    // it under that name either; a raw device is found in any case.
    let mut srv = TestClient::connect(&format!(
        "ws://{}/socket/websocket?vsn=2.0.0&name=server",
        hub.addr
    ))
    .await;
    let r = srv.join("relay", "1", json!({})).await;
    assert_eq!(r, refused_join("1", "invalid device_name"));
    let mut lamp = TestClient::connect(&format!("ws://{}/relay", hub.addr)).await;
    let r = lamp
        .request(server(
            json!({"command": "register", "device_name": "Lamp"}),
        ))
        .await;
    assert_eq!(r, json!({"success": true}));

    let r = alice
        .call(
            "upper",
            json!({"text": "on", "to": ["SERVER", "LAMP", "bester:alice"]}),
        )
        .await;
    assert_eq!(status(&r), "undelivered", "{r}");
    assert_eq!(r["payload"]["data"]["delivered"], json!(["LAMP"]), "{r}");
    assert_eq!(
        r["payload"]["data"]["undelivered"],
        json!({"SERVER": "not connected", "bester:alice": "not connected"}),
        "{r}"
    );
    assert_eq!(
        lamp.recv().await,
        json!({"sender": "bester:alice", "payload": {"type": "upper", "data": {"text": "ON"}}})
    );
    srv.expect_silence(200).await;
}
