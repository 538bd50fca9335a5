//! A connection's bounded outbound queue: many producers (broadcasts, relay senders, the
//! admin API), one consumer (the connection's own task).
//!
//! Not a `tokio::sync::mpsc` channel: that allocates a block of 32 slots and a
//! cache-padded channel header up front (about 1 KiB per connection, most of it for sockets
//! that are idle), and pays for a semaphore on every send. Here the queue is a `VecDeque`
//! behind an uncontended mutex that holds no memory while empty and gives it back after a
//! burst, plus one [`AtomicWaker`] for the consumer.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;

use super::Outbound;

/// A drained queue keeps at most this much capacity (items), so a burst's memory is
/// returned once the connection caught up.
const KEEP_CAPACITY: usize = 8;

/// Why [`Outbox::push`] refused an item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushError {
    /// The queue holds `capacity` items: the consumer is too slow.
    Full,
    /// The consumer has gone.
    Closed,
}

/// The queue itself, owned by the connection's [`super::Conn`].
#[derive(Debug)]
pub struct Outbox {
    items: Mutex<VecDeque<Outbound>>,
    waker: AtomicWaker,
    closed: AtomicBool,
    capacity: usize,
}

impl Outbox {
    pub fn new(capacity: usize) -> Outbox {
        Outbox {
            items: Mutex::new(VecDeque::new()),
            waker: AtomicWaker::new(),
            closed: AtomicBool::new(false),
            capacity: capacity.max(1),
        }
    }

    fn items(&self) -> MutexGuard<'_, VecDeque<Outbound>> {
        // Nothing holding this lock can panic half-way through a queue operation.
        self.items.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `item` without waiting and wakes the consumer.
    pub fn push(&self, item: Outbound) -> Result<(), PushError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(PushError::Closed);
        }
        {
            let mut items = self.items();
            if items.len() >= self.capacity {
                return Err(PushError::Full);
            }
            items.push_back(item);
        }
        self.waker.wake();
        Ok(())
    }

    /// Takes the oldest item, if any.
    fn pop(&self) -> Option<Outbound> {
        let mut items = self.items();
        let item = items.pop_front();
        if items.is_empty() && items.capacity() > KEEP_CAPACITY {
            items.shrink_to(KEEP_CAPACITY);
        }
        item
    }

    fn poll_pop(&self, cx: &mut Context<'_>) -> Poll<Outbound> {
        if let Some(item) = self.pop() {
            return Poll::Ready(item);
        }
        self.waker.register(cx.waker());
        // A push between the first pop and the registration would otherwise be missed.
        match self.pop() {
            Some(item) => Poll::Ready(item),
            None => Poll::Pending,
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.items().len()
    }

    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        let drained = std::mem::take(&mut *self.items());
        drop(drained);
    }
}

/// The consuming end, held by the connection's task. Dropping it closes the queue: later
/// pushes fail with [`PushError::Closed`] and queued items are freed.
#[derive(Debug)]
pub struct Receiver {
    conn: Arc<super::Conn>,
}

impl Receiver {
    pub(super) fn new(conn: Arc<super::Conn>) -> Receiver {
        Receiver { conn }
    }

    /// The next item; waits while the queue is empty.
    pub async fn recv(&mut self) -> Outbound {
        poll_fn(|cx| self.conn.outbox().poll_pop(cx)).await
    }

    /// The next item if one is queued.
    pub fn try_recv(&mut self) -> Option<Outbound> {
        self.conn.outbox().pop()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.conn.outbox().close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item() -> Outbound {
        Outbound::Ping
    }

    #[test]
    fn refuses_past_capacity_and_after_close() {
        let q = Outbox::new(2);
        assert_eq!(q.push(item()), Ok(()));
        assert_eq!(q.push(item()), Ok(()));
        assert_eq!(q.push(item()), Err(PushError::Full));
        assert!(q.pop().is_some());
        assert_eq!(q.push(item()), Ok(()));
        q.close();
        assert_eq!(q.len(), 0);
        assert_eq!(q.push(item()), Err(PushError::Closed));
    }

    #[test]
    fn gives_memory_back_after_a_burst() {
        let q = Outbox::new(1000);
        for _ in 0..500 {
            q.push(item()).unwrap();
        }
        while q.pop().is_some() {}
        assert!(q.items().capacity() <= KEEP_CAPACITY);
    }

    #[tokio::test]
    async fn wakes_the_consumer() {
        let q = Arc::new(Outbox::new(4));
        let consumer = {
            let q = q.clone();
            tokio::spawn(async move { poll_fn(|cx| q.poll_pop(cx)).await })
        };
        tokio::task::yield_now().await;
        q.push(Outbound::RelayRevoked).unwrap();
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), consumer)
            .await
            .expect("woken")
            .expect("task");
        assert!(matches!(got, Outbound::RelayRevoked));
    }
}
