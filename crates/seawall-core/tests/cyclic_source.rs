//! An error whose `source()` chain comes back on itself: the chain walk ends, so a classifier or a
//! retry that looks through such an error does not spin forever inside a response future's poll.

use seawall_core::error::{chain, find, is, not_sent};
use std::{error::Error, fmt, sync::mpsc, thread, time::Duration};

/// An error that is its own source, which safe Rust allows.
#[derive(Debug)]
struct Loop;

impl fmt::Display for Loop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("loop")
    }
}

impl Error for Loop {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(self)
    }
}

#[test]
fn a_cyclic_source_chain_is_walked_to_a_bounded_depth() {
    let (done, finished) = mpsc::channel();
    // On its own thread, so a walk that never ends fails the test instead of hanging it.
    thread::spawn(move || {
        let never_sent = not_sent(&Loop).is_none();
        let no_io = !is::<std::io::Error>(&Loop) && find::<std::io::Error>(&Loop).is_none();
        let steps = chain(&Loop).count();
        let _ = done.send((never_sent, no_io, steps));
    });
    let (never_sent, no_io, steps) = finished
        .recv_timeout(Duration::from_secs(1))
        .expect("walking a cyclic source() chain did not end");
    assert!(
        never_sent,
        "not_sent found a NotSent in a chain without one"
    );
    assert!(no_io, "is/find found an io::Error in a chain without one");
    assert_eq!(steps, 256, "the walk stops after 256 errors");
}
