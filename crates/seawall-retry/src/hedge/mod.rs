//! Hedged requests: when a call is slow, send a copy and take whichever answers first.
//!
//! Tail latency is mostly bad luck: a GC pause, a cold cache, a busy neighbour on one replica. A
//! hedge sends the same request again after a delay (possibly to another replica, if a balancer
//! sits underneath, since each hedge goes through the inner service's readiness), and the first
//! acceptable answer wins; the other calls are dropped, which cancels them. With the delay at the
//! 95th latency percentile, about 5% of calls send a second copy and the 99th percentile drops
//! towards the 95th (Dean and Barroso, "The Tail at Scale", 2013).
//!
//! - **Delay**: fixed, or a percentile of recent latencies ([`HedgeDelay`]): calls' latencies go
//!   into an HdrHistogram and at the end of each period its percentile becomes the delay, so the
//!   delay follows the service when it gets faster or slower. A call that fails, or is dropped
//!   unanswered, after running longer than the successes' percentile counts as the time it ran
//!   (a failed call's, until its last copy that may have been sent answered).
//! - **Up to `max_hedges` copies** (default 1), each `delay` after the previous one, or later
//!   when a server asked for a pause (below).
//! - **Acceptable** means an [`Outcome::Success`](seawall_core::Outcome) by the policy. A
//!   failed or ignored answer (a bulkhead's rejection of a copy) does not win while another copy
//!   is still running; when every copy sent has answered so, the answer that tells most is
//!   returned at once (the last failure of a copy that was sent, else the last failure proving
//!   its copy was never sent, else the last ignored answer, a sent copy's before one never
//!   sent), and a hedge due but still waiting for the inner service to be ready is given up.
//!   Hedging does not re-send *because* of a failure: that is what
//!   [`RetryLayer`](crate::RetryLayer) is for.
//! - **Server pauses**: when a copy fails ([`Outcome::Failure`](seawall_core::Outcome)) while
//!   another copy is still running and another hedge may still be sent, the policy is asked for the
//!   pause the server asked for ([`retry_after`](crate::Policy::retry_after) of a response, a
//!   `Retry-After` for [`HttpPolicy`](crate::HttpPolicy);
//!   [`retry_after_error`](crate::Policy::retry_after_error) of an error, gRPC's retry pushback for
//!   `seawall::grpc::RetryClassifier`). `Duration::MAX` ("do not retry") sends no further hedge,
//!   and neither does a pause the deadline leaves no room for; any other pause holds the next hedge
//!   back until at least that long after the failure (a hedge due and waiting for the inner service
//!   to be ready is given up until then). The pause is a floor: a hedge is never sent sooner than
//!   its delay. gRFC A6 uses the same signals but sends the next hedge when the pause ends (and at
//!   once after a non-fatal status without one); seawall only holds a hedge back. No cap applies.
//!   The copies already out run on, and the call answers as above. Nothing is asked when the first
//!   answer wins, nor of a failure that ends the call.
//! - **Budget**: each hedge takes one from a [`RetryBudget`](crate::budget::RetryBudget), by
//!   default 10% of requests over 10 s and no reserve, so hedging cannot double the load when
//!   everything is slow at once (which is when hedges stop helping). A hedge never sent is given
//!   back: one still waiting for the inner service to be ready when the call ends, and one whose
//!   copy a layer below turned away before sending it, its error proving so
//!   ([`seawall_core::error::not_sent`]: a full bulkhead's `Full`, an open breaker's `Open`, a
//!   refused connection). Such an answer, the original's included, takes no token from a token
//!   bucket either, so a saturated bulkhead below does not use up the budget for hedges it never
//!   let through.
//! - **Only copyable, hedgeable requests hedge**: the policy's
//!   [`is_hedgeable`](crate::Policy::is_hedgeable) (by default its `is_retryable`; for HTTP:
//!   idempotent methods, or every method with `retry_non_idempotent`, but not a request that
//!   only an idempotency key makes retryable) and the cloner must both agree.
//! - **Deadline**: no copy is sent once the request's deadline (read through [`RequestDeadline`]
//!   from the request as the call receives it, and given to any copy the cloner made without one
//!   or with a later one)
//!   has passed, and none is made or kept for a hedge that could not start before it (when it is
//!   due, plus the millisecond tokio's timer may take to fire): a request whose first hedge could
//!   not is not copied, and the last hedge the deadline leaves room for sends the request kept for
//!   hedging, not a copy of it. A fixed delay counts from the first poll: when that poll comes too
//!   late for the first hedge, the copy made at the call is dropped then and no timer is set.
//!
//! ```
//! use seawall::{retry::{HedgeLayer, RequestDeadline}, ServiceBuilderExt};
//! use std::time::Duration;
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//!
//! /// A request that carries no deadline.
//! #[derive(Clone)]
//! struct Query(&'static str);
//! impl RequestDeadline for Query {}
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), seawall::BoxError> {
//! let hedge = HedgeLayer::builder()
//!     .delay(Duration::from_millis(50))
//!     .max_hedges(2)
//!     .name("search")
//!     .build()?;
//! let replicas = service_fn(|query: Query| async move {
//!     Ok::<_, seawall::BoxError>(query.0.len())
//! });
//! let client = ServiceBuilder::new().with_hedge(hedge).service(replicas);
//! assert_eq!(client.oneshot(Query("rust")).await?, 4);
//! # Ok(())
//! # }
//! ```

mod config;
mod future;
mod latency;
mod layer;
mod service;

pub use config::{HedgeConfigBuilder, HedgeDelay};
pub use future::ResponseFuture;
pub use layer::HedgeLayer;
pub use service::Hedge;

use crate::{policy::CloneRequest, timer::TIMER_RESOLUTION};
use seawall_core::deadline::{deadline_after, RequestDeadline};
use std::time::Duration;
use tokio::time::Instant;

/// What a hedge policy reports to its [listeners](HedgeConfigBuilder::on_event).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum HedgeEvent {
    /// A hedged copy was sent: handed to the inner service. A layer below may still turn it
    /// away before sending it on (a full bulkhead's `Full`); its hedge then goes back to the
    /// budget, and the event stands.
    Sent {
        /// Which copy: 1 for the first hedge.
        hedge: u32,
        /// How long after the original call (with a fixed delay, after its first poll, whatever
        /// the policy) it was sent: the delays before it, plus any time a pause a failed copy's
        /// server asked for held it back past its delay, plus any wait for the inner service to
        /// be ready.
        after: Duration,
    },
    /// A hedged copy answered first.
    Won {
        /// Which copy.
        hedge: u32,
    },
    /// A hedge was due but the budget was exhausted; the call waits for what it already sent.
    BudgetExhausted,
}

/// Whether a hedge due at `due` could not start before `deadline`: its timer fires up to
/// [`TIMER_RESOLUTION`] after it is due. No copy is made (or kept) for such a hedge.
fn misses(deadline: Instant, due: Instant) -> bool {
    deadline <= deadline_after(due, TIMER_RESOLUTION)
}

/// A copy of `request` for a hedge. A copy the cloner made without a deadline (a request rebuilt
/// without its extensions), or with a later one, is given the call's `deadline`, so the layers
/// below work to it too; one that carries an earlier deadline of its own keeps it.
fn copy_request<K, Req>(cloner: &K, request: &Req, deadline: Option<Instant>) -> Option<Req>
where
    K: CloneRequest<Req>,
    Req: RequestDeadline,
{
    let mut copy = cloner.clone_request(request)?;
    if let Some(deadline) = deadline {
        if copy.deadline().is_none_or(|own| own > deadline) {
            copy.set_deadline(deadline);
        }
    }
    Some(copy)
}
