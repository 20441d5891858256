//! A lazily created, reusable timer slot for the response futures.

use pin_project_lite::pin_project;
use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};
use tokio::time::{sleep_until, Instant, Sleep};

/// How late a timer may fire: tokio rounds a timer's deadline up to its next whole millisecond
/// tick, so a sleep until `t` ends at or after `t` but less than this after it. A wait that must
/// end before a deadline is given this much more, and two deadlines less than this apart may
/// fire on the same tick.
pub(crate) const TIMER_RESOLUTION: Duration = Duration::from_millis(1);

pin_project! {
    /// Empty until first armed, so a call that never waits never touches the timer wheel; then
    /// reset in place for each later wait.
    #[project = TimerProj]
    pub(crate) enum Timer {
        Idle,
        Armed { #[pin] sleep: Sleep },
    }
}

impl Timer {
    pub(crate) fn arm(mut self: Pin<&mut Self>, deadline: Instant) {
        match self.as_mut().project() {
            TimerProj::Armed { sleep } => sleep.reset(deadline),
            TimerProj::Idle => self.set(Timer::Armed {
                sleep: sleep_until(deadline),
            }),
        }
    }

    /// When the armed timer fires; `None` while idle.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        match self {
            Timer::Armed { sleep } => Some(sleep.deadline()),
            Timer::Idle => None,
        }
    }

    /// Ready when the armed deadline has passed; pending while idle.
    pub(crate) fn poll_elapsed(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        match self.project() {
            TimerProj::Armed { sleep } => sleep.poll(cx),
            TimerProj::Idle => Poll::Pending,
        }
    }
}
