//! Retry budgets: a bound on how much extra load retries (and hedges) may add.
//!
//! Without a budget, retries multiply load exactly when a dependency is least able to take it: with
//! 3 attempts, a dependency that fails every call receives 3× its normal traffic, and every layer of
//! retries above it multiplies again (a *retry storm*). A budget caps retries at a share of the
//! traffic instead, so a partial outage stays partial.
//!
//! A [`RetryBudget`] is a cheap handle to shared state: every layer, service and clone given the
//! same handle draws on the same budget. Use one budget per downstream dependency and layer: each
//! request deposits in the budget of every retry or hedge layer it passes, so one handle given to
//! both a hedge and a retry layer on the same path counts each request twice.
//!
//! Two kinds:
//!
//! - **Ratio** (Finagle's `RetryBudget`, the default): every request deposits `ratio` of a retry,
//!   every retry withdraws one. The window is kept in ten slices of a tenth of `ttl`: a deposit
//!   counts for 0.9 to 1 × `ttl` (the rest of its slice and nine more; under load a request is
//!   filed in a batch under the slice of the batch's first request, so it may count a little
//!   less), a withdrawal for 1 to 1.1 × `ttl` (the rest of its slice and ten more). A reserve of
//!   `min_per_second × ttl` retries lets quiet clients retry at all. Counting the retries taken
//!   (see below), over any run of length `T`,
//!   `retries ≤ ratio × requests + min_per_second × ttl × (⌊T / ttl⌋ + 1)`; within one window,
//!   `retries ≤ ratio × requests + min_per_second × ttl`. Defaults: `ttl` 10 s,
//!   `min_per_second` 10, `ratio` 0.2, so a client sending 1000 requests a second may retry about
//!   200 of them a second, and one sending 1 a second still gets the reserve's 100 retries per
//!   window: about 9 a second sustained, as a retry counts against the budget for 10 to 11 s
//!   from when it is taken.
//! - **Token bucket** (gRPC's retry throttling, [gRFC A6]): the bucket starts full with
//!   `max_tokens`; each failed attempt that was sent takes one token, each successful one adds
//!   `token_ratio`; retries are allowed only while more than half the tokens remain. It follows
//!   the failure rate, whatever the traffic: a full bucket gains nothing from successes, so
//!   retries stop once the failures since it was last full reach `token_ratio` × the successes
//!   since then plus `max_tokens / 2`. A failure whose error proves the attempt was never sent
//!   ([`seawall_core::error::not_sent`]: a full bulkhead's `Full`, a rate limiter's `Limited`, an
//!   open breaker's `Open`) takes no token, as gRPC leaves attempts that never reached the server
//!   out of its throttling: it says nothing of the dependency, and a saturated layer below would
//!   otherwise drain the bucket and stop retries and hedges for the calls it lets through. The
//!   trade-off: under a token bucket, retries of attempts a layer below keeps turning away are
//!   bounded by the retry layer's `max_attempts`, its backoff and the call's deadline, not by the
//!   bucket (a ratio budget still bounds them, as it counts every retry taken).
//!
//! A ratio budget counts a retry when it is decided on, not when it is sent (so does Finagle's
//! `RetryBudget`, and gRPC's retry throttling also judges a retry when it is scheduled): a retry
//! layer takes the retry when it schedules it, before the backoff, any `Retry-After` pause and the
//! wait for the inner service to be ready; a hedge layer takes a hedge when it is due, before that
//! readiness wait. The bounds above are on retries taken, each counting from when it was taken (one
//! given back unsent counts for nothing). Sends can therefore bunch: if no retry waits more than
//! `D` between being taken and being sent, the retries sent over a run of length `T` were taken
//! over a run of length `T + D`, and that run's bound is theirs. Failures that honour the same
//! `Retry-After` date go out together, and the retries allowed again once their withdrawals expire
//! may follow within the same window. A retry layer waits a rejection's `retry_after` and then its
//! backoff, so `D` reaches its `retry_after_cap` plus the backoff's longest delay (and a
//! millisecond's tick): with the defaults (`ttl` 10 s, `retry_after_cap` 10 s, backoff capped at
//! 2 s) about 12 s once the backoff reaches its cap, 10.1 s with the default 3 attempts (whose
//! longest backoff is 100 ms), past `ttl` either way. So up to about twice what one window allows
//! can be sent within one window, and a long readiness wait stretches `D` further. To keep sends
//! near the bound, keep the sum of `retry_after_cap` and the backoff's longest delay well under
//! `ttl`, or lengthen `ttl`.
//!
//! Accounting is in integers (millionths of a retry for the ratio budget, thousandths of a token for
//! the bucket), so a fractional ratio never rounds in favour of retrying: with `ratio` 0.3 and no
//! reserve, 10 requests allow exactly 3 retries, not 4 (compare tower#857).
//!
//! [gRFC A6]: https://github.com/grpc/proposal/blob/master/A6-client-retries.md

use crate::sync::{self, AtomicU64, Mutex, MutexGuard, Ordering};
use seawall_core::{config, ConfigError, Outcome};
use std::{
    fmt,
    sync::{Arc, PoisonError, TryLockError},
    time::Duration,
};
use tokio::time::Instant;

