//! A watched list whose keys panic as the list is copied off the channel (a key's `Clone`) is
//! left out, logged as an error, and the next list is read: the stream does not end. A
//! subscriber set for one thread sees events only once their callsites are registered with it,
//! which other tests running at once on other threads could race with: this test has its binary
//! to itself.

mod common;

use common::Logged;
use futures_util::{FutureExt, StreamExt};
use seawall::balance::EndpointMeta;
use seawall::discover::{watch, Change};
use std::time::Duration;

const NO_CLONE: &str = "no clone for 13";

/// A key that cannot be cloned for 13.
#[derive(PartialEq, Eq, Hash)]
struct Uncloneable(u32);

impl Clone for Uncloneable {
    fn clone(&self) -> Self {
        assert_ne!(self.0, 13, "{NO_CLONE}");
        Uncloneable(self.0)
    }
}

impl EndpointMeta for Uncloneable {}

#[tokio::test(start_paused = true)]
async fn a_list_whose_keys_panic_when_copied_is_left_out_and_the_next_is_read() {
    // The default hook would print the panic raised here on purpose; only that one is hidden.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !info.to_string().contains(NO_CLONE) {
            hook(info);
        }
    }));
    let errors = Logged::at(tracing::Level::ERROR);
    let _subscriber = tracing::subscriber::set_default(errors.clone());
    let (tx, rx) = tokio::sync::watch::channel(Vec::new());
    let mut d = watch(rx, |k: &Uncloneable| k.0);
    tokio::time::sleep(Duration::from_millis(1)).await;
    tx.send(vec![Uncloneable(13)]).unwrap();
    // The watch task takes the list, and its copy panics.
    tokio::time::sleep(Duration::from_millis(1)).await;
    let logged = errors.fields();
    assert_eq!(logged.len(), 1, "{logged:?}");
    assert!(logged[0].contains(NO_CLONE), "{logged:?}");
    tx.send(vec![Uncloneable(1)]).unwrap();
    let next = tokio::time::timeout(Duration::from_secs(1), d.next()).await;
    let Ok(Some(Ok(Change::Insert(key, 1)))) = next else {
        panic!("the list after the one left out was not read");
    };
    assert_eq!(key.0, 1);
    assert_eq!(errors.fields().len(), 1, "one error, for the list left out");
    assert!(d.next().now_or_never().is_none(), "the stream goes on");
    drop(tx);
    assert!(d.next().await.is_none(), "the stream ends with the sender");
}
