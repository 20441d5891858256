//! The hand-over from a source's task to its [`Discovery`](crate::Discovery): the latest list
//! the task found, which replaces one the stream has not taken yet, so a stream that is not read
//! holds one list however often the source changes.

use std::{
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    task::{Context, Poll, Waker},
};

struct State<T> {
    /// The latest value offered and not yet taken.
    next: Option<T>,
    /// Whether the publisher is gone: nothing comes after `next`.
    closed: bool,
    /// The stream's task, waiting for a value.
    waker: Option<Waker>,
}

/// The source's end: offers values, and closes the hand-over when dropped (its task ending,
/// returning, aborted or panicking).
pub(crate) struct Publisher<T> {
    state: Arc<Mutex<State<T>>>,
}

/// The stream's end: takes the latest value offered.
pub(crate) struct Latest<T>(Arc<Mutex<State<T>>>);

/// A hand-over with nothing offered yet.
pub(crate) fn channel<T>() -> (Publisher<T>, Latest<T>) {
    let state = Arc::new(Mutex::new(State {
        next: None,
        closed: false,
        waker: None,
    }));
    let publisher = Publisher {
        state: state.clone(),
    };
    (publisher, Latest(state))
}

fn lock<T>(state: &Mutex<State<T>>) -> MutexGuard<'_, State<T>> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<T> Publisher<T> {
    /// Offers `value` in place of any value not yet taken.
    pub(crate) fn publish(&self, value: T) {
        let (waker, _replaced) = {
            let mut state = lock(&self.state);
            let replaced = state.next.replace(value);
            (state.waker.take(), replaced)
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

impl<T> Drop for Publisher<T> {
    fn drop(&mut self) {
        let waker = {
            let mut state = lock(&self.state);
            state.closed = true;
            state.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

impl<T> Latest<T> {
    /// `value`, offered once, with no publisher to offer more or to close the hand-over: after
    /// `value`, [`poll_next`](Self::poll_next) stays pending.
    pub(crate) fn open_with(value: T) -> Self {
        Latest(Arc::new(Mutex::new(State {
            next: Some(value),
            closed: false,
            waker: None,
        })))
    }

    /// The latest value offered, if not yet taken; `None` once the publisher is gone and its last
    /// value taken.
    pub(crate) fn poll_next(&self, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let mut state = lock(&self.0);
        if let Some(value) = state.next.take() {
            return Poll::Ready(Some(value));
        }
        if state.closed {
            return Poll::Ready(None);
        }
        match &mut state.waker {
            Some(waker) => waker.clone_from(cx.waker()),
            None => state.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// The latest value offered, if not yet taken, without waiting for one.
    pub(crate) fn take(&self) -> Option<T> {
        lock(&self.0).next.take()
    }

    /// Whether a value waits to be taken.
    pub(crate) fn is_offered(&self) -> bool {
        lock(&self.0).next.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_latest_value_wins_and_the_last_is_taken_before_the_end() {
        let mut cx = Context::from_waker(Waker::noop());
        let (publisher, latest) = channel();
        assert_eq!(latest.poll_next(&mut cx), Poll::Pending);
        publisher.publish(1);
        publisher.publish(2);
        assert!(latest.is_offered());
        assert_eq!(latest.poll_next(&mut cx), Poll::Ready(Some(2)));
        assert_eq!(latest.poll_next(&mut cx), Poll::Pending);
        assert_eq!(latest.take(), None);
        publisher.publish(4);
        assert_eq!(latest.take(), Some(4));
        assert!(!latest.is_offered());
        publisher.publish(3);
        drop(publisher);
        assert_eq!(latest.poll_next(&mut cx), Poll::Ready(Some(3)));
        assert_eq!(latest.poll_next(&mut cx), Poll::Ready(None));
        assert_eq!(latest.poll_next(&mut cx), Poll::Ready(None));

        let once = Latest::open_with(7);
        assert_eq!(once.poll_next(&mut cx), Poll::Ready(Some(7)));
        assert_eq!(once.poll_next(&mut cx), Poll::Pending);
    }
}
