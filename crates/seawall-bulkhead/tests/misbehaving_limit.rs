//! A custom adaptive limit is trusted only as far as the bulkhead can check it: bounds that change
//! after the build, beyond what the builder accepts, neither panic nor break the permit count.

use seawall_bulkhead::{
    limit::{Limit, Sample, MAX_LIMIT},
    BulkheadLayer,
};
use std::sync::{Arc, Mutex};
use tower::{service_fn, Layer, ServiceExt};

/// A limit that answers 1, within bounds the test may change after the build.
#[derive(Debug)]
struct Runaway(Arc<Mutex<(usize, usize)>>);

impl Limit for Runaway {
    fn initial_limit(&self) -> usize {
        1
    }

    fn bounds(&self) -> (usize, usize) {
        *self.0.lock().unwrap()
    }

    fn update(&mut self, _: &Sample) -> usize {
        1
    }
}

/// Bounds of `usize::MAX` after the build: the limit goes no further than [`MAX_LIMIT`], every
/// permit added is free, and calls keep being admitted.
#[tokio::test(start_paused = true)]
async fn bounds_beyond_the_largest_limit_are_capped_at_it() {
    let bounds = Arc::new(Mutex::new((1, 1)));
    let layer = BulkheadLayer::builder()
        .adaptive(Runaway(bounds.clone()))
        .build()
        .unwrap();
    let handle = layer.handle();
    let service = layer.layer(service_fn(|()| async { Ok::<_, std::io::Error>(()) }));

    *bounds.lock().unwrap() = (usize::MAX, usize::MAX);
    service.clone().oneshot(()).await.unwrap();
    assert_eq!(handle.limit(), MAX_LIMIT);
    for _ in 0..3 {
        service.clone().oneshot(()).await.unwrap();
    }
    assert_eq!(handle.limit(), MAX_LIMIT);
    assert_eq!(handle.available(), MAX_LIMIT);
    assert_eq!(handle.in_flight(), 0);
}
