//! Depthwise convolution, max and average pooling over NHWC tensors
//! (`[N, H, W, C]` in, `[N, OH, OW, C]` out), vectorised across channels.
//!
//! In NHWC one pixel's channels are contiguous, so every tap of a window
//! is a full-width vector load for a block of channels, whatever the
//! stride or dilation. Per output row, the kernel sweeps the output pixels
//! in groups of `P` (16, 8, 4 on AVX-512; 8, 4, 2 on AVX2 + FMA and the
//! baseline) and, per group, every block of channels (one vector of the
//! tier: 16, 8 or 4 lanes); the `P` accumulators stay in registers over
//! the whole window. Groups advance by `P`, then by the smaller sizes;
//! the last pixels of a row may take one wider group that overlaps pixels
//! already done (recomputing them to the same bits: every pixel's value
//! depends only on its own taps, in one order). Where a group reads is
//! worked out once for all its channel blocks.
//!
//! Per kernel row, the taps of a group go column by column through the
//! input: a column read by several (pixel, tap) pairs is loaded once and
//! feeds all of them. For the window widths and strides EfficientNet-like
//! models use (3 and 5 wide, stride 1 and 2, no dilation: [`Fixed`]), the
//! width and stride are constants, so the column loop is unrolled and each
//! input vector is loaded once per kernel row for up to `kw` multiply-adds
//! (stride 1: `P + kw - 1` loads for `P * kw` FMAs, the tap vectors held
//! in registers); every other window runs the same driver with the width,
//! stride and dilation read at run time ([`AnyColumns`]: one load per tap).
//! Border groups run the same code with a mask per input column (inside
//! the image or not: masked loads, and accumulators kept where the column
//! is outside, so a skipped tap changes nothing, exactly as the
//! interpreter skips it), and each output row runs only the kernel rows
//! inside the image. Interior groups run it without masks. Channels past
//! the last full vector run one pixel at a time with masked loads and
//! stores (nothing outside the tensors is read or written).
//!
//! Bias (the accumulators' start), relu and relu6 (a clamp against a
//! constant, NaN passing through, as the interpreter) and the residual
//! are applied in registers before the store; the other activations run
//! over the finished row while it is in L1.
//!
//! Depthwise taps are read as `[kh * kw][C]` (one vector per tap and
//! channel block): [`pack_depthwise_taps`] lays the `[C, 1, kh, kw]`
//! weights out so, once when the model is compiled (or per run when the
//! weights are not constants).
//!
//! Like `conv::window2d`, this is Rust compiled once per tier (AVX-512 /
//! AVX2 + FMA with `target_feature`, plain SSE2 for the baseline) over
//! one vector abstraction ([`Lanes`], `std::arch` intrinsics).
//!
//! A task's rows run a chunk of channel vectors at a time, sized so that
//! the input rows and taps one output row reads stay in L1 for the next
//! ([`chunk_blocks`]); tasks split the output rows, or, when there are
//! few (a 7 x 7 image at batch 1), the channel chunks first.
//!
//! Every output value is one chain in a fixed order (bias, then taps by
//! rows and columns), whatever the group size, chunk or task that computes
//! it: results are bitwise identical for any thread count within a tier.
//!
//! Sizes: [`window2d_nhwc`] checks every slice against the geometry (with
//! checked arithmetic) once per call; the loops then read through raw
//! pointers at offsets the geometry bounds (rows by each output row's
//! range of kernel rows inside the image, columns by each group's range
//! of columns inside it, channels by the full vectors and the masked
//! tail).

use std::arch::x86_64::*;
use std::ops::Range;

use super::conv::{PostActivation, WindowGeometry, WindowOp};
use super::target::Isa;
use super::threads::{SharedMut, Split, Threads};
use super::CodegenError;

/// Lays out depthwise weights `[C, 1, kh, kw]` (`taps = kh * kw` per
/// channel) as `[taps][C]`, into `out` (`C * taps` f32).
pub fn pack_depthwise_taps(
    oihw: &[f32],
    channels: usize,
    taps: usize,
    out: &mut [f32],
) -> Result<(), CodegenError> {
    let len = channels.checked_mul(taps);
    check_len("the depthwise weights", oihw.len(), len)?;
    check_len("the packed taps", out.len(), len)?;
    for (c, w) in oihw.chunks_exact(taps.max(1)).take(channels).enumerate() {
        for (t, &v) in w.iter().enumerate() {
            out[t * channels + c] = v;
        }
    }
    Ok(())
}

/// Operands of [`window2d_nhwc`].
pub struct NhwcWindowArgs<'a> {
    /// `[N, H, W, C]`.
    pub x: &'a [f32],
    /// Depthwise: `[kh * kw][C]` ([`pack_depthwise_taps`]).
    pub taps: Option<&'a [f32]>,
    /// Depthwise: `[C]`.
    pub bias: Option<&'a [f32]>,
    pub post: Option<PostActivation>,
    /// `[N, OH, OW, C]`, added last.
    pub residual: Option<&'a [f32]>,
    /// `[N, OH, OW, C]`.
    pub out: &'a mut [f32],
}

fn shape_err(what: String) -> CodegenError {
    CodegenError::shape(NAME, what)
}

const NAME: &str = "window2d_nhwc";

fn check_len(what: &str, got: usize, want: Option<usize>) -> Result<(), CodegenError> {
    match want {
        Some(want) if got == want => Ok(()),
        Some(want) => Err(shape_err(format!("{what} must hold {want} f32, got {got}"))),
        None => Err(shape_err(format!("the size of {what} overflows"))),
    }
}

fn product(dims: &[usize]) -> Option<usize> {
    dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
}

/// Checks the geometry and every operand against it; the loops trust it.
fn validate(
    op: WindowOp,
    g: &WindowGeometry,
    args: &NhwcWindowArgs<'_>,
) -> Result<(), CodegenError> {
    validate_window(op, g, args)?;
    let c = g.in_channels;
    check_len(
        "the input",
        args.x.len(),
        product(&[g.batch, g.in_h, g.in_w, c]),
    )?;
    let out_len = product(&[g.batch, g.out_h, g.out_w, c]);
    check_len("the output", args.out.len(), out_len)?;
    if let Some(r) = args.residual {
        check_len("the residual", r.len(), out_len)?;
    }
    Ok(())
}

