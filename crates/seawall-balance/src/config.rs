//! Configuration: the balancer's builder and the health-checking settings.

use crate::{
    hook::{NoFilter, NoKey, NoProbe},
    layer::BalanceLayer,
    BalanceEvent, Picker,
};
use seawall_core::{
    classify::DefaultClassifier,
    config::{check_at_least_f64, check_fraction, check_positive_duration, check_range},
    ConfigError, Listener, Listeners, Name,
};
use std::time::Duration;

/// Default [`max_wait`](BalanceConfigBuilder::max_wait): 2 s.
pub const DEFAULT_MAX_WAIT: Duration = Duration::from_secs(2);
/// Default [`panic_threshold`](BalanceConfigBuilder::panic_threshold): 0.5.
pub const DEFAULT_PANIC_THRESHOLD: f64 = 0.5;

/// gRPC's success-rate outlier rule: an endpoint whose success rate over the last interval is
/// below `mean - stdev_factor × stdev` of the endpoints' rates is ejected.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SuccessRate {
    /// How many standard deviations below the mean is an outlier (gRPC's `stdev_factor / 1000`).
    /// Default 1.9.
    pub stdev_factor: f64,
    /// The probability an outlier found is ejected, in `[0, 1]`. Default 1.
    pub enforcement: f64,
    /// How many endpoints must have `request_volume` calls in the interval for the rule to run.
    /// Default 5.
    pub minimum_hosts: usize,
    /// Calls an endpoint needs in the interval to be judged. Default 100.
    pub request_volume: u32,
}

impl Default for SuccessRate {
    fn default() -> Self {
        SuccessRate {
            stdev_factor: 1.9,
            enforcement: 1.0,
            minimum_hosts: 5,
            request_volume: 100,
        }
    }
}

/// gRPC's failure-percentage outlier rule: an endpoint whose share of failed calls over the last
/// interval exceeds `threshold` is ejected.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FailurePercentage {
    /// The failure share above which an endpoint is ejected, in `[0, 1]`. Default 0.85.
    pub threshold: f64,
    /// The probability an outlier found is ejected, in `[0, 1]`. Default 1.
    pub enforcement: f64,
    /// How many endpoints must have `request_volume` calls in the interval for the rule to run.
    /// Default 5.
    pub minimum_hosts: usize,
    /// Calls an endpoint needs in the interval to be judged. Default 50.
    pub request_volume: u32,
}

impl Default for FailurePercentage {
    fn default() -> Self {
        FailurePercentage {
            threshold: 0.85,
            enforcement: 1.0,
            minimum_hosts: 5,
            request_volume: 50,
        }
    }
}

/// Latency outlier ejection: an endpoint slower than `factor` × the median of its peers' latency
/// at every outlier detection pass at which it had successful calls (a pass without any can only
/// find it not slow), for at least `duration`, is ejected, like a failing one.
///
/// Each endpoint keeps an EWMA of its successful calls' latency (time constant `decay`) and the
/// mean latency of its successful calls since the last pass (each call's rounded to the nearest
/// 256 ns, so an endpoint answering in under 128 ns has a mean of 0). At each pass, among the endpoints
/// that are not ejected and have at least `minimum_samples` successful calls (when fewer than
/// `minimum_hosts` do, the pass finds every endpoint not slow), an endpoint is slow when its
/// EWMA and its interval's mean are both above `factor` × the median of the others' EWMAs, and
/// not slow when its EWMA is at or below that, or it had calls and their mean is. A pass at
/// which its EWMA is above but it had no successful call since the last pass leaves it as it
/// was: an interval without calls (light traffic, a PeakEWMA picker steering away from it) says
/// nothing either way. The endpoint is ejected at the first pass that finds it slow `duration`
/// or more after the pass that first found it slow, with no pass in between finding it not slow.
///
/// The EWMA needs the endpoint slow for a while before it rises above the limit; the interval's
/// mean keeps one spike, which lifts the EWMA for several `decay`s after the endpoint has
/// recovered, from counting for longer than its interval.
///
/// Each pass that finds the endpoint slow needs one of its calls since the last pass, so once
/// `duration` is up the ejection waits for its next successful call. A PeakEWMA picker
/// ([`Picker::P2cPeakEwma`], [`Picker::LeastPeakEwma`]) sends an endpoint it has measured as
/// slow a call only when its peers cost more, or at the latest its trial call once its estimate
/// is stale, the picker's `decay` after its last answer. Ejection can so come up to about one
/// picker `decay` later than `duration`, plus that call's latency, at the pass after it answers:
/// with the defaults (`interval` 10 s, `duration` 30 s, picker decay 10 s) and an endpoint that
/// answers within a second or so, at the pass 30 s or 40 s after the one that first found it
/// slow. Light traffic spaces its calls out the same way.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LatencyEjection {
    /// How many times slower than the peers' median is an outlier. Default 3.
    pub factor: f64,
    /// How long an endpoint must stay an outlier before it is ejected (checked at each pass at
    /// which it had successful calls; see above for how much later that can be). Default 30 s.
    pub duration: Duration,
    /// The latency EWMA's time constant: how long the EWMA takes to follow a change in the
    /// endpoint's latency. Default 10 s.
    pub decay: Duration,
    /// How many endpoints with enough samples there must be for the rule to run. Default 3.
    pub minimum_hosts: usize,
    /// Successful calls an endpoint needs before its latency is judged. Default 10.
    pub minimum_samples: u32,
}