/// Units of one retry in the ratio budget's accounting.
const UNIT: u64 = 1_000_000;
/// Slices a ratio budget's window is divided into.
const SLICES: usize = 10;
/// The most requests counted between two clock reads of the ratio budget.
const FLUSH_EVERY_MAX: u64 = 32;
/// Low bits of the ratio budget's pending batch that count its requests; the bits above hold the
/// slice it started in.
const COUNT_BITS: u32 = 24;
const COUNT_MASK: u64 = (1 << COUNT_BITS) - 1;

/// A budget shared by every layer, service and clone given the same handle. See the
/// [module docs](self).
///
/// ```
/// use seawall_retry::budget::RetryBudget;
/// use std::time::Duration;
///
/// // Retries may add 10% to the load, plus 5 a second, counted over 10 s.
/// let budget = RetryBudget::builder()
///     .ratio(0.1)
///     .min_per_second(5)
///     .ttl(Duration::from_secs(10))
///     .build()
///     .unwrap();
/// // Hand clones of `budget` to every layer that calls the same dependency.
/// let _shared = budget.clone();
/// ```
#[derive(Clone)]
pub struct RetryBudget {
    inner: Arc<Kind>,
}

// Allocated once behind the handle's `Arc`: the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
enum Kind {
    Ratio(Ratio),
    Bucket(Bucket),
    Unlimited,
}

impl RetryBudget {
    /// A ratio budget with the defaults: `ttl` 10 s, `min_per_second` 10, `ratio` 0.2.
    pub fn new() -> Self {
        RetryBudget::builder()
            .build()
            .expect("the default budget is valid")
    }

    /// A ratio budget (Finagle's) to configure.
    pub fn builder() -> RatioBuilder {
        RatioBuilder {
            ttl: Duration::from_secs(10),
            min_per_second: 10,
            ratio: 0.2,
        }
    }

    /// gRPC's token bucket: `max_tokens` in `[0.001, 1000]`, `token_ratio` at least 0.001 (as
    /// gRPC asks only that it be positive, one larger than `max_tokens` is allowed: a success
    /// then fills the bucket), each kept to three decimals as gRPC specifies (further decimals
    /// are dropped). A `token_ratio` under 0.001 is an error rather than being rounded to a
    /// thousandth: rounding it up would refill the bucket faster than asked, and down, never.
    ///
    /// ```
    /// use seawall_retry::budget::RetryBudget;
    /// let budget = RetryBudget::token_bucket(10.0, 0.1).unwrap();
    /// assert!(budget.can_retry());
    /// assert!(RetryBudget::token_bucket(0.0, 0.1).is_err());
    /// assert!(RetryBudget::token_bucket(10.0, 0.0001).is_err());
    /// assert!(RetryBudget::token_bucket(10.0, 20.0).is_ok());
    /// ```
    pub fn token_bucket(max_tokens: f64, token_ratio: f64) -> Result<Self, ConfigError> {
        // Tokens are counted in thousandths, as gRPC keeps three decimal places.
        if !(0.001..=1000.0).contains(&max_tokens) {
            return Err(ConfigError::invalid(
                "max_tokens",
                "must be in [0.001, 1000]",
                max_tokens.to_string(),
            ));
        }
        if !(token_ratio >= 0.001 && token_ratio.is_finite()) {
            return Err(ConfigError::invalid(
                "token_ratio",
                "must be finite and at least 0.001",
                token_ratio.to_string(),
            ));
        }
        let max = thousandths(max_tokens);
        let ratio = thousandths(token_ratio);
        Ok(RetryBudget {
            inner: Arc::new(Kind::Bucket(Bucket {
                tokens: AtomicU64::new(max),
                max,
                ratio,
            })),
        })
    }

    /// No limit: every retry is allowed. For tests, or when something else bounds retries.
    pub fn unlimited() -> Self {
        RetryBudget {
            inner: Arc::new(Kind::Unlimited),
        }
    }

    /// Counts one request (not a retry). A ratio budget files its requests in batches, up to 32
    /// under load (32 or more requests a slice), where most requests are one atomic add: the
    /// request that opens a batch reads the clock, and the one after a full batch also files that
    /// batch under the window's lock. A quieter client's batches are of one request, so each of
    /// its requests reads the clock and files itself under the lock. It
    /// only tries that lock: while another thread holds it, the request joins the open batch
    /// instead, unless about 8 million requests have piled up there, when it waits for the lock.
    #[inline]
    pub fn deposit(&self) {
        if let Kind::Ratio(r) = &*self.inner {
            r.deposit();
        }
    }

    /// Takes one retry from the budget; `false` when it is exhausted. A token bucket
    /// ([`RetryBudget::token_bucket`]) is not spent by retries, as in gRPC's retry throttling:
    /// for it this only says whether retries are allowed now, and takes nothing.
    pub fn try_withdraw(&self) -> bool {
        match &*self.inner {
            Kind::Ratio(r) => r.try_withdraw(sync::now()).is_some(),
            Kind::Bucket(b) => b.can_retry(),
            Kind::Unlimited => true,
        }
    }

