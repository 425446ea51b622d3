//! One-time compile work (initialising parameters, packing weights) spread
//! over the machine's cores. Each item is computed by one thread from its
//! own inputs only, so results never depend on the thread count; the run's
//! `--threads` is about inference and does not limit this.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

/// Below this much total work (`cost` units, about elements) one thread
/// does it all: a thread start costs tens of microseconds.
const MIN_PARALLEL_COST: usize = 1 << 16;

/// The cores this process may use, asked once: `available_parallelism`
/// reads the cgroup's CPU quota files on every call (tens of microseconds,
/// several times per compile).
pub fn cores() -> usize {
    static CORES: OnceLock<usize> = OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// `f` of every item, in order. Items are handed out largest `cost` first
/// to up to `available_parallelism` scoped threads (the caller's thread is
/// one of them).
pub fn map_by_cost<T: Send, R: Send>(
    items: Vec<T>,
    cost: impl Fn(&T) -> usize,
    f: impl Fn(T) -> R + Sync,
) -> Vec<R> {
    let costs: Vec<usize> = items.iter().map(&cost).collect();
    let total = costs.iter().fold(0usize, |a, &c| a.saturating_add(c));
    let threads = cores().min(items.len());
    if threads <= 1 || total < MIN_PARALLEL_COST {
        return items.into_iter().map(f).collect();
    }
    let mut order: Vec<usize> = (0..items.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(costs[i]));
    // Each slot is taken by exactly one thread (the counter hands it out once).
    let slots: Vec<Mutex<Option<T>>> = items.into_iter().map(|t| Mutex::new(Some(t))).collect();
    let results: Vec<Mutex<Option<R>>> = (0..slots.len()).map(|_| Mutex::new(None)).collect();
    let next = AtomicUsize::new(0);
    let work = || loop {
        let Some(&i) = order.get(next.fetch_add(1, Ordering::Relaxed)) else {
            return;
        };
        let item = slots[i].lock().expect("slot lock").take();
        if let Some(item) = item {
            let value = f(item);
            *results[i].lock().expect("result lock") = Some(value);
        }
    };
    std::thread::scope(|scope| {
        for _ in 1..threads {
            scope.spawn(work);
        }
        work();
    });
    results
        .into_iter()
        .map(|r| {
            r.into_inner()
                .expect("result lock")
                .expect("every item is computed once")
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_keep_the_order_of_the_items() {
        for n in [0, 1, 3, 40] {
            let items: Vec<usize> = (0..n).collect();
            // Large costs so that the threaded path runs.
            let got = map_by_cost(items, |&i| (i + 1) * MIN_PARALLEL_COST, |i| i * i);
            assert_eq!(got, (0..n).map(|i| i * i).collect::<Vec<_>>());
        }
    }
}