impl Default for LatencyEjection {
    fn default() -> Self {
        LatencyEjection {
            factor: 3.0,
            duration: Duration::from_secs(30),
            decay: Duration::from_secs(10),
            minimum_hosts: 3,
            minimum_samples: 10,
        }
    }
}

/// Passive outlier detection, following gRPC's algorithm (gRFC A50) with Envoy's consecutive
/// failures rule and seawall's latency rule.
///
/// Every `interval` the rules run over the calls of the interval; an endpoint found an outlier is
/// ejected for `base_ejection_time × k`, capped at `max(base_ejection_time, max_ejection_time)`,
/// where k goes up by one at each ejection and down by one (to 0) for each interval the endpoint
/// ends in the set without being ejected (by that interval's rules too). An ejected endpoint is
/// returned at the first pass at or after its time is up, after that pass's rules have run, as in
/// gRPC, so it can stay out up to one interval longer than its time (when consecutive failures
/// ejected it between passes, or its time is not a multiple of `interval`). Ejection stops once
/// the ejected share of the endpoints reaches `max_ejection_percent`, as in gRFC A50: an endpoint
/// is ejected while the share is below it, so the last ejection may pass it (0.1 of 15 endpoints
/// lets 2 out). Unlike gRPC, which ejects none at 0, one endpoint can always be ejected whatever
/// `max_ejection_percent` is (as with Envoy's `always_eject_one_host`): 0 does not turn ejection
/// off, [`OutlierDetection::disabled`] does. The last healthy endpoint is never ejected.
#[derive(Debug, Clone, PartialEq)]
pub struct OutlierDetection {
    /// How often the rules run. Default 10 s.
    pub interval: Duration,
    /// The ejection time for k = 1 (an endpoint's first ejection). Default 30 s.
    pub base_ejection_time: Duration,
    /// The longest ejection time. Default 300 s.
    pub max_ejection_time: Duration,
    /// The share of endpoints at which ejection stops, in `[0, 1]`: an endpoint is ejected only
    /// while fewer are out, so the last ejection may pass it, and one can always be ejected, even
    /// at 0. Default 0.1.
    pub max_ejection_percent: f64,
    /// Eject an endpoint at once after this many failed calls in a row; one that the ejection
    /// limits keep in is tried again after each further this many. Default `Some(5)`.
    pub consecutive_failures: Option<u32>,
    /// The success-rate rule. Default on.
    pub success_rate: Option<SuccessRate>,
    /// The failure-percentage rule. Default on.
    pub failure_percentage: Option<FailurePercentage>,
    /// The latency rule. Default on.
    pub latency: Option<LatencyEjection>,
}