    /// Takes one retry from the budget, to be given back if the retry is never handed to the inner
    /// service; `None` when the budget is exhausted.
    pub(crate) fn withdraw(&self) -> Option<Withdrawal> {
        match &*self.inner {
            Kind::Ratio(r) => r
                .try_withdraw(sync::now())
                .map(|slice| Withdrawal(Some((self.clone(), slice)))),
            Kind::Bucket(b) => b.can_retry().then_some(Withdrawal(None)),
            Kind::Unlimited => Some(Withdrawal(None)),
        }
    }

    /// Whether a retry would be allowed now, without taking it.
    pub fn can_retry(&self) -> bool {
        match &*self.inner {
            Kind::Ratio(r) => r.balance(sync::now()) >= UNIT as i64,
            Kind::Bucket(b) => b.can_retry(),
            Kind::Unlimited => true,
        }
    }

    /// Tells the budget how one attempt ended. Only the token bucket uses it: a failure takes a
    /// token, a success adds `token_ratio`. The retry and hedge layers do not record a failure
    /// whose error proves its attempt was never sent ([`seawall_core::error::not_sent`]); one's
    /// own caller of this may do the same.
    #[inline]
    pub fn record(&self, outcome: Outcome) {
        if let Kind::Bucket(b) = &*self.inner {
            b.record(outcome);
        }
    }

    /// Whether this is [`RetryBudget::unlimited`], which keeps no state: a layer with it and no
    /// listeners shares nothing between calls.
    pub fn is_unlimited(&self) -> bool {
        matches!(&*self.inner, Kind::Unlimited)
    }

    /// Whether two handles share one budget.
    pub fn same(&self, other: &RetryBudget) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// A ratio budget's batching: requests in a full batch, and in the open one (loom tests only).
    #[cfg(loom)]
    #[doc(hidden)]
    pub fn batching(&self) -> Option<(u64, u64)> {
        match &*self.inner {
            Kind::Ratio(r) => Some((
                r.flush_every.load(Ordering::Relaxed),
                r.pending.load(Ordering::Relaxed) & COUNT_MASK,
            )),
            Kind::Bucket(_) | Kind::Unlimited => None,
        }
    }
}

impl Default for RetryBudget {
    fn default() -> Self {
        RetryBudget::new()
    }
}

impl fmt::Debug for RetryBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &*self.inner {
            Kind::Ratio(r) => f
                .debug_struct("RetryBudget::Ratio")
                .field("ttl", &r.ttl)
                .field("min_per_second", &r.min_per_second)
                .field("ratio", &(r.deposit_units as f64 / UNIT as f64))
                .finish(),
            Kind::Bucket(b) => f
                .debug_struct("RetryBudget::TokenBucket")
                .field("max_tokens", &(b.max as f64 / 1000.0))
                .field("token_ratio", &(b.ratio as f64 / 1000.0))
                .field(
                    "tokens",
                    &(b.tokens.load(Ordering::Relaxed) as f64 / 1000.0),
                )
                .finish(),
            Kind::Unlimited => f.write_str("RetryBudget::Unlimited"),
        }
    }
}

/// Configures a ratio budget; see [`RetryBudget::builder`].
#[derive(Debug, Clone)]
pub struct RatioBuilder {
    ttl: Duration,
    min_per_second: u32,
    ratio: f64,
}

impl RatioBuilder {
    /// How long deposits and withdrawals count, 1 s to 60 s (default 10 s).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// The reserve, in retries a second: `min_per_second × ttl` retries per window whatever the
    /// traffic (default 10, so 100 in 10 s). Zero bounds retries by the ratio alone.
    pub fn min_per_second(mut self, min_per_second: u32) -> Self {
        self.min_per_second = min_per_second;
        self
    }

    /// Retries allowed per request, 0 to 1000, kept to millionths (default 0.2: retries may add
    /// 20% to the load).
    pub fn ratio(mut self, ratio: f64) -> Self {
        self.ratio = ratio;
        self
    }

    /// Checks the values and builds the budget.
    pub fn build(self) -> Result<RetryBudget, ConfigError> {
        config::check_range(
            "ttl",
            self.ttl,
            Duration::from_secs(1),
            Duration::from_secs(60),
        )?;
        if !(self.ratio.is_finite() && (0.0..=1000.0).contains(&self.ratio)) {
            return Err(ConfigError::invalid(
                "ratio",
                "must be in [0, 1000]",
                self.ratio.to_string(),
            ));
        }
        // Floor, so the budget never allows more than the ratio asked for; a ratio within float
        // error of a millionth is that millionth (`4.1 * 1e6` is 4099999.99…).
        let deposit_units = fixed_point(self.ratio, UNIT as f64);
        let reserve = u128::from(self.min_per_second) * self.ttl.as_nanos() * u128::from(UNIT)
            / 1_000_000_000;
        let reserve = i64::try_from(reserve).unwrap_or(i64::MAX);
        // Rounded up: ten slices are never shorter than the ttl, so neither are withdrawals.
        let slice_nanos = self.ttl.as_nanos().div_ceil(SLICES as u128);
        let now = sync::now();
        Ok(RetryBudget {
            inner: Arc::new(Kind::Ratio(Ratio {
                ttl: self.ttl,
                min_per_second: self.min_per_second,
                deposit_units,
                reserve,
                slice_nanos,
                origin: now,
                pending: AtomicU64::new(batch(0, 0)),
                flush_every: AtomicU64::new(1),
                window: Mutex::new(Window::default()),
            })),
        })
    }
}