/// Checks the geometry, the taps and the bias (not the tensors' sizes).
fn validate_window(
    op: WindowOp,
    g: &WindowGeometry,
    args: &NhwcWindowArgs<'_>,
) -> Result<(), CodegenError> {
    let c = g.in_channels;
    if g.out_channels != c {
        return Err(shape_err(format!(
            "{} output channels from {c} input channels (NHWC windows keep the channels)",
            g.out_channels
        )));
    }
    if g.stride.contains(&0) || g.dilation.contains(&0) {
        return Err(shape_err(format!(
            "stride {:?} and dilation {:?} must be positive",
            g.stride, g.dilation
        )));
    }
    let taps = product(&[g.kernel[0], g.kernel[1]]);
    match (op, args.taps) {
        (WindowOp::Depthwise, Some(t)) => {
            if g.groups != c {
                return Err(shape_err(format!(
                    "a depthwise convolution has one group per channel: {} groups, {c} channels",
                    g.groups
                )));
            }
            check_len("the taps", t.len(), taps.and_then(|t| t.checked_mul(c)))?
        }
        (WindowOp::Depthwise, None) => return Err(shape_err("depthwise taps are missing".into())),
        (_, Some(_)) => return Err(shape_err("pooling takes no taps".into())),
        (_, None) => {}
    }
    match (op, args.bias) {
        (WindowOp::Depthwise, Some(b)) => check_len("the bias", b.len(), Some(c))?,
        (_, Some(_)) => return Err(shape_err("pooling takes no bias".into())),
        _ => {}
    }
    Ok(())
}

/// Depthwise convolution (`groups == channels`, one output channel each)
/// or pooling over NHWC tensors, output rows split over threads.
pub fn window2d_nhwc(
    isa: Isa,
    op: WindowOp,
    g: &WindowGeometry,
    args: NhwcWindowArgs<'_>,
    threads: &Threads,
) -> Result<(), CodegenError> {
    validate(op, g, &args)?;
    let rows = g.batch * g.out_h;
    let row_len = g.out_w * g.in_channels;
    if rows == 0 || row_len == 0 {
        return Ok(());
    }
    let image = g.in_h * g.in_w * g.in_channels;
    let out = SharedMut(args.out.as_mut_ptr());
    let blocks = g.in_channels / isa_lanes(isa);
    let run = |range: &Range<usize>, channel_blocks: Range<usize>| {
        let mut r = range.start;
        while r < range.end {
            let n = r / g.out_h;
            let end = range.end.min((n + 1) * g.out_h);
            let source = InputRows {
                x: args.x[n * image..(n + 1) * image].as_ptr(),
                first: 0,
            };
            let oy = r % g.out_h;
            let rows = oy..oy + (end - r);
            // SAFETY: the channels `channel_blocks` of rows `r..end` of
            // the output (`rows * row_len` f32, checked by `validate`) are
            // written by this task alone: tasks are disjoint, `out` is
            // borrowed for the call. `validate` checked every other
            // operand against `g`.
            unsafe {
                run_rows(
                    isa,
                    op,
                    g,
                    &args,
                    source,
                    rows,
                    channel_blocks.clone(),
                    out.get(),
                    r,
                )
            };
            r = end;
        }
    };
    if threads.count() == 1 {
        run(&(0..rows), 0..blocks);
        return Ok(());
    }
    // About four tasks per thread. With rows enough for two rows a task
    // and more, tasks split the rows only (a task re-reads the window's
    // rows above its first: cheap over several rows); fewer rows (a 7 x 7
    // or 14 x 14 image at batch 1) split into L1-sized chunks of channels
    // first, which read no input another chunk reads, then into rows as
    // far as needed. (Measured alone on 2 threads: 28 x 28 x 240 3x3 took
    // 1.3x the row split's time split by channels; 7 x 7 x 1152 5x5, 0.7x.)
    let tasks = 4 * threads.count();
    let (chunk, chunks) = if rows >= 2 * tasks {
        (blocks, 1)
    } else {
        let chunk = chunk_blocks(g, isa_lanes(isa)).min(blocks).max(1);
        (chunk, blocks.div_ceil(chunk).max(1))
    };
    let row_parts = Split::new(rows, tasks.div_ceil(chunks), 1);
    threads.for_each_index(row_parts.count() * chunks, |task| {
        let (part, chunk_index) = (task / chunks, task % chunks);
        let first = chunk_index * chunk;
        run(&row_parts.get(part), first..(first + chunk).min(blocks));
    });
    Ok(())
}

/// Output rows `rows` of one image of a depthwise convolution or pool,
/// on the calling thread, from a band of its input: `args.x` holds input
/// rows `first_row..first_row + args.x.len() / (W * C)` (`[rows, W, C]`),
/// `args.out` (and `args.residual`) the output rows `rows` only. A banded
/// step computes a convolution's output a few rows at a time into such a
/// band, while it is in cache, and runs the window over it; the results
/// are those of [`window2d_nhwc`] bit for bit. `g.batch` is not read.
pub fn window2d_nhwc_band(
    isa: Isa,
    op: WindowOp,
    g: &WindowGeometry,
    args: NhwcWindowArgs<'_>,
    first_row: usize,
    rows: Range<usize>,
) -> Result<(), CodegenError> {
    validate_window(op, g, &args)?;
    let c = g.in_channels;
    let in_row = g.in_w * c;
    let row_len = g.out_w * c;
    if rows.end > g.out_h {
        return Err(shape_err(format!(
            "output rows {rows:?} of an image {} rows high",
            g.out_h
        )));
    }
    let held = if in_row == 0 {
        0
    } else {
        args.x.len() / in_row
    };
    if args.x.len() != held * in_row || first_row + held > g.in_h {
        return Err(shape_err(format!(
            "a band of {} f32 from input row {first_row} is not whole rows of {in_row} f32 inside {} rows",
            args.x.len(),
            g.in_h
        )));
    }
    let needed = input_rows_read(g, rows.clone());
    if !needed.is_empty() && (needed.start < first_row || needed.end > first_row + held) {
        return Err(shape_err(format!(
            "output rows {rows:?} read input rows {needed:?}, the band holds {first_row}..{}",
            first_row + held
        )));
    }
    let out_len = rows.len().checked_mul(row_len);
    check_len("the output rows", args.out.len(), out_len)?;
    if let Some(r) = args.residual {
        check_len("the residual rows", r.len(), out_len)?;
    }
    let source = InputRows {
        x: args.x.as_ptr(),
        first: first_row,
    };
    // SAFETY: checked above: every input row the output rows read is in
    // the band, the output and residual hold exactly those rows;
    // `validate_window` checked the taps and bias.
    let out = args.out.as_mut_ptr();
    let blocks = g.in_channels / isa_lanes(isa);
    unsafe { run_rows(isa, op, g, &args, source, rows, 0..blocks, out, 0) };
    Ok(())
}

