//! An adaptive bulkhead measures a call's duration once: the classifier and the limit's sample get
//! the same value. Only a body released later, with `release_on_body_end`, is sampled up to its end.
//!
//! These tests run in real time: the classifier spins for a while after it has seen the duration,
//! so a second clock read for the sample would come out at least that much longer. (In paused time
//! the clock does not move during the classifier, and both reads would agree anyway.)

use http_body_util::{BodyExt, Empty, Full as FullBody};
use hyper::body::Bytes;
use seawall_bulkhead::{
    limit::{Limit, Sample},
    BulkheadLayer,
};
use seawall_core::Outcome;
use std::{
    io,
    sync::{Arc, Mutex},
    time::Duration,
};
use tokio::time::Instant;
use tower::{service_fn, Layer, ServiceExt};

/// How long the classifier takes after reading its duration.
const CLASSIFIER_TIME: Duration = Duration::from_millis(2);

type Seen = Arc<Mutex<Vec<Duration>>>;

/// A limit that stays at 10 and records the round-trip time of every sample.
#[derive(Debug)]
struct Recording(Seen);

impl Limit for Recording {
    fn initial_limit(&self) -> usize {
        10
    }

    fn bounds(&self) -> (usize, usize) {
        (1, 100)
    }

    fn update(&mut self, sample: &Sample) -> usize {
        self.0.lock().unwrap().push(sample.rtt);
        10
    }
}

/// A classifier that records the duration it is given, then takes `CLASSIFIER_TIME`.
fn classifier<Res>(
    seen: &Seen,
) -> impl Fn(Result<&Res, &io::Error>, Duration) -> Outcome + Send + Sync + 'static {
    let seen = seen.clone();
    move |result, elapsed| {
        seen.lock().unwrap().push(elapsed);
        let start = Instant::now();
        while start.elapsed() < CLASSIFIER_TIME {
            std::hint::spin_loop();
        }
        match result {
            Ok(_) => Outcome::Success,
            Err(_) => Outcome::Failure,
        }
    }
}

#[tokio::test]
async fn classifier_and_limit_see_the_same_duration() {
    let classified = Seen::default();
    let sampled = Seen::default();
    let layer = BulkheadLayer::builder()
        .adaptive(Recording(sampled.clone()))
        .classifier(classifier(&classified))
        .build()
        .unwrap();
    let service = layer.layer(service_fn(|fail: bool| async move {
        tokio::time::sleep(Duration::from_millis(1)).await;
        if fail {
            Err(io::Error::other("unavailable"))
        } else {
            Ok(())
        }
    }));

    service.clone().oneshot(false).await.unwrap();
    service.clone().oneshot(true).await.unwrap_err();

    let classified = classified.lock().unwrap().clone();
    assert_eq!(classified.len(), 2);
    assert_eq!(*sampled.lock().unwrap(), classified);
}

#[tokio::test]
async fn a_body_over_with_its_response_is_sampled_with_the_classified_duration() {
    let classified = Seen::default();
    let sampled = Seen::default();
    let layer = BulkheadLayer::builder()
        .adaptive(Recording(sampled.clone()))
        .classifier(classifier(&classified))
        .release_on_body_end()
        .build()
        .unwrap();
    let service = layer.layer(service_fn(|()| async {
        tokio::time::sleep(Duration::from_millis(1)).await;
        Ok::<_, io::Error>(http::Response::new(Empty::<Bytes>::new()))
    }));

    let response = service.oneshot(()).await.unwrap();
    assert!(!response.body().holds_permit());

    let classified = classified.lock().unwrap().clone();
    assert_eq!(classified.len(), 1);
    assert_eq!(*sampled.lock().unwrap(), classified);
}

#[tokio::test]
async fn a_body_read_later_is_sampled_up_to_its_end() {
    let classified = Seen::default();
    let sampled = Seen::default();
    let layer = BulkheadLayer::builder()
        .adaptive(Recording(sampled.clone()))
        .classifier(classifier(&classified))
        .release_on_body_end()
        .build()
        .unwrap();
    let service = layer.layer(service_fn(|()| async {
        Ok::<_, io::Error>(http::Response::new(FullBody::new(Bytes::from_static(
            b"body",
        ))))
    }));

    let response = service.oneshot(()).await.unwrap();
    assert!(response.body().holds_permit());
    assert!(sampled.lock().unwrap().is_empty());
    response.into_body().collect().await.unwrap();

    let classified = classified.lock().unwrap()[0];
    let sampled = sampled.lock().unwrap().clone();
    assert_eq!(sampled.len(), 1);
    assert!(
        sampled[0] >= classified + CLASSIFIER_TIME,
        "sampled {:?}, classified {classified:?}",
        sampled[0]
    );
}
