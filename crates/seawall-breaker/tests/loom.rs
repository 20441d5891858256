//! Loom checks of the lock-free state machine: every interleaving of concurrent recording,
//! of racing state changes and of the HalfOpen probe cap.
//!
//! Run with `RUSTFLAGS="--cfg loom" cargo test -p seawall-breaker --release --test loom`.
#![cfg(loom)]

use loom::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    thread,
};
use seawall_breaker::{
    state::{Machine, Observer, PermitKind, State, Transition},
    BreakerConfig, BreakerConfigBuilder, SlidingWindow,
};
use seawall_core::Outcome;
use std::time::Duration;

const MS: u64 = 1_000_000;

#[derive(Default)]
struct Transitions(AtomicUsize);

impl Observer for Transitions {
    fn on_transition(&self, _: &Transition) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

fn builder() -> BreakerConfigBuilder {
    BreakerConfig::builder()
        .jitter(0.0)
        .wait_duration(Duration::from_millis(1))
        .max_wait_in_half_open(Duration::from_secs(1))
}

/// Explores every interleaving with up to three preemptions, for models with more steps than
/// loom can explore exhaustively in reasonable time.
fn bounded(f: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = Some(3);
    builder.check(f);
}

fn machine(builder: BreakerConfigBuilder) -> Arc<Machine> {
    Arc::new(Machine::new(&builder.build_config().unwrap()))
}

fn record(m: &Machine, outcome: Outcome, now: u64, observer: &impl Observer) {
    let permit = m.acquire(|| now, observer).expect("admitted");
    m.complete(permit, outcome, Duration::ZERO, || now, observer);
}

#[test]
fn concurrent_recording_keeps_the_count_window_consistent() {
    loom::model(|| {
        // Two slots and three records: the ring wraps while both threads write.
        let m = machine(
            builder()
                .sliding_window(SlidingWindow::count(2))
                .minimum_calls(2)
                .failure_rate_threshold(1.0),
        );
        let a = {
            let m = m.clone();
            thread::spawn(move || {
                record(&m, Outcome::Failure, 0, &());
                record(&m, Outcome::Success, 0, &());
            })
        };
        record(&m, Outcome::Success, 0, &());
        a.join().unwrap();
        let counts = m.counts(0);
        assert_eq!(counts.calls, 2);
        assert!(counts.failures <= 1);
        assert!(m.window_is_consistent());
        assert_eq!(m.state(), State::Closed);
    });
}

/// A failure recorded at `first_ms` on one thread and a success at `second_ms` on another, into
/// a fresh time window of two 1 ms buckets: the counts at `second_ms`.
fn race_two_records_into_a_time_window(first_ms: u64, second_ms: u64) -> (u32, u32) {
    let m = machine(
        builder()
            .sliding_window(SlidingWindow::time_with_buckets(
                Duration::from_millis(2),
                2,
            ))
            .minimum_calls(3)
            .failure_rate_threshold(1.0),
    );
    let a = {
        let m = m.clone();
        thread::spawn(move || record(&m, Outcome::Failure, first_ms * MS, &()))
    };
    record(&m, Outcome::Success, second_ms * MS, &());
    a.join().unwrap();
    let counts = m.counts(second_ms * MS);
    (counts.calls, counts.failures)
}

#[test]
fn concurrent_recording_into_a_time_window_loses_nothing() {
    // Both threads restart the same stale bucket at once.
    loom::model(|| assert_eq!(race_two_records_into_a_time_window(5, 5), (2, 1)));
}

#[test]
fn a_late_cleaner_keeps_a_bucket_restarted_for_a_later_epoch() {
    // The first record ever, at epoch 5, cleans every bucket; a record at epoch 6 that restarts
    // its bucket meanwhile must survive that cleaning.
    loom::model(|| assert_eq!(race_two_records_into_a_time_window(5, 6), (2, 1)));
}

/// A time window of two 1 ms buckets that trips at `minimum_calls` counted calls and a failure
/// rate of `threshold`.
fn two_bucket_machine(minimum_calls: u32, threshold: f64) -> Arc<Machine> {
    machine(
        builder()
            .sliding_window(SlidingWindow::time_with_buckets(
                Duration::from_millis(2),
                2,
            ))
            .minimum_calls(minimum_calls)
            .failure_rate_threshold(threshold),
    )
}

#[test]
fn records_at_an_epoch_change_count_the_bucket_before_it() {
    loom::model(|| {
        let m = two_bucket_machine(4, 1.0);
        record(&m, Outcome::Failure, 5 * MS, &());
        record(&m, Outcome::Failure, 5 * MS, &());
        // Two failures in the next bucket at once: each record finds no sum of the bucket before
        // its own yet, and one takes it while the other takes it too, waits for nothing and reads
        // every bucket, or uses the one taken. Whichever records second sees all four failures.
        let observer = Arc::new(Transitions::default());
        let a = {
            let (m, observer) = (m.clone(), observer.clone());
            thread::spawn(move || record(&m, Outcome::Failure, 6 * MS, &*observer))
        };
        record(&m, Outcome::Failure, 6 * MS, &*observer);
        a.join().unwrap();
        assert_eq!(m.state(), State::Open);
        assert_eq!(observer.0.load(Ordering::SeqCst), 1);
    });
}

#[test]
fn a_reset_drops_the_sum_of_the_buckets_taken_before_it() {
    loom::model(|| {
        let m = two_bucket_machine(2, 0.6);
        record(&m, Outcome::Failure, 5 * MS, &());
        // A success in the next bucket sums the failure's bucket while the breaker is reset.
        let a = {
            let m = m.clone();
            thread::spawn(move || record(&m, Outcome::Success, 6 * MS, &()))
        };
        m.reset(6 * MS, &());
        a.join().unwrap();
        // The fresh window holds this failure, and perhaps the success (a time window cannot
        // tell a result of the generation the reset ended): a rate of 1 in 1 or 1 in 2, below
        // the minimum calls or the threshold. With the failure from before the reset it would
        // trip.
        record(&m, Outcome::Failure, 6 * MS, &());
        assert_eq!(m.state(), State::Closed);
    });
}

#[test]
fn racing_trips_change_state_once() {
    loom::model(|| {
        let m = machine(
            builder()
                .sliding_window(SlidingWindow::count(4))
                .minimum_calls(2)
                .failure_rate_threshold(0.5),
        );
        let observer = Arc::new(Transitions::default());
        // Both failures see a window that trips; only one state change may happen.
        let a = {
            let (m, observer) = (m.clone(), observer.clone());
            thread::spawn(move || record(&m, Outcome::Failure, 0, &*observer))
        };
        record(&m, Outcome::Failure, 0, &*observer);
        a.join().unwrap();
        assert_eq!(m.state(), State::Open);
        assert_eq!(m.generation(), 1);
        assert_eq!(observer.0.load(Ordering::SeqCst), 1);
    });
}

/// Opens `m` at time 0 (its wait is 1 ms).
fn open(m: &Machine) {
    record(m, Outcome::Failure, 0, &());
    assert_eq!(m.state(), State::Open);
}

#[test]
fn half_open_admits_at_most_its_probes() {
    loom::model(|| {
        let m = machine(builder().consecutive_failures(1).permitted_probes(1));
        open(&m);
        let observer = Arc::new(Transitions::default());
        // Two callers find the wait over at once: one moves to HalfOpen, one probe is admitted.
        let a = {
            let (m, observer) = (m.clone(), observer.clone());
            thread::spawn(move || m.acquire(|| 2 * MS, &*observer).ok().map(|p| p.kind()))
        };
        let b = m.acquire(|| 2 * MS, &*observer).ok().map(|p| p.kind());
        let a = a.join().unwrap();
        let probes = [a, b]
            .iter()
            .filter(|k| **k == Some(PermitKind::Probe))
            .count();
        assert_eq!(probes, 1, "{a:?} {b:?}");
        assert_eq!(m.state(), State::HalfOpen);
        assert_eq!(m.generation(), 2);
        assert_eq!(observer.0.load(Ordering::SeqCst), 1);
        assert_eq!(m.snapshot(2 * MS).probes_in_use, 1);
    });
}

#[test]
fn the_first_probe_starts_the_bound_whatever_the_order() {
    loom::model(|| {
        let m = machine(builder().consecutive_failures(1).permitted_probes(2));
        open(&m);
        // A look at the state (which takes no probe) and a call find the wait over at once. When
        // the look moves the breaker to HalfOpen, the call may take the first probe, and start
        // the bound, before the move has written its deadline. (The look runs on this thread:
        // its writes are what loom orders the call's reads against.)
        let call = {
            let m = m.clone();
            thread::spawn(move || m.acquire(|| 2 * MS, &()).ok().map(|p| p.kind()))
        };
        m.tick(2 * MS, &());
        let b = call.join().unwrap();
        assert_eq!(m.state(), State::HalfOpen);
        // A call that read Open just before the move goes round again, and probes.
        assert_eq!(b, Some(PermitKind::Probe));
        assert_eq!(
            m.deadline(),
            Some(1_002 * MS),
            "bounded from the first probe"
        );
    });
}

#[test]
fn calls_at_the_end_of_the_wait_all_probe() {
    loom::model(|| {
        let m = machine(builder().consecutive_failures(1).permitted_probes(2));
        open(&m);
        // Two calls find the wait over at once, with a slot for each: whichever moves the
        // breaker to HalfOpen, the other, though it read Open, takes the second slot.
        let a = {
            let m = m.clone();
            thread::spawn(move || m.acquire(|| 2 * MS, &()).ok().map(|p| p.kind()))
        };
        let b = m.acquire(|| 2 * MS, &()).ok().map(|p| p.kind());
        let a = a.join().unwrap();
        assert_eq!([a, b], [Some(PermitKind::Probe); 2]);
        assert_eq!(m.state(), State::HalfOpen);
        assert_eq!(m.generation(), 2);
        assert_eq!(m.snapshot(2 * MS).probes_in_use, 2);
    });
}

#[test]
fn looks_at_the_end_of_the_wait_see_half_open() {
    loom::model(|| {
        let m = machine(builder().consecutive_failures(1).permitted_probes(1));
        open(&m);
        // Two looks at the state find the wait over at once: one moves the breaker to HalfOpen,
        // and the other, though it read Open, reports the HalfOpen.
        let observer = Arc::new(Transitions::default());
        let a = {
            let (m, observer) = (m.clone(), observer.clone());
            thread::spawn(move || m.tick(2 * MS, &*observer))
        };
        let b = m.tick(2 * MS, &*observer);
        let a = a.join().unwrap();
        assert_eq!([a, b], [State::HalfOpen; 2]);
        assert_eq!(observer.0.load(Ordering::SeqCst), 1);
    });
}

#[test]
fn a_call_at_the_end_of_the_wait_is_permitted_whatever_the_order() {
    loom::model(|| {
        let m = machine(builder().consecutive_failures(1).permitted_probes(1));
        open(&m);
        // A look at the state moves the breaker to HalfOpen while another asks whether a call
        // would be let through: it would, before the move or after. (The move runs on this
        // thread: its writes are what loom orders the question's reads against.)
        let question = {
            let m = m.clone();
            thread::spawn(move || m.permits(|| 2 * MS))
        };
        m.tick(2 * MS, &());
        assert!(question.join().unwrap());
        assert_eq!(m.state(), State::HalfOpen);
    });
}

/// A HalfOpen that no probe has entered has no bound, however long it idles, whichever thread
/// moved the breaker there: the bound starts with the first probe.
#[test]
fn a_half_open_without_probes_has_no_bound() {
    // Whether, in some interleaving, the look moved the breaker to HalfOpen, and in some the call.
    static LOOK_MOVED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    static CALL_MOVED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    loom::model(|| {
        let m = machine(builder().consecutive_failures(1).permitted_probes(1));
        open(&m);
        // A look at the state finds the wait over at 2 ms and looks again at 10 s, while a call
        // comes at 10 s: long past the 1,002 ms a bound started by the move to HalfOpen would end.
        let look = {
            let m = m.clone();
            thread::spawn(move || {
                let moves = Transitions::default();
                let states = [m.tick(2 * MS, &moves), m.tick(10_000 * MS, &moves)];
                (states, moves.0.load(Ordering::SeqCst))
            })
        };
        let moves = Transitions::default();
        let call = m.acquire(|| 10_000 * MS, &moves).ok().map(|p| p.kind());
        let call_moved = moves.0.load(Ordering::SeqCst);
        let (looked, look_moved) = look.join().unwrap();
        assert_eq!(look_moved + call_moved, 1, "one move to HalfOpen");
        if look_moved == 1 {
            LOOK_MOVED.store(true, std::sync::atomic::Ordering::SeqCst);
        } else {
            CALL_MOVED.store(true, std::sync::atomic::Ordering::SeqCst);
        }
        // A look or a call that read Open just before the other moved the breaker goes round
        // again: the look sees the HalfOpen, the call probes.
        assert_eq!(looked, [State::HalfOpen; 2], "{call:?}");
        assert_eq!(call, Some(PermitKind::Probe));
        assert_eq!(m.generation(), 2);
        assert_eq!(m.snapshot(10_000 * MS).trips, 1);
        assert_eq!(m.deadline(), Some(11_000 * MS), "bounded from the probe");
        assert_eq!(m.tick(10_999 * MS, &()), State::HalfOpen);
        assert_eq!(m.tick(11_000 * MS, &()), State::Open);
        assert_eq!(m.snapshot(11_000 * MS).trips, 2);
    });
    assert!(LOOK_MOVED.load(std::sync::atomic::Ordering::SeqCst));
    assert!(CALL_MOVED.load(std::sync::atomic::Ordering::SeqCst));
}

#[test]
fn an_ignored_probe_hands_its_slot_back() {
    loom::model(|| {
        let m = machine(builder().consecutive_failures(1).permitted_probes(1));
        open(&m);
        let probe = m.acquire(|| 2 * MS, &()).unwrap();
        assert_eq!(probe.kind(), PermitKind::Probe);
        // The hand-back runs on this thread and the new call on the other: loom orders the
        // call's reads against this thread's writes.
        let call = {
            let m = m.clone();
            thread::spawn(move || m.acquire(|| 2 * MS, &()).is_ok())
        };
        m.complete(probe, Outcome::Ignored, Duration::ZERO, || 2 * MS, &());
        let admitted = call.join().unwrap();
        let in_use = m.snapshot(2 * MS).probes_in_use;
        // Admitted only if the slot was back first; never two slots in use.
        assert_eq!(in_use, admitted as u32);
        assert_eq!(m.state(), State::HalfOpen);
    });
}

#[test]
fn a_probe_handed_back_stops_the_bound_unless_a_new_probe_takes_its_slot() {
    loom::model(|| {
        let m = machine(builder().consecutive_failures(1).permitted_probes(1));
        open(&m);
        let probe = m.acquire(|| 2 * MS, &()).unwrap();
        assert_eq!(m.deadline(), Some(1_002 * MS));
        // A call asks while the probe is handed back. It may read the old bound before the
        // hand-back stops it, and take the slot after: its probe must still be bounded. (The
        // hand-back runs on this thread: its writes are what loom orders the call's reads
        // against.)
        let call = {
            let m = m.clone();
            thread::spawn(move || m.acquire(|| 3 * MS, &()).is_ok())
        };
        m.complete(probe, Outcome::Ignored, Duration::ZERO, || 3 * MS, &());
        let admitted = call.join().unwrap();
        assert_eq!(m.state(), State::HalfOpen);
        assert_eq!(m.snapshot(3 * MS).trips, 1);
        assert_eq!(m.snapshot(3 * MS).probes_in_use, admitted as u32);
        match admitted {
            true => assert_eq!(m.deadline(), Some(1_003 * MS), "a fresh bound"),
            false => assert_eq!(m.deadline(), None, "no probe in flight, no bound"),
        }
    });
}

/// Two probes out at 2 ms; at 3 ms the first is handed back without a result on another thread
/// while this one completes the second with `second`.
fn two_probes_end(second: Outcome) -> Arc<Machine> {
    let m = machine(builder().consecutive_failures(1).permitted_probes(2));
    open(&m);
    let p1 = m.acquire(|| 2 * MS, &()).unwrap();
    let p2 = m.acquire(|| 2 * MS, &()).unwrap();
    let a = {
        let m = m.clone();
        thread::spawn(move || {
            m.complete(p1, Outcome::Ignored, Duration::ZERO, || 3 * MS, &());
        })
    };
    m.complete(p2, second, Duration::ZERO, || 3 * MS, &());
    a.join().unwrap();
    m
}

#[test]
fn the_last_of_two_probes_handed_back_stops_the_bound() {
    loom::model(|| {
        let m = two_probes_end(Outcome::Ignored);
        assert_eq!(m.state(), State::HalfOpen);
        assert_eq!(m.snapshot(3 * MS).probes_in_use, 0);
        assert_eq!(m.deadline(), None);
    });
}

#[test]
fn two_probes_ending_short_of_the_verdict_stop_the_bound() {
    loom::model(|| {
        let m = two_probes_end(Outcome::Success);
        // A result is in and no probe is in flight, in either order: the HalfOpen waits for
        // its next call without a bound, and the next probe starts a fresh one.
        assert_eq!(m.state(), State::HalfOpen);
        assert_eq!(m.snapshot(3 * MS).probe_results, 1);
        assert_eq!(m.deadline(), None);
    });
}

/// Of three probes, one out at 2 ms, whose success comes in at 3 ms on this thread while another
/// probe is taken on a second thread, and answered there with a success if `answered`.
fn a_second_probe_during_a_result(answered: bool) -> Arc<Machine> {
    let m = machine(builder().consecutive_failures(1).permitted_probes(3));
    open(&m);
    let probe = m.acquire(|| 2 * MS, &()).unwrap();
    let other = {
        let m = m.clone();
        thread::spawn(move || {
            let probe = m.acquire(|| 3 * MS, &()).unwrap();
            if answered {
                m.complete(probe, Outcome::Success, Duration::ZERO, || 3 * MS, &());
            }
        })
    };
    m.complete(probe, Outcome::Success, Duration::ZERO, || 3 * MS, &());
    other.join().unwrap();
    assert_eq!(m.state(), State::HalfOpen);
    m
}

#[test]
fn a_probe_that_comes_and_goes_during_a_stop_leaves_no_bound_running() {
    loom::model(|| {
        // Whatever the order, two results are in, none is in flight, and no bound is left to
        // re-open the breaker over successful probes.
        let m = a_second_probe_during_a_result(true);
        assert_eq!(m.snapshot(3 * MS).probe_results, 2);
        assert_eq!(m.deadline(), None);
    });
}

#[test]
fn a_probe_answered_short_of_the_verdict_leaves_a_probe_in_flight_bounded() {
    loom::model(|| {
        // Taken before the result, the second probe keeps the first bound running; after it,
        // the result stops the bound and the new probe (or the stop's re-read of the slots)
        // starts one from now. Never unbounded.
        let m = a_second_probe_during_a_result(false);
        let deadline = m.deadline();
        assert!(
            deadline == Some(1_002 * MS) || deadline == Some(1_003 * MS),
            "{deadline:?}"
        );
    });
}

#[test]
fn the_last_probe_result_takes_the_verdict_once() {
    loom::model(|| {
        let m = machine(builder().consecutive_failures(1).permitted_probes(2));
        open(&m);
        let p1 = m.acquire(|| 2 * MS, &()).unwrap();
        let p2 = m.acquire(|| 2 * MS, &()).unwrap();
        let observer = Arc::new(Transitions::default());
        let a = {
            let (m, observer) = (m.clone(), observer.clone());
            thread::spawn(move || {
                m.complete(p1, Outcome::Success, Duration::ZERO, || 2 * MS, &*observer)
            })
        };
        m.complete(p2, Outcome::Success, Duration::ZERO, || 2 * MS, &*observer);
        a.join().unwrap();
        assert_eq!(m.state(), State::Closed);
        assert_eq!(observer.0.load(Ordering::SeqCst), 1);
        assert_eq!(m.counts(2 * MS).calls, 0, "closed with a fresh window");
    });
}

#[test]
fn a_result_from_an_earlier_generation_cannot_change_state() {
    loom::model(|| {
        let m = machine(
            builder()
                .sliding_window(SlidingWindow::count(2))
                .consecutive_failures(1),
        );
        let stale = m.acquire(|| 0, &()).unwrap();
        let observer = Arc::new(Transitions::default());
        let a = {
            let (m, observer) = (m.clone(), observer.clone());
            thread::spawn(move || {
                m.complete(stale, Outcome::Failure, Duration::ZERO, || 0, &*observer)
            })
        };
        m.reset(0, &*observer);
        a.join().unwrap();
        // Either the failure came first (trip, then reset) or it was dropped: the breaker is
        // Closed after the reset, whatever the order. A reset of the Closed breaker starts a
        // generation and reports no transition.
        assert_eq!(m.state(), State::Closed);
        let changes = observer.0.load(Ordering::SeqCst);
        let generation = m.generation();
        assert!(
            (changes, generation) == (0, 1) || (changes, generation) == (2, 2),
            "{changes} transitions, generation {generation}"
        );
        // Dropped, even when it completed while the reset emptied the window: it is neither in
        // the new window nor in its run of failures.
        let snapshot = m.snapshot(0);
        assert_eq!((snapshot.calls, snapshot.consecutive_failures), (0, 0));
        assert!(m.window_is_consistent());
    });
}

#[test]
fn a_failure_from_before_a_reset_starts_no_run_after_it() {
    loom::model(|| {
        let m = machine(
            builder()
                .sliding_window(SlidingWindow::count(2))
                .minimum_calls(2)
                .consecutive_failures(2),
        );
        // A failure admitted before a reset of the Closed breaker completes while the reset runs;
        // then a call admitted after it fails. Two failures in a row trip the breaker, but only
        // one is of the new generation.
        let stale = m.acquire(|| 0, &()).unwrap();
        let a = {
            let m = m.clone();
            thread::spawn(move || m.complete(stale, Outcome::Failure, Duration::ZERO, || 0, &()))
        };
        m.reset(0, &());
        a.join().unwrap();
        assert_eq!(m.generation(), 1);
        record(&m, Outcome::Failure, 0, &());
        assert_eq!(m.state(), State::Closed);
        let snapshot = m.snapshot(0);
        assert_eq!((snapshot.calls, snapshot.consecutive_failures), (1, 1));
        assert!(m.window_is_consistent());
    });
}

#[test]
fn a_trip_just_after_a_verdict_of_closed_waits_the_first_wait() {
    loom::model(|| {
        let m = machine(builder().consecutive_failures(1).permitted_probes(1));
        open(&m);
        let probe = m.acquire(|| 2 * MS, &()).unwrap();
        assert_eq!(probe.kind(), PermitKind::Probe);
        // The probe's success closes the breaker on one thread; on another, a call admitted as
        // soon as it is Closed fails and trips it, perhaps before the verdict has finished.
        let verdict = {
            let m = m.clone();
            thread::spawn(move || {
                m.complete(probe, Outcome::Success, Duration::ZERO, || 2 * MS, &());
            })
        };
        while m.state() != State::Closed {
            thread::yield_now();
        }
        record(&m, Outcome::Failure, 2 * MS, &());
        verdict.join().unwrap();
        assert_eq!(m.state(), State::Open);
        assert_eq!(m.generation(), 4);
        // The first trip since the breaker closed: the first wait, 1 ms.
        assert_eq!(m.deadline(), Some(3 * MS));
        assert_eq!(m.snapshot(2 * MS).trips, 1);
    });
}

#[test]
fn a_verdict_that_loses_to_a_manual_change_keeps_the_new_window() {
    loom::model(|| {
        let m = machine(
            builder()
                .sliding_window(SlidingWindow::count(2))
                .minimum_calls(2)
                .consecutive_failures(1)
                .permitted_probes(1),
        );
        open(&m);
        let probe = m.acquire(|| 2 * MS, &()).unwrap();
        assert_eq!(probe.kind(), PermitKind::Probe);
        // The probe's success closes the breaker while an operator switches to MetricsOnly and
        // a call is recorded in the window MetricsOnly starts.
        let verdict = {
            let m = m.clone();
            thread::spawn(move || {
                m.complete(probe, Outcome::Success, Duration::ZERO, || 2 * MS, &());
            })
        };
        m.metrics_only(2 * MS, &());
        record(&m, Outcome::Success, 2 * MS, &());
        verdict.join().unwrap();
        assert_eq!(m.state(), State::MetricsOnly);
        assert_eq!(m.counts(2 * MS).calls, 1, "the recorded call is kept");
        assert!(m.window_is_consistent());
    });
}

/// A verdict of Closed (the last probe's completion, on a runtime thread) does not wait for an
/// operator's reset that is emptying the window on the way out of the same HalfOpen: the reset is
/// sure to leave that HalfOpen, so the verdict gives way rather than spin until it has. Whatever
/// the order, the breaker ends Closed with a consistent window.
#[test]
fn a_verdict_gives_way_to_a_reset_from_the_same_half_open() {
    // Whether, in some interleaving, the verdict returned while the reset was still under way.
    static GAVE_WAY: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    loom::model(|| {
        let m = machine(
            builder()
                .sliding_window(SlidingWindow::count(2))
                .minimum_calls(2)
                .consecutive_failures(1)
                .permitted_probes(1),
        );
        open(&m);
        let probe = m.acquire(|| 2 * MS, &()).unwrap();
        assert_eq!(probe.kind(), PermitKind::Probe);
        let observer = Arc::new(Transitions::default());
        let reset = {
            let (m, observer) = (m.clone(), observer.clone());
            thread::spawn(move || m.reset(2 * MS, &*observer))
        };
        m.complete(
            probe,
            Outcome::Success,
            Duration::ZERO,
            || 2 * MS,
            &*observer,
        );
        if m.state() == State::HalfOpen {
            GAVE_WAY.store(true, std::sync::atomic::Ordering::SeqCst);
        }
        reset.join().unwrap();
        assert_eq!(m.state(), State::Closed);
        // One transition to Closed: the reset's, or the verdict's when it came first (the reset
        // of the Closed breaker then starts a generation and reports no transition).
        assert_eq!(observer.0.load(Ordering::SeqCst), 1);
        let generation = m.generation();
        assert!(generation == 3 || generation == 4, "{generation}");
        assert_eq!(m.counts(2 * MS).calls, 0);
        assert!(m.window_is_consistent());
    });
    assert!(
        GAVE_WAY.load(std::sync::atomic::Ordering::SeqCst),
        "the verdict never returned before the reset was published: it waited for it"
    );
}

/// A verdict waits for a change to Closed from another state rather than give way to it: a stale
/// verdict, whose HalfOpen ran out of time while it was being taken, holds the flag only to find
/// that it lost, and publishes nothing. Giving way to it would leave the current HalfOpen, whose
/// probe succeeded, without a verdict.
#[test]
fn a_verdict_waits_for_a_stale_verdict_to_find_it_lost() {
    loom::model(|| {
        let m = machine(builder().consecutive_failures(1).permitted_probes(1));
        open(&m);
        let stale = m.acquire(|| 2 * MS, &()).unwrap();
        assert_eq!(stale.kind(), PermitKind::Probe);
        // The first probe succeeds on another thread while, on this one, its HalfOpen runs out
        // of time, the breaker opens, and the next HalfOpen's probe succeeds.
        let a = {
            let m = m.clone();
            thread::spawn(move || {
                m.complete(stale, Outcome::Success, Duration::ZERO, || 2 * MS, &())
            })
        };
        if m.tick(1_002 * MS, &()) == State::Open {
            let probe = m.acquire(|| 1_004 * MS, &()).unwrap();
            assert_eq!(probe.kind(), PermitKind::Probe);
            m.complete(probe, Outcome::Success, Duration::ZERO, || 1_004 * MS, &());
            assert_eq!(m.state(), State::Closed, "the current verdict is taken");
        }
        a.join().unwrap();
        assert_eq!(m.state(), State::Closed);
    });
}

/// The last probe in flight is handed back just before its bound ends, while a look at the state
/// finds the bound due. The stop and the expiry race: either the bound stops first and the
/// HalfOpen waits, unbounded, for its next probe, or the expiry comes first and the breaker is
/// open as of the bound, the hand-back of a probe from a HalfOpen that is gone changing nothing.
/// Never both, and never a HalfOpen with a bound and no probe out.
#[test]
fn a_bound_stopped_as_it_ends_either_stops_or_reopens() {
    // Whether, in some interleaving, the stop came first, and in some the expiry.
    static STOPPED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    static REOPENED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    loom::model(|| {
        let m = machine(builder().consecutive_failures(1).permitted_probes(1));
        open(&m);
        let probe = m.acquire(|| 2 * MS, &()).unwrap();
        assert_eq!(m.deadline(), Some(1_002 * MS));
        let observer = Arc::new(Transitions::default());
        let look = {
            let (m, observer) = (m.clone(), observer.clone());
            thread::spawn(move || m.tick(1_002 * MS, &*observer))
        };
        m.complete(
            probe,
            Outcome::Ignored,
            Duration::ZERO,
            || 1_001 * MS,
            &*observer,
        );
        let looked = look.join().unwrap();
        let changes = observer.0.load(Ordering::SeqCst);
        match m.state() {
            State::HalfOpen => {
                STOPPED.store(true, std::sync::atomic::Ordering::SeqCst);
                assert_eq!(looked, State::HalfOpen);
                assert_eq!(changes, 0);
                assert_eq!(m.generation(), 2);
                assert_eq!(m.deadline(), None, "no probe out, no bound");
                assert_eq!(m.snapshot(1_002 * MS).probes_in_use, 0);
                // The next probe starts a fresh bound.
                let next = m.acquire(|| 1_002 * MS, &()).unwrap();
                assert_eq!(next.kind(), PermitKind::Probe);
                assert_eq!(m.deadline(), Some(2_002 * MS));
            }
            State::Open => {
                REOPENED.store(true, std::sync::atomic::Ordering::SeqCst);
                assert_eq!(looked, State::Open);
                assert_eq!(changes, 1);
                assert_eq!(m.generation(), 3);
                assert_eq!(m.snapshot(1_002 * MS).trips, 2);
                // The second trip waits twice as long: 2 ms from the bound.
                assert_eq!(m.deadline(), Some(1_004 * MS), "open as of the bound");
                assert_eq!(m.tick(1_004 * MS, &()), State::HalfOpen);
                assert_eq!(m.snapshot(1_004 * MS).probes_in_use, 0);
            }
            other => panic!("{other:?}"),
        }
    });
    assert!(STOPPED.load(std::sync::atomic::Ordering::SeqCst));
    assert!(REOPENED.load(std::sync::atomic::Ordering::SeqCst));
}

/// Two calls find a HalfOpen's bound over, and the Open wait it leads to over too: each may be
/// slow to take its slot while the other moves the breaker on, or move it on itself. Each change
/// happens once, and the new HalfOpen's slots are its own: a call holds a probe of the HalfOpen
/// that is gone, whose result counts for nothing, or one of the new HalfOpen's slots, bounded, or
/// is turned away while a change it raced has yet to write its deadline.
#[test]
fn a_slow_taker_while_half_open_moves_on_holds_one_slot_at_most() {
    bounded(|| {
        let m = machine(builder().consecutive_failures(1).permitted_probes(2));
        open(&m);
        let first = m.acquire(|| 2 * MS, &()).unwrap();
        assert_eq!(first.kind(), PermitKind::Probe);
        let observer = Arc::new(Transitions::default());
        // The bound ends at 1,002 ms; the second trip's wait (2 ms) at 1,004 ms.
        let slow = {
            let (m, observer) = (m.clone(), observer.clone());
            thread::spawn(move || m.acquire(|| 1_004 * MS, &*observer).ok())
        };
        let next = m.acquire(|| 1_004 * MS, &*observer).ok();
        let slow = slow.join().unwrap();
        assert_eq!(observer.0.load(Ordering::SeqCst), 2, "each change once");
        assert_eq!(m.state(), State::HalfOpen);
        assert_eq!(m.generation(), 4);
        assert_eq!(m.snapshot(1_004 * MS).trips, 2);
        let permits = [next, slow];
        for permit in permits.iter().flatten() {
            assert_eq!(permit.kind(), PermitKind::Probe);
            assert!(matches!(permit.generation(), 2 | 4), "{permit:?}");
        }
        let new_slots = permits
            .iter()
            .flatten()
            .filter(|permit| permit.generation() == 4)
            .count() as u32;
        assert!(new_slots >= 1, "{permits:?}");
        assert_eq!(m.snapshot(1_004 * MS).probes_in_use, new_slots);
        assert_eq!(m.deadline(), Some(2_004 * MS), "bounded from the new probe");
        // Every probe answers: only the new HalfOpen's count, and the last of them to answer
        // short of the verdict stops the bound.
        for permit in permits.into_iter().flatten() {
            m.complete(permit, Outcome::Success, Duration::ZERO, || 1_004 * MS, &());
        }
        m.complete(first, Outcome::Success, Duration::ZERO, || 1_004 * MS, &());
        match new_slots {
            2 => assert_eq!(m.state(), State::Closed),
            _ => {
                assert_eq!(m.state(), State::HalfOpen);
                assert_eq!(m.snapshot(1_004 * MS).probe_results, 1);
                assert_eq!(m.snapshot(1_004 * MS).probes_in_use, 1);
                assert_eq!(m.deadline(), None);
            }
        }
    });
}
