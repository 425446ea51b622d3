//! Depthwise convolution, max and average pooling over NHWC tensors
//! (`[N, H, W, C]` in, `[N, OH, OW, C]` out), vectorised across channels.
//!
//! In NHWC one pixel's channels are contiguous, so every tap of a window
//! is a full-width vector load for a block of channels, whatever the
//! stride or dilation. Per output row and per block of channels (one
//! vector of the tier: 16 lanes on AVX-512, 8 on AVX2 + FMA, 4 on the
//! baseline; the channels past the last full block in blocks of 8, 4, 2
//! and 1), the kernel sweeps the row's output pixels in groups of `P`
//! (8, 6, 4 per tier): `P` accumulators stay in registers while each tap's
//! weight vector is loaded once and feeds `P` multiply-adds. Interior
//! pixels (every tap of the window inside the input) run without bounds
//! checks; border pixels run one at a time with each tap checked, and
//! input rows outside the image are skipped for the whole output row.
//! After the row, activation and residual run over it while it is in L1.
//!
//! Depthwise taps are read as `[kh * kw][C]` (one vector per tap and
//! channel block): [`pack_depthwise_taps`] lays the `[C, 1, kh, kw]`
//! weights out so, once when the model is compiled (or per run when the
//! weights are not constants).
//!
//! Like `conv::window2d`, this is Rust compiled once per tier (AVX-512 /
//! AVX2 + FMA with `target_feature`, plain SSE2 for the baseline) whose
//! fixed-size channel loops LLVM turns into full-width vector code; the
//! iced-x86 assembler the GEMM kernels use was not needed for the loop
//! shape here (see the report in BENCHMARKS.md for the speed reached).
//!
//! Every output value is one chain in a fixed order (bias, then taps by
//! rows and columns), computed by one task, and tasks split the output
//! rows of every image: results are bitwise identical for any thread
//! count within a tier.
//!
//! Sizes: [`window2d_nhwc`] checks every slice against the geometry (with
//! checked arithmetic) once per call; the loops then read through raw
//! pointers at offsets the geometry bounds (interior pixels by
//! construction of the interior range, border pixels by a check per tap).

use super::conv::{valid_range, PostActivation, WindowGeometry, WindowOp};
use super::target::Isa;
use super::threads::{split_range, SharedMut, Threads};
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
    let out = SharedMut(args.out.as_mut_ptr());
    let (x, taps, bias, residual, post) = (args.x, args.taps, args.bias, args.residual, args.post);
    let run = |range: &std::ops::Range<usize>| {
        for r in range.clone() {
            let (n, oy) = (r / g.out_h, r % g.out_h);
            let image = g.in_h * g.in_w * g.in_channels;
            let job = RowJob {
                g,
                op,
                x: x[n * image..(n + 1) * image].as_ptr(),
                taps: taps.map_or(std::ptr::null(), <[f32]>::as_ptr),
                bias: bias.map(<[f32]>::as_ptr),
                oy,
                // SAFETY: row `r` of the output (`rows * row_len` f32,
                // checked by `validate`) is written by this task alone:
                // task ranges are disjoint, `out` is borrowed for the call.
                out: unsafe { out.get().add(r * row_len) },
                row_len,
                post,
                residual: residual.map(|res| &res[r * row_len..(r + 1) * row_len]),
            };
            // SAFETY: `validate` checked every operand against `g`; a plan
            // of a wide tier runs only on a CPU with that tier's features
            // (`Target::with_isa` never raises the tier).
            unsafe {
                match isa {
                    Isa::Avx512 => row_avx512(&job),
                    Isa::Avx2 => row_avx2(&job),
                    Isa::Baseline => row_all_widths::<4, 4, false>(&job),
                }
            }
        }
    };
    if threads.count() == 1 {
        run(&(0..rows));
    } else {
        threads.for_each(&split_range(rows, 4 * threads.count(), 1), run);
    }
    Ok(())
}

#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
unsafe fn row_avx512(job: &RowJob<'_>) {
    row_all_widths::<16, 8, true>(job)
}

#[target_feature(enable = "avx2,fma")]
unsafe fn row_avx2(job: &RowJob<'_>) {
    row_all_widths::<8, 6, true>(job)
}

/// One output row of one image.
struct RowJob<'a> {
    g: &'a WindowGeometry,
    op: WindowOp,
    /// The image's `[H, W, C]`.
    x: *const f32,
    /// Depthwise: `[taps][C]`.
    taps: *const f32,
    bias: Option<*const f32>,
    oy: usize,
    /// The output row's `[OW, C]`, `row_len` f32.
    out: *mut f32,
    row_len: usize,
    post: Option<PostActivation>,
    /// The residual's row.
    residual: Option<&'a [f32]>,
}

