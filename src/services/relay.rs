//! The relay service: the one way onto and off the device relay for every door (Phoenix
//! `relay`, raw `/relay`, the Bester bridge), with the hub's records of it (the `devices`
//! table, written in order in the background: the relay never waits for the disk).

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::core::directory::{BinaryPacket, Claim, DeviceInfo, Packet, RegisterError, Registered};
use crate::core::{Conn, DeliveryError, Door, Fabric};
use crate::store::Store;

/// The relay service, one per hub: registration under the directory's one rule (through
/// the fabric, so a takeover reaches the holder wherever it is), delivery, and the
/// `devices` records. Doors and the Bester bridge call only this.
pub struct Relay {
    fabric: Arc<dyn Fabric>,
    log: DeviceLog,
}

impl Relay {
    pub fn new(fabric: Arc<dyn Fabric>, store: Store) -> Relay {
        Relay {
            fabric,
            log: spawn_device_log(store),
        }
    }

    /// Puts `conn` on the relay ([`Fabric::register_relay`]) and records it: the
    /// registration, and the departure of a displaced holder (with its packet counts), in
    /// the `devices` table. `Ok` is the relay name.
    pub async fn register(
        &self,
        conn: &Arc<Conn>,
        claim: Claim<'_>,
    ) -> Result<String, RegisterError> {
        let info = claim.info.clone();
        let Registered { name, displaced } = self.fabric.register_relay(conn, claim).await?;
        if let Some(old) = displaced {
            self.record_departure(&name, &old);
        }
        tracing::info!(conn = conn.id, device = %name, door = ?conn.door, "registered on the relay");
        self.log.push(DeviceWrite::Registered {
            name: name.clone(),
            door: conn.door,
            info,
        });
        Ok(name)
    }

    /// Takes `conn` off the relay if it still holds `name`, recording the departure;
    /// `false` if it did not hold it (e.g. it was taken over, whose departure was recorded
    /// then).
    pub fn unregister(&self, name: &str, conn: &Conn) -> bool {
        let held = self.fabric.unregister_relay(name, conn.id);
        if held {
            self.record_departure(name, conn);
        }
        held
    }

    /// Sends a packet to the device registered as `target`, counting it on the sender.
    pub async fn send(
        &self,
        from: &Conn,
        target: &str,
        packet: Arc<Packet>,
    ) -> Result<(), DeliveryError> {
        self.fabric.deliver(target, packet).await?;
        from.count_packet_sent();
        Ok(())
    }

    /// Sends a binary packet to `target` (a Phoenix V2 WebSocket receiver).
    pub async fn send_binary(
        &self,
        from: &Conn,
        target: &str,
        packet: Arc<BinaryPacket>,
    ) -> Result<(), DeliveryError> {
        self.fabric.deliver_binary(target, packet).await?;
        from.count_packet_sent();
        Ok(())
    }

    /// The registration info of the device `name`, if it is on the relay (of any node).
    pub async fn info(&self, name: &str) -> Result<Option<DeviceInfo>, DeliveryError> {
        self.fabric.relay_info(name).await
    }

    /// Every relay device name (of every node), sorted.
    pub async fn names(&self) -> Result<Vec<String>, DeliveryError> {
        self.fabric.relay_names().await
    }

    /// Writes what is queued (the departures of the sockets that just closed), then stops.
    pub async fn finish(&self) {
        self.log.finish().await;
    }

    /// Records that a relay device left, with the packets it relayed, in the background.
    fn record_departure(&self, name: &str, conn: &Conn) {
        let (sent, received) = conn.unrecorded_packets();
        self.log.push(DeviceWrite::Departed {
            name: name.to_owned(),
            sent,
            received,
        });
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
struct DeviceLog {
    tx: tokio::sync::mpsc::Sender<DeviceWrite>,
    /// Cancelled at shutdown: the writer takes no more writes and ends once its queue is empty.
    finish: CancellationToken,
    writer: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl DeviceLog {
    fn push(&self, write: DeviceWrite) {
        if self.tx.try_send(write).is_err() {
            tracing::warn!("device log queue full; a relay registration record was dropped");
        }
    }

    /// Writes what is queued (the departures of the sockets that just closed), then stops.
    async fn finish(&self) {
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
fn spawn_device_log(store: Store) -> DeviceLog {
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
