//! Matrix views and the packed layouts the micro-kernels read.
//!
//! Packed B: K is cut into blocks of `k_block(k)` rows (the last block may
//! be shorter); inside a block, columns are cut into panels of `w` (the
//! chosen kernel's panel width: 4, 16 or 32; the last panel zero-padded),
//! and each panel is stored k-major: `[kc][w]`. Block `p` starts at
//! `p * kc * panels * w`, its panel `j` at `+ j * kc_p * w`. Packed A (per
//! micro-kernel call, in the driver): the `r` rows of one row panel,
//! k-major: `[kc_p][r]`.

use crate::codegen::aligned::AlignedF32;
use crate::codegen::target::{Isa, Target};
use crate::codegen::CodegenError;

/// The packed-B format a GEMM kernel set reads: owned by the kernel tier,
/// so weights are packed for the kernel that was chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PackLayout {
    panel_width: usize,
}

impl PackLayout {
    /// The layout the `isa` tier's micro-kernels read.
    pub fn for_isa(isa: Isa) -> PackLayout {
        PackLayout {
            panel_width: super::wide::panel_width(isa),
        }
    }

    /// The layout of the default tier (`LAMINA_ISA` or the best the host
    /// runs), which `KernelLibraryBuilder::new()` compiles for.
    pub fn host() -> PackLayout {
        PackLayout::for_isa(Target::from_env_or_detected().isa)
    }

    /// Columns per B panel.
    pub fn panel_width(&self) -> usize {
        self.panel_width
    }
}

/// Upper bound on the K block: a 12-row A panel (12 KiB) and a 4-column B
/// panel (4 KiB) of this depth stay in L1 while the micro-kernel runs.
pub const KC_MAX: usize = 256;

/// K block length for a given K: blocks are balanced (no tiny last block)
/// and even (the micro-kernel's K loop is unrolled twice).
pub(crate) fn k_block(k: usize) -> usize {
    if k == 0 {
        return 0;
    }
    let blocks = k.div_ceil(KC_MAX);
    let kc = k.div_ceil(blocks);
    kc + (kc & 1)
}

pub(crate) fn panel_count(n: usize, w: usize) -> usize {
    n.div_ceil(w)
}

/// Number of f32 a packed `k x n` B occupies in the host's default layout
/// ([`PackLayout::host`]).
pub fn packed_b_len(k: usize, n: usize) -> usize {
    packed_b_len_for(k, n, PackLayout::host())
}

/// Number of f32 a packed `k x n` B occupies in `layout`.
pub fn packed_b_len_for(k: usize, n: usize, layout: PackLayout) -> usize {
    let w = layout.panel_width;
    k * panel_count(n, w) * w
}

/// A read-only view of a logical `rows x cols` f32 matrix inside a slice:
/// element (r, c) is at `r * ld + c`, or at `c * ld + r` when the matrix is
/// stored transposed. Constructors check that every element is in bounds.
#[derive(Clone, Copy, Debug)]
pub struct MatrixRef<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    ld: usize,
    transposed: bool,
}

impl<'a> MatrixRef<'a> {
    /// Row-major and contiguous (`ld = cols`).
    pub fn row_major(data: &'a [f32], rows: usize, cols: usize) -> Result<Self, CodegenError> {
        Self::strided(data, rows, cols, cols, false)
    }

    /// The logical `rows x cols` matrix whose transpose is stored row-major
    /// and contiguous in `data` (e.g. a PyTorch Linear weight `[out, in]`
    /// viewed as B = `[in, out]`).
    pub fn transposed(data: &'a [f32], rows: usize, cols: usize) -> Result<Self, CodegenError> {
        Self::strided(data, rows, cols, rows, true)
    }

