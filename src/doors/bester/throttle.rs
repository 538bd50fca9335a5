//! Failed-login throttle (issue 12): per remote address and per username, growing delays.
//!
//! A key (an address, or a claimed username whether or not the user exists) may fail
//! [`Policy::free`] logins at no cost. After that each attempt must wait, after the key's
//! last failure, a delay that starts at [`Policy::base`] and doubles with every further
//! failure up to [`Policy::max`]. An attempt that comes too early is refused at once,
//! without hashing, and does not count as a failure. Attempts still being checked count
//! against the free failures too, so a burst of concurrent logins from one address cannot
//! all slip through before the first of them has failed. A key without a failure for
//! [`Policy::quiet`] is forgotten. Each table holds at most [`Policy::max_keys`] keys; when
//! it is full the stale keys go first, then the least recently active ones, so a flood of
//! new keys costs bounded memory (and at worst makes the hub forget old failures).

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

// tokio's clock (the std clock outside a runtime): tests run the throttle on paused time.
use tokio::time::Instant;

use super::settings;

/// The throttle's numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub free: u32,
    pub base: Duration,
    pub max: Duration,
    pub quiet: Duration,
    pub max_keys: usize,
}

impl Default for Policy {
    fn default() -> Policy {
        Policy {
            free: settings::THROTTLE_FREE_FAILURES,
            base: settings::THROTTLE_BASE_DELAY,
            max: settings::THROTTLE_MAX_DELAY,
            quiet: settings::THROTTLE_QUIET,
            max_keys: settings::THROTTLE_MAX_KEYS,
        }
    }
}

impl Policy {
    /// The wait after the last of `failures` failures (zero within the free ones).
    fn delay(&self, failures: u32) -> Duration {
        if failures < self.free {
            return Duration::ZERO;
        }
        let doublings = (failures - self.free).min(30);
        self.base.saturating_mul(1 << doublings).min(self.max)
    }
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    failures: u32,
    in_flight: u32,
    /// Last failure, or when the entry was made.
    last: Instant,
}

struct Table<K> {
    entries: HashMap<K, Entry>,
}

impl<K> Default for Table<K> {
    fn default() -> Self {
        Table {
            entries: HashMap::new(),
        }
    }
}

impl<K: Hash + Eq + Clone> Table<K> {
    fn is_stale(e: &Entry, policy: &Policy, now: Instant) -> bool {
        e.in_flight == 0 && now.saturating_duration_since(e.last) >= policy.quiet
    }

    /// How long `key` must still wait before it may try (zero: now).
    fn wait(&self, key: &K, policy: &Policy, now: Instant) -> Duration {
        let Some(e) = self.entries.get(key) else {
            return Duration::ZERO;
        };
        if Self::is_stale(e, policy, now) || e.failures + e.in_flight < policy.free {
            return Duration::ZERO;
        }
        if e.in_flight > 0 {
            // The free failures are spoken for by attempts still running.
            return policy.base.max(policy.delay(e.failures + e.in_flight));
        }
        (e.last + policy.delay(e.failures)).saturating_duration_since(now)
    }

    /// Counts an attempt in flight; `false` if the table is full of attempts in flight
    /// (the attempt goes on untracked).
    fn begin(&mut self, key: &K, policy: &Policy, now: Instant) -> bool {
        if let Some(e) = self.entries.get_mut(key) {
            if Self::is_stale(e, policy, now) {
                *e = Entry {
                    failures: 0,
                    in_flight: 0,
                    last: now,
                };
            }
            e.in_flight += 1;
            return true;
        }
        if self.entries.len() >= policy.max_keys && !self.make_room(policy, now) {
            return false;
        }
        self.entries.insert(
            key.clone(),
            Entry {
                failures: 0,
                in_flight: 1,
                last: now,
            },
        );
        true
    }

    /// Ends an attempt counted by [`Table::begin`].
    fn end(&mut self, key: &K, failed: bool, now: Instant) {
        let Some(e) = self.entries.get_mut(key) else {
            return;
        };
        e.in_flight = e.in_flight.saturating_sub(1);
        if failed {
            e.failures = e.failures.saturating_add(1);
            e.last = now;
        }
        if e.failures == 0 && e.in_flight == 0 {
            self.entries.remove(key);
        }
    }

    /// Drops stale keys, then (if still full) the eighth of the keys least recently
    /// active; keys with attempts in flight stay. Whether there is room now.
    fn make_room(&mut self, policy: &Policy, now: Instant) -> bool {
        self.entries.retain(|_, e| !Self::is_stale(e, policy, now));
        if self.entries.len() < policy.max_keys {
            return true;
        }
        let mut idle: Vec<(Instant, K)> = self
            .entries
            .iter()
            .filter(|(_, e)| e.in_flight == 0)
            .map(|(k, e)| (e.last, k.clone()))
            .collect();
        if idle.is_empty() {
            return false;
        }
        let n = (policy.max_keys / 8).clamp(1, idle.len());
        if n < idle.len() {
            idle.select_nth_unstable_by_key(n - 1, |(last, _)| *last);
        }
        for (_, k) in idle.into_iter().take(n) {
            self.entries.remove(&k);
        }
        self.entries.len() < policy.max_keys
    }

