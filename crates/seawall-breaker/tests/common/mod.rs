//! A dependency to put behind the breaker in tests, and small helpers.
#![allow(dead_code, unreachable_pub)]

use seawall::{breaker::Open, core::error::is, BoxError};
use std::{
    future::Future,
    sync::{
        atomic::{AtomicUsize, Ordering},
        mpsc, Arc, Mutex,
    },
    time::Duration,
};
use tower::{service_fn, Service, ServiceExt};

/// What the dependency does with one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    Ok,
    Fail,
    /// Answers `"ignore"`, which [`ignoring`] classifies as neither success nor failure.
    Ignore,
    /// Succeeds after this many milliseconds.
    SlowOk(u64),
    /// Fails after this many milliseconds.
    SlowFail(u64),
    /// Never answers.
    Hang,
}

/// Counts the calls that reached the dependency.
#[derive(Debug, Clone, Default)]
pub struct Reached(Arc<AtomicUsize>);

impl Reached {
    pub fn get(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

/// A dependency that does what each request says, counting the calls that reach it.
pub fn dependency() -> (
    impl Service<
            Call,
            Response = &'static str,
            Error = BoxError,
            Future = impl Future<Output = Result<&'static str, BoxError>> + Send + 'static,
        > + Clone
        + Send
        + std::fmt::Debug
        + 'static,
    Reached,
) {
    let reached = Reached::default();
    let counter = reached.clone();
    let service = service_fn(move |call: Call| {
        counter.0.fetch_add(1, Ordering::SeqCst);
        async move {
            match call {
                Call::Ok => Ok("ok"),
                Call::Fail => Err::<&'static str, BoxError>("boom".into()),
                Call::Ignore => Ok("ignore"),
                Call::SlowOk(ms) => {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    Ok("ok")
                }
                Call::SlowFail(ms) => {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    Err("boom".into())
                }
                Call::Hang => std::future::pending().await,
            }
        }
    });
    (service, reached)
}

/// Errors are failures, `"ignore"` is ignored, anything else a success.
pub fn ignoring(result: Result<&&'static str, &BoxError>, _: Duration) -> seawall::Outcome {
    match result {
        Ok(&"ignore") => seawall::Outcome::Ignored,
        Ok(_) => seawall::Outcome::Success,
        Err(_) => seawall::Outcome::Failure,
    }
}

/// Sends one call through `service`.
pub async fn send<S>(service: &mut S, call: Call) -> Result<&'static str, BoxError>
where
    S: Service<Call, Response = &'static str, Error = BoxError>,
{
    service.ready().await?.call(call).await
}

/// Whether `result` is the breaker's rejection.
pub fn rejected<T>(result: &Result<T, BoxError>) -> bool {
    matches!(result, Err(err) if is::<Open>(&**err))
}

/// A host whose hash, taken while a set looks it up, can be made to wait: the `nth` hash of a
/// key built with [`Host::held`] (the first) or [`Host::held_at`] tells `entered`, then waits for
/// `go` (at most 10 s) and keeps whether it was let go in time.
#[derive(Clone)]
pub struct Host {
    pub name: &'static str,
    pub hold: Option<Arc<Hold>>,
}

/// Where a [`Host`]'s lookup waits, and whether it was let go.
pub struct Hold {
    nth: usize,
    hashes: AtomicUsize,
    entered: Mutex<Option<mpsc::Sender<()>>>,
    go: Mutex<Option<mpsc::Receiver<()>>>,
    pub let_go: Mutex<Option<bool>>,
}

impl Host {
    pub fn new(name: &'static str) -> Self {
        Host { name, hold: None }
    }

    pub fn held(name: &'static str, entered: mpsc::Sender<()>, go: mpsc::Receiver<()>) -> Self {
        Host::held_at(name, 1, entered, go)
    }

    pub fn held_at(
        name: &'static str,
        nth: usize,
        entered: mpsc::Sender<()>,
        go: mpsc::Receiver<()>,
    ) -> Self {
        let hold = Hold {
            nth,
            hashes: AtomicUsize::new(0),
            entered: Mutex::new(Some(entered)),
            go: Mutex::new(Some(go)),
            let_go: Mutex::new(None),
        };
        Host {
            name,
            hold: Some(Arc::new(hold)),
        }
    }
}

impl std::hash::Hash for Host {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        if let Some(hold) = &self.hold {
            let go = match hold.hashes.fetch_add(1, Ordering::SeqCst) + 1 == hold.nth {
                true => hold.go.lock().unwrap().take(),
                false => None,
            };
            if let Some(go) = go {
                let _ = hold.entered.lock().unwrap().take().unwrap().send(());
                let let_go = go.recv_timeout(Duration::from_secs(10)).is_ok();
                *hold.let_go.lock().unwrap() = Some(let_go);
            }
        }
        self.name.hash(state);
    }
}

impl PartialEq for Host {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}

impl Eq for Host {}