/// The input rows that output rows `rows` of one image read (inside the
/// image; empty when they read only padding): the span from the lowest
/// row any of them reads to the highest. Every output row counts: with
/// dilation, a row whose first taps fall in the padding can start below
/// the row before it (3 taps 2 apart, one row of padding: output row 0
/// reads rows 1 and 3, row 1 reads rows 0, 2 and 4).
pub fn input_rows_read(g: &WindowGeometry, rows: Range<usize>) -> Range<usize> {
    rows.filter_map(|oy| {
        let ky = kernel_rows_inside(g, oy);
        let row = |ky: usize| oy * g.stride[0] + ky * g.dilation[0] - g.pad[0];
        (!ky.is_empty()).then(|| row(ky.start)..row(ky.end - 1) + 1)
    })
    .reduce(|a, b| a.start.min(b.start)..a.end.max(b.end))
    .unwrap_or(0..0)
}

/// Where a row job reads its input: `x` holds the image's rows from
/// `first` on.
#[derive(Clone, Copy)]
struct InputRows {
    x: *const f32,
    first: usize,
}

/// The channel blocks `blocks` (vectors of the tier's lanes; and the
/// channels past the last full vector when `blocks` ends with the last
/// one) of output rows `rows` of one image, into rows `at..` of `out`
/// (rows of `OW * C` f32), with the same rows of `args.residual`.
///
/// The rows run a chunk of channel blocks at a time ([`chunk_blocks`]):
/// the input rows and taps one chunk reads stay in L1 from one output row
/// to the next, where a whole row of every channel would not. Every value
/// is computed as it would be row by row: the order only changes which
/// values are in cache.
///
/// # Safety
/// `source` holds every input row `rows` read, `out` and `args.residual`
/// rows `at..at + rows.len()`, the taps and bias what `g` needs.
#[allow(clippy::too_many_arguments)]
unsafe fn run_rows(
    isa: Isa,
    op: WindowOp,
    g: &WindowGeometry,
    args: &NhwcWindowArgs<'_>,
    source: InputRows,
    rows: Range<usize>,
    blocks: Range<usize>,
    out: *mut f32,
    at: usize,
) {
    let row_len = g.out_w * g.in_channels;
    let epilogue = match args.post {
        None => Epilogue::InRegisters(Clamp::None),
        Some(PostActivation::Relu) => Epilogue::InRegisters(Clamp::Relu),
        Some(PostActivation::Relu6) => Epilogue::InRegisters(Clamp::Relu6),
        Some(_) => Epilogue::RowPass,
    };
    let all_blocks = g.in_channels / isa_lanes(isa);
    let chunk = chunk_blocks(g, isa_lanes(isa));
    let mut first_block = blocks.start;
    loop {
        let chunk_end = (first_block + chunk).min(blocks.end);
        for (i, oy) in rows.clone().enumerate() {
            let at = at + i;
            let job = RowJob {
                g,
                op,
                x: source.x,
                first_row: source.first,
                taps: args.taps.map_or(std::ptr::null(), <[f32]>::as_ptr),
                bias: args.bias.map(<[f32]>::as_ptr),
                oy,
                kernel_rows: kernel_rows_inside(g, oy),
                blocks: first_block..chunk_end,
                tail: chunk_end == all_blocks,
                // SAFETY: the caller's: `out` holds row `at`.
                out: unsafe { out.add(at * row_len) },
                epilogue,
                post: args.post,
                residual: args
                    .residual
                    .map(|res| &res[at * row_len..(at + 1) * row_len]),
            };
            // SAFETY: the caller's; a plan of a wide tier runs only on a
            // CPU with that tier's features (`Target::with_isa` never
            // raises the tier).
            unsafe {
                match isa {
                    Isa::Avx512 => row_avx512(&job),
                    Isa::Avx2 => row_avx2(&job),
                    Isa::Baseline => row::<Xmm, 8, 4, 2>(&job),
                }
            }
        }
        if chunk_end == blocks.end {
            break;
        }
        first_block = chunk_end;
    }
}

/// The f32 lanes of one vector of the tier's window kernels ([`Lanes`]).
fn isa_lanes(isa: Isa) -> usize {
    isa.vector_bits() / 32
}

/// The channel blocks (vectors of `lanes`) a chunk of [`run_rows`] holds:
/// as many as keep what one output row reads and the next one reads again
/// (the window's input rows and one more per row of stride, the taps, the
/// output row) within `L1_BUDGET`; at least two (on AVX2 one block is half
/// a cache line, which chunks of one would share; two were kept on
/// AVX-512 too, not measured against one).
fn chunk_blocks(g: &WindowGeometry, lanes: usize) -> usize {
    const L1_BUDGET: usize = 32 * 1024;
    let [kh, kw] = g.kernel;
    let vectors = (kh + g.stride[0])
        .saturating_mul(g.in_w)
        .saturating_add(kh.saturating_mul(kw))
        .saturating_add(g.out_w);
    let block_bytes = vectors.saturating_mul(lanes * 4).max(1);
    (L1_BUDGET / block_bytes).max(2)
}

