//! How many threads a kernel call may use.

use std::sync::Arc;

use rayon::prelude::*;

use super::CodegenError;

/// The threads a kernel call may use: the calling thread alone, or a rayon
/// pool. Kernels split work only along independent output elements (rows,
/// M/N blocks, batch entries), never along a reduction, so results are
/// bitwise identical for every thread count.
#[derive(Clone, Debug, Default)]
pub struct Threads {
    pool: Option<Arc<rayon::ThreadPool>>,
}

impl Threads {
    /// Run everything on the calling thread (no rayon involvement at all).
    pub fn single() -> Threads {
        Threads { pool: None }
    }

    /// A dedicated pool of `count` threads (`count == 1` is `single()`).
    pub fn new(count: usize) -> Result<Threads, CodegenError> {
        match count {
            0 => Err(CodegenError::Unsupported("a thread count of 0".into())),
            1 => Ok(Threads::single()),
            _ => {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(count)
                    .thread_name(|i| format!("lamina-kernel-{i}"))
                    .build()
                    .map_err(|e| CodegenError::ThreadPool(e.to_string()))?;
                Ok(Threads::from_pool(Arc::new(pool)))
            }
        }
    }

    /// Share an existing pool (e.g. the runtime's).
    pub fn from_pool(pool: Arc<rayon::ThreadPool>) -> Threads {
        if pool.current_num_threads() <= 1 {
            Threads::single()
        } else {
            Threads { pool: Some(pool) }
        }
    }

    pub fn count(&self) -> usize {
        self.pool.as_ref().map_or(1, |p| p.current_num_threads())
    }

    /// Calls `f` on every task, on the pool when there is one and more than
    /// one task, else in order on the calling thread.
    pub(crate) fn for_each<T: Sync>(&self, tasks: &[T], f: impl Fn(&T) + Sync + Send) {
        match &self.pool {
            Some(pool) if tasks.len() > 1 => pool.install(|| tasks.par_iter().for_each(f)),
            _ => tasks.iter().for_each(f),
        }
    }
}

/// Splits `0..len` into at most `parts` contiguous ranges whose lengths are
/// multiples of `align` (except the last).
pub(crate) fn split_range(len: usize, parts: usize, align: usize) -> Vec<std::ops::Range<usize>> {
    let parts = parts.max(1);
    let align = align.max(1);
    let chunk = len.div_ceil(parts).div_ceil(align) * align;
    let chunk = chunk.max(align);
    (0..len)
        .step_by(chunk)
        .map(|start| start..(start + chunk).min(len))
        .collect()
}

/// A raw output pointer handed to tasks that write disjoint regions of one
/// buffer. Each user states why its regions are disjoint.
#[derive(Clone, Copy)]
pub(crate) struct SharedMut(pub(crate) *mut f32);

impl SharedMut {
    /// The pointer. (A method, so closures capture the `Sync` wrapper and
    /// not its raw-pointer field.)
    pub(crate) fn get(self) -> *mut f32 {
        self.0
    }
}

// SAFETY: the pointer is only dereferenced inside tasks that write disjoint
// element ranges of a buffer exclusively borrowed for the whole parallel call.
unsafe impl Send for SharedMut {}
unsafe impl Sync for SharedMut {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_range_covers_everything_with_aligned_chunks() {
        for len in [0usize, 1, 5, 12, 13, 100, 1000] {
            for parts in [1usize, 2, 3, 8] {
                for align in [1usize, 4, 12] {
                    let ranges = split_range(len, parts, align);
                    let mut next = 0;
                    for r in &ranges {
                        assert_eq!(r.start, next);
                        assert!(r.end > r.start);
                        if r.end != len {
                            assert_eq!((r.end - r.start) % align, 0);
                        }
                        next = r.end;
                    }
                    assert_eq!(next, len);
                    assert!(ranges.len() <= parts.max(1) || len == 0);
                }
            }
        }
    }

    #[test]
    fn single_runs_tasks_in_order() {
        let seen = std::sync::Mutex::new(Vec::new());
        Threads::single().for_each(&[1, 2, 3], |&t| seen.lock().unwrap().push(t));
        assert_eq!(*seen.lock().unwrap(), vec![1, 2, 3]);
    }
}
