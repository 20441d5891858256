//! The hooks a balancer calls: the request's hash key, the active health probe and the
//! availability filter.

use std::{
    future::{ready, Future, Ready},
    time::Duration,
};

/// The key of a request for [`Picker::ConsistentHash`](crate::Picker::ConsistentHash).
///
/// Implemented for closures `Fn(&Req) -> u64`; [`NoKey`] gives every request no key.
pub trait HashKey<Req> {
    /// The request's key, or `None` to let the balancer pick at random.
    fn hash_key(&self, req: &Req) -> Option<u64>;
}

impl<Req, F> HashKey<Req> for F
where
    F: Fn(&Req) -> u64,
{
    #[inline]
    fn hash_key(&self, req: &Req) -> Option<u64> {
        Some(self(req))
    }
}

/// No request has a hash key.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoKey;

impl<Req> HashKey<Req> for NoKey {
    #[inline]
    fn hash_key(&self, _req: &Req) -> Option<u64> {
        None
    }
}

/// An active health probe (Ribbon's `IPing`): given an endpoint's key and a clone of its service,
/// answers whether the endpoint is alive.
///
/// Implemented for closures `Fn(&K, S) -> impl Future<Output = bool>`.
pub trait Probe<K, S>: Send + Sync + 'static {
    /// The probe's future.
    type Future: Future<Output = bool> + Send + 'static;

    /// Probes one endpoint.
    fn probe(&self, key: &K, service: S) -> Self::Future;

    /// Whether this probe never fails, so the balancer can skip probing.
    fn is_noop(&self) -> bool {
        false
    }
}

impl<K, S, F, Fut> Probe<K, S> for F
where
    F: Fn(&K, S) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = bool> + Send + 'static,
{
    type Future = Fut;

    fn probe(&self, key: &K, service: S) -> Fut {
        self(key, service)
    }
}

/// No active health checking: every endpoint is alive.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProbe;

impl<K, S> Probe<K, S> for NoProbe {
    type Future = Ready<bool>;

    fn probe(&self, _key: &K, _service: S) -> Ready<bool> {
        ready(true)
    }

    fn is_noop(&self) -> bool {
        true
    }
}

/// An availability filter consulted on each pick: `false` keeps the endpoint out of the pick
/// (Ribbon's `AvailabilityFilteringRule`).
///
/// Implemented for closures `Fn(&K, &S) -> bool`, given the endpoint's key and service. It runs on
/// the hot path: keep it to a few atomic loads. With the `breaker` feature, [`BreakerFilter`]
/// skips endpoints whose own circuit breaker is open.
///
/// [`BreakerFilter`]: crate::BreakerFilter
pub trait Filter<K, S>: Send + Sync + 'static {
    /// Whether the endpoint may take a call now.
    fn available(&self, key: &K, service: &S) -> bool;

    /// Whether the endpoint may still take the call of a caller waiting on it, which holds
    /// `held`: the clone of the endpoint's service it polled ready, not ready yet. What that
    /// clone's readiness reserved for its call (a half-open breaker's probe slot) is the caller's
    /// own, not a reason to refuse it: refused, the caller lets go of the clone, with whatever it
    /// reserved and its place in the endpoint's queue, and picks again. By default
    /// [`available`](Self::available), asked of `held`.
    fn available_held(&self, key: &K, held: &S) -> bool {
        self.available(key, held)
    }

    /// For an endpoint this filter refuses: how soon it may take calls again, when the filter
    /// knows (an open breaker's remaining wait). A call waiting for an endpoint looks again then;
    /// otherwise it is woken only by what the balancer sees (the set or health changing, one of
    /// its calls completing or being cancelled) or by its `max_wait`. `None` by default.
    fn available_in(&self, key: &K, service: &S) -> Option<Duration> {
        let _ = (key, service);
        None
    }

    /// Whether `error`, which a call of endpoint `key` ended with, is this filter's own
    /// rejection of the call (an endpoint's breaker that opened between the pick and the call):
    /// the call was never sent, and outlier detection and the latency-aware pickers count it as
    /// neither success nor failure, as they do a call their classifier ignores. `service` is the
    /// endpoint's service, asked right after the call ended, so the answer can rest on what the
    /// filter would say of the endpoint now, not on the error's type alone: an error of the same
    /// type from within the endpoint's service must still count against the endpoint. Asked only
    /// of a call that ends with an error its classifier did not ignore. `false` by default.
    fn rejected(&self, key: &K, service: &S, error: &(dyn std::error::Error + 'static)) -> bool {
        let _ = (key, service, error);
        false
    }

    /// Whether this filter lets every endpoint through, so the balancer can skip calling it.
    fn is_noop(&self) -> bool {
        false
    }
}