/// The kernel rows `ky` whose input row `oy * sh + ky * dh - pt` lies
/// inside the image (a range: the input row grows with `ky`).
fn kernel_rows_inside(g: &WindowGeometry, oy: usize) -> Range<usize> {
    let inside = |ky: usize| {
        (oy * g.stride[0] + ky * g.dilation[0])
            .checked_sub(g.pad[0])
            .is_some_and(|iy| iy < g.in_h)
    };
    let first = (0..g.kernel[0]).find(|&ky| inside(ky));
    match first {
        Some(first) => {
            first
                ..(first..g.kernel[0])
                    .find(|&ky| !inside(ky))
                    .unwrap_or(g.kernel[0])
        }
        None => 0..0,
    }
}

#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
unsafe fn row_avx512(job: &RowJob<'_>) {
    row::<Zmm, 16, 8, 4>(job)
}

#[target_feature(enable = "avx2,fma")]
unsafe fn row_avx2(job: &RowJob<'_>) {
    row::<Ymm, 8, 4, 2>(job)
}

/// What follows the window's sum in a row.
#[derive(Clone, Copy)]
enum Epilogue {
    /// A clamp (or nothing), then the residual, on the accumulators.
    InRegisters(Clamp),
    /// Activation and residual over the finished row (`PostActivation::finish`).
    RowPass,
}

#[derive(Clone, Copy, PartialEq)]
enum Clamp {
    None,
    Relu,
    Relu6,
}

/// Some channels of one output row of one image.
struct RowJob<'a> {
    g: &'a WindowGeometry,
    op: WindowOp,
    /// The image's rows `first_row..` (`[rows, W, C]`).
    x: *const f32,
    first_row: usize,
    /// Depthwise: `[taps][C]`.
    taps: *const f32,
    bias: Option<*const f32>,
    oy: usize,
    /// The kernel rows inside the image for this output row.
    kernel_rows: Range<usize>,
    /// The full vectors of channels to compute (block `b`: channels
    /// `b * LANES..(b + 1) * LANES`) ...
    blocks: Range<usize>,
    /// ... and whether the channels past the last full vector too.
    tail: bool,
    /// The output row's `[OW, C]`.
    out: *mut f32,
    epilogue: Epilogue,
    post: Option<PostActivation>,
    /// The residual's row.
    residual: Option<&'a [f32]>,
}

const DEPTHWISE: u8 = 0;
const MAX: u8 = 1;
const AVG: u8 = 2;

/// A vector of f32 lanes of one tier and what the windows do with it.
/// Every method is inlined into the tier's `target_feature` function.
trait Lanes: Copy {
    const LANES: usize;
    /// The live lanes of a partial vector (the channels past the last
    /// full vector).
    type Part: Copy;
    unsafe fn part(live: usize) -> Self::Part;
    unsafe fn load(p: *const f32) -> Self;
    /// Reads the live lanes only (the others are 0).
    unsafe fn load_part(p: *const f32, part: Self::Part) -> Self;
    unsafe fn store(self, p: *mut f32);
    /// Writes the live lanes only.
    unsafe fn store_part(self, p: *mut f32, part: Self::Part);
    unsafe fn splat(v: f32) -> Self;
    /// `self + w * x`, fused on the tiers with FMA.
    unsafe fn mul_add(self, w: Self, x: Self) -> Self;
    unsafe fn add(self, x: Self) -> Self;
    unsafe fn div(self, x: Self) -> Self;
    /// `x` where it is NaN or greater, else `self` (NaN in either wins,
    /// as the interpreter's `nan_max`).
    unsafe fn max_nan(self, x: Self) -> Self;
    /// `lo` where `self < lo`, else `self` (NaN passes).
    unsafe fn raise_to(self, lo: Self) -> Self;
    /// `hi` where `self > hi`, else `self` (NaN passes).
    unsafe fn cap_at(self, hi: Self) -> Self;
    /// Every lane or none, by a run-time condition: a border group's
    /// column inside the image or not.
    type Keep: Copy;
    unsafe fn keep(inside: bool) -> Self::Keep;
    /// The vector at `p` where kept (nothing is read otherwise: `p` may
    /// then point anywhere), else 0.
    unsafe fn load_kept(p: *const f32, keep: Self::Keep) -> Self;
    /// `new` where kept, else `self`.
    unsafe fn kept(self, new: Self, keep: Self::Keep) -> Self;
}

/// AVX-512: 16 lanes, FMA, masked loads and stores.
#[derive(Clone, Copy)]
struct Zmm(__m512);

impl Lanes for Zmm {
    const LANES: usize = 16;
    type Part = __mmask16;
    #[inline(always)]
    unsafe fn part(live: usize) -> __mmask16 {
        ((1u32 << live) - 1) as __mmask16
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        Zmm(_mm512_loadu_ps(p))
    }
    #[inline(always)]
    unsafe fn load_part(p: *const f32, part: __mmask16) -> Self {
        Zmm(_mm512_maskz_loadu_ps(part, p))
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        _mm512_storeu_ps(p, self.0)
    }
    #[inline(always)]
    unsafe fn store_part(self, p: *mut f32, part: __mmask16) {
        _mm512_mask_storeu_ps(p, part, self.0)
    }
    #[inline(always)]
    unsafe fn splat(v: f32) -> Self {
        Zmm(_mm512_set1_ps(v))
    }
    #[inline(always)]
    unsafe fn mul_add(self, w: Self, x: Self) -> Self {
        Zmm(_mm512_fmadd_ps(w.0, x.0, self.0))
    }
    #[inline(always)]
    unsafe fn add(self, x: Self) -> Self {
        Zmm(_mm512_add_ps(self.0, x.0))
    }
    #[inline(always)]
    unsafe fn div(self, x: Self) -> Self {
        Zmm(_mm512_div_ps(self.0, x.0))
    }
    #[inline(always)]
    unsafe fn max_nan(self, x: Self) -> Self {
        // maxps returns its second operand unless the first is greater:
        // a NaN `self` stays, and a NaN `x` is blended in.
        let max = _mm512_max_ps(x.0, self.0);
        Zmm(_mm512_mask_blend_ps(
            _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(x.0, x.0),
            max,
            x.0,
        ))
    }
    #[inline(always)]
    unsafe fn raise_to(self, lo: Self) -> Self {
        Zmm(_mm512_max_ps(lo.0, self.0))
    }
    #[inline(always)]
    unsafe fn cap_at(self, hi: Self) -> Self {
        Zmm(_mm512_min_ps(hi.0, self.0))
    }
    type Keep = __mmask16;
    #[inline(always)]
    unsafe fn keep(inside: bool) -> __mmask16 {
        __mmask16::from(inside).wrapping_neg()
    }
    #[inline(always)]
    unsafe fn load_kept(p: *const f32, keep: __mmask16) -> Self {
        Zmm(_mm512_maskz_loadu_ps(keep, p))
    }
    #[inline(always)]
    unsafe fn kept(self, new: Self, keep: __mmask16) -> Self {
        Zmm(_mm512_mask_mov_ps(self.0, keep, new.0))
    }
}