impl Default for OutlierDetection {
    fn default() -> Self {
        OutlierDetection {
            interval: Duration::from_secs(10),
            base_ejection_time: Duration::from_secs(30),
            max_ejection_time: Duration::from_secs(300),
            max_ejection_percent: 0.1,
            consecutive_failures: Some(5),
            success_rate: Some(SuccessRate::default()),
            failure_percentage: Some(FailurePercentage::default()),
            latency: Some(LatencyEjection::default()),
        }
    }
}

impl OutlierDetection {
    /// Every rule off: endpoints are never ejected.
    pub fn disabled() -> Self {
        OutlierDetection {
            consecutive_failures: None,
            success_rate: None,
            failure_percentage: None,
            latency: None,
            ..OutlierDetection::default()
        }
    }

    pub(crate) fn any(&self) -> bool {
        self.consecutive_failures.is_some()
            || self.success_rate.is_some()
            || self.failure_percentage.is_some()
            || self.latency.is_some()
    }

    fn validate(&self) -> Result<(), ConfigError> {
        check_positive_duration("outlier_detection.interval", self.interval)?;
        check_positive_duration(
            "outlier_detection.base_ejection_time",
            self.base_ejection_time,
        )?;
        check_fraction(
            "outlier_detection.max_ejection_percent",
            self.max_ejection_percent,
        )?;
        if let Some(n) = self.consecutive_failures {
            check_range("outlier_detection.consecutive_failures", n, 1, u32::MAX)?;
        }
        if let Some(r) = &self.success_rate {
            check_at_least_f64(
                "outlier_detection.success_rate.stdev_factor",
                r.stdev_factor,
                0.0,
            )?;
            check_fraction("outlier_detection.success_rate.enforcement", r.enforcement)?;
            check_range(
                "outlier_detection.success_rate.minimum_hosts",
                r.minimum_hosts,
                1,
                usize::MAX,
            )?;
            check_range(
                "outlier_detection.success_rate.request_volume",
                r.request_volume,
                1,
                u32::MAX,
            )?;
        }
        if let Some(r) = &self.failure_percentage {
            check_fraction(
                "outlier_detection.failure_percentage.threshold",
                r.threshold,
            )?;
            check_fraction(
                "outlier_detection.failure_percentage.enforcement",
                r.enforcement,
            )?;
            check_range(
                "outlier_detection.failure_percentage.minimum_hosts",
                r.minimum_hosts,
                1,
                usize::MAX,
            )?;
            check_range(
                "outlier_detection.failure_percentage.request_volume",
                r.request_volume,
                1,
                u32::MAX,
            )?;
        }
        if let Some(r) = &self.latency {
            check_at_least_f64("outlier_detection.latency.factor", r.factor, 1.0)?;
            check_positive_duration("outlier_detection.latency.decay", r.decay)?;
            check_range(
                "outlier_detection.latency.minimum_hosts",
                r.minimum_hosts,
                2,
                usize::MAX,
            )?;
            check_range(
                "outlier_detection.latency.minimum_samples",
                r.minimum_samples,
                1,
                u32::MAX,
            )?;
        }
        Ok(())
    }
}

/// Active health checking (Ribbon's `IPing`): every `interval` each endpoint is probed; an
/// endpoint whose probe answers `false`, panics (making its future or running it) or takes longer
/// than `timeout` takes no traffic until a probe succeeds. An endpoint whose probe still runs
/// when the next interval comes is not probed again until it ends; discovery removing or
/// replacing an endpoint cancels its probe, so the verdict is never applied to the new service
/// and the probe's clone of the old one is dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthCheck {
    /// How often each endpoint is probed.
    pub interval: Duration,
    /// How long a probe may take.
    pub timeout: Duration,
}

/// The validated settings shared by the balancers a [`BalanceLayer`] builds.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) name: Name,
    pub(crate) picker: Picker,
    pub(crate) max_wait: Option<Duration>,
    pub(crate) seed: Option<u64>,
    pub(crate) panic_threshold: f64,
    pub(crate) outlier: OutlierDetection,
    pub(crate) health_check: Option<HealthCheck>,
}

