//! A runtime torn down while its thread unwinds (a failing `#[tokio::test]`: its body panics
//! inside `block_on`, and the runtime is dropped as the panic leaves) drops a live DNS
//! discovery's task without its having panicked: no error says it did. A subscriber set for one
//! thread sees events only once their callsites are registered with it, which other tests
//! running at once on other threads could race with: this test has its binary to itself.

mod common;

use common::{addr, make, next_change, Logged, Zone};
use seawall::discover::Dns;

const BODY_FAILS: &str = "the test body fails";

#[test]
fn a_runtime_torn_down_by_a_panic_does_not_log_its_dns_task_as_panicking() {
    // The default hook would print the panic raised here on purpose; only that one is hidden.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if info.payload().downcast_ref::<&str>() != Some(&BODY_FAILS) {
            hook(info);
        }
    }));
    let errors = Logged::at(tracing::Level::ERROR);
    let _subscriber = tracing::subscriber::set_default(errors.clone());
    let unwound = std::panic::catch_unwind(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let zone = Zone::default();
            zone.set_a("users.test", &[[10, 0, 0, 1]]);
            let server = zone.serve().await;
            let mut discovery = Dns::a("users.test.", 80)
                .name("users")
                .nameservers([server])
                .build(make)
                .unwrap();
            // The discovery is live: its task has resolved the name, and waits for the next
            // resolution.
            assert_eq!(
                next_change(&mut discovery).await,
                ('+', addr("10.0.0.1:80"), 1)
            );
            std::panic::panic_any(BODY_FAILS);
        })
    });
    let Err(panic) = unwound else {
        unreachable!("the runtime's body panics");
    };
    assert_eq!(panic.downcast_ref::<&str>(), Some(&BODY_FAILS));
    assert_eq!(errors.fields(), Vec::<String>::new());
}