/// AVX2 + FMA: 8 lanes.
#[derive(Clone, Copy)]
struct Ymm(__m256);

impl Lanes for Ymm {
    const LANES: usize = 8;
    /// All ones in the live lanes.
    type Part = __m256i;
    #[inline(always)]
    unsafe fn part(live: usize) -> __m256i {
        let lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        _mm256_cmpgt_epi32(_mm256_set1_epi32(live as i32), lane)
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        Ymm(_mm256_loadu_ps(p))
    }
    #[inline(always)]
    unsafe fn load_part(p: *const f32, part: __m256i) -> Self {
        Ymm(_mm256_maskload_ps(p, part))
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        _mm256_storeu_ps(p, self.0)
    }
    #[inline(always)]
    unsafe fn store_part(self, p: *mut f32, part: __m256i) {
        _mm256_maskstore_ps(p, part, self.0)
    }
    #[inline(always)]
    unsafe fn splat(v: f32) -> Self {
        Ymm(_mm256_set1_ps(v))
    }
    #[inline(always)]
    unsafe fn mul_add(self, w: Self, x: Self) -> Self {
        Ymm(_mm256_fmadd_ps(w.0, x.0, self.0))
    }
    #[inline(always)]
    unsafe fn add(self, x: Self) -> Self {
        Ymm(_mm256_add_ps(self.0, x.0))
    }
    #[inline(always)]
    unsafe fn div(self, x: Self) -> Self {
        Ymm(_mm256_div_ps(self.0, x.0))
    }
    #[inline(always)]
    unsafe fn max_nan(self, x: Self) -> Self {
        let max = _mm256_max_ps(x.0, self.0);
        Ymm(_mm256_blendv_ps(
            max,
            x.0,
            _mm256_cmp_ps::<_CMP_UNORD_Q>(x.0, x.0),
        ))
    }
    #[inline(always)]
    unsafe fn raise_to(self, lo: Self) -> Self {
        Ymm(_mm256_max_ps(lo.0, self.0))
    }
    #[inline(always)]
    unsafe fn cap_at(self, hi: Self) -> Self {
        Ymm(_mm256_min_ps(hi.0, self.0))
    }
    /// All ones where kept.
    type Keep = __m256i;
    #[inline(always)]
    unsafe fn keep(inside: bool) -> __m256i {
        _mm256_set1_epi32(-i32::from(inside))
    }
    #[inline(always)]
    unsafe fn load_kept(p: *const f32, keep: __m256i) -> Self {
        Ymm(_mm256_maskload_ps(p, keep))
    }
    #[inline(always)]
    unsafe fn kept(self, new: Self, keep: __m256i) -> Self {
        Ymm(_mm256_blendv_ps(self.0, new.0, _mm256_castsi256_ps(keep)))
    }
}

/// The baseline (SSE2): 4 lanes, multiply then add (two roundings, as the
/// baseline's other kernels); partial vectors go through a copy on the stack.
#[derive(Clone, Copy)]
struct Xmm(__m128);

impl Lanes for Xmm {
    const LANES: usize = 4;
    /// The count of live lanes.
    type Part = usize;
    #[inline(always)]
    unsafe fn part(live: usize) -> usize {
        live
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        Xmm(_mm_loadu_ps(p))
    }
    #[inline(always)]
    unsafe fn load_part(p: *const f32, live: usize) -> Self {
        let mut lanes = [0.0f32; 4];
        std::ptr::copy_nonoverlapping(p, lanes.as_mut_ptr(), live);
        Xmm(_mm_loadu_ps(lanes.as_ptr()))
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        _mm_storeu_ps(p, self.0)
    }
    #[inline(always)]
    unsafe fn store_part(self, p: *mut f32, live: usize) {
        let mut lanes = [0.0f32; 4];
        _mm_storeu_ps(lanes.as_mut_ptr(), self.0);
        std::ptr::copy_nonoverlapping(lanes.as_ptr(), p, live);
    }
    #[inline(always)]
    unsafe fn splat(v: f32) -> Self {
        Xmm(_mm_set1_ps(v))
    }
    #[inline(always)]
    unsafe fn mul_add(self, w: Self, x: Self) -> Self {
        Xmm(_mm_add_ps(self.0, _mm_mul_ps(w.0, x.0)))
    }
    #[inline(always)]
    unsafe fn add(self, x: Self) -> Self {
        Xmm(_mm_add_ps(self.0, x.0))
    }
    #[inline(always)]
    unsafe fn div(self, x: Self) -> Self {
        Xmm(_mm_div_ps(self.0, x.0))
    }
    #[inline(always)]
    unsafe fn max_nan(self, x: Self) -> Self {
        let max = _mm_max_ps(x.0, self.0);
        let nan = _mm_cmpunord_ps(x.0, x.0);
        Xmm(_mm_or_ps(_mm_and_ps(nan, x.0), _mm_andnot_ps(nan, max)))
    }
    #[inline(always)]
    unsafe fn raise_to(self, lo: Self) -> Self {
        Xmm(_mm_max_ps(lo.0, self.0))
    }
    #[inline(always)]
    unsafe fn cap_at(self, hi: Self) -> Self {
        Xmm(_mm_min_ps(hi.0, self.0))
    }
    /// The condition, and all ones where kept.
    type Keep = (bool, __m128);
    #[inline(always)]
    unsafe fn keep(inside: bool) -> (bool, __m128) {
        (inside, _mm_castsi128_ps(_mm_set1_epi32(-i32::from(inside))))
    }
    #[inline(always)]
    unsafe fn load_kept(p: *const f32, (inside, _): (bool, __m128)) -> Self {
        // SSE2 has no masked load: a column outside reads zeros instead.
        static ZEROS: [f32; 4] = [0.0; 4];
        Xmm(_mm_loadu_ps(if inside { p } else { ZEROS.as_ptr() }))
    }
    #[inline(always)]
    unsafe fn kept(self, new: Self, (_, keep): (bool, __m128)) -> Self {
        Xmm(_mm_or_ps(
            _mm_and_ps(keep, new.0),
            _mm_andnot_ps(keep, self.0),
        ))
    }
}