/// Builds a [`BalanceLayer`]; see [`BalanceLayer::builder`].
#[derive(Debug)]
pub struct BalanceConfigBuilder<C = DefaultClassifier, H = NoKey, P = NoProbe, F = NoFilter> {
    name: Option<String>,
    picker: Picker,
    max_wait: Option<Duration>,
    seed: Option<u64>,
    panic_threshold: f64,
    outlier: OutlierDetection,
    health_check: Option<HealthCheck>,
    listeners: Listeners<BalanceEvent>,
    classifier: C,
    hash_key: H,
    probe: P,
    filter: F,
}

impl BalanceConfigBuilder {
    pub(crate) fn new() -> Self {
        BalanceConfigBuilder {
            name: None,
            picker: Picker::default(),
            max_wait: Some(DEFAULT_MAX_WAIT),
            seed: None,
            panic_threshold: DEFAULT_PANIC_THRESHOLD,
            outlier: OutlierDetection::default(),
            health_check: None,
            listeners: Listeners::new(),
            classifier: DefaultClassifier,
            hash_key: NoKey,
            probe: NoProbe,
            filter: NoFilter,
        }
    }
}

impl<C, H, P, F> BalanceConfigBuilder<C, H, P, F> {
    /// The policy instance name for events and metrics. Default `"balance"`.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// How endpoints are picked. Default [`Picker::p2c_peak_ewma`].
    pub fn picker(mut self, picker: Picker) -> Self {
        self.picker = picker;
        self
    }

    /// How long a call waits for an available, ready endpoint before failing with
    /// [`NoEndpoints`](crate::NoEndpoints). `None` waits as long as it takes. Default 2 s.
    pub fn max_wait(mut self, max_wait: impl Into<Option<Duration>>) -> Self {
        self.max_wait = max_wait.into();
        self
    }

    /// Seeds the random choices (p2c draws, ejection enforcement), for reproducible runs.
    /// Default: a seed from the process's hash randomness.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// When fewer than this share of endpoints is healthy, health is ignored and calls spread over
    /// every endpoint the [`filter`](Self::filter) lets through (Envoy's panic threshold), in
    /// `[0, 1]`; 0 turns panic mode off. Default 0.5. Entering and leaving panic mode are
    /// reported ([`BalanceEvent::PanicEntered`], [`BalanceEvent::PanicExited`]).
    pub fn panic_threshold(mut self, share: f64) -> Self {
        self.panic_threshold = share;
        self
    }

    /// Passive outlier detection. Default [`OutlierDetection::default`].
    pub fn outlier_detection(mut self, outlier: OutlierDetection) -> Self {
        self.outlier = outlier;
        self
    }

    /// Adds a listener called on every [`BalanceEvent`]. It runs under none of the balancer's
    /// locks and may call the balancer; [`BalanceEvent`] says on which thread and in what order.
    pub fn on_event(mut self, listener: impl Listener<BalanceEvent>) -> Self {
        self.listeners = self.listeners.with(listener);
        self
    }

    /// Classifies calls for outlier detection and PeakEWMA. Default: `Err` is a failure.
    pub fn classifier<C2>(self, classifier: C2) -> BalanceConfigBuilder<C2, H, P, F> {
        BalanceConfigBuilder {
            name: self.name,
            picker: self.picker,
            max_wait: self.max_wait,
            seed: self.seed,
            panic_threshold: self.panic_threshold,
            outlier: self.outlier,
            health_check: self.health_check,
            listeners: self.listeners,
            classifier,
            hash_key: self.hash_key,
            probe: self.probe,
            filter: self.filter,
        }
    }

    /// The request's key for [`Picker::ConsistentHash`]: a function of the request, such as
    /// a hash of a user id header (see [`HashKey`](crate::HashKey)).
    pub fn hash_key<H2>(self, hash_key: H2) -> BalanceConfigBuilder<C, H2, P, F> {
        BalanceConfigBuilder {
            name: self.name,
            picker: self.picker,
            max_wait: self.max_wait,
            seed: self.seed,
            panic_threshold: self.panic_threshold,
            outlier: self.outlier,
            health_check: self.health_check,
            listeners: self.listeners,
            classifier: self.classifier,
            hash_key,
            probe: self.probe,
            filter: self.filter,
        }
    }

