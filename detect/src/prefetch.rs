//! A cache prefetch hint, for streaming state that is cold by the time it is needed.
//!
//! With thousands of series, every series' state has left the cache before its next point
//! arrives. A plain early load does not help much: it holds up retirement until memory
//! answers, so the out-of-order window fills after a few hundred instructions and the
//! misses behind it wait their turn. A prefetch retires at once, so the loads of a whole
//! point's state can be in flight together while other work runs.

/// Asks for the cache line holding `value` to be brought close; a no-op off x86-64.
#[inline(always)]
#[allow(unsafe_code)]
pub(crate) fn prefetch<T>(value: &T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint that never faults and reads nothing into the program
    // (the address comes from a live reference in any case); SSE, which provides it, is
    // part of the x86-64 baseline.
    unsafe {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        _mm_prefetch::<_MM_HINT_T0>((value as *const T).cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = value;
}

/// Prefetches every cache line of `items`.
pub(crate) fn prefetch_slice<T>(items: &[T]) {
    let step = (64 / std::mem::size_of::<T>().max(1)).max(1);
    // Elements `step` apart are 64 bytes apart, so every line holds at least one of
    // them, and the last element covers a final partial line.
    for item in items.iter().step_by(step).chain(items.last()) {
        prefetch(item);
    }
}

/// Prefetches every cache line of a ring buffer's contents.
pub(crate) fn prefetch_ring<T>(ring: &std::collections::VecDeque<T>) {
    let (front, back) = ring.as_slices();
    prefetch_slice(front);
    prefetch_slice(back);
}