/// A full vector, or the live lanes of a partial one (`PART`).
#[inline(always)]
unsafe fn load<V: Lanes, const PART: bool>(p: *const f32, part: V::Part) -> V {
    if PART {
        V::load_part(p, part)
    } else {
        V::load(p)
    }
}

/// Writes a full vector, or the live lanes of a partial one (`PART`).
#[inline(always)]
unsafe fn store<V: Lanes, const PART: bool>(v: V, p: *mut f32, part: V::Part) {
    if PART {
        v.store_part(p, part)
    } else {
        v.store(p)
    }
}

/// One tap's contribution to an accumulator.
#[inline(always)]
unsafe fn accumulate<V: Lanes, const OP: u8>(acc: V, w: V, x: V) -> V {
    match OP {
        DEPTHWISE => acc.mul_add(w, x),
        MAX => acc.max_nan(x),
        _ => acc.add(x),
    }
}

/// Where one kernel row of a group reads: `x` is the group's first input
/// column (possibly outside the image, so only ever offset by wrapping
/// arithmetic), columns `pixel` f32 apart, of which `inside` (relative to
/// the first) lie in the image; `w` is the row's first tap, taps `pixel`
/// f32 apart too (`[taps][C]`).
#[derive(Clone, Copy)]
struct KernelRow {
    x: *const f32,
    w: *const f32,
    pixel: usize,
    inside_from: usize,
    inside_to: usize,
}

impl KernelRow {
    #[inline(always)]
    fn inside(&self, column: usize) -> bool {
        column >= self.inside_from && column < self.inside_to
    }
}

/// How a group of output pixels reads its input columns: output pixel `p`
/// reads, for tap `kx`, the group's column `p * stride + kx * dilation`.
trait Columns: Copy {
    fn width(self) -> usize;
    fn stride(self) -> usize;
    fn dilation(self) -> usize;
    /// One kernel row's taps into `P` accumulators, each accumulator's
    /// taps in ascending `kx`; `CHECKED`: skipping the columns outside the
    /// image (a border group), else every column is inside.
    unsafe fn kernel_row<
        V: Lanes,
        const OP: u8,
        const PART: bool,
        const CHECKED: bool,
        const P: usize,
    >(
        self,
        acc: &mut [V; P],
        row: KernelRow,
        part: V::Part,
    );
}

/// `$body` once for each `$j` in `0..40`, `$j` a constant in each copy (a
/// loop the compiler must unroll for the accumulators' indices to be
/// constants; copies past the group's span fold away).
macro_rules! unrolled_40 {
    ($j:ident, $body:block) => {
        unrolled_40!(@each $j, $body, 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19
            20 21 22 23 24 25 26 27 28 29 30 31 32 33 34 35 36 37 38 39)
    };
    (@each $j:ident, $body:block, $($n:literal)*) => {
        $({
            let $j: usize = $n;
            $body
        })*
    };
}

/// A window `KW` wide, stride `SW`, no dilation, known at compile time:
/// the kernel row walks the group's `(P - 1) * SW + KW` input columns once,
/// each loaded vector feeding every (pixel, tap) pair that reads it.
#[derive(Clone, Copy)]
struct Fixed<const KW: usize, const SW: usize>;

impl<const KW: usize, const SW: usize> Columns for Fixed<KW, SW> {
    fn width(self) -> usize {
        KW
    }
    fn stride(self) -> usize {
        SW
    }
    fn dilation(self) -> usize {
        1
    }
    #[inline(always)]
    unsafe fn kernel_row<
        V: Lanes,
        const OP: u8,
        const PART: bool,
        const CHECKED: bool,
        const P: usize,
    >(
        self,
        acc: &mut [V; P],
        row: KernelRow,
        part: V::Part,
    ) {
        const {
            assert!(
                P >= 1 && (P - 1) * SW + KW <= 40,
                "the column loop unrolls 40"
            );
            // Channel tails run on `AnyColumns`.
            assert!(!PART || !CHECKED);
        };
        let taps: [V; KW] = std::array::from_fn(|kx| {
            if OP == DEPTHWISE {
                load::<V, PART>(row.w.add(kx * row.pixel), part)
            } else {
                V::splat(0.0)
            }
        });
        let span = (P - 1) * SW + KW;
        unrolled_40!(j, {
            if j < span {
                // A border group masks its columns outside the image
                // instead of branching around them: branches between the
                // multiply-adds would split the accumulators' live ranges
                // into blocks and spill them.
                let keep = V::keep(!CHECKED || row.inside(j));
                let at = row.x.wrapping_add(j * row.pixel);
                let x = if CHECKED {
                    V::load_kept(at, keep)
                } else {
                    load::<V, PART>(at, part)
                };
                for (kx, &w) in taps.iter().enumerate() {
                    // Pixel p reads column j through tap kx when j = p * SW + kx.
                    if j >= kx && (j - kx) % SW == 0 && (j - kx) / SW < P {
                        let p = (j - kx) / SW;
                        let sum = accumulate::<V, OP>(acc[p], w, x);
                        acc[p] = if CHECKED { acc[p].kept(sum, keep) } else { sum };
                    }
                }
            }
        });
    }
}