    fn len(&self) -> usize {
        self.entries.len()
    }
}

#[derive(Default)]
struct Inner {
    by_addr: Table<IpAddr>,
    by_user: Table<String>,
}

/// The throttle of one hub.
#[derive(Default)]
pub struct Throttle {
    policy: Policy,
    inner: Mutex<Inner>,
}

/// Why an attempt may not go ahead: which key, and how long until it may.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Throttled {
    pub by: &'static str,
    pub retry_after: Duration,
}

/// One login attempt in flight; [`Attempt::failed`] records its failure. Dropping it
/// otherwise ends it without one (success, no hashing slot, connection gone).
pub struct Attempt<'a> {
    throttle: &'a Throttle,
    addr: Option<IpAddr>,
    user: Option<String>,
    ended: bool,
}

impl Attempt<'_> {
    pub fn failed(mut self) {
        self.end(true, Instant::now());
    }

    fn end(&mut self, failed: bool, now: Instant) {
        if std::mem::replace(&mut self.ended, true) {
            return;
        }
        let mut inner = self.throttle.lock();
        if let Some(a) = &self.addr {
            inner.by_addr.end(a, failed, now);
        }
        if let Some(u) = &self.user {
            inner.by_user.end(u, failed, now);
        }
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        self.end(false, Instant::now());
    }
}