/// One retry (or hedge) taken from a budget by [`RetryBudget::withdraw`]. Dropped before it is
/// [spent](Withdrawal::spend), it is given back: a retry or hedge never handed to the inner
/// service (the caller gave up during the backoff, the original call answered first), or a hedge
/// a layer below turned away before sending, does not count against the budget. A retry handed
/// on is spent, even one a layer below then turns away. Given back after its slice has left the
/// window, it changes nothing.
#[must_use = "dropping a withdrawal gives it back"]
pub(crate) struct Withdrawal(Option<(RetryBudget, u64)>);

impl Withdrawal {
    /// A withdrawal from no budget (an unlimited one).
    pub(crate) fn free() -> Self {
        Withdrawal(None)
    }

    /// The retry or hedge it paid for was handed to the inner service (a hedge: and not turned
    /// away before sending): it stays withdrawn.
    pub(crate) fn spend(mut self) {
        self.0 = None;
    }
}

impl Drop for Withdrawal {
    fn drop(&mut self) {
        if let Some((budget, slice)) = self.0.take() {
            if let Kind::Ratio(r) = &*budget.inner {
                r.refund(slice, sync::now());
            }
        }
    }
}

// ===== ratio budget =====

/// Finagle's budget, with deposits counted lock-free in batches that are folded into a sliced
/// window under a lock. The first request of a batch reads the clock and notes its slice; the
/// others only count themselves, up to `flush_every`; the request after a full batch files it and
/// opens the next one. Withdrawals (and [`RetryBudget::can_retry`]) file the open batch first.
/// `flush_every` adapts between 1 and [`FLUSH_EVERY_MAX`] so that a batch lasts about a quarter
/// slice: busy clients read the clock once in 32 requests, quiet ones at every request (where it
/// costs nothing that matters). It is measured when a batch fills, and at any fold a quarter slice
/// or more after the previous one, so a client that turns quiet is noticed at its next retry even
/// when its batches never fill; and it grows only while the current slice holds at least
/// [`FLUSH_EVERY_MAX`] requests, so a client below that rate files every request on its own.
///
/// A slice is a tenth of `ttl` rounded up to the nanosecond, so ten of them, a *window*, are never
/// shorter than `ttl` (and longer by under 10 ns). Deposits expire within a window; withdrawals
/// after at least a window (they are kept one slice longer), so after at least `ttl`. A batch is
/// filed under the slice its first request was made in, never a later one, so no deposit outlives
/// a withdrawal made after it. Together these give the bound in the module docs: every withdrawal
/// made in the window before a retry still counts at that retry, and every deposit that counts was
/// made in that window, so the retries of any window are paid for by its requests plus the
/// reserve; and a run of length `T` is covered by `⌊T / ttl⌋ + 1` windows.
///
/// Filed early, a batch's later requests may lose their credit sooner than `ttl`; while the client
/// stays busy a batch lasts about a quarter slice, so that is about a slice early at most. Right
/// after a burst, though, a quiet client's requests join the burst's last batch (at most 31 of
/// them) until it fills or a withdrawal files it, and count from the burst.
struct Ratio {
    ttl: Duration,
    min_per_second: u32,
    /// Units one request deposits: the ratio in millionths.
    deposit_units: u64,
    /// Units always available: `min_per_second × ttl` retries.
    reserve: i64,
    slice_nanos: u128,
    origin: Instant,
    /// Requests not yet folded into the window, as one batch (see [`batch`]): how many, and a slice
    /// no later than the one the first of them was made in.
    pending: AtomicU64,
    /// Requests in a full batch; adapted when one fills and at any fold a quarter slice or more
    /// after the previous one.
    flush_every: AtomicU64,
    window: Mutex<Window>,
}

#[derive(Default)]
struct Window {
    /// Absolute index of the current slice.
    current: u64,
    /// When the last fold happened, in nanoseconds since the origin.
    folded_at: u128,
    /// Requests per slice; ring indexed by slice index modulo `SLICES + 1`.
    deposits: [u64; SLICES + 1],
    /// Retries per slice, same ring.
    withdrawals: [u64; SLICES + 1],
}

impl Ratio {
    #[inline]
    fn deposit(&self) {
        let count = self.pending.load(Ordering::Relaxed) & COUNT_MASK;
        if count != 0 && count < self.flush_every.load(Ordering::Relaxed) {
            // Joins the open batch. Should a fold take it meanwhile, this request opens the next
            // one, which starts at the fold's slice: no later than now.
            self.pending.fetch_add(1, Ordering::Relaxed);
        } else {
            self.open_batch();
        }
    }

