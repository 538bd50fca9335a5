//! Open-loop pacing: the `i`-th message is due at `start + i / rate`, computed from the
//! start time, never from when the previous message went out. Timestamps carried in the
//! payload are these intended times, so a stalled hub shows up as latency instead of
//! silently lowering the offered rate (no coordinated omission).
//!
//! tokio timers have millisecond granularity, far too coarse for sub-millisecond latency
//! targets, and spinning would make the generator's own CPU figure meaningless, so the
//! pacer waits on a `timerfd` armed with the absolute deadline (nanosecond resolution,
//! woken through the same epoll as every socket).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::OnceLock;
use std::time::Duration;

use tokio::io::unix::AsyncFd;

use crate::stats::{epoch, now_ns};

/// CLOCK_MONOTONIC at the epoch, in ns (`Instant` is CLOCK_MONOTONIC on Linux).
fn mono_at_epoch() -> u64 {
    static M: OnceLock<u64> = OnceLock::new();
    *M.get_or_init(|| {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes the timespec we pass.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        let mono_now = ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64;
        mono_now.saturating_sub(epoch().elapsed().as_nanos() as u64)
    })
}

/// A high-resolution one-shot timer on the runtime's epoll.
pub struct Timer {
    fd: Option<AsyncFd<OwnedFd>>,
}

impl Timer {
    pub fn new() -> Timer {
        mono_at_epoch();
        // SAFETY: timerfd_create returns a new descriptor we take ownership of.
        let raw = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        let fd = (raw >= 0)
            .then(|| {
                // SAFETY: `raw` is a fresh descriptor owned by nobody else; the OwnedFd
                // closes it after the AsyncFd deregisters it.
                unsafe { AsyncFd::register(OwnedFd::from_raw_fd(raw)) }.ok()
            })
            .flatten();
        Timer { fd }
    }

    /// Waits until `t_ns` (nanoseconds since the epoch).
    pub async fn until(&mut self, t_ns: u64) {
        loop {
            let now = now_ns();
            if now >= t_ns {
                return;
            }
            let Some(fd) = &self.fd else {
                // No timerfd: millisecond sleeps, then yield until the deadline.
                if t_ns - now > 2_000_000 {
                    tokio::time::sleep(Duration::from_nanos(t_ns - now - 1_500_000)).await;
                } else {
                    tokio::task::yield_now().await;
                }
                continue;
            };
            if t_ns - now < 20_000 {
                tokio::task::yield_now().await;
                continue;
            }
            let abs = mono_at_epoch() + t_ns;
            let spec = libc::itimerspec {
                it_interval: libc::timespec {
                    tv_sec: 0,
                    tv_nsec: 0,
                },
                it_value: libc::timespec {
                    tv_sec: (abs / 1_000_000_000) as libc::time_t,
                    tv_nsec: (abs % 1_000_000_000) as libc::c_long,
                },
            };
            // SAFETY: arming our own timerfd with a valid itimerspec.
            unsafe {
                libc::timerfd_settime(
                    fd.as_raw_fd(),
                    libc::TFD_TIMER_ABSTIME,
                    &spec,
                    std::ptr::null_mut(),
                )
            };
            if let Ok(mut guard) = fd.readable().await {
                let mut buf = [0u8; 8];
                // SAFETY: reading 8 bytes (the expiration count) into our buffer. The
                // one-shot timer is consumed either way, so readiness is cleared and the
                // next arming produces a fresh edge.
                unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), 8) };
                guard.clear_ready();
            }
        }
    }
}

/// Waits until `t_ns` (nanoseconds since the epoch) with sub-millisecond precision.
pub async fn until(t_ns: u64) {
    Timer::new().until(t_ns).await;
}

/// Runs an open-loop schedule at `rate` per second from `start_ns` until `end_ns`, calling
/// `dispatch(i, intended_ns)` for every due message (several at once when behind).
/// Returns how many were dispatched.
pub async fn open_loop(
    rate: f64,
    start_ns: u64,
    end_ns: u64,
    mut dispatch: impl FnMut(u64, u64),
) -> u64 {
    let period = 1e9 / rate.max(1e-9);
    let due = |i: u64| start_ns + (i as f64 * period) as u64;
    let mut i = 0u64;
    let mut timer = Timer::new();
    loop {
        let t = due(i);
        if t >= end_ns {
            return i;
        }
        timer.until(t).await;
        let now = now_ns();
        while due(i) <= now && due(i) < end_ns {
            dispatch(i, due(i));
            i += 1;
        }
    }
}

/// Runs `count` dispatches at `rate` per second from `start_ns`.
pub async fn open_loop_count(
    rate: f64,
    start_ns: u64,
    count: u64,
    mut dispatch: impl FnMut(u64, u64),
) {
    let period = 1e9 / rate.max(1e-9);
    let due = |i: u64| start_ns + (i as f64 * period) as u64;
    let mut i = 0u64;
    let mut timer = Timer::new();
    while i < count {
        timer.until(due(i)).await;
        let now = now_ns();
        while i < count && due(i) <= now {
            dispatch(i, due(i));
            i += 1;
        }
    }
}

/// Sleeps `secs` seconds.
pub async fn sleep_secs(secs: f64) {
    tokio::time::sleep(Duration::from_secs_f64(secs.max(0.0))).await;
}
