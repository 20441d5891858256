//! An adaptive limit's changes reach listeners after they are made, unlocked, so two changes made
//! at nearly the same time on different threads may be heard in either order. Each
//! `LimitChanged` carries the generation it was made in, and that orders them.

use seawall_bulkhead::{
    limit::{Limit, Sample},
    BulkheadEvent, BulkheadLayer,
};
use seawall_core::Name;
use std::{
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        mpsc, Arc, Mutex,
    },
    time::Duration,
};
use tower::{service_fn, Layer, ServiceExt};

/// How long a thread waits for the other side of the handshake before the test gives up: a bound
/// against a hang, never reached when the test passes.
const HANDSHAKE: Duration = Duration::from_secs(10);

/// A limit of 10 that answers 11, then 12 from then on.
#[derive(Debug, Default)]
struct Steps(usize);

impl Limit for Steps {
    fn initial_limit(&self) -> usize {
        10
    }

    fn bounds(&self) -> (usize, usize) {
        (1, 100)
    }

    fn update(&mut self, _: &Sample) -> usize {
        self.0 += 1;
        10 + self.0.min(2)
    }
}

/// What the listener heard, in the order it recorded it: `(generation, from, to)`.
type Heard = Arc<Mutex<Vec<(u64, usize, usize)>>>;

/// Call A's change (10 → 11) is heard by a listener held up on A's thread until call B, on the
/// other worker, has made and reported the next change (11 → 12): the listener records B's change
/// first, as it would if A's thread were preempted between its change and its report. Ordered by
/// generation, the changes are 10 → 11 → 12, and the latest holds the limit the bulkhead has.
#[test]
fn limit_changes_heard_out_of_order_are_ordered_by_generation() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();

    let heard: Heard = Arc::default();
    let changes = Arc::new(AtomicUsize::new(0));
    let held = Arc::new(AtomicBool::new(false));
    let (entered_tx, entered_rx) = mpsc::channel::<()>();
    let (second_tx, second_rx) = mpsc::channel::<()>();
    let (entered_tx, second_tx, second_rx) = (
        Mutex::new(entered_tx),
        Mutex::new(second_tx),
        Mutex::new(second_rx),
    );
    let listener = {
        let (heard, held) = (heard.clone(), held.clone());
        move |_: &Name, event: &BulkheadEvent| {
            let BulkheadEvent::LimitChanged {
                from,
                to,
                generation,
            } = *event
            else {
                return;
            };
            let first = changes.fetch_add(1, Ordering::SeqCst) == 0;
            if first {
                // Held here, before recording, until the second change has been recorded.
                entered_tx.lock().unwrap().send(()).unwrap();
                let second = second_rx.lock().unwrap().recv_timeout(HANDSHAKE);
                held.store(second.is_ok(), Ordering::SeqCst);
            }
            heard.lock().unwrap().push((generation, from, to));
            if !first {
                second_tx.lock().unwrap().send(()).unwrap();
            }
        }
    };
    let layer = BulkheadLayer::builder()
        .adaptive(Steps::default())
        .on_event(listener)
        .build()
        .unwrap();
    let handle = layer.handle();
    let service = layer.layer(service_fn(
        |n: u32| async move { Ok::<_, std::io::Error>(n) },
    ));

    let a = runtime.spawn(service.clone().oneshot(1));
    entered_rx
        .recv_timeout(HANDSHAKE)
        .expect("call A's change reaches the listener");
    // A's worker is held in the listener; B runs on the other one.
    let b = runtime.spawn(service.clone().oneshot(2));
    let (a, b) = runtime.block_on(async { (a.await.unwrap(), b.await.unwrap()) });
    assert_eq!((a.unwrap(), b.unwrap()), (1, 2));

    assert!(
        held.load(Ordering::SeqCst),
        "B's change was heard while A's listener was held"
    );
    let mut heard = heard.lock().unwrap().clone();
    assert_eq!(
        heard.iter().map(|&(_, _, to)| to).collect::<Vec<_>>(),
        [12, 11],
        "the changes were heard out of order"
    );
    assert_eq!(handle.limit(), 12);

    heard.sort_by_key(|&(generation, _, _)| generation);
    assert_eq!(heard, [(1, 10, 11), (2, 11, 12)]);
    let latest = heard.last().unwrap();
    assert_eq!(
        latest.2,
        handle.limit(),
        "the latest generation holds the limit"
    );
}
