//! State changes are `tracing` events: every breaker transition, every ejection and return of an
//! endpoint, every endpoint added, a balancer entering and leaving panic mode, every bulkhead
//! rejection and a fallback giving up on its inner service, each with the policy's name.

use seawall::{
    balance::{BalanceLayer, OutlierDetection, Picker},
    breaker::{BreakerLayer, State},
    bulkhead::{BulkheadLayer, Full},
    core::error::is,
    discover,
    fallback::FallbackLayer,
    BoxError, ServiceBuilderExt,
};
use std::{
    fmt,
    sync::{
        atomic::{AtomicBool, Ordering::SeqCst},
        Arc, Mutex,
    },
    time::Duration,
};
use tower::{service_fn, Layer, Service, ServiceBuilder, ServiceExt};
use tracing::{
    field::{Field, Visit},
    span, Event, Level, Metadata, Subscriber,
};

/// One captured event: its level, message and other fields.
#[derive(Debug, Clone)]
struct Captured {
    level: Level,
    message: String,
    fields: Vec<(String, String)>,
}

impl Captured {
    fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A subscriber that keeps every event.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<Captured>>>);

impl Capture {
    fn with_message(&self, message: &str) -> Vec<Captured> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e.message == message)
            .cloned()
            .collect()
    }
}

#[derive(Default)]
struct Fields {
    message: String,
    fields: Vec<(String, String)>,
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            self.message = format!("{value:?}");
        } else {
            self.fields
                .push((field.name().to_owned(), format!("{value:?}")));
        }
    }
}

impl Subscriber for Capture {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }

    fn new_span(&self, _: &span::Attributes<'_>) -> span::Id {
        span::Id::from_u64(1)
    }

    fn record(&self, _: &span::Id, _: &span::Record<'_>) {}

    fn record_follows_from(&self, _: &span::Id, _: &span::Id) {}

    fn event(&self, event: &Event<'_>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        self.0.lock().unwrap().push(Captured {
            level: *event.metadata().level(),
            message: fields.message,
            fields: fields.fields,
        });
    }

    fn enter(&self, _: &span::Id) {}

    fn exit(&self, _: &span::Id) {}
}

/// Real time on a current-thread runtime, so the thread's subscriber sees the balancer's
/// background task too.
#[tokio::test]
async fn breaker_transitions_are_traced() {
    let capture = Capture::default();
    let _guard = tracing::subscriber::set_default(capture.clone());

    let fail = Arc::new(AtomicBool::new(true));
    let f = fail.clone();
    let breaker = BreakerLayer::builder()
        .name("traced-breaker")
        .consecutive_failures(2)
        .wait_duration(Duration::from_millis(50))
        .jitter(0.0)
        .permitted_probes(1)
        .build()
        .unwrap();
    let handle = breaker.handle();
    let mut client = ServiceBuilder::new()
        .with_breaker(breaker)
        .service(service_fn(move |()| {
            let fail = f.load(SeqCst);
            async move {
                if fail {
                    Err::<(), BoxError>("down".into())
                } else {
                    Ok(())
                }
            }
        }));

    for _ in 0..2 {
        let _ = client.ready().await.unwrap().call(()).await;
    }
    assert_eq!(handle.state(), State::Open);
    fail.store(false, SeqCst);
    tokio::time::sleep(Duration::from_millis(60)).await;
    client.ready().await.unwrap().call(()).await.unwrap();
    assert_eq!(handle.state(), State::Closed);

    // Manual changes are traced as well.
    handle.force_open();
    handle.reset();

    let changes: Vec<(String, String)> = capture
        .with_message("circuit breaker changed state")
        .into_iter()
        .map(|e| {
            assert_eq!(e.level, Level::INFO);
            assert_eq!(e.field("name"), Some("traced-breaker"));
            (
                e.field("from").unwrap().to_owned(),
                e.field("to").unwrap().to_owned(),
            )
        })
        .collect();
    let expected = [
        State::Closed,
        State::Open,
        State::HalfOpen,
        State::Closed,
        State::ForcedOpen,
        State::Closed,
    ];
    let expected: Vec<(String, String)> = expected
        .windows(2)
        .map(|w| (w[0].to_string(), w[1].to_string()))
        .collect();
    assert_eq!(changes, expected);
}

/// Outlier detection of the balancer tests: an endpoint is ejected after two failures in a row,
/// for 50 ms, checked every 20 ms; no other detector runs.
fn ejected_after_two_failures() -> OutlierDetection {
    OutlierDetection {
        interval: Duration::from_millis(20),
        base_ejection_time: Duration::from_millis(50),
        max_ejection_percent: 0.5,
        consecutive_failures: Some(2),
        success_rate: None,
        failure_percentage: None,
        latency: None,
        ..OutlierDetection::default()
    }
}

