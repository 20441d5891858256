//! A listener may call the balancer it listens to: the listeners run under no lock of the
//! balancer, so a call a listener makes, on its own thread and at once, records its outcome and
//! ejects as any other. A change that call makes is reported once the listener has returned,
//! after the change it heard of, by the balancer's background task (the call that was reporting
//! reports no further than its own changes): the listeners still hear one balancer's changes in
//! order.

mod common;

use common::{cluster, settle, Behavior, Node};
use futures_util::FutureExt;
use seawall::balance::{Balance, BalanceEvent, BalanceLayer, OutlierDetection, Picker};
use seawall::core::Name;
use std::{
    cell::Cell,
    future::Future,
    pin::Pin,
    sync::{atomic::Ordering::Relaxed, mpsc, Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};
use tower::ServiceExt;

thread_local! {
    /// Set while the test's own calls of the balancer are polled, on the runtime's thread.
    static IN_CALL: Cell<bool> = const { Cell::new(false) };
}

/// A call of the test's, polled with [`IN_CALL`] set, so that a listener can tell whether it
/// hears of a change inside that call's poll or on the background task.
struct InCall<F>(Pin<Box<F>>);

impl<F: Future> Future for InCall<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        IN_CALL.set(true);
        let poll = self.0.as_mut().poll(cx);
        IN_CALL.set(false);
        poll
    }
}

/// The balancer a [`Caller`] calls, and the endpoint it makes fail first.
type Target = (Balance<usize, Node>, Arc<Behavior>);

/// A listener that, when it hears that endpoint 1 was ejected, makes endpoint `fails` fail and
/// calls the balancer it watches, at once and on its own thread, until a call fails (at most 4
/// calls). It notes each ejection it hears of as it starts (and whether inside a call of the
/// test's) and as it returns, and in between the failure its calls were answered with, or that a
/// call got no answer at once.
#[derive(Clone)]
struct Caller {
    fails: usize,
    target: Arc<Mutex<Option<Target>>>,
    heard: Arc<Mutex<Vec<String>>>,
}

impl Caller {
    fn new(fails: usize) -> Self {
        Caller {
            fails,
            target: Arc::default(),
            heard: Arc::default(),
        }
    }

    fn listener(&self) -> impl Fn(&Name, &BalanceEvent) + Send + Sync + 'static {
        let caller = self.clone();
        move |_, event| {
            let BalanceEvent::Ejected { key, .. } = event else {
                return;
            };
            let inside = if IN_CALL.get() { " in a call" } else { "" };
            caller
                .heard
                .lock()
                .unwrap()
                .push(format!("heard {key}{inside}"));
            // Taken out of the slot, so no lock of the test's is held while calling.
            let target = caller.target.lock().unwrap().clone();
            if let (Some((balance, node)), "1") = (target, key.as_str()) {
                node.fail.store(true, Relaxed);
                for _ in 0..4 {
                    match balance.clone().oneshot(0).now_or_never() {
                        Some(Ok(_)) => {}
                        Some(Err(_)) => {
                            caller.heard.lock().unwrap().push("answered Err".into());
                            break;
                        }
                        None => {
                            caller.heard.lock().unwrap().push("no answer".into());
                            break;
                        }
                    }
                }
            }
            caller.heard.lock().unwrap().push(format!("returned {key}"));
        }
    }

    /// Calls `balance` from the listener, and makes `node` fail first.
    fn watch(&self, balance: &Balance<usize, Node>, node: Arc<Behavior>) {
        *self.target.lock().unwrap() = Some((balance.clone(), node));
    }

    /// What was heard so far; lets go of the balancer, so that it and its task can be dropped.
    fn stop(&self) -> Vec<String> {
        self.target.lock().unwrap().take();
        std::mem::take(&mut *self.heard.lock().unwrap())
    }
}

/// `n` endpoints behind a balancer that ejects on the first failure and has no panic threshold,
/// watched by `caller`; endpoint 1 fails. Calls the balancer 3 times, one call at a time, lets the
/// background task report what those calls left to it, and gives the unhealthy endpoints and what
/// the listener heard.
async fn eject_endpoint_1(n: usize, caller: Caller) -> (Vec<usize>, Vec<String>) {
    let (balance, cluster) = cluster(
        n,
        BalanceLayer::builder()
            .seed(5)
            .picker(Picker::RoundRobin)
            .panic_threshold(0.0)
            .outlier_detection(OutlierDetection {
                consecutive_failures: Some(1),
                max_ejection_percent: 1.0,
                base_ejection_time: Duration::from_secs(10),
                ..OutlierDetection::disabled()
            })
            .on_event(caller.listener()),
    )
    .await;
    caller.watch(&balance, cluster.behaviors[caller.fails].clone());
    cluster.node(1).fail.store(true, Relaxed);
    // Round robin: 3 calls reach endpoint 1 whatever the turn they start at.
    for i in 0..3 {
        let _ = InCall(Box::pin(balance.clone().oneshot(i))).await;
    }
    settle().await;
    (balance.unhealthy(), caller.stop())
}

/// Runs `test` on a runtime with paused time on a thread of its own, and gives its output: a
/// balancer that deadlocks fails the test instead of hanging it.
fn bounded<T, F>(test: impl FnOnce() -> F + Send + 'static) -> T
where
    T: Send + 'static,
    F: Future<Output = T>,
{
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        let _ = tx.send(runtime.block_on(test()));
    });
    match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(output) => output,
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("the balancer deadlocked"),
        Err(mpsc::RecvTimeoutError::Disconnected) => panic!("the test's thread panicked"),
    }
}

/// A listener that, on hearing of an ejection, calls the same balancer at once and gets a failure
/// (the failure a call records, which takes the lock ejections are made under) gets its answer:
/// the balancer does not deadlock, and the failure is recorded (it ejects nothing, as it would
/// leave no healthy endpoint).
#[test]
fn a_listener_that_calls_the_balancer_does_not_deadlock() {
    let (unhealthy, heard) = bounded(|| eject_endpoint_1(2, Caller::new(0)));
    assert_eq!(unhealthy, vec![1]);
    assert_eq!(heard, ["heard 1 in a call", "answered Err", "returned 1"]);
}

/// An ejection made by a listener's own call is reported once the listener has returned, after
/// the ejection it heard of, not inside it, and by the background task, not inside the call that
/// reported the first ejection: that call reports no further than its own changes.
#[test]
fn a_change_a_listener_makes_is_reported_after_the_one_it_heard() {
    let (unhealthy, heard) = bounded(|| eject_endpoint_1(3, Caller::new(2)));
    assert_eq!(unhealthy, vec![1, 2]);
    assert_eq!(
        heard,
        [
            "heard 1 in a call",
            "answered Err",
            "returned 1",
            "heard 2",
            "returned 2"
        ]
    );
}