    /// Active health checking: `probe(key, service)` is called for each endpoint every
    /// `check.interval` (see [`Probe`](crate::Probe)).
    pub fn health_check<P2>(
        self,
        check: HealthCheck,
        probe: P2,
    ) -> BalanceConfigBuilder<C, H, P2, F> {
        BalanceConfigBuilder {
            name: self.name,
            picker: self.picker,
            max_wait: self.max_wait,
            seed: self.seed,
            panic_threshold: self.panic_threshold,
            outlier: self.outlier,
            health_check: Some(check),
            listeners: self.listeners,
            classifier: self.classifier,
            hash_key: self.hash_key,
            probe,
            filter: self.filter,
        }
    }

    /// An availability filter consulted on every pick (Ribbon's `AvailabilityFilteringRule`):
    /// an endpoint for which it answers `false` takes no traffic. Use it to skip endpoints whose
    /// own circuit breaker is open (see [`Filter`](crate::Filter)).
    pub fn filter<F2>(self, filter: F2) -> BalanceConfigBuilder<C, H, P, F2> {
        BalanceConfigBuilder {
            name: self.name,
            picker: self.picker,
            max_wait: self.max_wait,
            seed: self.seed,
            panic_threshold: self.panic_threshold,
            outlier: self.outlier,
            health_check: self.health_check,
            listeners: self.listeners,
            classifier: self.classifier,
            hash_key: self.hash_key,
            probe: self.probe,
            filter,
        }
    }

