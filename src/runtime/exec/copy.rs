//! Data-movement and small ops the executor runs in plain Rust: they move
//! memory rather than compute, so a JIT kernel would buy little. Index
//! arithmetic is prepared once per plan (`Strided::*`); running allocates
//! nothing.

use std::ops::Range;

use crate::codegen::{SharedMut, Split, Threads};
use crate::interp::InterpError;
use crate::ir::ReduceOp;
use crate::tensor::strides;

/// The executor handles tensors up to this rank natively (larger go to the
/// interpreter), so index counters live on the stack.
pub const MAX_RANK: usize = 8;

/// A strided walk over a tensor: visiting `shape` in row-major order, the
/// element at multi-index `i` is `base + sum(i[a] * walk[a])`.
#[derive(Clone, Debug, PartialEq)]
pub struct Strided {
    pub base: usize,
    pub shape: Vec<usize>,
    pub walk: Vec<usize>,
}

impl Strided {
    /// `permute(x, perm)` of a contiguous tensor of `shape`.
    pub fn permute(shape: &[usize], perm: &[usize]) -> Strided {
        let st = strides(shape);
        Strided {
            base: 0,
            shape: perm.iter().map(|&p| shape[p]).collect(),
            walk: perm.iter().map(|&p| st[p]).collect(),
        }
    }

    /// `slice(x, axis, start, .., step)` giving `len` elements along `axis`.
    pub fn slice(shape: &[usize], axis: usize, start: usize, step: usize, len: usize) -> Strided {
        let st = strides(shape);
        let mut out_shape = shape.to_vec();
        out_shape[axis] = len;
        let mut walk = st.clone();
        walk[axis] = st[axis] * step;
        Strided {
            base: start * st[axis],
            shape: out_shape,
            walk,
        }
    }

    /// The same walk with size-1 axes dropped and runs merged (see
    /// [`merged`]): what a plan keeps, so that a permute moving whole
    /// planes (NCHW -> NHWC is `[N, C, HW] -> [N, HW, C]`) walks three axes.
    pub fn simplified(self) -> Strided {
        merged(self)
    }

    /// Copies the visited elements of `x` into `out` in row-major order.
    /// The last two axes are walked as one block of rows (the outer
    /// counters advance once per block, not once per row), so a short
    /// strided last axis (the 3 channels of an image moved to NHWC) costs
    /// a load and a store per element.
    pub fn copy(&self, x: &[f32], out: &mut [f32]) {
        let rank = self.shape.len();
        if rank == 0 {
            if let Some(o) = out.first_mut() {
                *o = x[self.base];
            }
            return;
        }
        if self.shape.contains(&0) {
            return;
        }
        let block = self.block();
        let rows = block.rows;
        let outer_rank = rank.saturating_sub(2);
        let mut index = [0usize; MAX_RANK];
        for out_block in out.chunks_mut(rows * block.inner) {
            let start = self.base
                + (0..outer_rank)
                    .map(|a| index[a] * self.walk[a])
                    .sum::<usize>();
            block.copy_rows(x, start, 0..rows, out_block);
            for axis in (0..outer_rank).rev() {
                index[axis] += 1;
                if index[axis] < self.shape[axis] {
                    break;
                }
                index[axis] = 0;
            }
        }
    }

    /// [`Strided::copy`], a large walk of one block of rows (an image's
    /// NCHW -> NHWC permute) split by rows over `threads`.
    pub fn copy_on(&self, x: &[f32], out: &mut [f32], threads: &Threads) {
        let block = self.block();
        let one_block = self.shape.len() <= 2 && !self.shape.contains(&0);
        if !one_block || threads.count() < 2 || out.len() < PARALLEL_COPY_MIN {
            return self.copy(x, out);
        }
        let split = Split::new(block.rows, 2 * threads.count(), 64);
        let target = SharedMut(out.as_mut_ptr());
        let inner = block.inner;
        threads.for_each_index(split.count(), |part| {
            let rows = split.get(part);
            // SAFETY: the parts' row ranges are disjoint, so each task
            // writes its own `inner`-float rows of `out`, which is
            // exclusively borrowed for the whole call.
            let part_out = unsafe {
                std::slice::from_raw_parts_mut(
                    target.get().add(rows.start * inner),
                    rows.len() * inner,
                )
            };
            block.copy_rows(x, self.base, rows, part_out);
        });
    }