const DEPTHWISE: u8 = 0;
const MAX: u8 = 1;
const AVG: u8 = 2;

/// Every channel of the row: full blocks of `CB`, the rest in blocks of
/// 8, 4, 2, 1 (those below `CB`); then activation and residual.
#[inline(always)]
unsafe fn row_all_widths<const CB: usize, const P: usize, const FMA: bool>(job: &RowJob<'_>) {
    match job.op {
        WindowOp::Depthwise => row_op::<CB, P, FMA, DEPTHWISE>(job),
        WindowOp::Max => row_op::<CB, P, FMA, MAX>(job),
        WindowOp::Avg { .. } => row_op::<CB, P, FMA, AVG>(job),
    }
    if job.post.is_some() || job.residual.is_some() {
        let row = std::slice::from_raw_parts_mut(job.out, job.row_len);
        PostActivation::finish(job.post, row, job.residual);
    }
}

#[inline(always)]
unsafe fn row_op<const CB: usize, const P: usize, const FMA: bool, const OP: u8>(job: &RowJob<'_>) {
    let c = job.g.in_channels;
    let full = c / CB * CB;
    let mut c0 = 0;
    while c0 < full {
        channel_block::<CB, P, FMA, OP>(job, c0);
        c0 += CB;
    }
    let rest = c - full;
    if CB > 8 && rest & 8 != 0 {
        channel_block::<8, P, FMA, OP>(job, c0);
        c0 += 8;
    }
    if CB > 4 && rest & 4 != 0 {
        channel_block::<4, P, FMA, OP>(job, c0);
        c0 += 4;
    }
    if CB > 2 && rest & 2 != 0 {
        channel_block::<2, P, FMA, OP>(job, c0);
        c0 += 2;
    }
    if CB > 1 && rest & 1 != 0 {
        channel_block::<1, P, FMA, OP>(job, c0);
    }
}

/// Channels `c0..c0 + CB` of every output pixel of the row.
#[inline(always)]
unsafe fn channel_block<const CB: usize, const P: usize, const FMA: bool, const OP: u8>(
    job: &RowJob<'_>,
    c0: usize,
) {
    let g = job.g;
    let [_, kw] = g.kernel;
    let (sw, dw, pl) = (g.stride[1], g.dilation[1], g.pad[1]);
    // Interior: every column tap inside the input (the first tap's lower
    // bound, the last tap's upper bound).
    let lo = valid_range(0, pl, sw, g.in_w, g.out_w).0;
    let hi = valid_range((kw.max(1) - 1) * dw, pl, sw, g.in_w, g.out_w).1;
    let (lo, hi) = if lo < hi {
        (lo, hi)
    } else {
        (g.out_w, g.out_w)
    };
    let init = init_vector::<CB, OP>(job, c0);
    if hi - lo < P {
        // Too narrow an interior for a group (small planes): the whole
        // row in checked groups.
        span::<CB, P, FMA, OP, true>(job, c0, 0, g.out_w, &init);
        return;
    }
    span::<CB, P, FMA, OP, true>(job, c0, 0, lo, &init);
    span::<CB, P, FMA, OP, false>(job, c0, lo, hi, &init);
    span::<CB, P, FMA, OP, true>(job, c0, hi, g.out_w, &init);
}

/// Output pixels `from..to` in groups of `P`, then of 4, 2 and 1 (those
/// below `P`).
#[inline(always)]
unsafe fn span<
    const CB: usize,
    const P: usize,
    const FMA: bool,
    const OP: u8,
    const CHECKED: bool,
>(
    job: &RowJob<'_>,
    c0: usize,
    from: usize,
    to: usize,
    init: &[f32; CB],
) {
    let mut ox = from;
    while ox + P <= to {
        pixels::<CB, P, FMA, OP, CHECKED>(job, c0, ox, init);
        ox += P;
    }
    if P > 4 && ox + 4 <= to {
        pixels::<CB, 4, FMA, OP, CHECKED>(job, c0, ox, init);
        ox += 4;
    }
    if P > 2 && ox + 2 <= to {
        pixels::<CB, 2, FMA, OP, CHECKED>(job, c0, ox, init);
        ox += 2;
    }
    if P > 1 && ox < to {
        pixels::<CB, 1, FMA, OP, CHECKED>(job, c0, ox, init);
    }
}

