//! Micro-benchmarks of the hub's hot paths: the WebSocket upgrade head, frame
//! decode/encode, relay directory lookup and delivery, and the serialize-once broadcast. Run with `cargo bench --bench hot_paths`.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use homehub::core::directory::{Claim, DeviceInfo, Packet};
use homehub::core::{Door, Registry, Topic};
use homehub::domain::DeviceName;
use homehub::doors::phoenix::{Frame, OutPayload, RawRef, SharedFrame, Status, Vsn};
use homehub::metrics::Metrics;
use serde_json::value::RawValue;
use tokio_util::sync::CancellationToken;

fn frames(c: &mut Criterion) {
    let join = br#"["4","4","lock:SN-000123","phx_join",{}]"#;
    let send = br#"["7","19","relay","send",{"target":"dev-000042","payload":{"t":1795302979123456789,"cmd":"on"}}]"#;
    let v1 = br#"{"topic":"lock:SN-1","event":"reset","payload":{},"ref":"12","join_ref":"3"}"#;
    c.bench_function("decode v2 join", |b| {
        b.iter(|| Vsn::V2.decode(black_box(join), false))
    });
    c.bench_function("decode v2 relay send", |b| {
        b.iter(|| Vsn::V2.decode(black_box(send), false))
    });
    c.bench_function("decode v1 object", |b| {
        b.iter(|| Vsn::V1.decode(black_box(v1), true))
    });
    let jr = RawRef::from_str_value("4");
    let reply = Frame::reply(
        Some(jr.clone()),
        Some(jr),
        "lock:SN-000123",
        Status::Ok,
        RawValue::from_string(r#"{"uuid":"6f1c7c0e-3a51-4f7e-9a57-0b4b1f9c2d11","serial":"SN-000123","name":"SN-000123","mode":1,"feature_flags":[],"config":{},"state":{"locked":true}}"#.to_owned()).expect("json"),
    );
    c.bench_function("encode v2 join reply", |b| {
        b.iter(|| Vsn::V2.encode(black_box(&reply)))
    });
    c.bench_function("encode v1 join reply", |b| {
        b.iter(|| Vsn::V1.encode(black_box(&reply)))
    });
}

fn handshake(c: &mut Criterion) {
    // What the phoenix JS client in Node sends (browsers add a few more headers).
    let head = b"GET /socket/websocket?name=lock-000123&vsn=2.0.0 HTTP/1.1\r\n\
        Host: 127.0.0.1:4000\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
        Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
        Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n";
    c.bench_function("parse upgrade head", |b| {
        b.iter(|| homehub::net::upgrade::parse(black_box(head)))
    });
}

fn registry() -> Registry {
    Registry::new(CancellationToken::new(), 1024, Arc::new(Metrics::default()))
}

fn relay(c: &mut Criterion) {
    let reg = registry();
    let mut receivers = Vec::new();
    for i in 0..10_000 {
        let name = format!("dev-{i:06}");
        let (conn, rx) = reg.connect(
            DeviceName::parse(&name),
            Door::Phoenix,
            ([127, 0, 0, 1], 9).into(),
            None,
        );
        let claim = Claim {
            name: &name,
            info: DeviceInfo::default(),
            force: false,
            token_device: None,
        };
        reg.relay.register(&conn, claim).expect("register");
        receivers.push((conn, rx));
    }
    let payload = RawValue::from_string(r#"{"t":1795302979123456789}"#.to_owned()).expect("json");
    c.bench_function("relay lookup (10k devices)", |b| {
        b.iter(|| reg.relay.info(black_box("dev-004242")))
    });
    c.bench_function("relay deliver + drain (10k devices)", |b| {
        b.iter(|| {
            let packet = Arc::new(Packet {
                sender: "dev-000001".to_owned(),
                payload: payload.clone(),
            });
            reg.relay.deliver("dev-004242", packet).expect("deliver");
            let _ = receivers[4242].1.try_recv();
        })
    });
}

fn broadcast(c: &mut Criterion) {
    let reg = registry();
    let mut receivers = Vec::new();
    for i in 0..1_000 {
        let name = format!("sub-{i:05}");
        let (conn, rx) = reg.connect(
            DeviceName::parse(&name),
            Door::Phoenix,
            ([127, 0, 0, 1], 9).into(),
            None,
        );
        reg.subscribe(&Topic::Events, &conn);
        receivers.push((conn, rx));
    }
    let body = RawValue::from_string(
        r#"{"from":"lock-pi","message":{"kind":"opened","t":1795302979123456789}}"#.to_owned(),
    )
    .expect("json");
    c.bench_function("broadcast to 1000 subscribers, encode once", |b| {
        b.iter(|| {
            let n = reg.broadcast(
                &Topic::Events,
                "event",
                OutPayload::Json(body.clone()),
                None,
            );
            for (_, rx) in receivers.iter_mut() {
                if let Some(homehub::core::Outbound::Broadcast(shared)) = rx.try_recv() {
                    black_box(Vsn::V2.encode_shared(&shared));
                }
            }
            n
        })
    });
    let frame = Frame::broadcast("events", "event", OutPayload::Json(body.clone()));
    c.bench_function("shared frame: first encode", |b| {
        b.iter(|| Vsn::V2.encode_shared(&SharedFrame::new(frame.clone(), None)))
    });
}

criterion_group!(benches, handshake, frames, relay, broadcast);
criterion_main!(benches);
