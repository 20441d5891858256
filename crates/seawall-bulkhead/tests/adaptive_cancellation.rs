//! A cancelled call, waiting or running, counts as ignored for an adaptive limit: its permit comes
//! back and the limit gets no sample from it. So does a call the classifier calls ignored.

use seawall_bulkhead::{
    limit::{Limit, Sample},
    BulkheadLayer,
};
use seawall_core::Outcome;
use std::{
    sync::{Arc, Mutex},
    time::Duration,
};
use tokio::sync::oneshot;
use tokio_test::{assert_pending, task};
use tower::{service_fn, Layer, Service, ServiceExt};

type Samples = Arc<Mutex<Vec<Sample>>>;

/// A limit of one that records every sample and answers one more than it was each time, so that
/// any sample shows in the limit too.
#[derive(Debug)]
struct Recording {
    samples: Samples,
    limit: usize,
}

impl Limit for Recording {
    fn initial_limit(&self) -> usize {
        1
    }

    fn bounds(&self) -> (usize, usize) {
        (1, 10)
    }

    fn update(&mut self, sample: &Sample) -> usize {
        self.samples.lock().unwrap().push(*sample);
        self.limit += 1;
        self.limit
    }
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_call_is_no_sample() {
    let samples = Samples::default();
    let layer = BulkheadLayer::builder()
        .adaptive(Recording {
            samples: samples.clone(),
            limit: 1,
        })
        .max_wait(Duration::from_secs(1))
        .build()
        .unwrap();
    let handle = layer.handle();
    // Each call runs until its gate answers.
    let mut service = layer.layer(service_fn(|gate: oneshot::Receiver<()>| async move {
        let _ = gate.await;
        Ok::<_, std::io::Error>(())
    }));

    let (_open_running, gate) = oneshot::channel();
    let mut running = task::spawn(service.ready().await.unwrap().call(gate));
    assert_pending!(running.poll());
    let (_open_waiting, gate) = oneshot::channel();
    let mut waiting = task::spawn(service.ready().await.unwrap().call(gate));
    assert_pending!(waiting.poll());
    assert_eq!((handle.in_flight(), handle.waiting()), (1, 1));

    tokio::time::advance(Duration::from_millis(10)).await;
    drop(waiting);
    assert_eq!(handle.waiting(), 0);
    drop(running);
    assert_eq!(handle.available(), 1, "the running call's permit came back");
    assert!(samples.lock().unwrap().is_empty(), "{:?}", samples.lock());
    assert_eq!(handle.limit(), 1);

    // A call that finishes is sampled.
    let (open, gate) = oneshot::channel();
    let finished = service.ready().await.unwrap().call(gate);
    open.send(()).unwrap();
    finished.await.unwrap();
    assert_eq!(samples.lock().unwrap().len(), 1);
    assert_eq!(handle.limit(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_call_classified_ignored_is_no_sample() {
    let samples = Samples::default();
    let layer = BulkheadLayer::builder()
        .adaptive(Recording {
            samples: samples.clone(),
            limit: 1,
        })
        .classifier(
            |result: Result<&bool, &std::io::Error>, _: Duration| match result {
                Ok(true) => Outcome::Ignored,
                Ok(false) => Outcome::Success,
                Err(_) => Outcome::Failure,
            },
        )
        .build()
        .unwrap();
    let handle = layer.handle();
    let service = layer.layer(service_fn(|ignored: bool| async move {
        tokio::time::sleep(Duration::from_millis(10)).await;
        Ok::<_, std::io::Error>(ignored)
    }));

    assert!(service.clone().oneshot(true).await.unwrap());
    assert_eq!(handle.available(), 1, "its permit came back");
    assert!(samples.lock().unwrap().is_empty(), "{:?}", samples.lock());
    assert_eq!(handle.limit(), 1);

    assert!(!service.oneshot(false).await.unwrap());
    assert_eq!(samples.lock().unwrap().len(), 1, "a success is a sample");
}
