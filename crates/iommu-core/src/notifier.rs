//! Blocking notifier chains (Linux's `blocking_notifier_head`).
//!
//! Listeners run in registration order, outside every core lock, so a
//! listener may call back into the core, register more listeners, or
//! unregister itself or others; one unregistered before its turn is skipped.

use crate::prelude::*;
use crate::sync::Mutex;
use alloc::sync::Arc;
use core::sync::atomic::{AtomicU64, Ordering};

/// What a listener tells the chain (`NOTIFY_DONE`, `NOTIFY_OK`, `NOTIFY_STOP`, `NOTIFY_BAD`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Notify {
    /// Not interested.
    Done,
    /// Handled.
    Ok,
    /// Handled; later listeners must not run.
    Stop,
    /// Refused; later listeners must not run.
    Bad,
}

impl Notify {
    fn stops(self) -> bool {
        matches!(self, Notify::Stop | Notify::Bad)
    }
}

/// Handle returned by `register`, used to unregister.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NotifierId(u64);

type Listener<E> = Arc<dyn Fn(&E) -> Notify + Send + Sync>;

/// An ordered list of listeners for events of type `E`.
pub struct NotifierChain<E> {
    listeners: Mutex<Vec<(NotifierId, Listener<E>)>>,
    next: AtomicU64,
}

impl<E> Default for NotifierChain<E> {
    fn default() -> Self {
        Self {
            listeners: Mutex::new(Vec::new()),
            next: AtomicU64::new(1),
        }
    }
}

impl<E> core::fmt::Debug for NotifierChain<E> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "NotifierChain({} listeners)", self.len())
    }
}

impl<E> NotifierChain<E> {
    /// Appends a listener.
    pub fn register(&self, listener: impl Fn(&E) -> Notify + Send + Sync + 'static) -> NotifierId {
        let id = NotifierId(self.next.fetch_add(1, Ordering::Relaxed));
        self.listeners.lock().push((id, Arc::new(listener)));
        id
    }

    /// Removes a listener; `false` if it was not registered.
    pub fn unregister(&self, id: NotifierId) -> bool {
        let mut l = self.listeners.lock();
        let before = l.len();
        l.retain(|(i, _)| *i != id);
        l.len() != before
    }

    /// Listeners registered now.
    pub fn len(&self) -> usize {
        self.listeners.lock().len()
    }

    /// Whether no listener is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Runs the listeners in order; returns the last answer (`Done` if none ran).
    pub fn call(&self, event: &E) -> Notify {
        let snapshot: Vec<(NotifierId, Listener<E>)> = self.listeners.lock().clone();
        let mut last = Notify::Done;
        for (id, listener) in snapshot {
            let still_there = self.listeners.lock().iter().any(|(i, _)| *i == id);
            if !still_there {
                continue;
            }
            last = listener(event);
            if last.stops() {
                break;
            }
        }
        last
    }
}
