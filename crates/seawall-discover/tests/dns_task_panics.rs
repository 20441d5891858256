//! A DNS discovery whose resolving task panics (here: a runtime built without the IO and time
//! drivers that resolving needs) ends its stream, and says so with an error naming the
//! discovery and giving the panic's message, logged before the stream ends. A subscriber set
//! for one thread sees events only once their callsites are registered with it, which other
//! tests running at once on other threads could race with: this test has its binary to itself.

mod common;

use common::{addr, make, Logged};
use futures_util::StreamExt;
use seawall::discover::Dns;
use std::{
    sync::{Arc, Mutex},
    task::{Context, Poll, Wake, Waker},
};

const STOPPED: &str =
    "seawall discover DNS discovery stopped: its task panicked; the balancer keeps the last endpoints";

/// The reader's waker: notes, each time it is woken, how many errors had said the task stopped.
struct Reader {
    errors: Logged,
    woken: Mutex<Vec<usize>>,
}

impl Wake for Reader {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let logged = self.errors.count(STOPPED);
        self.woken.lock().unwrap().push(logged);
    }
}

#[test]
fn a_panicking_dns_task_is_logged_as_an_error_as_its_stream_ends() {
    let errors = Logged::at(tracing::Level::ERROR);
    let _subscriber = tracing::subscriber::set_default(errors.clone());
    let reader = Arc::new(Reader {
        errors: errors.clone(),
        woken: Mutex::default(),
    });
    // No `enable_all`: neither sockets nor timers work on this runtime.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let ended = runtime.block_on(async {
        let mut discovery = Dns::a("users.test.", 80)
            .name("users")
            .nameservers([addr("127.0.0.1:53")])
            .build(make)
            .unwrap();
        // The reader waits for the stream, before the task has run.
        let waker = Waker::from(reader.clone());
        let mut cx = Context::from_waker(&waker);
        assert!(discovery.poll_next_unpin(&mut cx).is_pending());
        // The task runs, and panics, as this one yields; no timer can bound the wait here.
        for _ in 0..100 {
            if !reader.woken.lock().unwrap().is_empty() {
                break;
            }
            tokio::task::yield_now().await;
        }
        matches!(discovery.poll_next_unpin(&mut cx), Poll::Ready(None))
    });
    assert!(ended, "the stream did not end");
    // The reader was woken by the stream's end once the panic had been logged, so a reader on
    // another thread finds the error there when it sees the end.
    assert_eq!(*reader.woken.lock().unwrap(), [1]);
    let logged = errors.fields();
    assert_eq!(errors.count(STOPPED), 1, "{logged:?}");
    assert!(logged[0].contains("name=users "), "{logged:?}");
    // With the panic's own message.
    assert!(logged[0].contains("timers are disabled"), "{logged:?}");
}