    /// General form: `ld` is the distance between consecutive stored rows
    /// (of the transpose when `transposed`).
    pub fn strided(
        data: &'a [f32],
        rows: usize,
        cols: usize,
        ld: usize,
        transposed: bool,
    ) -> Result<Self, CodegenError> {
        let (stored_rows, stored_cols) = if transposed {
            (cols, rows)
        } else {
            (rows, cols)
        };
        if stored_rows > 1 && ld < stored_cols {
            return Err(CodegenError::shape(
                "matrix",
                format!(
                    "leading dimension {ld} is smaller than the stored row length {stored_cols}"
                ),
            ));
        }
        let needed = if stored_rows == 0 || stored_cols == 0 {
            0
        } else {
            (stored_rows - 1)
                .checked_mul(ld)
                .and_then(|x| x.checked_add(stored_cols))
                .ok_or_else(|| CodegenError::shape("matrix", "size overflows usize".to_string()))?
        };
        if data.len() < needed {
            return Err(CodegenError::shape(
                "matrix",
                format!(
                    "a {rows}x{cols} matrix{} with leading dimension {ld} needs {needed} elements, the slice has {}",
                    if transposed { " (stored transposed)" } else { "" },
                    data.len()
                ),
            ));
        }
        Ok(MatrixRef {
            data,
            rows,
            cols,
            ld,
            transposed,
        })
    }

    pub fn rows(&self) -> usize {
        self.rows
    }
    pub fn cols(&self) -> usize {
        self.cols
    }
    pub fn is_transposed(&self) -> bool {
        self.transposed
    }

    /// For a kernel reading A in place: the address of element `(i0, k0)`
    /// and the bytes between rows, when A is stored row by row; rows
    /// `i0..i0 + rows` at depth `k0..k0 + kc` must lie inside A.
    pub(crate) fn rows_in_place(
        &self,
        i0: usize,
        rows: usize,
        k0: usize,
        kc: usize,
    ) -> Option<(*const f32, usize)> {
        if self.transposed {
            return None;
        }
        let start = i0 * self.ld + k0;
        assert!(
            rows > 0 && i0 + rows <= self.rows && k0 + kc <= self.cols,
            "rows {i0}..{} at depth {k0}..{} outside a {}x{} A",
            i0 + rows,
            k0 + kc,
            self.rows,
            self.cols
        );
        // The last row's last element: inside `data` (checked when the
        // MatrixRef was made: rows * ld covers it).
        assert!(start + (rows - 1) * self.ld + kc <= self.data.len());
        Some((self.data[start..].as_ptr(), self.ld * 4))
    }

    /// Bytes between rows of A stored row by row (`None` when transposed).
    pub(crate) fn row_bytes(&self) -> Option<usize> {
        (!self.transposed).then_some(self.ld * 4)
    }

    /// Row `i` as one contiguous slice, when it is stored that way.
    pub(crate) fn contiguous_row(&self, i: usize) -> Option<&'a [f32]> {
        if i >= self.rows {
            return None;
        }
        if !self.transposed {
            let start = i * self.ld;
            self.data.get(start..start + self.cols)
        } else if self.ld == 1 || self.cols <= 1 {
            // Stored [k][m] with one column: the row is contiguous.
            self.data.get(i..i + self.cols)
        } else {
            None
        }
    }
}

/// An assembled packing transpose (`wide::assemble_transpose`): `(src,
/// src_ld_bytes, dst, dst_stride_bytes, blocks)`.
pub(crate) type TransposeFn = unsafe extern "C" fn(
    src: *const f32,
    src_ld: usize,
    dst: *mut f32,
    dst_stride: usize,
    blocks: usize,
);

/// The AVX-512 tier's packing transposes: of 12 rows (A panels) and of 16
/// (half a B panel from a transposed source).
#[derive(Clone, Copy)]
pub(crate) struct Transposes {
    pub(crate) rows12: TransposeFn,
    pub(crate) rows16: TransposeFn,
}