    /// Validates the configuration and builds the layer.
    pub fn build(self) -> Result<BalanceLayer<C, H, P, F>, ConfigError> {
        let name = match &self.name {
            Some(name) => Name::validate("name", name)?,
            None => Name::default_for("balance"),
        };
        self.picker.validate()?;
        check_fraction("panic_threshold", self.panic_threshold)?;
        self.outlier.validate()?;
        if let Some(hc) = &self.health_check {
            check_positive_duration("health_check.interval", hc.interval)?;
            check_positive_duration("health_check.timeout", hc.timeout)?;
        }
        if let Some(wait) = self.max_wait {
            check_range(
                "max_wait",
                wait,
                Duration::ZERO,
                Duration::from_secs(86_400 * 365),
            )?;
        }
        Ok(BalanceLayer::new(
            Settings {
                name,
                picker: self.picker,
                max_wait: self.max_wait,
                seed: self.seed,
                panic_threshold: self.panic_threshold,
                outlier: self.outlier,
                health_check: self.health_check,
            },
            self.listeners,
            self.classifier,
            self.hash_key,
            self.probe,
            self.filter,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_field() {
        let err = BalanceConfigBuilder::new()
            .panic_threshold(1.5)
            .build()
            .unwrap_err();
        assert_eq!(err.field(), "panic_threshold");
        let err = BalanceConfigBuilder::new()
            .picker(Picker::P2cOutstanding { choices: 0 })
            .build()
            .unwrap_err();
        assert_eq!(err.field(), "picker.choices");
        // The picker's fields are named by the builder method that sets the picker, as the
        // outlier detection's are.
        let picker = |p: Picker| {
            BalanceConfigBuilder::new()
                .picker(p)
                .build()
                .unwrap_err()
                .field()
        };
        assert_eq!(
            picker(Picker::P2cPeakEwma {
                choices: 0,
                decay: Duration::from_secs(10),
                default_rtt: Duration::from_millis(30),
                failure_penalty: Duration::from_secs(1),
            }),
            "picker.choices"
        );
        assert_eq!(
            picker(Picker::LeastPeakEwma {
                decay: Duration::ZERO,
                default_rtt: Duration::from_millis(30),
                failure_penalty: Duration::from_secs(1),
            }),
            "picker.decay"
        );
        assert_eq!(
            picker(Picker::LeastPeakEwma {
                decay: Duration::from_secs(10),
                default_rtt: Duration::ZERO,
                failure_penalty: Duration::from_secs(1),
            }),
            "picker.default_rtt"
        );
        assert_eq!(
            picker(Picker::P2cPeakEwma {
                choices: 2,
                decay: Duration::from_secs(10),
                default_rtt: Duration::from_millis(30),
                failure_penalty: Duration::from_secs(7200),
            }),
            "picker.failure_penalty"
        );
        assert_eq!(
            picker(Picker::ConsistentHash { replicas: 0 }),
            "picker.replicas"
        );
        assert_eq!(
            picker(Picker::ZoneAware {
                local_zone: "a".into(),
                min_healthy_share: 1.5,
            }),
            "picker.min_healthy_share"
        );
        let err = BalanceConfigBuilder::new()
            .outlier_detection(OutlierDetection {
                max_ejection_percent: 2.0,
                ..OutlierDetection::default()
            })
            .build()
            .unwrap_err();
        assert_eq!(err.field(), "outlier_detection.max_ejection_percent");
        let err = BalanceConfigBuilder::new()
            .outlier_detection(OutlierDetection {
                latency: Some(LatencyEjection {
                    factor: 0.5,
                    ..LatencyEjection::default()
                }),
                ..OutlierDetection::default()
            })
            .build()
            .unwrap_err();
        assert_eq!(err.field(), "outlier_detection.latency.factor");
        // Fields of the same name in different rules are told apart, and from the picker's.
        let outlier = |o: OutlierDetection| {
            BalanceConfigBuilder::new()
                .outlier_detection(o)
                .build()
                .unwrap_err()
                .field()
        };
        let defaults = OutlierDetection::default;
        assert_eq!(
            outlier(OutlierDetection {
                interval: Duration::ZERO,
                ..defaults()
            }),
            "outlier_detection.interval"
        );
        assert_eq!(
            outlier(OutlierDetection {
                success_rate: Some(SuccessRate {
                    minimum_hosts: 0,
                    ..SuccessRate::default()
                }),
                ..defaults()
            }),
            "outlier_detection.success_rate.minimum_hosts"
        );
        assert_eq!(
            outlier(OutlierDetection {
                failure_percentage: Some(FailurePercentage {
                    minimum_hosts: 0,
                    ..FailurePercentage::default()
                }),
                ..defaults()
            }),
            "outlier_detection.failure_percentage.minimum_hosts"
        );
        assert_eq!(
            outlier(OutlierDetection {
                latency: Some(LatencyEjection {
                    minimum_hosts: 0,
                    ..LatencyEjection::default()
                }),
                ..defaults()
            }),
            "outlier_detection.latency.minimum_hosts"
        );
        assert_eq!(
            outlier(OutlierDetection {
                success_rate: Some(SuccessRate {
                    request_volume: 0,
                    ..SuccessRate::default()
                }),
                ..defaults()
            }),
            "outlier_detection.success_rate.request_volume"
        );
        assert_eq!(
            outlier(OutlierDetection {
                failure_percentage: Some(FailurePercentage {
                    request_volume: 0,
                    ..FailurePercentage::default()
                }),
                ..defaults()
            }),
            "outlier_detection.failure_percentage.request_volume"
        );
        assert_eq!(
            outlier(OutlierDetection {
                success_rate: Some(SuccessRate {
                    enforcement: 2.0,
                    ..SuccessRate::default()
                }),
                ..defaults()
            }),
            "outlier_detection.success_rate.enforcement"
        );
        assert_eq!(
            outlier(OutlierDetection {
                failure_percentage: Some(FailurePercentage {
                    enforcement: 2.0,
                    ..FailurePercentage::default()
                }),
                ..defaults()
            }),
            "outlier_detection.failure_percentage.enforcement"
        );
        assert_eq!(
            outlier(OutlierDetection {
                latency: Some(LatencyEjection {
                    decay: Duration::ZERO,
                    ..LatencyEjection::default()
                }),
                ..defaults()
            }),
            "outlier_detection.latency.decay"
        );
        let err = BalanceConfigBuilder::new().name("a b").build().unwrap_err();
        assert_eq!(err.field(), "name");
        let err = BalanceConfigBuilder::new()
            .picker(Picker::ZoneAware {
                local_zone: "".into(),
                min_healthy_share: 0.5,
            })
            .build()
            .unwrap_err();
        assert_eq!(err.field(), "picker.local_zone");
        assert!(BalanceConfigBuilder::new().build().is_ok());
    }
}
