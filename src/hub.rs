//! The hub's shared state ([`Hub`]): what the doors and the admin API reach through a
//! handler context. It is built, run and shut down by the composition root
//! ([`crate::app`]), which nothing inside the crate imports.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::registry::relay::DeviceInfo;
use crate::registry::{Conn, Door, Registry};
use crate::store::Store;

/// State shared by every door and the admin API.
pub struct Hub {
    pub config: Config,
    pub store: Store,
    pub registry: Registry,
    /// Every socket task is spawned on this tracker so shutdown can wait for them.
    pub tracker: TaskTracker,
    /// Cancelled once, at shutdown; every connection's kill switch is a child of it.
    pub shutdown: CancellationToken,
    pub metrics: Arc<Metrics>,
    /// The Bester door: settings and live Bester connections.
    pub bester: crate::bester::Bester,
    /// Live long-poll sessions.
    pub longpoll: crate::transport::longpoll::Sessions,
    /// Device-token key and revocations.
    pub keyring: crate::auth::Keyring,
    /// Browser origins allowed on the device doors.
    pub origins: crate::auth::OriginPolicy,
    /// Ordered queue of `devices` table writes (see [`DeviceWrite`]).
    pub(crate) device_log: DeviceLog,
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
