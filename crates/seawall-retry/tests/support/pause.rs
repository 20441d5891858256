//! A policy that reads a pause from a failed attempt's error (`Policy::retry_after_error`), the
//! errors it reads it from, and the answers a scripted service gives: for the pushback tests of
//! the retry and the hedge.

use super::Req;
use seawall_core::{error::NotSent, BoxError, Outcome};
use seawall_retry::Policy;
use std::{
    error::Error,
    fmt,
    sync::{
        atomic::{AtomicU32, Ordering},
        Arc,
    },
    time::Duration,
};

/// A server's "busy, come back in a while", as a client of one's own reports it; with a
/// rejection raised before sending as its source, when the request never left.
#[derive(Debug)]
pub struct Busy(pub Option<Duration>, pub Option<NotSent>);

impl fmt::Display for Busy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("busy")
    }
}

impl Error for Busy {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.1.as_ref().map(|not_sent| not_sent as _)
    }
}

/// An error [`Pausing`] ignores (the server's own answer); also one for `ignore_error`.
#[derive(Debug)]
pub struct Other;

impl fmt::Display for Other {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("other")
    }
}

impl Error for Other {}

/// Fails every error but [`Other`] (so retries it, or hedges on), and reads the wait a [`Busy`]
/// carries; counts how often it is asked.
#[derive(Clone, Default)]
pub struct Pausing {
    asked: Arc<AtomicU32>,
}

impl Pausing {
    /// How often the policy was asked for a pause.
    pub fn asked(&self) -> u32 {
        self.asked.load(Ordering::Relaxed)
    }
}

impl Policy<Req, &'static str> for Pausing {
    fn classify(&self, result: Result<&&'static str, &BoxError>, _: Duration) -> Outcome {
        match result {
            Ok(_) => Outcome::Success,
            Err(error) if error.is::<Other>() => Outcome::Ignored,
            Err(_) => Outcome::Failure,
        }
    }

    fn retry_after_error(&self, error: &BoxError) -> Option<Duration> {
        self.asked.fetch_add(1, Ordering::Relaxed);
        error.downcast_ref::<Busy>().and_then(|busy| busy.0)
    }

    fn uses_elapsed(&self) -> bool {
        false
    }
}

/// How one call of a scripted service ends.
#[derive(Debug, Clone, Copy)]
pub enum Answer {
    /// Busy, with the wait it asks for if any.
    Busy(Option<Duration>),
    /// Busy, with the wait it asks for, and never sent: a `NotSent` with this `retry_after` in
    /// its chain.
    BusyUnsent(Duration, Duration),
    /// An error the policy ignores.
    Other,
    Ok,
}

impl Answer {
    /// What the call returns.
    pub fn result(self) -> Result<&'static str, BoxError> {
        match self {
            Answer::Busy(after) => Err(Box::new(Busy(after, None))),
            Answer::BusyUnsent(after, not_sent) => Err(Box::new(Busy(
                Some(after),
                Some(NotSent::with_retry_after(not_sent)),
            ))),
            Answer::Other => Err(Box::new(Other)),
            Answer::Ok => Ok("ok"),
        }
    }
}