/// `pack_a_panel`, with the 16-column blocks of a 12-row panel of
/// row-major A transposed by `transposes` when there are some.
pub(crate) fn pack_a_panel_with(
    a: &MatrixRef<'_>,
    i0: usize,
    r: usize,
    k0: usize,
    dst: &mut [f32],
    transposes: Option<&Transposes>,
) {
    let kc = dst.len() / r.max(1);
    let blocks = kc / 16;
    match transposes {
        Some(t) if r == 12 && !a.transposed && blocks > 0 => {
            let start = i0 * a.ld + k0;
            // The kernel reads rows i0..i0 + 12, columns k0..k0 + 16 * blocks
            // of A and writes 16 * blocks rows of 12 to dst.
            assert!(
                start + 11 * a.ld + 16 * blocks <= a.data.len() && blocks * 16 * 12 <= dst.len()
            );
            // SAFETY: both ranges are in bounds (checked above).
            unsafe {
                (t.rows12)(
                    a.data[start..].as_ptr(),
                    a.ld * 4,
                    dst.as_mut_ptr(),
                    48,
                    blocks,
                );
            }
            for kk in blocks * 16..kc {
                for i in 0..12 {
                    dst[kk * 12 + i] = a.data[start + i * a.ld + kk];
                }
            }
        }
        _ => pack_a_panel(a, i0, r, k0, dst),
    }
}

/// Packs rows `i0..i0 + r` and depth `k0..k0 + dst.len() / r` of `a` into
/// `dst` as `[kc][r]`.
pub(crate) fn pack_a_panel(a: &MatrixRef<'_>, i0: usize, r: usize, k0: usize, dst: &mut [f32]) {
    debug_assert!(r > 0 && dst.len().is_multiple_of(r));
    let kc = dst.len() / r;
    if kc == 0 {
        return;
    }
    if a.transposed {
        // Stored [k][m]: the r values of one k are contiguous.
        for (kk, out) in dst.chunks_exact_mut(r).enumerate() {
            let start = (k0 + kk) * a.ld + i0;
            out.copy_from_slice(&a.data[start..start + r]);
        }
    } else {
        match r {
            12 => pack_rows::<12>(a, i0, k0, dst),
            8 => pack_rows::<8>(a, i0, k0, dst),
            6 => pack_rows::<6>(a, i0, k0, dst),
            4 => pack_rows::<4>(a, i0, k0, dst),
            _ => {
                for i in 0..r {
                    let start = (i0 + i) * a.ld + k0;
                    let row = &a.data[start..start + kc];
                    for (out, &v) in dst[i..].iter_mut().step_by(r).zip(row) {
                        *out = v;
                    }
                }
            }
        }
    }
}

/// Row-major packing for a fixed row count: the compiler keeps the R row
/// cursors in registers and writes `dst` sequentially.
fn pack_rows<const R: usize>(a: &MatrixRef<'_>, i0: usize, k0: usize, dst: &mut [f32]) {
    let kc = dst.len() / R;
    let rows: [&[f32]; R] = std::array::from_fn(|i| {
        let start = (i0 + i) * a.ld + k0;
        &a.data[start..start + kc]
    });
    for (kk, out) in dst.chunks_exact_mut(R).enumerate() {
        for (o, row) in out.iter_mut().zip(&rows) {
            *o = row[kk];
        }
    }
}

/// Packs all of `b` (`k x n`) into `dst` (exactly `packed_b_len_for(k, n,
/// layout)` long).
pub(crate) fn pack_b_into(b: &MatrixRef<'_>, dst: &mut [f32], layout: PackLayout) {
    pack_b_into_with(b, dst, layout, None)
}

/// `pack_b_into`; full 32-column panels of a transposed source go through
/// `transposes` (16 columns at a time) when there are some.
pub(crate) fn pack_b_into_with(
    b: &MatrixRef<'_>,
    dst: &mut [f32],
    layout: PackLayout,
    transposes: Option<&Transposes>,
) {
    let (k, n) = (b.rows, b.cols);
    debug_assert_eq!(dst.len(), packed_b_len_for(k, n, layout));
    let w = layout.panel_width;
    let kc = k_block(k);
    let panels = panel_count(n, w);
    let mut k0 = 0;
    while k0 < k {
        let kcp = kc.min(k - k0);
        let block = &mut dst[k0 * panels * w..(k0 + kcp) * panels * w];
        pack_b_panels(b, k0, kcp, 0, block, w, transposes);
        k0 += kcp;
    }
}