impl<K, S, F> Filter<K, S> for F
where
    F: Fn(&K, &S) -> bool + Send + Sync + 'static,
{
    #[inline]
    fn available(&self, key: &K, service: &S) -> bool {
        self(key, service)
    }
}

/// Every endpoint is available.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoFilter;

impl<K, S> Filter<K, S> for NoFilter {
    #[inline]
    fn available(&self, _key: &K, _service: &S) -> bool {
        true
    }

    fn is_noop(&self) -> bool {
        true
    }
}

/// Skips endpoints whose per-endpoint circuit breaker would reject a call: Open, ForcedOpen, or
/// HalfOpen with every probe slot taken.
///
/// Wrap each endpoint's service in a [`Breaker`](seawall_breaker::Breaker) when discovery makes
/// it (for example with [`BreakerSet::get`](seawall_breaker::BreakerSet::get), one breaker per
/// address) and pass this filter to
/// [`BalanceConfigBuilder::filter`](crate::BalanceConfigBuilder::filter). An endpoint whose
/// breaker is half-open takes as many calls as it has probe slots, so its trial calls can close
/// it; a call waiting for an endpoint looks again when an open breaker's wait ends. A call
/// waiting on a half-open endpoint keeps the probe slot its service holds, even when the calls
/// waiting there hold every slot
/// ([`Breaker::holds_permit`](seawall_breaker::Breaker::holds_permit)); once the breaker has
/// changed state (it re-opened, say) or was reset, the slot counts for nothing, and the call lets go of an
/// endpoint that would reject it and picks again.
///
/// A call the endpoint's breaker rejects all the same (it opened between the pick and the call:
/// another caller's failure tripped it, an operator forced it open) ends with the breaker's
/// [`Open`](seawall_breaker::Open), and the breaker then admits no call (Open, ForcedOpen, or
/// HalfOpen with every probe slot taken). The balancer counts such a call against the endpoint
/// in neither outlier detection nor a latency-aware picker: the call was never sent. An `Open`
/// the endpoint's service returns itself (a breaker inside it) while the endpoint's breaker
/// admits calls counts against the endpoint as other errors do, so an endpoint whose inner
/// breaker fails every call at once is charged for it and can be ejected. Two cases are judged
/// by the breaker's state when the call ends, not by where the `Open` came from: an inner `Open`
/// that ends a call while the endpoint's breaker admits none (it opened while the call was in
/// flight, this call's own failure included) counts for nothing, and the breaker's own rejection
/// counts against the endpoint as other errors do when, between the rejection and the balancer
/// looking (the rejected call may first yield to the scheduler), the breaker admits calls
/// again: its wait ended, a probe slot freed, it closed, or it was reset, disabled or set to
/// metrics only. The
/// `seawall` stack wraps an inner `Open` on its way up, so there it always counts against the
/// endpoint.
#[cfg(feature = "breaker")]
#[cfg_attr(docsrs, doc(cfg(feature = "breaker")))]
#[derive(Debug, Clone, Copy, Default)]
pub struct BreakerFilter;

#[cfg(feature = "breaker")]
impl<K, S, C> Filter<K, seawall_breaker::Breaker<S, C>> for BreakerFilter {
    #[inline]
    fn available(&self, _key: &K, service: &seawall_breaker::Breaker<S, C>) -> bool {
        service.is_call_permitted()
    }

    fn available_held(&self, _key: &K, held: &seawall_breaker::Breaker<S, C>) -> bool {
        held.holds_permit() || held.is_call_permitted()
    }

    fn available_in(&self, _key: &K, service: &seawall_breaker::Breaker<S, C>) -> Option<Duration> {
        match service.state() {
            seawall_breaker::State::Open => service.handle().remaining_wait(),
            _ => None,
        }
    }

    fn rejected(
        &self,
        _key: &K,
        service: &seawall_breaker::Breaker<S, C>,
        error: &(dyn std::error::Error + 'static),
    ) -> bool {
        // The breaker's own rejection leaves it admitting no call: Open, ForcedOpen, or HalfOpen
        // with every probe slot taken. An `Open` from behind a breaker that admits calls came
        // from within the endpoint's service.
        seawall_core::error::downcast_ref::<seawall_breaker::Open>(error).is_some()
            && !service.is_call_permitted()
    }
}