    /// The last two axes as rows of `inner` elements.
    fn block(&self) -> RowBlock {
        let rank = self.shape.len();
        let (rows, row_walk) = match rank {
            0 | 1 => (1, 0),
            _ => (self.shape[rank - 2], self.walk[rank - 2]),
        };
        RowBlock {
            rows,
            row_walk,
            inner: self.shape.last().copied().unwrap_or(1),
            inner_stride: self.walk.last().copied().unwrap_or(0),
        }
    }
}

/// Elements below which a copy runs on the calling thread alone.
const PARALLEL_COPY_MIN: usize = 1 << 16;

/// The innermost two axes of a walk: `rows` rows of `inner` elements, row
/// `r` element `j` at `start + r * row_walk + j * inner_stride`.
#[derive(Clone, Copy)]
struct RowBlock {
    rows: usize,
    row_walk: usize,
    inner: usize,
    inner_stride: usize,
}

impl RowBlock {
    /// Rows `rows` of the block starting at `start` into `out` (their
    /// `rows.len() * inner` elements).
    fn copy_rows(&self, x: &[f32], start: usize, rows: Range<usize>, out: &mut [f32]) {
        let RowBlock {
            row_walk,
            inner,
            inner_stride,
            ..
        } = *self;
        if inner_stride != 1 && row_walk == 1 {
            // Interleaving `inner` contiguous planes (NCHW -> NHWC): each
            // plane read in order.
            match inner {
                2 => return interleave::<2>(x, start, inner_stride, rows, out),
                3 => return interleave::<3>(x, start, inner_stride, rows, out),
                4 => return interleave::<4>(x, start, inner_stride, rows, out),
                _ => {}
            }
        }
        for (r, row) in rows.zip(out.chunks_exact_mut(inner)) {
            let at = start + r * row_walk;
            if inner_stride == 1 {
                row.copy_from_slice(&x[at..at + inner]);
            } else {
                for (j, o) in row.iter_mut().enumerate() {
                    *o = x[at + j * inner_stride];
                }
            }
        }
    }
}

/// `out[r][j] = x[start + j * plane + r]` for `r` in `rows`: `N` planes
/// interleaved element by element.
fn interleave<const N: usize>(
    x: &[f32],
    start: usize,
    plane: usize,
    rows: Range<usize>,
    out: &mut [f32],
) {
    let planes: [&[f32]; N] =
        std::array::from_fn(|j| &x[start + j * plane + rows.start..][..rows.len()]);
    let out = &mut out[..rows.len() * N];
    for (r, o) in out.chunks_exact_mut(N).enumerate() {
        for (j, plane) in planes.iter().enumerate() {
            o[j] = plane[r];
        }
    }
}

/// Joins parts along an axis: `outer` repetitions of each part's `block`
/// floats, in part order.
pub fn concat(parts: &[(&[f32], usize)], outer: usize, out: &mut [f32]) {
    let mut pos = 0;
    for o in 0..outer {
        for &(data, block) in parts {
            out[pos..pos + block].copy_from_slice(&data[o * block..(o + 1) * block]);
            pos += block;
        }
    }
}

/// The row an id picks on an axis of `size`, as the interpreter's
/// `gather`: `0..size` from the start, `-size..0` from the end (numpy,
/// ONNX), `None` when out of range.
pub fn gather_row(id: i64, size: usize) -> Option<usize> {
    let size = i64::try_from(size).ok()?;
    let row = if id < 0 { id.checked_add(size)? } else { id };
    (0..size).contains(&row).then_some(row as usize)
}

/// Rows of a table (`outer x size x inner`) picked by ids along the middle
/// axis. Ids must already be resolved by `gather_row`.
pub fn gather(
    table: &[f32],
    outer: usize,
    size: usize,
    inner: usize,
    ids: impl Iterator<Item = usize> + Clone,
    out: &mut [f32],
) {
    let mut pos = 0;
    for o in 0..outer {
        for id in ids.clone() {
            let start = (o * size + id) * inner;
            out[pos..pos + inner].copy_from_slice(&table[start..start + inner]);
            pos += inner;
        }
    }
}