/// Packs panels `first..` of the K block `k0..k0 + kcp` of `b` into `dst`,
/// which holds whole panels of that block (`kcp * w` floats each).
fn pack_b_panels(
    b: &MatrixRef<'_>,
    k0: usize,
    kcp: usize,
    first: usize,
    dst: &mut [f32],
    w: usize,
    transposes: Option<&Transposes>,
) {
    let n = b.cols;
    for (j, panel) in dst.chunks_exact_mut(kcp * w).enumerate() {
        let c0 = (first + j) * w;
        let width = w.min(n - c0);
        if width < w {
            panel.fill(0.0);
        }
        let blocks = kcp / 16;
        let fast = transposes.filter(|_| b.transposed && w == 32 && width == 32 && blocks > 0);
        if let Some(t) = fast {
            for half in 0..2 {
                let start = (c0 + 16 * half) * b.ld + k0;
                // Reads columns c0 + 16 * half .. + 16 (stored rows), depth
                // k0..k0 + 16 * blocks; writes 16 * blocks rows of 16 at a
                // 32-float stride into this panel.
                assert!(start + 15 * b.ld + 16 * blocks <= b.data.len());
                assert!(16 * half + (16 * blocks - 1) * 32 + 16 <= panel.len());
                // SAFETY: both ranges are in bounds (checked above).
                unsafe {
                    (t.rows16)(
                        b.data[start..].as_ptr(),
                        b.ld * 4,
                        panel[16 * half..].as_mut_ptr(),
                        128,
                        blocks,
                    );
                }
            }
            for c in 0..32 {
                let start = (c0 + c) * b.ld + k0;
                for kk in blocks * 16..kcp {
                    panel[kk * 32 + c] = b.data[start + kk];
                }
            }
        } else if b.transposed {
            // Stored [n][k]: each column is contiguous along k.
            for c in 0..width {
                let start = (c0 + c) * b.ld + k0;
                let column = &b.data[start..start + kcp];
                for (out, &v) in panel[c..].iter_mut().step_by(w).zip(column) {
                    *out = v;
                }
            }
        } else {
            for (kk, out) in panel.chunks_exact_mut(w).enumerate() {
                let start = (k0 + kk) * b.ld + c0;
                out[..width].copy_from_slice(&b.data[start..start + width]);
            }
        }
    }
}

/// A part of packing one B: whole panels of one K block, independent of
/// every other part ([`PackedB::pieces`]).
pub struct PackPiece<'a> {
    b: MatrixRef<'a>,
    k0: usize,
    kcp: usize,
    first: usize,
    w: usize,
    dst: &'a mut [f32],
}

impl PackPiece<'_> {
    /// Floats this piece writes.
    pub fn len(&self) -> usize {
        self.dst.len()
    }

    pub fn is_empty(&self) -> bool {
        self.dst.is_empty()
    }

    pub fn pack(self) {
        pack_b_panels(
            &self.b, self.k0, self.kcp, self.first, self.dst, self.w, None,
        );
    }
}

/// A B operand packed for the micro-kernels, owning its (64-byte aligned)
/// storage. Pack weights once at model compile time.
#[derive(Clone, Debug)]
pub struct PackedB {
    storage: AlignedF32,
    k: usize,
    n: usize,
    layout: PackLayout,
}

impl PackedB {
    /// Packs for the host's default tier ([`PackLayout::host`]).
    pub fn pack(b: &MatrixRef<'_>) -> PackedB {
        PackedB::pack_for(b, PackLayout::host())
    }

    /// Packs for the kernels that read `layout` (e.g.
    /// `KernelLibrary::pack_layout()`).
    pub fn pack_for(b: &MatrixRef<'_>, layout: PackLayout) -> PackedB {
        let mut packed = PackedB::zeroed_for(b.rows, b.cols, layout);
        pack_b_into(b, packed.storage.as_mut_slice(), layout);
        packed
    }

    /// A `k x n` B for `layout` whose every element is zero: the storage
    /// [`PackedB::pieces`] packs into.
    pub fn zeroed_for(k: usize, n: usize, layout: PackLayout) -> PackedB {
        let len = packed_b_len_for(k, n, layout);
        let storage =
            AlignedF32::try_zeroed(len).unwrap_or_else(|e| panic!("packing a {k} x {n} B: {e}"));
        PackedB {
            storage,
            k,
            n,
            layout,
        }
    }

