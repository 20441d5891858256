//! A DNS discovery whose resolving task panics (here: a runtime built without the IO and time
//! drivers that resolving needs) ends its stream, and says so with an error naming the
//! discovery and giving the panic's message. A subscriber set for one thread sees events only
//! once their callsites are registered with it, which other tests running at once on other
//! threads could race with: this test has its binary to itself.

mod common;

use common::{addr, make, Logged};
use futures_util::{FutureExt, StreamExt};
use seawall::discover::Dns;

#[test]
fn a_panicking_dns_task_is_logged_as_an_error_as_its_stream_ends() {
    let errors = Logged::at(tracing::Level::ERROR);
    let _subscriber = tracing::subscriber::set_default(errors.clone());
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
        // The task runs, and panics, as this one yields; no timer can bound the wait here.
        for _ in 0..100 {
            if let Some(next) = discovery.next().now_or_never() {
                return next.is_none();
            }
            tokio::task::yield_now().await;
        }
        false
    });
    assert!(ended, "the stream did not end");
    let logged = errors.fields();
    assert_eq!(
        errors.count("seawall discover DNS discovery stopped: its task panicked; the balancer keeps the last endpoints"),
        1,
        "{logged:?}"
    );
    assert!(logged[0].contains("name=users "), "{logged:?}");
    // With the panic's own message.
    assert!(logged[0].contains("timers are disabled"), "{logged:?}");
}
