//! The relay service: the one way onto and off the device relay for every door (Phoenix
//! `relay`, raw `/relay`, the Bester bridge), with the hub's records of it (the `devices`
//! table, written in order in the background: the relay never waits for the disk).

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::Hub;
use crate::core::directory::{Claim, DeviceInfo, RegisterError, Registered};
use crate::core::{Conn, Door};
use crate::store::Store;

/// Puts `conn` on the relay ([`Directory::register`]) and records it: the registration,
/// and the departure of a displaced holder (with its packet counts), in the `devices`
/// table. Every door registers through this. `Ok` is the relay name.
pub fn register(hub: &Hub, conn: &Arc<Conn>, claim: Claim<'_>) -> Result<String, RegisterError> {
    let info = claim.info.clone();
    let Registered { name, displaced } = hub.registry.relay.register(conn, claim)?;
    if let Some(old) = displaced {
        hub.record_relay_departure(&name, &old);
    }
    tracing::info!(conn = conn.id, device = %name, door = ?conn.door, "registered on the relay");
    hub.record_relay_registration(&name, conn.door, info);
    Ok(name)
}

/// Takes `conn` off the relay if it still holds `name`, recording the departure; `false`
/// if it did not hold it (e.g. it was taken over, whose departure was recorded then).
pub fn unregister(hub: &Hub, name: &str, conn: &Conn) -> bool {
    let held = hub.registry.relay.unregister(name, conn.id);
    if held {
        hub.record_relay_departure(name, conn);
    }
    held
}

impl Hub {
    /// Records a relay registration in the store (`devices`), in the background: the
    /// relay never waits for the disk.
    pub fn record_relay_registration(&self, name: &str, door: Door, info: DeviceInfo) {
        self.log_device(DeviceWrite::Registered {
            name: name.to_owned(),
            door,
            info,
        });
    }

    /// Records that a relay device left, with the packets it relayed, in the background.
    pub fn record_relay_departure(&self, name: &str, conn: &Conn) {
        let (sent, received) = conn.packet_counts();
        self.log_device(DeviceWrite::Departed {
            name: name.to_owned(),
            sent,
            received,
        });
    }

    fn log_device(&self, write: DeviceWrite) {
        if self.device_log.tx.try_send(write).is_err() {
            tracing::warn!("device log queue full; a relay registration record was dropped");
        }
    }
}

/// A relay registration or departure for the `devices` table. They are written in order by
/// one task, so a quick register-and-leave can never record the departure first.
enum DeviceWrite {
    Registered {
        name: String,
        door: Door,
        info: DeviceInfo,
    },
    Departed {
        name: String,
        sent: u64,
        received: u64,
    },
}

/// The queue of `devices` writes and the task that writes them in order.
pub(crate) struct DeviceLog {
    tx: tokio::sync::mpsc::Sender<DeviceWrite>,
    /// Cancelled at shutdown: the writer takes no more writes and ends once its queue is empty.
    finish: CancellationToken,
    writer: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl DeviceLog {
    /// Writes what is queued (the departures of the sockets that just closed), then stops.
    pub(crate) async fn finish(&self) {
        self.finish.cancel();
        let writer = self.writer.lock().ok().and_then(|mut w| w.take());
        if let Some(writer) = writer
            && let Err(e) = writer.await
        {
            tracing::error!(error = %e, "relay device log writer failed");
        }
    }
}

/// Writes relay registrations and departures in the order they happened.
pub(crate) fn spawn_device_log(store: Store) -> DeviceLog {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<DeviceWrite>(4096);
    let finish = CancellationToken::new();
    let finishing = finish.clone();
    let writer = tokio::spawn(async move {
        loop {
            let write = tokio::select! {
                biased;
                write = rx.recv() => write,
                _ = finishing.cancelled(), if !rx.is_closed() => {
                    // Refuse new writes; those already queued are still received below.
                    rx.close();
                    continue;
                }
            };
            let Some(write) = write else { break };
            let (name, result) = match write {
                DeviceWrite::Registered { name, door, info } => {
                    let r = store.record_device_registration(&name, door, &info).await;
                    (name, r)
                }
                DeviceWrite::Departed {
                    name,
                    sent,
                    received,
                } => {
                    let r = store.record_device_departure(&name, sent, received).await;
                    (name, r)
                }
            };
            if let Err(e) = result {
                tracing::error!(device = %name, error = %e, "cannot record relay device");
            }
        }
    });
    DeviceLog {
        tx,
        finish,
        writer: std::sync::Mutex::new(Some(writer)),
    }
}