    /// Opens a batch with this request, after filing the full one before it if there is one.
    #[cold]
    fn open_batch(&self) {
        let now = sync::now();
        let slice = self.slice_of(now);
        let mut pending = self.pending.load(Ordering::Relaxed);
        loop {
            let count = pending & COUNT_MASK;
            if count >= self.flush_every.load(Ordering::Relaxed) {
                break;
            }
            // Empty: this request starts a batch at its slice (or at a later fold's, which was no
            // later than now either). Opened by another request meanwhile: this one joins it.
            let next = if count == 0 {
                batch((pending >> COUNT_BITS).max(slice), 1)
            } else {
                pending + 1
            };
            match self.pending.compare_exchange_weak(
                pending,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return,
                Err(actual) => pending = actual,
            }
        }
        let mut window = match self.window.try_lock() {
            Ok(window) => window,
            Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            // Another thread is folding: as good as this one doing it. The request joins whatever
            // batch is open, unless so many have piled up that it must wait its turn.
            Err(TryLockError::WouldBlock) if pending & COUNT_MASK < COUNT_MASK / 2 => {
                self.pending.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Err(TryLockError::WouldBlock) => self.lock(),
        };
        let full = self.pending.swap(batch(slice, 1), Ordering::Relaxed);
        self.fold(&mut window, now, full, true);
    }

    /// Files the open batch, leaving an empty one that starts at `now`.
    fn drain(&self, window: &mut Window, now: Instant) {
        let pending = self
            .pending
            .swap(batch(self.slice_of(now), 0), Ordering::Relaxed);
        self.fold(window, now, pending, false);
    }

    fn slice_of(&self, now: Instant) -> u64 {
        let since = now.saturating_duration_since(self.origin).as_nanos();
        u64::try_from(since / self.slice_nanos).unwrap_or(u64::MAX)
    }

    /// Moves the window to `now`, then files `pending` (a [`batch`] taken from `self.pending`)
    /// under the slice its first request was made in: early, never late. `full` when the batch
    /// filled up rather than being taken by a withdrawal.
    fn fold(&self, window: &mut Window, now: Instant, pending: u64, full: bool) {
        let count = pending & COUNT_MASK;
        let at = now.saturating_duration_since(self.origin).as_nanos();
        let since = at.saturating_sub(window.folded_at);
        window.folded_at = window.folded_at.max(at);
        let ring = SLICES as u64 + 1;
        let target = self.slice_of(now);
        if target > window.current {
            let steps = (target - window.current).min(ring);
            for i in 1..=steps {
                let slot = ((window.current + i) % ring) as usize;
                window.deposits[slot] = 0;
                window.withdrawals[slot] = 0;
            }
            window.current = target;
        }
        // A batch opened after this fold read the clock is filed under the current slice, and one
        // that has left the window is dropped.
        let start = (pending >> COUNT_BITS).min(window.current);
        if count > 0 && window.current - start < SLICES as u64 {
            let slot = (start % ring) as usize;
            window.deposits[slot] = window.deposits[slot].saturating_add(count);
        }
        // Aim for a batch every quarter slice: fewer clock reads when busy, little credit filed
        // early when quiet. A full batch measures the rate, and so does a quarter slice in which
        // no batch filled.
        let quarter = self.slice_nanos / 4;
        if full || since >= quarter {
            // The request rate since the last fold, times a quarter slice, growing at most
            // twofold per fold, and only for a client with a full batch's worth of requests in
            // this slice: a quiet one, even one whose requests come in pairs, keeps filing each
            // request under its own slice.
            let estimate = u128::from(count) * quarter / since.max(1);
            let busy = window.deposits[(window.current % ring) as usize] >= FLUSH_EVERY_MAX;
            let most = if busy {
                2 * u128::from(self.flush_every.load(Ordering::Relaxed))
            } else {
                1
            };
            let every = estimate.min(most).clamp(1, u128::from(FLUSH_EVERY_MAX));
            self.flush_every.store(every as u64, Ordering::Relaxed);
        }
    }

    /// Units available: reserve + deposits of the last `SLICES` slices − withdrawals of the last
    /// `SLICES + 1`.
    fn available(&self, window: &Window) -> i64 {
        let ring = SLICES as u64 + 1;
        let oldest = ((window.current + 1) % ring) as usize;
        let deposits: u64 = window
            .deposits
            .iter()
            .enumerate()
            .filter(|&(i, _)| i != oldest)
            .map(|(_, d)| *d)
            .sum();
        let withdrawals: u64 = window.withdrawals.iter().sum();
        let credit = i128::from(deposits) * i128::from(self.deposit_units);
        let debit = i128::from(withdrawals) * i128::from(UNIT);
        let balance = i128::from(self.reserve) + credit - debit;
        i64::try_from(balance).unwrap_or(if balance > 0 { i64::MAX } else { i64::MIN })
    }

    fn lock(&self) -> MutexGuard<'_, Window> {
        self.window.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn balance(&self, now: Instant) -> i64 {
        let mut window = self.lock();
        self.drain(&mut window, now);
        self.available(&window)
    }

    /// Takes one retry; the slice it is counted in, or `None` when none is available.
    fn try_withdraw(&self, now: Instant) -> Option<u64> {
        let mut window = self.lock();
        self.drain(&mut window, now);
        if self.available(&window) >= UNIT as i64 {
            let slot = (window.current % (SLICES as u64 + 1)) as usize;
            window.withdrawals[slot] += 1;
            Some(window.current)
        } else {
            None
        }
    }

    /// Gives back a retry taken in `slice`, unless that slice has left the window.
    fn refund(&self, slice: u64, now: Instant) {
        let mut window = self.lock();
        self.drain(&mut window, now);
        if window.current.saturating_sub(slice) <= SLICES as u64 {
            let slot = (slice % (SLICES as u64 + 1)) as usize;
            window.withdrawals[slot] = window.withdrawals[slot].saturating_sub(1);
        }
    }
}

/// A ratio budget's pending requests in one word: `count` of them, the first made in `start`.
fn batch(start: u64, count: u64) -> u64 {
    (start.min(u64::MAX >> COUNT_BITS) << COUNT_BITS) | count
}

// ===== token bucket =====

/// gRPC's throttle, in thousandths of a token.
struct Bucket {
    tokens: AtomicU64,
    max: u64,
    ratio: u64,
}

/// `value` (finite, at least 0.001; past `u64::MAX` thousandths it saturates) in whole
/// thousandths, rounded down; a value within float error of a thousandth is that thousandth
/// (`1.001 * 1000.0` is 1000.999…, yet 1.001 is 1001 thousandths).
fn thousandths(value: f64) -> u64 {
    fixed_point(value, 1000.0)
}

/// `value × scale` (finite, at least 0), rounded down, as a whole number; a product within float
/// error of a whole number is that number.
fn fixed_point(value: f64, scale: f64) -> u64 {
    let scaled = value * scale;
    let nearest = scaled.round();
    if (scaled - nearest).abs() < 1e-9 + nearest * 4.0 * f64::EPSILON {
        nearest as u64
    } else {
        scaled.floor() as u64
    }
}

impl Bucket {
    #[inline]
    fn record(&self, outcome: Outcome) {
        match outcome {
            Outcome::Success => {
                // At rest the bucket is full: a load, no write.
                if self.tokens.load(Ordering::Relaxed) < self.max {
                    let _ = self
                        .tokens
                        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
                            Some(t.saturating_add(self.ratio).min(self.max))
                        });
                }
            }
            Outcome::Failure => {
                let _ = self
                    .tokens
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
                        Some(t.saturating_sub(1000))
                    });
            }
            Outcome::Ignored => {}
        }
    }

    fn can_retry(&self) -> bool {
        // gRPC: retries are throttled unless token_count > max_tokens / 2.
        2 * self.tokens.load(Ordering::Relaxed) > self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn fractional_ratio_never_over_allocates() {
        for (ratio, requests, expected) in [
            (0.3, 10u64, 3u64),
            (0.1, 10, 1),
            (0.1, 9, 0),
            (1.0 / 3.0, 3, 0), // 333333 millionths × 3 < 1 retry
            (1.0 / 3.0, 4, 1),
            (0.25, 100, 25),
            (2.5, 2, 5),
        ] {
            let budget = RetryBudget::builder()
                .ratio(ratio)
                .min_per_second(0)
                .build()
                .unwrap();
            for _ in 0..requests {
                budget.deposit();
            }
            let mut retries = 0;
            while budget.try_withdraw() {
                retries += 1;
            }
            assert_eq!(retries, expected, "ratio {ratio} × {requests} requests");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn reserve_allows_min_per_second_times_ttl() {
        let budget = RetryBudget::builder()
            .ttl(Duration::from_secs(2))
            .min_per_second(3)
            .ratio(0.0)
            .build()
            .unwrap();
        let mut retries = 0;
        while budget.try_withdraw() {
            retries += 1;
        }
        assert_eq!(retries, 6);
        // Withdrawals last one slice longer than the ttl, then the reserve is back.
        tokio::time::advance(Duration::from_millis(2000)).await;
        assert!(!budget.can_retry());
        tokio::time::advance(Duration::from_millis(200)).await;
        assert!(budget.can_retry());
    }

    #[tokio::test(start_paused = true)]
    async fn withdrawals_last_at_least_ttl_when_ttl_is_not_a_multiple_of_ten_ns() {
        let ttl = Duration::from_nanos(1_000_000_009);
        for offset in [
            0,
            1,
            99_999_999,
            100_000_000,
            100_000_001,
            150_000_000,
            999_999_999,
        ] {
            // A reserve of 1 × 1.000000009 s: one retry per ttl.
            let budget = RetryBudget::builder()
                .ratio(0.0)
                .min_per_second(1)
                .ttl(ttl)
                .build()
                .unwrap();
            tokio::time::advance(Duration::from_nanos(offset)).await;
            assert!(budget.try_withdraw(), "offset {offset}");
            tokio::time::advance(ttl - Duration::from_nanos(1)).await;
            assert!(
                !budget.try_withdraw(),
                "offset {offset}: a second retry within one ttl of a 1-retry reserve"
            );
            // Nor are they kept longer than 11 slices of a tenth of the ttl, rounded up.
            tokio::time::advance(Duration::from_nanos(11 * 100_000_001) - ttl).await;
            tokio::time::advance(Duration::from_nanos(1)).await;
            assert!(budget.try_withdraw(), "offset {offset}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn deposits_expire_after_ttl() {
        let budget = RetryBudget::builder()
            .ttl(Duration::from_secs(1))
            .min_per_second(0)
            .ratio(1.0)
            .build()
            .unwrap();
        for _ in 0..5 {
            budget.deposit();
        }
        tokio::time::advance(Duration::from_millis(1000)).await;
        assert!(!budget.try_withdraw(), "deposits older than ttl are gone");
    }

    /// A deposit counts for the rest of its slice (a tenth of `ttl`) and nine more: 0.9 to 1 ×
    /// `ttl`, never longer.
    #[tokio::test(start_paused = true)]
    async fn a_deposit_counts_for_the_rest_of_its_slice_and_nine_more() {
        let budget = RetryBudget::builder()
            .ttl(Duration::from_secs(10))
            .min_per_second(0)
            .ratio(1.0)
            .build()
            .unwrap();
        // Late in the first slice: counted 9 s later, gone 9.01 s later, short of `ttl`.
        tokio::time::advance(Duration::from_millis(990)).await;
        budget.deposit();
        tokio::time::advance(Duration::from_millis(9_000)).await;
        assert!(budget.can_retry(), "9 s after");
        tokio::time::advance(Duration::from_millis(10)).await;
        assert!(!budget.can_retry(), "9.01 s after: gone with its slice");
        // At the start of a slice: counted for the whole `ttl`, not a moment longer.
        budget.deposit();
        tokio::time::advance(Duration::from_millis(9_999)).await;
        assert!(budget.can_retry(), "9.999 s after");
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(!budget.can_retry(), "10 s after");
    }

    #[tokio::test(start_paused = true)]
    async fn quiet_clients_keep_their_credit() {
        // One request a second, ratio 0.5, no reserve, 10 s window: about 5 retries' worth live.
        let budget = RetryBudget::builder()
            .ratio(0.5)
            .min_per_second(0)
            .build()
            .unwrap();
        for _ in 0..30 {
            budget.deposit();
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        let mut retries = 0;
        while budget.try_withdraw() {
            retries += 1;
        }
        assert!((4..=5).contains(&retries), "{retries}");
    }

    #[tokio::test(start_paused = true)]
    async fn quiet_client_after_a_burst_keeps_its_credit() {
        let budget = RetryBudget::builder()
            .ratio(0.5)
            .min_per_second(0)
            .ttl(Duration::from_secs(10))
            .build()
            .unwrap();
        // One busy moment, then its credit expires.
        for _ in 0..1000 {
            budget.deposit();
        }
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(!budget.can_retry());
        for round in 0..4 {
            // One request a second for 15 s, then a retry: the last 10 s hold about 5 retries.
            for _ in 0..15 {
                budget.deposit();
                tokio::time::advance(Duration::from_secs(1)).await;
            }
            assert!(budget.try_withdraw(), "round {round}: no retry allowed");
        }
    }

    #[test]
    fn concurrent_deposits_are_all_counted() {
        let budget = RetryBudget::builder()
            .ratio(1.0)
            .min_per_second(0)
            .ttl(Duration::from_secs(60))
            .build()
            .unwrap();
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for i in 0..50_000 {
                        budget.deposit();
                        if i % 1000 == 0 {
                            budget.can_retry();
                        }
                    }
                });
            }
        });
        let mut retries = 0;
        while budget.try_withdraw() {
            retries += 1;
        }
        assert_eq!(retries, 200_000);
    }

    #[tokio::test(start_paused = true)]
    async fn busy_clients_read_the_clock_rarely() {
        let budget = RetryBudget::new();
        let Kind::Ratio(ratio) = &*budget.inner else {
            unreachable!()
        };
        for _ in 0..1000 {
            budget.deposit();
        }
        assert_eq!(ratio.flush_every.load(Ordering::Relaxed), FLUSH_EVERY_MAX);
        tokio::time::advance(Duration::from_secs(5)).await;
        budget.deposit();
        for _ in 0..FLUSH_EVERY_MAX {
            budget.deposit();
            tokio::time::advance(Duration::from_secs(5)).await;
        }
        assert_eq!(ratio.flush_every.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn token_bucket_follows_grpc() {
        let budget = RetryBudget::token_bucket(10.0, 0.5).unwrap();
        // 10 tokens; threshold is > 5.
        for _ in 0..4 {
            budget.record(Outcome::Failure);
        }
        assert!(budget.can_retry(), "6 tokens > 5");
        budget.record(Outcome::Failure);
        assert!(!budget.try_withdraw(), "5 tokens is not > 5");
        budget.record(Outcome::Success);
        assert!(budget.try_withdraw(), "5.5 tokens > 5");
        for _ in 0..100 {
            budget.record(Outcome::Success);
        }
        for _ in 0..4 {
            budget.record(Outcome::Failure);
        }
        assert!(budget.can_retry(), "capped at 10, so 6 left");
        budget.record(Outcome::Ignored);
        for _ in 0..100 {
            budget.record(Outcome::Failure);
        }
        assert!(!budget.can_retry());
    }

    /// A full bucket gains nothing from successes: from full, `max_tokens / 2` failures in a row
    /// stop retries however many successes came before.
    #[test]
    fn successes_into_a_full_bucket_earn_nothing() {
        let budget = RetryBudget::token_bucket(10.0, 0.1).unwrap();
        for _ in 0..1000 {
            budget.record(Outcome::Success);
        }
        for _ in 0..4 {
            budget.record(Outcome::Failure);
        }
        assert!(budget.can_retry());
        budget.record(Outcome::Failure);
        assert!(!budget.can_retry());
        // Below full, successes count: a tenth of a token each.
        for _ in 0..10 {
            budget.record(Outcome::Success);
        }
        assert!(budget.can_retry());
    }

    /// The reserve alone: `min_per_second × ttl` retries in a window, and about 9 a second
    /// sustained, since each retry counts for 10 to 11 s.
    #[tokio::test(start_paused = true)]
    async fn the_reserve_sustains_about_nine_retries_a_second() {
        let budget = RetryBudget::builder()
            .ttl(Duration::from_secs(10))
            .min_per_second(10)
            .ratio(0.0)
            .build()
            .unwrap();
        let mut per_window = Vec::new();
        for _ in 0..6 {
            let mut retries = 0;
            for _ in 0..100 {
                if budget.try_withdraw() {
                    retries += 1;
                }
                tokio::time::advance(Duration::from_millis(100)).await;
            }
            per_window.push(retries);
        }
        // Then 100 every 11 s or so, as a retry stays counted until its slice has left the
        // window: 90 in each 10 s.
        assert_eq!(per_window, [100, 90, 90, 90, 90, 90]);
    }

    /// gRPC asks only that `token_ratio` be positive: one above `max_tokens` refills the bucket
    /// with a single success.
    #[test]
    fn token_ratio_above_max_tokens_fills_the_bucket_with_one_success() {
        let budget = RetryBudget::token_bucket(10.0, 20.0).unwrap();
        for _ in 0..10 {
            budget.record(Outcome::Failure);
        }
        assert!(!budget.can_retry());
        budget.record(Outcome::Success);
        assert!(budget.can_retry(), "{budget:?}");
        for ratio in [f64::INFINITY, f64::NAN] {
            let e = RetryBudget::token_bucket(10.0, ratio).unwrap_err();
            assert_eq!(e.field(), "token_ratio", "{ratio}");
        }
    }

    #[test]
    fn token_ratio_below_a_thousandth_is_rejected() {
        for ratio in [0.0001, 0.0009, 1e-300] {
            let e = RetryBudget::token_bucket(10.0, ratio).unwrap_err();
            assert_eq!(e.field(), "token_ratio", "{ratio}");
        }
        assert_eq!(
            RetryBudget::token_bucket(10.0, 0.0001)
                .unwrap_err()
                .to_string(),
            "token_ratio must be finite and at least 0.001, got 0.0001"
        );
        let budget = RetryBudget::token_bucket(10.0, 0.001).unwrap();
        // 10 tokens; six failures leave 4, under the threshold of more than 5.
        for _ in 0..6 {
            budget.record(Outcome::Failure);
        }
        // 999 successes at 0.001 each: 4.999 tokens, still not more than 5.
        for _ in 0..999 {
            budget.record(Outcome::Success);
        }
        assert!(!budget.can_retry(), "{budget:?}");
        budget.record(Outcome::Success);
        budget.record(Outcome::Success);
        assert!(budget.can_retry(), "{budget:?}");
    }

    #[test]
    fn token_bucket_keeps_three_decimals_despite_float_error() {
        for (value, expected) in [
            (1.001, 1001),
            (4.35, 4350),
            (0.001, 1),
            (999.999, 999_999),
            (1000.0, 1_000_000),
            (0.0015, 1),
            (2.0009, 2000),
        ] {
            assert_eq!(thousandths(value), expected, "{value}");
        }
        for (value, expected) in [
            (4.1, 4_100_000),
            (1.001, 1_001_000),
            (0.000249, 249),
            (0.2, 200_000),
            (999.999999, 999_999_999),
            (0.0000005, 0),
            (0.1234567, 123_456),
        ] {
            assert_eq!(fixed_point(value, UNIT as f64), expected, "{value}");
        }
        let budget = RetryBudget::token_bucket(1.001, 1.001).unwrap();
        let Kind::Bucket(bucket) = &*budget.inner else {
            unreachable!()
        };
        assert_eq!((bucket.max, bucket.ratio), (1001, 1001));
    }

    #[test]
    fn validation() {
        let e = RetryBudget::builder()
            .ttl(Duration::from_millis(10))
            .build()
            .unwrap_err();
        assert_eq!(e.field(), "ttl");
        let e = RetryBudget::builder().ratio(-0.1).build().unwrap_err();
        assert_eq!(e.to_string(), "ratio must be in [0, 1000], got -0.1");
        assert!(RetryBudget::builder().ratio(f64::NAN).build().is_err());
        assert_eq!(
            RetryBudget::token_bucket(2000.0, 1.0).unwrap_err().field(),
            "max_tokens"
        );
        assert_eq!(
            RetryBudget::token_bucket(0.0004, 0.0001)
                .unwrap_err()
                .field(),
            "max_tokens",
            "a bucket of less than a thousandth of a token would never allow a retry"
        );
        assert_eq!(
            RetryBudget::token_bucket(10.0, 0.0).unwrap_err().field(),
            "token_ratio"
        );
    }

    #[test]
    fn clones_share() {
        let a = RetryBudget::new();
        let b = a.clone();
        assert!(a.same(&b));
        assert!(!a.same(&RetryBudget::new()));
        assert!(format!("{a:?}").contains("Ratio"));
        assert!(RetryBudget::unlimited().try_withdraw());
    }
}