// Endpoints are in-process services, so the clock can be paused: no ejection time runs out
// during the calls, and the wait below advances it.
#[tokio::test(start_paused = true)]
async fn balancer_ejections_and_returns_are_traced() {
    let capture = Capture::default();
    let _guard = tracing::subscriber::set_default(capture.clone());

    let balance = BalanceLayer::builder()
        .name("traced-balance")
        .picker(Picker::RoundRobin)
        .outlier_detection(ejected_after_two_failures())
        .seed(1)
        .build()
        .unwrap()
        .layer(discover::from_list(["good", "bad"], |&key| {
            service_fn(move |_req: http::Request<()>| async move {
                if key == "bad" {
                    Err::<&str, BoxError>("down".into())
                } else {
                    Ok(key)
                }
            })
        }));

    for _ in 0..8 {
        let _ = balance.clone().oneshot(http::Request::new(())).await;
    }
    let added = capture.with_message("seawall balance endpoint added");
    assert_eq!(added.len(), 2, "{added:?}");
    let ejected = capture.with_message("seawall balance endpoint ejected");
    assert_eq!(ejected.len(), 1, "{ejected:?}");
    assert_eq!(ejected[0].level, Level::INFO);
    assert_eq!(ejected[0].field("name"), Some("traced-balance"));
    assert_eq!(ejected[0].field("key"), Some("\"bad\""));
    assert_eq!(ejected[0].field("reason"), Some("ConsecutiveFailures"));

    // After its ejection time, the next outlier-detection round returns it.
    for _ in 0..50 {
        if !capture
            .with_message("seawall balance endpoint returned")
            .is_empty()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let returned = capture.with_message("seawall balance endpoint returned");
    assert_eq!(returned.len(), 1, "{returned:?}");
    assert_eq!(returned[0].field("key"), Some("\"bad\""));
}

/// A balancer entering panic mode warns, once, and leaving it is logged at `info`, once: "bad" is
/// one endpoint of two, too many unhealthy for a threshold of 0.7.
#[tokio::test(start_paused = true)]
async fn balancer_panic_mode_is_traced() {
    let capture = Capture::default();
    let _guard = tracing::subscriber::set_default(capture.clone());

    let down = Arc::new(AtomicBool::new(true));
    let d = down.clone();
    let balance = BalanceLayer::builder()
        .name("traced-panic")
        .picker(Picker::RoundRobin)
        .panic_threshold(0.7)
        .outlier_detection(ejected_after_two_failures())
        .seed(1)
        .build()
        .unwrap()
        .layer(discover::from_list(["good", "bad"], move |&key| {
            let down = d.clone();
            service_fn(move |_req: http::Request<()>| {
                let fail = key == "bad" && down.load(SeqCst);
                async move {
                    if fail {
                        Err::<&str, BoxError>("down".into())
                    } else {
                        Ok(key)
                    }
                }
            })
        }));

    // In panic mode "bad" takes calls again and fails them: still one warning.
    for _ in 0..12 {
        let _ = balance.clone().oneshot(http::Request::new(())).await;
    }
    let entered = capture
        .with_message("seawall balance entered panic mode; unhealthy endpoints take calls too");
    assert_eq!(entered.len(), 1, "{entered:?}");
    assert_eq!(entered[0].level, Level::WARN);
    assert_eq!(entered[0].field("name"), Some("traced-panic"));
    assert_eq!(entered[0].field("unhealthy"), Some("1"));
    assert_eq!(entered[0].field("endpoints"), Some("2"));
    assert_eq!(entered[0].field("threshold"), Some("0.7"));

    down.store(false, SeqCst);
    for _ in 0..50 {
        if !balance.is_panicking() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let left = capture.with_message("seawall balance left panic mode");
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(left[0].level, Level::INFO);
    assert_eq!(left[0].field("name"), Some("traced-panic"));
    assert_eq!(left[0].field("unhealthy"), Some("0"));
}

#[tokio::test]
async fn bulkhead_rejections_are_traced() {
    let capture = Capture::default();
    let _guard = tracing::subscriber::set_default(capture.clone());

    let bulkhead = BulkheadLayer::builder()
        .name("traced-bulkhead")
        .max_concurrent(1)
        .build()
        .unwrap();
    let client = ServiceBuilder::new()
        .with_bulkhead(bulkhead)
        .service(service_fn(|()| async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            Ok::<_, BoxError>(())
        }));
    let running = tokio::spawn(client.clone().oneshot(()));
    tokio::task::yield_now().await;
    let err = client.oneshot(()).await.unwrap_err();
    assert!(is::<Full>(&*err));
    running.await.unwrap().unwrap();

    let rejected = capture.with_message("bulkhead full, call rejected");
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    assert_eq!(rejected[0].field("name"), Some("traced-bulkhead"));
}

/// An inner service whose readiness always fails, as a `Buffer` whose worker is gone does.
#[derive(Clone)]
struct WorkerGone;

impl Service<()> for WorkerGone {
    type Response = ();
    type Error = BoxError;
    type Future = std::future::Ready<Result<(), BoxError>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        std::task::Poll::Ready(Err("worker gone".into()))
    }

    fn call(&mut self, (): ()) -> Self::Future {
        unreachable!("never ready, so never called")
    }
}

/// A fallback giving up on its inner service warns at most once a minute per layer: callers that
/// clone the service per call see each clone keep the error, and the ones between warnings log at
/// debug.
#[tokio::test(start_paused = true)]
async fn fallback_giving_up_on_its_inner_service_warns_once_a_minute() {
    let capture = Capture::default();
    let _guard = tracing::subscriber::set_default(capture.clone());

    let root = FallbackLayer::builder()
        .name("traced-fallback")
        .build_fn(|_failed| Ok(()))
        .unwrap()
        .layer(WorkerGone);
    // Three calls now, two just short of a minute after the first warning, and two a minute
    // after it.
    for pause in [0, 0, 0, 59_999, 0, 1, 0] {
        tokio::time::advance(Duration::from_millis(pause)).await;
        root.clone().oneshot(()).await.unwrap();
    }

    let gave_up = capture.with_message(
        "seawall fallback: inner service failed readiness; answering every call from the fallback",
    );
    let levels: Vec<Level> = gave_up.iter().map(|e| e.level).collect();
    assert_eq!(
        levels,
        [
            Level::WARN,
            Level::DEBUG,
            Level::DEBUG,
            Level::DEBUG,
            Level::DEBUG,
            Level::WARN,
            Level::DEBUG
        ],
        "{gave_up:?}"
    );
    for event in &gave_up {
        assert_eq!(event.field("name"), Some("traced-fallback"));
        assert_eq!(event.field("error"), Some("worker gone"));
    }
}
