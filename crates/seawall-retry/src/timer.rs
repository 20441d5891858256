//! A lazily created, reusable timer slot for the response futures.

use pin_project_lite::pin_project;
use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};
use tokio::time::{sleep_until, Instant, Sleep};

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

    /// Ready when the armed deadline has passed; pending while idle.
    pub(crate) fn poll_elapsed(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        match self.project() {
            TimerProj::Armed { sleep } => sleep.poll(cx),
            TimerProj::Idle => Poll::Pending,
        }
    }
}