/// A reduction over any set of axes, prepared once: the kept axes walk the
/// output, the reduced axes walk each output element's inputs. Both walks
/// are simplified (axes of size 1 dropped, neighbours that are one
/// contiguous run merged), so `mean` over NCHW's `[2, 3]` reduces one run
/// of `H * W` inputs per output, and over NHWC's `[1, 2]` adds rows of `C`
/// adjacent inputs into `C` adjacent outputs.
#[derive(Clone, Debug, PartialEq)]
pub struct Reduction {
    pub op: ReduceOp,
    /// The output's walk through the input (merged).
    kept: Strided,
    /// The reduced axes but the last (merged): where each run starts.
    outer: Strided,
    /// The last reduced axis (merged): its length and walk.
    run: usize,
    run_walk: usize,
    /// The inputs of each output.
    count: usize,
    /// A reduced axis of size 0, for the error of max over nothing.
    empty_axis: Option<usize>,
    /// Where each output element's inputs start (`kept`'s offsets).
    starts: Vec<usize>,
}

thread_local! {
    /// The f64 accumulators of `Reduction::run`, kept between runs so a
    /// step allocates nothing once warm.
    static ACCUMULATORS: std::cell::RefCell<Vec<f64>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Outputs whose inputs are not adjacent are reduced this many at a time,
/// one f64 chain each, so their adds overlap instead of each waiting on
/// the one before.
const INTERLEAVED: usize = 8;

impl Reduction {
    pub fn new(shape: &[usize], axes: &[usize], op: ReduceOp) -> Reduction {
        let st = strides(shape);
        let pick = |keep: bool| {
            let axes: Vec<usize> = (0..shape.len())
                .filter(|a| axes.contains(a) != keep)
                .collect();
            merged(Strided {
                base: 0,
                shape: axes.iter().map(|&a| shape[a]).collect(),
                walk: axes.iter().map(|&a| st[a]).collect(),
            })
        };
        let kept = pick(true);
        let mut outer = pick(false);
        let count = outer.shape.iter().product();
        let (run, run_walk) = match (outer.shape.pop(), outer.walk.pop()) {
            (Some(run), Some(walk)) => (run, walk),
            _ => (1, 1),
        };
        let outputs: usize = kept.shape.iter().product();
        let starts = (0..outputs).map(|o| offset_of(&kept, o)).collect();
        Reduction {
            op,
            kept,
            outer,
            run,
            run_walk,
            count,
            empty_axis: axes.iter().copied().find(|&a| shape[a] == 0),
            starts,
        }
    }

    /// Accumulates in f64, like the interpreter, each output's inputs in
    /// the reduced axes' row-major order whichever path runs it, so the
    /// result is the interpreter's to the bit. Over an empty axis sum is
    /// 0, mean NaN (0/0) and max an error, as in the interpreter (numpy).
    pub fn run(&self, x: &[f32], out: &mut [f32]) -> Result<(), InterpError> {
        if out.is_empty() {
            return Ok(());
        }
        match self.op {
            ReduceOp::Max if self.count == 0 => {
                let axis = self.empty_axis.unwrap_or(0);
                Err(crate::ir::ops::EvalError::EmptyMax { axis }.into())
            }
            ReduceOp::Max => {
                self.run_with(x, out, f64::NEG_INFINITY, |acc, v| {
                    if v.is_nan() || acc.is_nan() {
                        f64::NAN
                    } else {
                        acc.max(v)
                    }
                });
                Ok(())
            }
            ReduceOp::Sum | ReduceOp::Mean => {
                self.run_with(x, out, 0.0, |acc, v| acc + v);
                Ok(())
            }
        }
    }

    /// Calls `f` with the offset of every input of an output relative to
    /// the output's start, in the reduced axes' row-major order.
    #[inline(always)]
    fn each_input(&self, mut f: impl FnMut(usize)) {
        for_each_offset(&self.outer, |at| {
            for j in 0..self.run {
                f(at + j * self.run_walk)
            }
        })
    }

    /// `combine` folds one input (as f64) into an accumulator.
    #[inline(always)]
    fn run_with(&self, x: &[f32], out: &mut [f32], init: f64, combine: impl Fn(f64, f64) -> f64) {
        let finish = |acc: f64| match self.op {
            ReduceOp::Mean => (acc / self.count as f64) as f32,
            ReduceOp::Sum | ReduceOp::Max => acc as f32,
        };
        if self.kept.walk.last() == Some(&1) {
            // Outputs adjacent in the input (NHWC's pooling over pixels,
            // the gradient of a broadcast bias): a block of adjacent
            // outputs takes its inputs row by row, contiguous slices that
            // vectorise across the outputs.
            let block = self.kept.shape.last().copied().unwrap_or(1);
            ACCUMULATORS.with(|cell| {
                let mut acc = cell.borrow_mut();
                acc.clear();
                acc.resize(block, init);
                for (starts, out) in self.starts.chunks(block).zip(out.chunks_mut(block)) {
                    acc.fill(init);
                    self.each_input(|at| {
                        let from = starts[0] + at;
                        for (a, &v) in acc.iter_mut().zip(&x[from..from + block]) {
                            *a = combine(*a, f64::from(v));
                        }
                    });
                    for (slot, &a) in out.iter_mut().zip(acc.iter()) {
                        *slot = finish(a);
                    }
                }
            });
            return;
        }
        let mut starts = self.starts.chunks_exact(INTERLEAVED);
        let mut outs = out.chunks_exact_mut(INTERLEAVED);
        for (starts, out) in (&mut starts).zip(&mut outs) {
            let mut acc = [init; INTERLEAVED];
            self.each_input(|at| {
                for (a, &start) in acc.iter_mut().zip(starts) {
                    *a = combine(*a, f64::from(x[start + at]));
                }
            });
            for (slot, &a) in out.iter_mut().zip(&acc) {
                *slot = finish(a);
            }
        }
        for (slot, &start) in outs.into_remainder().iter_mut().zip(starts.remainder()) {
            let mut acc = init;
            self.each_input(|at| acc = combine(acc, f64::from(x[start + at])));
            *slot = finish(acc);
        }
    }
}

/// The walk without axes of size 1, each axis merged into the one before
/// it where the two are one run (`walk[a] == walk[a + 1] * shape[a + 1]`):
/// the same offsets in the same order, fewer counters. An empty walk keeps
/// its axes (it visits nothing either way).
fn merged(s: Strided) -> Strided {
    if s.shape.contains(&0) {
        return s;
    }
    let mut shape: Vec<usize> = Vec::with_capacity(s.shape.len());
    let mut walk: Vec<usize> = Vec::with_capacity(s.walk.len());
    for (&n, &w) in s.shape.iter().zip(&s.walk) {
        if n == 1 {
            continue;
        }
        match (shape.last_mut(), walk.last_mut()) {
            (Some(last_n), Some(last_w)) if *last_w == w * n => {
                *last_n *= n;
                *last_w = w;
            }
            _ => {
                shape.push(n);
                walk.push(w);
            }
        }
    }
    Strided {
        base: s.base,
        shape,
        walk,
    }
}

/// Calls `f` with the offset of every element of a walk, in row-major
/// order, by counters (no division per element).
#[inline(always)]
fn for_each_offset(s: &Strided, mut f: impl FnMut(usize)) {
    let rank = s.shape.len();
    if s.shape.contains(&0) {
        return;
    }
    let mut index = [0usize; MAX_RANK];
    let mut at = s.base;
    loop {
        f(at);
        let mut axis = rank;
        loop {
            if axis == 0 {
                return;
            }
            axis -= 1;
            index[axis] += 1;
            at += s.walk[axis];
            if index[axis] < s.shape[axis] {
                break;
            }
            at -= s.walk[axis] * s.shape[axis];
            index[axis] = 0;
        }
    }
}

/// The offset of the `flat`-th element of a strided walk.
fn offset_of(s: &Strided, mut flat: usize) -> usize {
    let mut off = s.base;
    for a in (0..s.shape.len()).rev() {
        off += (flat % s.shape[a]) * s.walk[a];
        flat /= s.shape[a];
    }
    off
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permute_swaps_axes() {
        let x: Vec<f32> = (0..6).map(|v| v as f32).collect();
        let mut out = vec![0.0; 6];
        Strided::permute(&[2, 3], &[1, 0]).copy(&x, &mut out);
        assert_eq!(out, [0.0, 3.0, 1.0, 4.0, 2.0, 5.0]);
    }

    /// Every permutation of rank-4 shapes with size-1 axes and a short last
    /// axis, as planned (simplified) and as written, against each output
    /// index mapped back to its input by hand.
    #[test]
    fn simplified_permutes_copy_what_the_index_rule_says() {
        fn permutations(n: usize) -> Vec<Vec<usize>> {
            if n == 0 {
                return vec![vec![]];
            }
            let mut all = Vec::new();
            for p in permutations(n - 1) {
                for at in 0..=p.len() {
                    let mut q = p.clone();
                    q.insert(at, n - 1);
                    all.push(q);
                }
            }
            all
        }
        for shape in [[2usize, 3, 4, 5], [1, 3, 7, 7], [2, 1, 5, 3], [1, 1, 1, 4]] {
            let x: Vec<f32> = (0..shape.iter().product::<usize>())
                .map(|v| v as f32)
                .collect();
            let st = strides(&shape);
            for perm in permutations(4) {
                let out_shape: Vec<usize> = perm.iter().map(|&p| shape[p]).collect();
                let mut want = vec![0.0f32; x.len()];
                for (flat, w) in want.iter_mut().enumerate() {
                    let (mut rest, mut at) = (flat, 0);
                    for a in (0..4).rev() {
                        at += rest % out_shape[a] * st[perm[a]];
                        rest /= out_shape[a];
                    }
                    *w = x[at];
                }
                for walk in [
                    Strided::permute(&shape, &perm),
                    Strided::permute(&shape, &perm).simplified(),
                ] {
                    let mut out = vec![-1.0f32; x.len()];
                    walk.copy(&x, &mut out);
                    assert_eq!(out, want, "{shape:?} by {perm:?} as {walk:?}");
                }
            }
        }
    }

    /// An image's NCHW -> NHWC permute (and other large transposes) split
    /// over two threads: the single-thread copy's values.
    #[test]
    fn a_large_copy_on_threads_copies_the_same() {
        let threads = Threads::new(2).unwrap();
        for (shape, perm) in [
            (vec![1, 3, 224, 224], vec![0, 2, 3, 1]),
            (vec![2, 4, 100, 90], vec![0, 2, 3, 1]),
            (vec![300, 257], vec![1, 0]),
            (vec![1, 5, 200, 70], vec![0, 2, 3, 1]),
        ] {
            let n: usize = shape.iter().product();
            let x: Vec<f32> = (0..n).map(|i| i as f32).collect();
            let walk = Strided::permute(&shape, &perm).simplified();
            let mut expected = vec![0.0; n];
            walk.copy(&x, &mut expected);
            let mut got = vec![-1.0; n];
            walk.copy_on(&x, &mut got, &threads);
            assert_eq!(got, expected, "{shape:?} {perm:?}");
        }
    }

    #[test]
    fn slice_with_step_gather_and_concat() {
        let x: Vec<f32> = (0..12).map(|v| v as f32).collect(); // [3, 4]
        let mut out = vec![0.0; 6];
        Strided::slice(&[3, 4], 1, 1, 2, 2).copy(&x, &mut out); // columns 1 and 3
        assert_eq!(out, [1.0, 3.0, 5.0, 7.0, 9.0, 11.0]);
        let mut g = vec![0.0; 8];
        gather(&x, 1, 3, 4, [2usize, 0].into_iter(), &mut g);
        assert_eq!(g, [8.0, 9.0, 10.0, 11.0, 0.0, 1.0, 2.0, 3.0]);
        let mut c = vec![0.0; 4];
        concat(&[(&[1.0, 2.0], 1), (&[3.0, 4.0], 1)], 2, &mut c);
        assert_eq!(c, [1.0, 3.0, 2.0, 4.0]);
    }

    #[test]
    fn reduce_over_a_middle_axis() {
        let x: Vec<f32> = (0..12).map(|v| v as f32).collect(); // [2, 3, 2]
        let mut out = vec![0.0; 4];
        Reduction::new(&[2, 3, 2], &[1], ReduceOp::Sum)
            .run(&x, &mut out)
            .unwrap();
        assert_eq!(out, [6.0, 9.0, 24.0, 27.0]);
    }
}
