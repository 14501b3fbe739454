//! xorshift64, for draws that need speed and spread, not unpredictability: access-log
//! sampling, `random-two-choices` balancing, and a route's `split`.

use std::cell::Cell;

thread_local! {
    static RNG: Cell<u64> = Cell::new(seed());
}

fn seed() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    // Distinct per thread even when started in the same nanosecond.
    let addr = std::ptr::from_ref(&t) as usize as u64;
    #[allow(clippy::cast_possible_truncation)]
    let s = (t as u64) ^ addr.rotate_left(32);
    s | 1
}

/// One step of xorshift64 on `x` (any non-zero state), returning the new state.
pub fn xorshift(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

/// The next draw of this thread's generator.
pub fn next() -> u64 {
    RNG.with(|r| {
        let mut x = r.get();
        let v = xorshift(&mut x);
        r.set(x);
        v
    })
}