/// Any window: width, stride and dilation at run time, one load per tap.
#[derive(Clone, Copy)]
struct AnyColumns {
    width: usize,
    stride: usize,
    dilation: usize,
}

impl Columns for AnyColumns {
    fn width(self) -> usize {
        self.width
    }
    fn stride(self) -> usize {
        self.stride
    }
    fn dilation(self) -> usize {
        self.dilation
    }
    #[inline(always)]
    unsafe fn kernel_row<
        V: Lanes,
        const OP: u8,
        const PART: bool,
        const CHECKED: bool,
        const P: usize,
    >(
        self,
        acc: &mut [V; P],
        row: KernelRow,
        part: V::Part,
    ) {
        for kx in 0..self.width {
            let w = if OP == DEPTHWISE {
                load::<V, PART>(row.w.add(kx * row.pixel), part)
            } else {
                V::splat(0.0)
            };
            for (p, a) in acc.iter_mut().enumerate() {
                let j = p * self.stride + kx * self.dilation;
                if !CHECKED || row.inside(j) {
                    let x = load::<V, PART>(row.x.wrapping_add(j * row.pixel), part);
                    *a = accumulate::<V, OP>(*a, w, x);
                }
            }
        }
    }
}

/// The job's channels of the row: the column class picked once, then
/// groups of `P1`, `P2`, `P3` pixels; then the pass of the other
/// activations over those channels of every pixel.
#[inline(always)]
unsafe fn row<V: Lanes, const P1: usize, const P2: usize, const P3: usize>(job: &RowJob<'_>) {
    match job.op {
        WindowOp::Depthwise => row_op::<V, P1, P2, P3, DEPTHWISE>(job),
        WindowOp::Max => row_op::<V, P1, P2, P3, MAX>(job),
        WindowOp::Avg { .. } => row_op::<V, P1, P2, P3, AVG>(job),
    }
    if let Epilogue::RowPass = job.epilogue {
        let c = job.g.in_channels;
        let from = job.blocks.start * V::LANES;
        let to = if job.tail {
            c
        } else {
            job.blocks.end * V::LANES
        };
        for pixel in (0..job.g.out_w).map(|ox| ox * c) {
            let values = std::slice::from_raw_parts_mut(job.out.add(pixel + from), to - from);
            let residual = job.residual.map(|r| &r[pixel + from..pixel + to]);
            PostActivation::finish(job.post, values, residual);
        }
    }
}

#[inline(always)]
unsafe fn row_op<V: Lanes, const P1: usize, const P2: usize, const P3: usize, const OP: u8>(
    job: &RowJob<'_>,
) {
    let g = job.g;
    match (g.kernel[1], g.stride[1], g.dilation[1]) {
        (3, 1, 1) => row_groups::<V, P1, P2, P3, OP, _>(job, Fixed::<3, 1>),
        (3, 2, 1) => row_groups::<V, P1, P2, P3, OP, _>(job, Fixed::<3, 2>),
        (5, 1, 1) => row_groups::<V, P1, P2, P3, OP, _>(job, Fixed::<5, 1>),
        (5, 2, 1) => row_groups::<V, P1, P2, P3, OP, _>(job, Fixed::<5, 2>),
        (width, stride, dilation) => row_groups::<V, P1, P2, P3, OP, _>(
            job,
            AnyColumns {
                width,
                stride,
                dilation,
            },
        ),
    }
}

/// The row's output pixels in groups of `P1`, then at most one of `P2`;
/// then, with more than `P3` left, one group of `P2` ending at the row's
/// end (overlapping pixels already done), else at most one of `P3` and
/// the rest in one group of `P3` ending at the row's end; a row narrower
/// than `P3` pixel by pixel. (A 14-wide row on AVX-512: 8 + 8, not
/// 8 + 4 + 4: fewer groups load each tap and input column for more pixels.
/// A wide group ending at the row's end is a border group, whose masked
/// columns cost more: `P1` is not used so.)
#[inline(always)]
unsafe fn row_groups<
    V: Lanes,
    const P1: usize,
    const P2: usize,
    const P3: usize,
    const OP: u8,
    C: Columns,
>(
    job: &RowJob<'_>,
    columns: C,
) {
    let out_w = job.g.out_w;
    let mut ox = 0;
    while ox + P1 <= out_w {
        channel_blocks::<V, P1, OP, C>(job, columns, ox);
        ox += P1;
    }
    if ox + P2 <= out_w {
        channel_blocks::<V, P2, OP, C>(job, columns, ox);
        ox += P2;
    }
    if ox == out_w {
        return;
    }
    if out_w - ox > P3 && out_w >= P2 {
        return channel_blocks::<V, P2, OP, C>(job, columns, out_w - P2);
    }
    if ox + P3 <= out_w {
        channel_blocks::<V, P3, OP, C>(job, columns, ox);
        ox += P3;
    }
    if ox < out_w {
        if out_w >= P3 {
            channel_blocks::<V, P3, OP, C>(job, columns, out_w - P3);
        } else {
            for ox in ox..out_w {
                channel_blocks::<V, 1, OP, C>(job, columns, ox);
            }
        }
    }
}