    /// The packing of `b` into this (zeroed, `b`-shaped) B cut into parts
    /// of about `target` floats (whole panels of one K block). Packing
    /// every part, in any order and on any thread, gives what
    /// [`PackedB::pack_for`] gives: each part only moves its own values.
    pub fn pieces<'a>(&'a mut self, b: MatrixRef<'a>, target: usize) -> Vec<PackPiece<'a>> {
        assert_eq!((b.rows, b.cols), (self.k, self.n), "B of another shape");
        let (k, w) = (self.k, self.layout.panel_width);
        let panels = panel_count(self.n, w);
        let kc = k_block(k);
        let mut rest = self.storage.as_mut_slice();
        let mut pieces = Vec::new();
        let mut k0 = 0;
        while k0 < k {
            let kcp = kc.min(k - k0);
            let per_piece = (target / (kcp * w)).clamp(1, panels);
            let mut first = 0;
            while first < panels {
                let count = per_piece.min(panels - first);
                let (dst, tail) = std::mem::take(&mut rest).split_at_mut(count * kcp * w);
                rest = tail;
                pieces.push(PackPiece {
                    b,
                    k0,
                    kcp,
                    first,
                    w,
                    dst,
                });
                first += count;
            }
            k0 += kcp;
        }
        pieces
    }

    pub fn k(&self) -> usize {
        self.k
    }
    pub fn n(&self) -> usize {
        self.n
    }

    pub fn layout(&self) -> PackLayout {
        self.layout
    }

    pub fn as_ref(&self) -> PackedBRef<'_> {
        PackedBRef {
            data: self.storage.as_slice(),
            k: self.k,
            n: self.n,
            layout: self.layout,
        }
    }
}

/// A borrowed packed B (from a [`PackedB`] or packed at run time into
/// caller scratch). `data.len() == packed_b_len_for(k, n, layout)` always
/// holds.
#[derive(Clone, Copy, Debug)]
pub struct PackedBRef<'a> {
    data: &'a [f32],
    k: usize,
    n: usize,
    layout: PackLayout,
}