impl Throttle {
    pub fn new(policy: Policy) -> Throttle {
        Throttle {
            policy,
            inner: Mutex::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Nothing panics while holding this lock; recover the guard rather than the hub.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts a login attempt from `addr` (none for the Unix socket) as `user` (a valid
    /// username, existing or not), or says how long it must wait.
    pub fn begin(
        &self,
        addr: Option<IpAddr>,
        user: Option<&str>,
    ) -> Result<Attempt<'_>, Throttled> {
        self.begin_at(addr, user, Instant::now())
    }

    fn begin_at(
        &self,
        addr: Option<IpAddr>,
        user: Option<&str>,
        now: Instant,
    ) -> Result<Attempt<'_>, Throttled> {
        let p = &self.policy;
        let mut inner = self.lock();
        let user = user.map(str::to_owned);
        let by_addr = addr.map_or(Duration::ZERO, |a| inner.by_addr.wait(&a, p, now));
        let by_user = user
            .as_ref()
            .map_or(Duration::ZERO, |u| inner.by_user.wait(u, p, now));
        if !by_addr.is_zero() || !by_user.is_zero() {
            let (by, retry_after) = if by_addr >= by_user {
                ("address", by_addr)
            } else {
                ("username", by_user)
            };
            return Err(Throttled { by, retry_after });
        }
        let addr = addr.filter(|a| inner.by_addr.begin(a, p, now));
        let user = user.filter(|u| inner.by_user.begin(u, p, now));
        Ok(Attempt {
            throttle: self,
            addr,
            user,
            ended: false,
        })
    }

    /// (addresses, usernames) tracked now.
    pub fn tracked(&self) -> (usize, usize) {
        let inner = self.lock();
        (inner.by_addr.len(), inner.by_user.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy {
            free: 2,
            base: Duration::from_secs(1),
            max: Duration::from_secs(8),
            quiet: Duration::from_secs(100),
            max_keys: 16,
        }
    }

    fn ip(n: u32) -> Option<IpAddr> {
        Some(IpAddr::from(std::net::Ipv4Addr::from(0x7f00_0000 + n)))
    }

    fn fail(t: &Throttle, addr: Option<IpAddr>, user: Option<&str>, now: Instant) {
        t.begin_at(addr, user, now).expect("allowed").end(true, now);
    }

    fn wait(t: &Throttle, addr: Option<IpAddr>, user: Option<&str>, now: Instant) -> Duration {
        match t.begin_at(addr, user, now) {
            Ok(_) => Duration::ZERO,
            Err(e) => e.retry_after,
        }
    }

    #[test]
    fn delays_double_up_to_the_cap_and_are_forgotten_when_quiet() {
        let t = Throttle::new(policy());
        let t0 = Instant::now();
        let s = Duration::from_secs;
        fail(&t, ip(1), None, t0);
        fail(&t, ip(1), None, t0);
        // Two free failures spent: 1 s, then 2, 4, 8, 8 s after each further failure.
        assert_eq!(wait(&t, ip(1), None, t0), s(1));
        assert_eq!(wait(&t, ip(2), None, t0), s(0), "another address is free");
        let mut now = t0;
        for expected in [2, 4, 8, 8] {
            // Wait the delay out, then fail once more.
            now += wait(&t, ip(1), None, now);
            fail(&t, ip(1), None, now);
            assert_eq!(wait(&t, ip(1), None, now), s(expected));
        }
        // A throttled attempt is refused without counting.
        assert_eq!(wait(&t, ip(1), None, now + s(1)), s(7));
        assert_eq!(wait(&t, ip(1), None, now + s(1)), s(7));
        // Quiet for long enough: forgotten.
        assert_eq!(wait(&t, ip(1), None, now + s(100)), s(0));
        assert_eq!(t.tracked(), (0, 0));
    }

    #[test]
    fn usernames_are_throttled_across_addresses() {
        let t = Throttle::new(policy());
        let now = Instant::now();
        fail(&t, ip(1), Some("alice"), now);
        fail(&t, ip(2), Some("alice"), now);
        let e = t
            .begin_at(ip(3), Some("alice"), now)
            .err()
            .expect("throttled");
        assert_eq!(e.by, "username");
        assert!(t.begin_at(ip(3), Some("bob"), now).is_ok());
        // The Unix socket has no address; its usernames are still throttled.
        assert!(t.begin_at(None, Some("alice"), now).is_err());
    }

    #[test]
    fn attempts_in_flight_count_against_the_free_failures() {
        let t = Throttle::new(policy());
        let now = Instant::now();
        let a = t.begin_at(ip(1), None, now).expect("first");
        let b = t.begin_at(ip(1), None, now).expect("second");
        assert!(t.begin_at(ip(1), None, now).is_err(), "a third at once");
        // Ending without a failure (success, no slot) frees the place.
        drop(a);
        let c = t.begin_at(ip(1), None, now).expect("after one ended");
        let (mut b, mut c) = (b, c);
        b.end(true, now);
        c.end(true, now);
        assert!(t.begin_at(ip(1), None, now).is_err());
        assert_eq!(t.tracked(), (1, 0));
    }

    #[test]
    fn successes_leave_nothing_behind() {
        let t = Throttle::new(policy());
        let now = Instant::now();
        for _ in 0..10 {
            drop(t.begin_at(ip(1), Some("alice"), now).expect("allowed"));
        }
        assert_eq!(t.tracked(), (0, 0));
    }

    #[test]
    fn a_flood_of_new_keys_keeps_the_tables_bounded() {
        let t = Throttle::new(policy());
        let t0 = Instant::now();
        // The first address is the oldest; it is the first forgotten.
        fail(&t, ip(0), None, t0);
        fail(&t, ip(0), None, t0);
        for n in 1..1000 {
            let name = format!("u{n}");
            fail(&t, ip(n), Some(&name), t0 + Duration::from_millis(n as u64));
        }
        let (addrs, users) = t.tracked();
        assert!(addrs <= 16 && users <= 16, "{addrs} {users}");
        assert!(addrs >= 14, "evicts a few at a time: {addrs}");
        assert_eq!(
            wait(&t, ip(0), None, t0 + Duration::from_secs(1)),
            Duration::ZERO
        );
        // Recent failures are still remembered.
        fail(&t, ip(999), None, t0 + Duration::from_secs(1));
        assert!(
            t.begin_at(ip(999), None, t0 + Duration::from_secs(1))
                .is_err()
        );
    }

    /// Through the public clock: [`Throttle::begin`] and [`Attempt::failed`] read tokio's
    /// time, here paused and advanced by hand.
    #[tokio::test(start_paused = true)]
    async fn backoff_and_expiry_on_the_clock() {
        use tokio::time::advance;
        let t = Throttle::new(policy());
        let s = Duration::from_secs;
        let try_at = |t: &Throttle| t.begin(ip(1), Some("carol")).err().map(|e| e.retry_after);
        for _ in 0..2 {
            t.begin(ip(1), Some("carol")).expect("free").failed();
        }
        assert_eq!(try_at(&t), Some(s(1)));
        // Each further failure, once its delay has passed, doubles the next delay (1, 2,
        // 4, 8 s) up to the cap (8 s).
        for (delay, next) in [(1, 2), (2, 4), (4, 8), (8, 8)] {
            advance(s(delay) - Duration::from_millis(1)).await;
            assert!(
                try_at(&t).is_some(),
                "still throttled just before {delay} s"
            );
            advance(Duration::from_millis(1)).await;
            t.begin(ip(1), Some("carol")).expect("delay over").failed();
            assert_eq!(try_at(&t), Some(s(next)));
        }
        // Quiet for `quiet` (100 s after the last failure): forgotten, so the two free
        // failures are back (remembered, the first would cost the capped 8 s).
        advance(s(99)).await;
        assert_eq!(t.tracked(), (1, 1));
        advance(s(1)).await;
        for _ in 0..2 {
            t.begin(ip(1), Some("carol")).expect("free again").failed();
        }
        assert_eq!(try_at(&t), Some(s(1)));
    }

    #[test]
    fn a_table_full_of_attempts_in_flight_lets_new_ones_go_untracked() {
        let t = Throttle::new(policy());
        let now = Instant::now();
        let held: Vec<_> = (0..16)
            .map(|n| t.begin_at(ip(n), None, now).unwrap())
            .collect();
        let extra = t.begin_at(ip(100), None, now).expect("not refused");
        assert!(extra.addr.is_none());
        drop(extra);
        drop(held);
        assert_eq!(t.tracked(), (0, 0));
    }
}