/// Every channel of output pixels `ox0..ox0 + P`: the full vectors, then
/// the channels past them pixel by pixel with a partial vector.
#[inline(always)]
unsafe fn channel_blocks<V: Lanes, const P: usize, const OP: u8, C: Columns>(
    job: &RowJob<'_>,
    columns: C,
    ox0: usize,
) {
    let c = job.g.in_channels;
    if !job.blocks.is_empty() {
        group::<V, P, OP, false, C>(job, columns, ox0, job.blocks.clone(), V::part(V::LANES));
    }
    let full_blocks = c / V::LANES;
    let full = full_blocks * V::LANES;
    if job.tail && full < c {
        let part = V::part(c - full);
        let any = AnyColumns {
            width: columns.width(),
            stride: columns.stride(),
            dilation: columns.dilation(),
        };
        for ox in ox0..ox0 + P {
            group::<V, 1, OP, true, AnyColumns>(job, any, ox, full_blocks..full_blocks + 1, part);
        }
    }
}

/// Output pixels `ox0..ox0 + P` of the channel blocks `blocks` (block `b`:
/// channels `b * LANES..(b + 1) * LANES`, the live lanes of `part` when
/// `PART`): per block, accumulate every kernel row inside the image, then
/// average, clamp, add the residual and store.
///
/// Where the group reads (its columns inside the image, its rows'
/// addresses) is worked out once for all the blocks: a narrow image has
/// few pixels per group and many channels, and per block that set-up cost
/// as much as the multiply-adds.
#[inline(always)]
unsafe fn group<V: Lanes, const P: usize, const OP: u8, const PART: bool, C: Columns>(
    job: &RowJob<'_>,
    columns: C,
    ox0: usize,
    blocks: Range<usize>,
    part: V::Part,
) {
    let g = job.g;
    let c = g.in_channels;
    // The group's first input column, and its columns inside the image.
    // Sizes fit isize: the tensors were checked to.
    let first = (ox0 * g.stride[1]) as isize - g.pad[1] as isize;
    let span = (P - 1) * g.stride[1] + (g.kernel[1].max(1) - 1) * g.dilation[1] + 1;
    let inside_from = (-first).clamp(0, span as isize) as usize;
    let inside_to = (g.in_w as isize - first).clamp(inside_from as isize, span as isize) as usize;
    let unchecked = inside_from == 0 && inside_to == span;
    // The first kernel row inside the image: its first column, channel 0
    // (outside the image when the group starts in the padding, so only
    // ever offset by wrapping arithmetic), and its first tap; the next
    // kernel rows follow `x_step` and `w_step` f32 further.
    let kernel_rows = job.kernel_rows.len();
    let ky0 = job.kernel_rows.start;
    let x0 = if kernel_rows == 0 {
        job.x
    } else {
        let iy = job.oy * g.stride[0] + ky0 * g.dilation[0] - g.pad[0];
        job.x
            .add((iy - job.first_row) * g.in_w * c)
            .wrapping_offset(first * c as isize)
    };
    let x_step = g.dilation[0] * g.in_w * c;
    let w0 = job.taps.wrapping_add(ky0 * g.kernel[1] * c);
    let w_step = g.kernel[1] * c;
    let residual = match job.epilogue {
        Epilogue::InRegisters(_) => job.residual.map(<[f32]>::as_ptr),
        Epilogue::RowPass => None,
    };
    // The clamp as bounds, infinite where there is none (they then change
    // nothing, NaN included): the store loop has no branch per pixel, so
    // it unrolls and the sums stay in registers (with a branch, the 16
    // sums of an AVX-512 group went through the stack).
    let (lo, hi) = match job.epilogue {
        Epilogue::InRegisters(Clamp::Relu) => (0.0, f32::INFINITY),
        Epilogue::InRegisters(Clamp::Relu6) => (0.0, 6.0),
        _ => (f32::NEG_INFINITY, f32::INFINITY),
    };
    let (lo, hi) = (V::splat(lo), V::splat(hi));
    for block in blocks {
        let c0 = block * V::LANES;
        let init = match OP {
            DEPTHWISE => match job.bias {
                Some(b) => load::<V, PART>(b.add(c0), part),
                None => V::splat(0.0),
            },
            MAX => V::splat(f32::NEG_INFINITY),
            _ => V::splat(0.0),
        };
        let mut acc = [init; P];
        let row = |i: usize| KernelRow {
            x: x0.wrapping_add(i * x_step + c0),
            w: w0.wrapping_add(i * w_step + c0),
            pixel: c,
            inside_from,
            inside_to,
        };
        if unchecked {
            for i in 0..kernel_rows {
                columns.kernel_row::<V, OP, PART, false, P>(&mut acc, row(i), part);
            }
        } else {
            for i in 0..kernel_rows {
                columns.kernel_row::<V, OP, PART, true, P>(&mut acc, row(i), part);
            }
        }
        let finish = |p: usize, a: V| {
            let a = if OP == AVG {
                a.div(V::splat(window_count(
                    job,
                    columns,
                    p,
                    inside_from..inside_to,
                )))
            } else {
                a
            };
            a.raise_to(lo).cap_at(hi)
        };
        match residual {
            Some(r) => {
                for (p, &a) in acc.iter().enumerate() {
                    let at = (ox0 + p) * c + c0;
                    let sum = finish(p, a).add(load::<V, PART>(r.add(at), part));
                    store::<V, PART>(sum, job.out.add(at), part);
                }
            }
            None => {
                for (p, &a) in acc.iter().enumerate() {
                    let at = (ox0 + p) * c + c0;
                    store::<V, PART>(finish(p, a), job.out.add(at), part);
                }
            }
        }
    }
}

/// The divisor of pixel `p` of a group in an average pool: the whole
/// window with `count_include_pad`, else its taps inside the image (0 when
/// none is: 0 / 0 = NaN, as the interpreter).
#[inline(always)]
fn window_count<C: Columns>(job: &RowJob<'_>, columns: C, p: usize, inside: Range<usize>) -> f32 {
    let WindowOp::Avg { count_include_pad } = job.op else {
        unreachable!("only average pools divide")
    };
    let [kh, kw] = job.g.kernel;
    if count_include_pad {
        return (kh * kw) as f32;
    }
    let columns_inside = (0..kw)
        .filter(|kx| inside.contains(&(p * columns.stride() + kx * columns.dilation())))
        .count();
    (job.kernel_rows.len() * columns_inside) as f32
}
