//! f32 storage whose first float starts on a 64-byte cache line.

use std::collections::TryReserveError;

/// Floats in a 64-byte cache line.
pub(crate) const LINE_FLOATS: usize = 16;

/// Zeroed f32 storage whose first float starts on a cache line, so that a
/// full-width vector at a multiple of [`LINE_FLOATS`] from it never
/// straddles two lines (which costs a load twice, and lets two threads
/// writing neighbouring parts fight over the line). A plain `Vec<f32>` is
/// only 4-byte aligned: malloc's large blocks start 16 bytes past a page.
#[derive(Debug)]
pub(crate) struct AlignedF32 {
    storage: Vec<f32>,
    /// Floats skipped at the front of `storage` to reach a line.
    start: usize,
    len: usize,
}

impl AlignedF32 {
    /// `len` zeros; an error, not an abort, when the memory is not there.
    pub(crate) fn try_zeroed(len: usize) -> Result<AlignedF32, TryReserveError> {
        let mut storage = Vec::new();
        // Saturating: an impossible size fails in `try_reserve_exact`.
        storage.try_reserve_exact(len.saturating_add(LINE_FLOATS - 1))?;
        storage.resize(storage.capacity(), 0.0);
        let misaligned = (storage.as_ptr() as usize / 4) % LINE_FLOATS;
        let start = (LINE_FLOATS - misaligned) % LINE_FLOATS;
        Ok(AlignedF32 {
            storage,
            start,
            len,
        })
    }

    pub(crate) fn as_slice(&self) -> &[f32] {
        &self.storage[self.start..self.start + self.len]
    }

    pub(crate) fn as_mut_slice(&mut self) -> &mut [f32] {
        &mut self.storage[self.start..self.start + self.len]
    }
}

impl Clone for AlignedF32 {
    /// A new aligned copy (a cloned `Vec` would keep the offset of the old
    /// allocation, which need not fit the new one).
    fn clone(&self) -> AlignedF32 {
        let mut copy = AlignedF32::try_zeroed(self.len)
            .unwrap_or_else(|e| panic!("copying {} aligned floats: {e}", self.len));
        copy.as_mut_slice().copy_from_slice(self.as_slice());
        copy
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_starts_on_a_cache_line_and_holds_what_was_asked() {
        // Sizes on both sides of malloc's switch to mmap (whose blocks
        // start 16 bytes past a page), and none.
        for len in [0usize, 1, 15, 16, 1000, 40_000, 1 << 20] {
            let mut v = AlignedF32::try_zeroed(len).unwrap();
            assert_eq!(v.as_slice().len(), len);
            assert!(v.as_slice().iter().all(|&x| x == 0.0));
            assert_eq!(v.as_slice().as_ptr() as usize % 64, 0, "{len} floats");
            v.as_mut_slice()
                .iter_mut()
                .enumerate()
                .for_each(|(i, x)| *x = i as f32);
            let copy = v.clone();
            assert_eq!(copy.as_slice(), v.as_slice());
            assert_eq!(copy.as_slice().as_ptr() as usize % 64, 0, "copy of {len}");
        }
    }

    #[test]
    fn an_impossible_size_is_an_error() {
        assert!(AlignedF32::try_zeroed(usize::MAX / 2).is_err());
        assert!(AlignedF32::try_zeroed(usize::MAX).is_err());
    }
}
