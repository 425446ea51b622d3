//! The f32x4 constant table shared by every kernel of a library: `jit`
//! owns it (one data object per module), `simd` hands out entries while
//! emitting. Its own file so neither of those two depends on the other for it.

use std::collections::HashMap;

/// f32x4 constants of every kernel, in one read-only data object of the
/// module: kernels load them with `readonly+can_move` loads, which x64
/// lowering folds into the arithmetic instruction using them (a `vconst`
/// is materialised into a register first). Entries are 16 bytes, deduplicated.
#[derive(Default)]
pub(crate) struct ConstantTable {
    bytes: Vec<u8>,
    offsets: HashMap<(u32, u8), i32>,
}

impl ConstantTable {
    /// Byte offset of the entry holding `lane_bits` in all four lanes.
    /// Different `copy` numbers give different entries with equal values,
    /// so independent code paths get loads Cranelift will not merge (a
    /// merged constant is held in a register across both, and spills).
    pub(crate) fn offset(&mut self, lane_bits: u32, copy: u8) -> i32 {
        if let Some(&offset) = self.offsets.get(&(lane_bits, copy)) {
            return offset;
        }
        let offset = i32::try_from(self.bytes.len()).expect("constant table below 2 GiB");
        for _ in 0..4 {
            self.bytes.extend_from_slice(&lane_bits.to_le_bytes());
        }
        self.offsets.insert((lane_bits, copy), offset);
        offset
    }

    /// The table's bytes for the module's data object (one zero entry when
    /// no kernel used a constant: a data object cannot be empty).
    pub(crate) fn into_bytes(self) -> Vec<u8> {
        let mut bytes = self.bytes;
        if bytes.is_empty() {
            bytes.resize(16, 0);
        }
        bytes
    }
}