#[inline(always)]
unsafe fn load<const CB: usize>(p: *const f32) -> [f32; CB] {
    p.cast::<[f32; CB]>().read_unaligned()
}

#[inline(always)]
unsafe fn init_vector<const CB: usize, const OP: u8>(job: &RowJob<'_>, c0: usize) -> [f32; CB] {
    match OP {
        DEPTHWISE => match job.bias {
            Some(b) => load::<CB>(b.add(c0)),
            None => [0.0; CB],
        },
        MAX => [f32::NEG_INFINITY; CB],
        _ => [0.0; CB],
    }
}

/// Output pixels `ox0..ox0 + P` (stride apart in the input), channels
/// `c0..c0 + CB`. `CHECKED`: border pixels, each pixel's column taps
/// checked against the input; otherwise every tap is inside.
#[inline(always)]
unsafe fn pixels<
    const CB: usize,
    const P: usize,
    const FMA: bool,
    const OP: u8,
    const CHECKED: bool,
>(
    job: &RowJob<'_>,
    c0: usize,
    ox0: usize,
    init: &[f32; CB],
) {
    let g = job.g;
    let c = g.in_channels;
    let [kh, kw] = g.kernel;
    let [sh, sw] = g.stride;
    let [dh, dw] = g.dilation;
    let [pt, pl] = g.pad;
    let mut acc = [*init; P];
    let mut rows_in = 0usize;
    // Checked: the taps of each pixel's columns inside the input (counted
    // on the first row inside).
    let mut cols_in = [0usize; P];
    for ky in 0..kh {
        let iy = (job.oy * sh + ky * dh).wrapping_sub(pt);
        // Above or below the image ("negative" rows wrap to huge values).
        if iy >= g.in_h {
            continue;
        }
        rows_in += 1;
        let x_row = job.x.add(iy * g.in_w * c + c0);
        for kx in 0..kw {
            // Pixel p reads column ix + p * sw: "negative" columns wrap,
            // so pointers are formed only for columns checked inside.
            let ix = (ox0 * sw + kx * dw).wrapping_sub(pl);
            let inside = |p: usize| !CHECKED || ix.wrapping_add(p * sw) < g.in_w;
            if CHECKED && rows_in == 1 {
                for (p, n) in cols_in.iter_mut().enumerate() {
                    *n += usize::from(inside(p));
                }
            }
            let xp = |p: usize| x_row.wrapping_add(ix.wrapping_add(p * sw).wrapping_mul(c));
            match OP {
                DEPTHWISE => {
                    let w = load::<CB>(job.taps.add((ky * kw + kx) * c + c0));
                    for (p, a) in acc.iter_mut().enumerate() {
                        if !inside(p) {
                            continue;
                        }
                        let v = load::<CB>(xp(p));
                        for l in 0..CB {
                            a[l] = if FMA {
                                w[l].mul_add(v[l], a[l])
                            } else {
                                a[l] + w[l] * v[l]
                            };
                        }
                    }
                }
                MAX => {
                    for (p, a) in acc.iter_mut().enumerate() {
                        if !inside(p) {
                            continue;
                        }
                        let v = load::<CB>(xp(p));
                        for l in 0..CB {
                            // NaN wins, as the interpreter's nan_max.
                            if v[l].is_nan() || v[l] > a[l] {
                                a[l] = v[l];
                            }
                        }
                    }
                }
                _ => {
                    for (p, a) in acc.iter_mut().enumerate() {
                        if !inside(p) {
                            continue;
                        }
                        let v = load::<CB>(xp(p));
                        for l in 0..CB {
                            a[l] += v[l];
                        }
                    }
                }
            }
        }
    }
    if OP == AVG {
        let WindowOp::Avg { count_include_pad } = job.op else {
            unreachable!("OP follows job.op")
        };
        for (a, &cols) in acc.iter_mut().zip(&cols_in) {
            let count = if count_include_pad {
                kh * kw
            } else if CHECKED {
                // No row inside counts no column either: 0 / 0 = NaN, as the interpreter.
                rows_in * cols
            } else {
                rows_in * kw
            };
            let count = count as f32;
            for v in a.iter_mut() {
                *v /= count;
            }
        }
    }
    for (p, a) in acc.iter().enumerate() {
        job.out
            .add((ox0 + p) * c + c0)
            .cast::<[f32; CB]>()
            .write_unaligned(*a);
    }
}
