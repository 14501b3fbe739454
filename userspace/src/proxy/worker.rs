//! Per-worker state: each worker thread runs its own tokio runtime (`run.rs`), and what a
//! worker uses on every request (idle server connections, hyper clients) is kept per worker so
//! no lock or wakeup crosses threads on the request path.

thread_local! {
    /// Index of the worker thread running this code (0 on the main runtime).
    pub static WORKER: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// One value per worker thread, so server connections stay on the runtime that drives them.
/// Each lock is taken by its own thread and by the 2 s sweep only, so it is never contended
/// for long, and a poisoned one still holds consistent connection lists.
pub struct PerWorker<T>(Vec<std::sync::Mutex<T>>);

impl<T: Default> PerWorker<T> {
    pub fn new(workers: usize) -> Self {
        Self((0..workers.max(1)).map(|_| Default::default()).collect())
    }
}

impl<T> PerWorker<T> {
    pub fn get(&self, worker: usize) -> std::sync::MutexGuard<'_, T> {
        let i = worker % self.0.len().max(1);
        self.0[i]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Every worker's value in turn, for the sweep.
    pub fn each(&self) -> impl Iterator<Item = std::sync::MutexGuard<'_, T>> {
        (0..self.0.len()).map(|w| self.get(w))
    }
}

/// How far ahead the worker's timer wheel always holds a deadline (see [`timer_floor`]).
pub const TIMER_FLOOR: std::time::Duration = std::time::Duration::from_millis(500);

/// Keeps a deadline at most [`TIMER_FLOOR`] ahead in the worker's timer wheel, for the life of
/// the worker. tokio wakes its driver (a write to an eventfd, and a turn of the event loop to
/// drain it) whenever a timer is registered earlier than the earliest one the driver last parked
/// with, or when it parked with none: meant for a timer set from another thread, it also fires
/// for the worker's own timers, which no other thread waits for. Measured: 0.91 such writes per
/// new connection (the first request's `http-request` and the exchange's `server` timers, set
/// when no earlier one was pending). With a deadline always due within 500 ms, a timer of at
/// least that length (every default timeout) never wakes the driver; the cost is this task
/// waking twice a second.
pub async fn timer_floor() {
    loop {
        tokio::time::sleep(TIMER_FLOOR).await;
    }
}