impl<'a> PackedBRef<'a> {
    /// Packs `b` into the front of `scratch` (at least
    /// `packed_b_len(b.rows(), b.cols())` long) in the host's default
    /// layout, e.g. an activation used as the right operand of attention.
    pub fn pack_into(
        b: &MatrixRef<'_>,
        scratch: &'a mut [f32],
    ) -> Result<PackedBRef<'a>, CodegenError> {
        PackedBRef::pack_into_for(b, scratch, PackLayout::host())
    }

    /// `pack_into` for the kernels that read `layout`.
    pub fn pack_into_for(
        b: &MatrixRef<'_>,
        scratch: &'a mut [f32],
        layout: PackLayout,
    ) -> Result<PackedBRef<'a>, CodegenError> {
        let len = packed_b_len_for(b.rows, b.cols, layout);
        if scratch.len() < len {
            return Err(CodegenError::shape(
                "pack_b",
                format!(
                    "scratch holds {} f32, packing a {}x{} B needs {len}",
                    scratch.len(),
                    b.rows,
                    b.cols
                ),
            ));
        }
        let dst = &mut scratch[..len];
        pack_b_into(b, dst, layout);
        Ok(PackedBRef {
            data: dst,
            k: b.rows,
            n: b.cols,
            layout,
        })
    }

    /// Packs a `k x n` B that exists only as a rule, into the front of
    /// `scratch`: `row(kk, c0, out)` writes `B[kk, c0..c0 + out.len()]`
    /// (at most one panel's width) into `out`. The convolution kernels pack
    /// input patches straight into the panels this way, without an im2col
    /// matrix in between.
    pub fn pack_rows_into_for(
        k: usize,
        n: usize,
        scratch: &'a mut [f32],
        layout: PackLayout,
        mut row: impl FnMut(usize, usize, &mut [f32]),
    ) -> Result<PackedBRef<'a>, CodegenError> {
        let len = packed_b_len_for(k, n, layout);
        if scratch.len() < len {
            return Err(CodegenError::shape(
                "pack_b",
                format!(
                    "scratch holds {} f32, packing a {k}x{n} B needs {len}",
                    scratch.len()
                ),
            ));
        }
        let dst = &mut scratch[..len];
        let w = layout.panel_width;
        let kc = k_block(k);
        let panels = panel_count(n, w);
        let mut k0 = 0;
        while k0 < k {
            let kcp = kc.min(k - k0);
            let block = &mut dst[k0 * panels * w..(k0 + kcp) * panels * w];
            for (j, panel) in block.chunks_exact_mut(kcp * w).enumerate() {
                let c0 = j * w;
                let width = w.min(n - c0);
                for (kk, out) in panel.chunks_exact_mut(w).enumerate() {
                    row(k0 + kk, c0, &mut out[..width]);
                    out[width..].fill(0.0);
                }
            }
            k0 += kcp;
        }
        Ok(PackedBRef {
            data: dst,
            k,
            n,
            layout,
        })
    }

    /// `pack_into_for`, with the tier's packing transposes.
    pub(crate) fn pack_into_with(
        b: &MatrixRef<'_>,
        scratch: &'a mut [f32],
        layout: PackLayout,
        transposes: Option<&Transposes>,
    ) -> Result<PackedBRef<'a>, CodegenError> {
        let len = packed_b_len_for(b.rows, b.cols, layout);
        if scratch.len() < len {
            return Err(CodegenError::shape(
                "pack_b",
                format!(
                    "scratch holds {} f32, packing a {}x{} B needs {len}",
                    scratch.len(),
                    b.rows,
                    b.cols
                ),
            ));
        }
        let dst = &mut scratch[..len];
        pack_b_into_with(b, dst, layout, transposes);
        Ok(PackedBRef {
            data: dst,
            k: b.rows,
            n: b.cols,
            layout,
        })
    }

    /// A view of data that was packed for `k x n` in `layout`
    /// (crate-internal: the caller guarantees `data` came from `pack_b_into`
    /// with these dims and layout).
    pub(crate) fn from_packed(
        data: &'a [f32],
        k: usize,
        n: usize,
        layout: PackLayout,
    ) -> PackedBRef<'a> {
        PackedBRef {
            data: &data[..packed_b_len_for(k, n, layout)],
            k,
            n,
            layout,
        }
    }

    pub fn layout(&self) -> PackLayout {
        self.layout
    }

    pub fn k(&self) -> usize {
        self.k
    }
    pub fn n(&self) -> usize {
        self.n
    }
    pub(crate) fn data(&self) -> &'a [f32] {
        self.data
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packing_in_pieces_equals_packing_whole() {
        for isa in [Isa::Baseline, Isa::Avx2, Isa::Avx512] {
            let layout = PackLayout::for_isa(isa);
            for &(k, n) in &[
                (1, 1),
                (5, 33),
                (300, 70),
                (784, 512),
                (1280, 1000),
                (513, 16),
            ] {
                let data: Vec<f32> = (0..k * n).map(|i| (i % 1013) as f32 - 0.5).collect();
                for transposed in [false, true] {
                    let b = if transposed {
                        MatrixRef::transposed(&data, k, n).unwrap()
                    } else {
                        MatrixRef::row_major(&data, k, n).unwrap()
                    };
                    let whole = PackedB::pack_for(&b, layout);
                    for target in [1, 1000, 1 << 16, usize::MAX] {
                        let mut parts = PackedB::zeroed_for(k, n, layout);
                        let mut pieces = parts.pieces(b, target);
                        // Any order.
                        pieces.reverse();
                        for piece in pieces {
                            piece.pack();
                        }
                        assert_eq!(
                            parts.as_ref().data(),
                            whole.as_ref().data(),
                            "{isa:?} {k}x{n} transposed={transposed} target={target}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn k_blocks_are_even_balanced_and_bounded() {
        assert_eq!(k_block(0), 0);
        assert_eq!(k_block(1), 2);
        assert_eq!(k_block(256), 256);
        assert_eq!(k_block(257), 130);
        assert_eq!(k_block(384), 192);
        for k in 1..2000 {
            let kc = k_block(k);
            assert_eq!(kc % 2, 0);
            assert!(kc <= KC_MAX);
            assert!(kc >= k.min(KC_MAX) / 2);
        }
    }

    #[test]
    fn packed_b_places_every_element_and_zero_pads() {
        let (k, n) = (300, 7);
        let b: Vec<f32> = (0..k * n).map(|x| x as f32 + 1.0).collect();
        let view = MatrixRef::row_major(&b, k, n).unwrap();
        for isa in Isa::ALL {
            let layout = PackLayout::for_isa(isa);
            let w = layout.panel_width();
            let packed = PackedB::pack_for(&view, layout);
            let data = packed.as_ref().data();
            assert_eq!(data.len(), packed_b_len_for(k, n, layout));
            assert_eq!(data.as_ptr() as usize % 64, 0);
            let kc = k_block(k);
            let panels = panel_count(n, w);
            for kk in 0..k {
                let (p, within) = (kk / kc, kk % kc);
                let k0 = p * kc;
                let kcp = kc.min(k - k0);
                for col in 0..panels * w {
                    let (j, lane) = (col / w, col % w);
                    let at = k0 * panels * w + j * kcp * w + within * w + lane;
                    let expected = if col < n { b[kk * n + col] } else { 0.0 };
                    assert_eq!(data[at], expected, "{isa}: k {kk} col {col}");
                }
            }
            // The transposed view of the same logical matrix packs identically.
            let bt: Vec<f32> = (0..n * k).map(|i| b[(i % k) * n + i / k]).collect();
            let view_t = MatrixRef::transposed(&bt, k, n).unwrap();
            assert_eq!(PackedB::pack_for(&view_t, layout).as_ref().data(), data);
        }
    }

    #[test]
    fn packing_by_rows_equals_packing_the_matrix() {
        let (k, n) = (300, 37);
        let b: Vec<f32> = (0..k * n).map(|x| x as f32 * 0.5 - 7.0).collect();
        let view = MatrixRef::row_major(&b, k, n).unwrap();
        for isa in Isa::ALL {
            let layout = PackLayout::for_isa(isa);
            let mut scratch = vec![f32::NAN; packed_b_len_for(k, n, layout) + 3];
            let by_rows =
                PackedBRef::pack_rows_into_for(k, n, &mut scratch, layout, |kk, c0, out| {
                    out.copy_from_slice(&b[kk * n + c0..kk * n + c0 + out.len()])
                })
                .unwrap();
            assert_eq!(
                by_rows.data(),
                PackedB::pack_for(&view, layout).as_ref().data(),
                "{isa}"
            );
        }
    }

    #[test]
    fn pack_a_panel_both_layouts() {
        let (m, k) = (5, 9);
        let a: Vec<f32> = (0..m * k).map(|x| x as f32).collect();
        let at: Vec<f32> = (0..k * m).map(|i| a[(i % m) * k + i / m]).collect();
        let row = MatrixRef::row_major(&a, m, k).unwrap();
        let col = MatrixRef::transposed(&at, m, k).unwrap();
        let (i0, r, k0, kc) = (1, 3, 2, 6);
        let mut p1 = vec![0.0; r * kc];
        let mut p2 = vec![0.0; r * kc];
        pack_a_panel(&row, i0, r, k0, &mut p1);
        pack_a_panel(&col, i0, r, k0, &mut p2);
        for kk in 0..kc {
            for i in 0..r {
                assert_eq!(p1[kk * r + i], a[(i0 + i) * k + k0 + kk]);
            }
        }
        assert_eq!(p1, p2);
    }

    #[test]
    fn matrix_ref_rejects_short_slices() {
        let data = vec![0.0f32; 11];
        assert!(MatrixRef::row_major(&data, 3, 4).is_err());
        assert!(MatrixRef::row_major(&data, 2, 4).is_ok());
        assert!(MatrixRef::strided(&data, 2, 4, 3, false).is_err());
        assert!(MatrixRef::strided(&data, 2, 4, 7, false).is_ok());
        assert!(MatrixRef::strided(&data, 2, 4, 8, false).is_err());
        assert!(MatrixRef::transposed(&data, 4, 3).is_err());
        assert!(MatrixRef::row_major(&data, 0, 100).is_ok());
        let mut small = vec![0.0f32; 3];
        let view = MatrixRef::row_major(&data, 2, 4).unwrap();
        assert!(PackedBRef::pack_into(&view, &mut small).is_err());
    }
}
