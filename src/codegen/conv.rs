//! Convolution and pooling over NCHW tensors.
//!
//! - [`conv2d_gemm`]: a convolution as one GEMM per image and group on the
//!   plan tier's GEMM kernels: `out[O_g, P] = W[O_g, K] @ patches[K, P]`
//!   with `K = C_g * kh * kw` and `P = out_h * out_w` (NCHW puts each
//!   output channel's pixels in one row). The weights are the left operand
//!   (laid out once, when the plan is built, with each channel's bias as
//!   an extra column); the patches are packed straight into the GEMM's B
//!   panels (`PackedBRef::pack_rows_into_for`, with a row of ones meeting
//!   the bias column), never into an im2col matrix. The bias thus sits in
//!   every output's FMA chain, and the GEMM epilogue applies the
//!   activation and residual.
//! - [`window2d`]: depthwise convolution (one input channel per group),
//!   max and average pooling, as one loop nest over each output plane,
//!   vectorised along the output width: in NCHW, a channel's taps at one
//!   row are contiguous (stride 1) along W, while vectorising across
//!   channels would need a channel-blocked layout (a layout pass) that the
//!   graph does not have. It is Rust compiled three times, once per tier
//!   (`target_feature` AVX-512 / AVX2 + FMA, and plain SSE2 for the
//!   baseline), so each tier gets its width and its FMA rounding.
//!
//! The plan validates every size (`ir::bind` checked the shapes, the plan
//! builds the geometry from them); these drivers check the slice lengths
//! against the geometry once per call, and the loops index slices. The
//! only raw pointer is the window kernel's output, split into disjoint
//! planes across threads.

use crate::codegen::gemm::{LeftOperand, StridedGemmArgs};
use crate::codegen::target::Isa;
use crate::codegen::threads::{split_range, SharedMut, Threads};
use crate::codegen::{
    CodegenError, GemmArgs, GemmId, KernelLibrary, MatrixRef, PackLayout, PackedB, PackedBRef,
};
use crate::ir::UnaryOp;
use std::ops::Range;

/// The sizes of a 2-D window op over an NCHW input, all validated by the plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct WindowGeometry {
    pub batch: usize,
    pub in_channels: usize,
    pub in_h: usize,
    pub in_w: usize,
    pub out_channels: usize,
    pub out_h: usize,
    pub out_w: usize,
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    pub dilation: [usize; 2],
    /// Padding before the input: top, left.
    pub pad: [usize; 2],
    /// Channel groups (convolutions; 1 for pooling).
    pub groups: usize,
}

impl WindowGeometry {
    fn in_len(&self) -> usize {
        self.batch * self.in_channels * self.in_h * self.in_w
    }
    fn out_len(&self) -> usize {
        self.batch * self.out_channels * self.out_h * self.out_w
    }
    fn taps(&self) -> usize {
        self.kernel[0] * self.kernel[1]
    }
    /// The GEMM depth of one group: its input channels times the taps.
    pub fn depth(&self) -> usize {
        self.in_channels / self.groups.max(1) * self.taps()
    }
    /// The output pixels of one plane.
    pub fn pixels(&self) -> usize {
        self.out_h * self.out_w
    }
}

/// An activation applied after a window kernel's loops, in Rust. Each is
/// computed in f64 and rounded once, like the interpreter's `unary`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PostActivation {
    Relu,
    Relu6,
    HardSigmoid,
    HardSwish,
    Sigmoid,
    Tanh,
}

impl PostActivation {
    pub fn from_unary(op: UnaryOp) -> Option<PostActivation> {
        Some(match op {
            UnaryOp::Relu => PostActivation::Relu,
            UnaryOp::Relu6 => PostActivation::Relu6,
            UnaryOp::HardSigmoid => PostActivation::HardSigmoid,
            UnaryOp::HardSwish => PostActivation::HardSwish,
            UnaryOp::Sigmoid => PostActivation::Sigmoid,
            UnaryOp::Tanh => PostActivation::Tanh,
            _ => return None,
        })
    }

    #[inline(always)]
    fn apply(self, x: f32) -> f32 {
        // `x < 0` is false for NaN: NaN passes through, as numpy's maximum.
        let relu6 = |x: f64| {
            if x < 0.0 {
                0.0
            } else if x > 6.0 {
                6.0
            } else {
                x
            }
        };
        match self {
            PostActivation::Relu => {
                if x < 0.0 {
                    0.0
                } else {
                    x
                }
            }
            // Clamping is exact: in f32 it gives the f64 result's bits.
            PostActivation::Relu6 => {
                if x < 0.0 {
                    0.0
                } else if x > 6.0 {
                    6.0
                } else {
                    x
                }
            }
            PostActivation::HardSigmoid => (relu6(f64::from(x) + 3.0) / 6.0) as f32,
            PostActivation::HardSwish => {
                let x = f64::from(x);
                (x * relu6(x + 3.0) / 6.0) as f32
            }
            PostActivation::Sigmoid => (1.0 / (1.0 + (-f64::from(x)).exp())) as f32,
            PostActivation::Tanh => f64::from(x).tanh() as f32,
        }
    }

    /// `row = act(row) + residual` (each step rounded, as the unfused ops).
    /// Inlined so a kernel's `target_feature` tier vectorises it.
    #[inline(always)]
    pub(crate) fn finish(activation: Option<Self>, row: &mut [f32], residual: Option<&[f32]>) {
        // One loop per activation, so each is a loop without a branch on
        // the kind (the clamps vectorise).
        macro_rules! each {
            ($act:expr) => {
                for v in row.iter_mut() {
                    *v = $act.apply(*v);
                }
            };
        }
        match activation {
            None => {}
            Some(PostActivation::Relu) => each!(PostActivation::Relu),
            Some(PostActivation::Relu6) => each!(PostActivation::Relu6),
            Some(PostActivation::HardSigmoid) => each!(PostActivation::HardSigmoid),
            Some(PostActivation::HardSwish) => each!(PostActivation::HardSwish),
            Some(PostActivation::Sigmoid) => each!(PostActivation::Sigmoid),
            Some(PostActivation::Tanh) => each!(PostActivation::Tanh),
        }
        if let Some(r) = residual {
            for (v, r) in row.iter_mut().zip(r) {
                *v += r;
            }
        }
    }
}

fn shape_err(kernel: &'static str, what: String) -> CodegenError {
    CodegenError::shape(kernel, what)
}

fn check_len(
    kernel: &'static str,
    what: &str,
    got: usize,
    want: usize,
) -> Result<(), CodegenError> {
    if got == want {
        Ok(())
    } else {
        Err(shape_err(
            kernel,
            format!("{what} must hold {want} f32, got {got}"),
        ))
    }
}

/// Operands of [`conv2d_gemm`].
pub struct ConvArgs<'a> {
    /// `[N, C, H, W]`.
    pub x: &'a [f32],
    /// `[O, K + with_bias]` row-major: each output channel's `C_g * kh *
    /// kw` weights (OIHW order), then its bias when `with_bias`.
    pub weights: &'a [f32],
    pub with_bias: bool,
    /// `[N, O, out_h, out_w]`: added by the GEMM epilogue.
    pub residual: Option<&'a [f32]>,
    /// At least [`conv_scratch_len`] f32: one image-group's packed patches.
    pub scratch: &'a mut [f32],
    /// `[N, O, out_h, out_w]`.
    pub out: &'a mut [f32],
}

/// Scratch [`conv2d_gemm`] needs for `g` in a library of `layout`'s tier.
pub fn conv_scratch_len(
    g: &WindowGeometry,
    with_bias: bool,
    layout: crate::codegen::PackLayout,
) -> usize {
    crate::codegen::packed_b_len_for(g.depth() + usize::from(with_bias), g.pixels(), layout)
}

/// One convolution as GEMMs: per image and group, the patches packed into
/// B panels and `W_g @ patches` on the library's GEMM `gemm` (whose
/// epilogue holds the activation and residual).
pub fn conv2d_gemm(
    library: &KernelLibrary,
    gemm: GemmId,
    g: &WindowGeometry,
    args: ConvArgs<'_>,
    threads: &Threads,
) -> Result<(), CodegenError> {
    const NAME: &str = "conv2d";
    let ConvArgs {
        x: input,
        weights,
        with_bias,
        residual: residual_all,
        scratch,
        out,
    } = args;
    let groups = g.groups.max(1);
    let (og, cg) = (g.out_channels / groups, g.in_channels / groups);
    let k = g.depth();
    let kb = k + usize::from(with_bias);
    let pixels = g.pixels();
    check_len(NAME, "the input", input.len(), g.in_len())?;
    check_len(NAME, "the output", out.len(), g.out_len())?;
    check_len(NAME, "the weights", weights.len(), g.out_channels * kb)?;
    if let Some(r) = residual_all {
        check_len(NAME, "the residual", r.len(), g.out_len())?;
    }
    let epilogue = library.gemm_epilogue(gemm)?;
    if epilogue.bias || epilogue.residual != residual_all.is_some() {
        return Err(shape_err(
            NAME,
            format!(
                "a GEMM epilogue `{}` for a convolution {} a residual",
                epilogue.tag(),
                if residual_all.is_some() {
                    "with"
                } else {
                    "without"
                }
            ),
        ));
    }
    let layout = library.pack_layout();
    let [kh, kw] = g.kernel;
    let [sh, sw] = g.stride;
    let [dh, dw] = g.dilation;
    let [pt, pl] = g.pad;
    let (h, w, out_w) = (g.in_h, g.in_w, g.out_w);
    let pointwise = kh == 1
        && kw == 1
        && sh == 1
        && sw == 1
        && pt == 0
        && pl == 0
        && g.out_h == h
        && out_w == w;
    let plane = h * w;
    for n in 0..g.batch {
        for group in 0..groups {
            let x0 = (n * g.in_channels + group * cg) * plane;
            let x = &input[x0..x0 + cg * plane];
            let packed = PackedBRef::pack_rows_into_for(
                kb,
                pixels,
                &mut *scratch,
                layout,
                |kk, c0, out| {
                    if kk == k {
                        out.fill(1.0);
                        return;
                    }
                    let (c, tap) = (kk / (kh * kw), kk % (kh * kw));
                    let channel = &x[c * plane..(c + 1) * plane];
                    if pointwise {
                        out.copy_from_slice(&channel[c0..c0 + out.len()]);
                        return;
                    }
                    let (ki, kj) = (tap / kw, tap % kw);
                    let (mut oy, mut ox) = (c0 / out_w, c0 % out_w);
                    for v in out.iter_mut() {
                        let iy = (oy * sh + ki * dh).wrapping_sub(pt);
                        let ix = (ox * sw + kj * dw).wrapping_sub(pl);
                        // Out of range (including "negative", wrapped) reads the zero padding.
                        *v = if iy < h && ix < w {
                            channel[iy * w + ix]
                        } else {
                            0.0
                        };
                        ox += 1;
                        if ox == out_w {
                            ox = 0;
                            oy += 1;
                        }
                    }
                },
            )?;
            let o0 = (n * g.out_channels + group * og) * pixels;
            let rows = o0..o0 + og * pixels;
            let a = MatrixRef::row_major(&weights[group * og * kb..(group + 1) * og * kb], og, kb)?;
            let residual = residual_all.map(|r| &r[rows.clone()]);
            let c = &mut out[rows];
            library.gemm(
                gemm,
                GemmArgs {
                    a,
                    b: packed,
                    bias: None,
                    residual,
                    c,
                },
                threads,
            )?;
        }
    }
    Ok(())
}

/// Operands of [`conv2d_nhwc`].
pub struct NhwcConvArgs<'a> {
    /// `[N, H, W, C]`.
    pub x: &'a [f32],
    /// One per group, from [`pack_nhwc_weights`].
    pub weights: &'a [PackedB],
    /// `[O]`: added by the GEMM epilogue (which must have a bias iff given).
    pub bias: Option<&'a [f32]>,
    /// `[N, OH, OW, O]`: added by the GEMM epilogue, last.
    pub residual: Option<&'a [f32]>,
    /// `[N, OH, OW, O]`.
    pub out: &'a mut [f32],
}

/// The GEMM right operands of an NHWC convolution, one per group, packed
/// for `layout`: group `gr`'s `[kh * kw * C_g, O_g]` with row `(ky * kw +
/// kx) * C_g + c` and column `o` holding `w[gr * O_g + o, c, ky, kx]` of the
/// OIHW weights `w` (`[O, C_g, kh, kw]`), the order in which
/// [`conv2d_nhwc`] gathers a pixel's patch (each tap's channels are
/// contiguous in NHWC).
pub fn pack_nhwc_weights(
    w: &[f32],
    out_channels: usize,
    groups: usize,
    [cg, kh, kw]: [usize; 3],
    layout: PackLayout,
) -> Result<Vec<PackedB>, CodegenError> {
    const NAME: &str = "conv2d weights";
    let groups = groups.max(1);
    let taps = kh * kw;
    let depth = cg * taps;
    check_len(NAME, "the weights", w.len(), out_channels * depth)?;
    if !out_channels.is_multiple_of(groups) {
        return Err(shape_err(
            NAME,
            format!("{out_channels} output channels in {groups} groups"),
        ));
    }
    let og = out_channels / groups;
    (0..groups)
        .map(|gr| {
            let group = &w[gr * og * depth..(gr + 1) * og * depth];
            if taps == 1 {
                // [O_g, C_g] is B^T stored row-major.
                return Ok(PackedB::pack_for(
                    &MatrixRef::transposed(group, cg, og)?,
                    layout,
                ));
            }
            let mut b = vec![0.0f32; depth * og];
            for o in 0..og {
                for c in 0..cg {
                    for tap in 0..taps {
                        b[(tap * cg + c) * og + o] = group[(o * cg + c) * taps + tap];
                    }
                }
            }
            Ok(PackedB::pack_for(
                &MatrixRef::row_major(&b, depth, og)?,
                layout,
            ))
        })
        .collect()
}

/// One NHWC convolution (not depthwise: [`window2d`] runs those) as one
/// GEMM per group on the library's GEMM `gemm`: `out[P, O_g] = patches[P,
/// kh * kw * C_g] @ W_g` over the `P = N * OH * OW` output pixels, the
/// output pixels being the GEMM's rows (NHWC keeps each pixel's channels
/// contiguous, so C is the output itself, with rows `O` apart for a
/// group's columns). A 1x1 stride-1 unpadded convolution's patches are the
/// input itself, read in place; any other's are gathered straight into the
/// GEMM's packed A panels, a panel at a time, never into an im2col matrix.
/// Bias, activation and residual are the GEMM epilogue's.
pub fn conv2d_nhwc(
    library: &KernelLibrary,
    gemm: GemmId,
    g: &WindowGeometry,
    args: NhwcConvArgs<'_>,
    threads: &Threads,
) -> Result<(), CodegenError> {
    let pixels = g.batch.checked_mul(g.pixels()).ok_or_else(|| {
        shape_err(
            "conv2d_nhwc",
            "the number of output pixels overflows".into(),
        )
    })?;
    conv2d_nhwc_pixels(library, gemm, g, args, 0..pixels, threads)
}

/// [`conv2d_nhwc`] for the output pixels `pixels` only (numbered `[n, oy,
/// ox]` in order over the whole batch): `args.out` and `args.residual`
/// hold those pixels' `O` channels, `args.x` the whole input. Every value
/// is the one [`conv2d_nhwc`] computes, bit for bit: a GEMM row's result
/// does not depend on which other rows share the call.
pub fn conv2d_nhwc_pixels(
    library: &KernelLibrary,
    gemm: GemmId,
    g: &WindowGeometry,
    args: NhwcConvArgs<'_>,
    pixels: Range<usize>,
    threads: &Threads,
) -> Result<(), CodegenError> {
    const NAME: &str = "conv2d_nhwc";
    let NhwcConvArgs {
        x,
        weights,
        bias,
        residual,
        out,
    } = args;
    let groups = g.groups.max(1);
    let (c_all, o_all) = (g.in_channels, g.out_channels);
    if !c_all.is_multiple_of(groups) || !o_all.is_multiple_of(groups) {
        return Err(shape_err(
            NAME,
            format!("{c_all} input and {o_all} output channels in {groups} groups"),
        ));
    }
    let (cg, og) = (c_all / groups, o_all / groups);
    let depth = g.depth();
    let all_pixels = g.batch * g.pixels();
    if pixels.start > pixels.end || pixels.end > all_pixels {
        return Err(shape_err(
            NAME,
            format!("output pixels {pixels:?} of {all_pixels}"),
        ));
    }
    let out_len = pixels.len() * o_all;
    check_len(NAME, "the input", x.len(), g.in_len())?;
    check_len(NAME, "the output", out.len(), out_len)?;
    if let Some(b) = bias {
        check_len(NAME, "the bias", b.len(), o_all)?;
    }
    if let Some(r) = residual {
        check_len(NAME, "the residual", r.len(), out_len)?;
    }
    if weights.len() != groups {
        return Err(shape_err(
            NAME,
            format!("{} packed weights for {groups} groups", weights.len()),
        ));
    }
    for w in weights {
        if (w.k(), w.n()) != (depth, og) {
            return Err(shape_err(
                NAME,
                format!(
                    "a group's weights are {}x{}, the geometry needs {depth}x{og}",
                    w.k(),
                    w.n()
                ),
            ));
        }
    }
    let (first, rows) = (pixels.start, pixels.len());
    if rows == 0 || og == 0 {
        return Ok(());
    }
    let [kh, kw] = g.kernel;
    let [sh, sw] = g.stride;
    let [pt, pl] = g.pad;
    let (h, w, out_h, out_w) = (g.in_h, g.in_w, g.out_h, g.out_w);
    let in_place =
        kh == 1 && kw == 1 && sh == 1 && sw == 1 && pt == 0 && pl == 0 && (out_h, out_w) == (h, w);
    // Group `gr`'s columns of every output row: rows `O` apart, the last
    // one `O_g` long.
    let c_len = (rows - 1) * o_all + og;
    for (gr, packed) in weights.iter().enumerate() {
        let at = gr * og..gr * og + c_len;
        let c0 = gr * cg;
        let patches = Patches { x, g, c0, cg };
        let gather =
            |i0: usize, r: usize, k0: usize, dst: &mut [f32]| patches.pack(first + i0, r, k0, dst);
        let a = if in_place {
            let from = first * c_all + c0;
            LeftOperand::Matrix(MatrixRef::strided(&x[from..], rows, cg, c_all, false)?)
        } else {
            LeftOperand::Gathered {
                rows,
                cols: depth,
                pack: &gather,
            }
        };
        library.gemm_strided(
            gemm,
            StridedGemmArgs {
                a,
                b: packed.as_ref(),
                bias: bias.map(|b| &b[gr * og..(gr + 1) * og]),
                residual: residual.map(|r| &r[at.clone()]),
                c: &mut out[at],
                ldc: o_all,
            },
            threads,
        )?;
    }
    Ok(())
}

/// One group's input patches, as the rows of a GEMM's left operand: row
/// `p` (an output pixel, `[n, oy, ox]` in order) holds depth `(ky * kw +
/// kx) * C_g + c`, the input at channel `c0 + c` under tap `(ky, kx)`, or
/// zero where the tap reads the padding.
struct Patches<'a> {
    x: &'a [f32],
    g: &'a WindowGeometry,
    /// The group's first input channel.
    c0: usize,
    /// Input channels per group.
    cg: usize,
}

impl Patches<'_> {
    /// Rows `i0..i0 + r` at depth `k0..k0 + dst.len() / r` into `dst` as
    /// `[kc][r]`, the GEMM's packed A panel, one run of pixels in the same
    /// output row at a time (see [`Patches::pack_run`]).
    fn pack(&self, i0: usize, r: usize, k0: usize, dst: &mut [f32]) {
        let g = self.g;
        let out_w = g.out_w;
        let plane = g.out_h * out_w;
        let mut p = 0;
        while p < r {
            let i = i0 + p;
            let (n, oy, ox) = (i / plane, i % plane / out_w, i % out_w);
            let len = (out_w - ox).min(r - p);
            self.pack_run(dst, r, k0, p, len, [n, oy, ox]);
            p += len;
        }
    }

    /// Columns `p0..p0 + len` of the panel: pixels `ox0..ox0 + len` of
    /// output row `oy` of image `n`. Along such a run, a tap's input moves
    /// by `stride * C` floats per pixel, and the pixels whose tap falls
    /// inside the image are one range; so each depth is a strided copy with
    /// the index math done once per tap (the panel is written depth by
    /// depth, each store contiguous). This runs once per row panel and depth
    /// block; a per-value walk cost more than the multiply-adds of a stem's
    /// 27-deep product.
    fn pack_run(
        &self,
        dst: &mut [f32],
        r: usize,
        k0: usize,
        p0: usize,
        len: usize,
        at: [usize; 3],
    ) {
        let g = self.g;
        let (x, c0, cg, c_all) = (self.x, self.c0, self.cg, g.in_channels);
        let [n, oy, ox0] = at;
        let [_, kw] = g.kernel;
        let [sh, sw] = g.stride;
        let [dh, dw] = g.dilation;
        let [pt, pl] = g.pad;
        let (h, w) = (g.in_h, g.in_w);
        let kc = dst.len() / r;
        let k_end = k0 + kc;
        if kc == 0 {
            return;
        }
        let row_depth = kw * cg;
        let step = sw * c_all;
        for ky in k0 / row_depth..=(k_end - 1) / row_depth {
            // "Negative" rows wrap to huge and fail the test too.
            let iy = (oy * sh + ky * dh).wrapping_sub(pt);
            let row = (iy < h).then(|| (n * h + iy) * w * c_all);
            let row_start = ky * row_depth;
            for kx in 0..kw {
                let tap_start = row_start + kx * cg;
                let (d_lo, d_hi) = (k0.max(tap_start), k_end.min(tap_start + cg));
                if d_lo >= d_hi {
                    continue;
                }
                // Pixel p reads input column t0 + p * sw: inside the image for
                // p in p_lo..p_hi.
                let t0 = (ox0 * sw + kx * dw) as i64 - pl as i64;
                let (p_lo, p_hi) = match row {
                    None => (0, 0),
                    Some(_) => {
                        let s = sw as i64;
                        let lo = if t0 >= 0 { 0 } else { (-t0 + s - 1) / s };
                        let hi = (w as i64 - t0 + s - 1).div_euclid(s);
                        let (lo, hi) = (lo.clamp(0, len as i64), hi.clamp(0, len as i64));
                        (lo as usize, hi.max(lo) as usize)
                    }
                };
                for d in d_lo..d_hi {
                    let out = &mut dst[(d - k0) * r + p0..][..len];
                    out[..p_lo].fill(0.0);
                    out[p_hi..].fill(0.0);
                    if let Some(row) = row {
                        let c = d - tap_start;
                        // The input column of pixel p_lo is >= 0.
                        let first = row + (t0 + (p_lo * sw) as i64) as usize * c_all + c0 + c;
                        let out = &mut out[p_lo..p_hi];
                        if let Some(last) = out.len().checked_sub(1) {
                            // One bounds check for the run, none per value.
                            let src = &x[first..=first + last * step];
                            for (o, v) in out.iter_mut().zip(src.iter().step_by(step)) {
                                *o = *v;
                            }
                        }
                    }
                }
            }
        }
    }
}

/// What a window kernel computes over each window.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WindowOp {
    /// A weighted sum with each output channel's own taps (one input
    /// channel per group), plus its bias.
    Depthwise,
    Max,
    Avg {
        count_include_pad: bool,
    },
}

/// Operands of [`window2d`].
pub struct WindowArgs<'a> {
    /// `[N, C, H, W]`.
    pub x: &'a [f32],
    /// Depthwise: `[O, kh * kw]` taps.
    pub weights: Option<&'a [f32]>,
    /// Depthwise: `[O]`.
    pub bias: Option<&'a [f32]>,
    pub post: Option<PostActivation>,
    /// `[N, O, out_h, out_w]`, added last.
    pub residual: Option<&'a [f32]>,
    /// `[N, O, out_h, out_w]`.
    pub out: &'a mut [f32],
}

/// Depthwise convolution or pooling, planes split over threads (each
/// output value is computed by one thread in a fixed order, so the thread
/// count never changes a bit).
pub fn window2d(
    isa: Isa,
    op: WindowOp,
    g: &WindowGeometry,
    args: WindowArgs<'_>,
    threads: &Threads,
) -> Result<(), CodegenError> {
    const NAME: &str = "window2d";
    check_len(NAME, "the input", args.x.len(), g.in_len())?;
    check_len(NAME, "the output", args.out.len(), g.out_len())?;
    if g.in_channels == 0 || g.out_channels % g.in_channels != 0 {
        return Err(shape_err(
            NAME,
            format!(
                "{} output channels from {} input channels",
                g.out_channels, g.in_channels
            ),
        ));
    }
    match (op, args.weights) {
        (WindowOp::Depthwise, Some(w)) => {
            check_len(NAME, "the taps", w.len(), g.out_channels * g.taps())?
        }
        (WindowOp::Depthwise, None) => {
            return Err(shape_err(NAME, "depthwise taps are missing".into()))
        }
        (_, Some(_)) => return Err(shape_err(NAME, "pooling takes no taps".into())),
        (_, None) => {}
    }
    if let Some(b) = args.bias {
        check_len(NAME, "the bias", b.len(), g.out_channels)?;
    }
    if let Some(r) = args.residual {
        check_len(NAME, "the residual", r.len(), g.out_len())?;
    }
    let planes = g.batch * g.out_channels;
    let plane_out = g.pixels();
    if planes == 0 || plane_out == 0 {
        return Ok(());
    }
    let out = SharedMut(args.out.as_mut_ptr());
    let x = args.x;
    let (weights, bias, residual, post) = (args.weights, args.bias, args.residual, args.post);
    let run = |range: &std::ops::Range<usize>| {
        for p in range.clone() {
            let (n, o) = (p / g.out_channels, p % g.out_channels);
            let c = o / (g.out_channels / g.in_channels);
            let x0 = (n * g.in_channels + c) * g.in_h * g.in_w;
            // SAFETY: plane `p` of the output (in bounds: `out` holds
            // `planes * plane_out`, checked above) is written by this task
            // alone; ranges given to tasks are disjoint and `out` is
            // exclusively borrowed for the whole call.
            let out_plane =
                unsafe { std::slice::from_raw_parts_mut(out.get().add(p * plane_out), plane_out) };
            let plane = Plane {
                g,
                op,
                x: &x[x0..x0 + g.in_h * g.in_w],
                taps: weights.map_or(&[][..], |w| &w[o * g.taps()..(o + 1) * g.taps()]),
                bias: bias.map_or(0.0, |b| b[o]),
            };
            match isa {
                // SAFETY: a plan of a wide tier runs only on a CPU with that
                // tier's features (`Target::with_isa` never raises the tier;
                // every wide tier has AVX2 and FMA, AVX-512 has AVX-512F).
                Isa::Avx512 => unsafe { plane_avx512(&plane, out_plane) },
                Isa::Avx2 => unsafe { plane_avx2(&plane, out_plane) },
                Isa::Baseline => plane.run::<false>(out_plane),
            }
            PostActivation::finish(
                post,
                out_plane,
                residual.map(|r| &r[p * plane_out..(p + 1) * plane_out]),
            );
        }
    };
    if threads.count() == 1 {
        run(&(0..planes));
    } else {
        let ranges = split_range(planes, 4 * threads.count(), 1);
        threads.for_each(&ranges, run);
    }
    Ok(())
}

#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
fn plane_avx512(plane: &Plane<'_>, out: &mut [f32]) {
    plane.run::<true>(out)
}

#[target_feature(enable = "avx2,fma")]
fn plane_avx2(plane: &Plane<'_>, out: &mut [f32]) {
    plane.run::<true>(out)
}

/// One output plane's inputs.
struct Plane<'a> {
    g: &'a WindowGeometry,
    op: WindowOp,
    /// The input channel's `in_h x in_w` plane.
    x: &'a [f32],
    /// Depthwise: this output channel's `kh * kw` taps.
    taps: &'a [f32],
    bias: f32,
}

/// The outputs `lo..hi` along one axis whose tap at offset `offset` (tap
/// index times dilation) lands inside `0..size`, for `out` outputs.
#[inline(always)]
pub(crate) fn valid_range(
    offset: usize,
    pad: usize,
    stride: usize,
    size: usize,
    out: usize,
) -> (usize, usize) {
    // o * stride + offset - pad in 0..size.
    let lo = pad.saturating_sub(offset).div_ceil(stride);
    let hi = if size + pad > offset {
        (size + pad - offset - 1) / stride + 1
    } else {
        0
    };
    (lo.min(out), hi.min(out).max(lo.min(out)))
}

/// Input rows up to this many floats are phase-split for strided windows
/// (on the stack); wider ones take the strided loops.
const PHASED_ROW_MAX: usize = 2048;

impl Plane<'_> {
    /// One tap's update of the outputs `outs` from the inputs `xs` (same length).
    #[inline(always)]
    fn update_contiguous<const FMA: bool>(&self, tap: usize, outs: &mut [f32], xs: &[f32]) {
        match self.op {
            WindowOp::Depthwise => {
                let t = self.taps[tap];
                for (o, &v) in outs.iter_mut().zip(xs) {
                    *o = if FMA { t.mul_add(v, *o) } else { *o + t * v };
                }
            }
            WindowOp::Max => {
                for (o, &v) in outs.iter_mut().zip(xs) {
                    // NaN wins, as the interpreter's nan_max.
                    if v.is_nan() || v > *o {
                        *o = v;
                    }
                }
            }
            WindowOp::Avg { .. } => {
                for (o, &v) in outs.iter_mut().zip(xs) {
                    *o += v;
                }
            }
        }
    }

    /// The loop nest, inlined into each tier's `target_feature` function.
    /// Per output row: every tap in order (rows, then columns) updates the
    /// outputs it reaches, a contiguous run of the row, so one output's
    /// value is one chain in the same order on every thread.
    #[inline(always)]
    fn run<const FMA: bool>(&self, out: &mut [f32]) {
        let g = self.g;
        let [kh, kw] = g.kernel;
        let [sh, sw] = g.stride;
        let [dh, dw] = g.dilation;
        let [pt, pl] = g.pad;
        let (h, w, out_w) = (g.in_h, g.in_w, g.out_w);
        // A strided window reads every `sw`-th input: each input row is
        // first split into its `sw` phases (phase p holds x[sw * i + p]),
        // so that every tap reads a contiguous run the loops vectorise.
        let phase_len = w.div_ceil(sw);
        let mut phases = [0.0f32; PHASED_ROW_MAX];
        let phased = sw > 1 && phase_len * sw <= PHASED_ROW_MAX;
        for (oy, row) in out.chunks_exact_mut(out_w).enumerate() {
            row.fill(match self.op {
                WindowOp::Depthwise => self.bias,
                WindowOp::Max => f32::NEG_INFINITY,
                WindowOp::Avg { .. } => 0.0,
            });
            let mut rows_in = 0;
            for ky in 0..kh {
                let iy = (oy * sh + ky * dh).wrapping_sub(pt);
                if iy >= h {
                    continue;
                }
                rows_in += 1;
                let x_row = &self.x[iy * w..(iy + 1) * w];
                if phased {
                    for p in 0..sw {
                        let phase = &mut phases[p * phase_len..(p + 1) * phase_len];
                        for (d, &v) in phase.iter_mut().zip(x_row[p.min(w)..].iter().step_by(sw)) {
                            *d = v;
                        }
                    }
                }
                for kx in 0..kw {
                    let (lo, hi) = valid_range(kx * dw, pl, sw, w, out_w);
                    if lo >= hi {
                        continue;
                    }
                    let first = lo * sw + kx * dw - pl;
                    let outs = &mut row[lo..hi];
                    if phased {
                        // Inputs first, first + sw, ...: one phase, contiguous.
                        let start = (first % sw) * phase_len + first / sw;
                        let xs = &phases[start..start + outs.len()];
                        self.update_contiguous::<FMA>(ky * kw + kx, outs, xs);
                        continue;
                    }
                    if sw == 1 {
                        let xs = &x_row[first..first + outs.len()];
                        self.update_contiguous::<FMA>(ky * kw + kx, outs, xs);
                        continue;
                    }
                    match self.op {
                        WindowOp::Depthwise => {
                            let t = self.taps[ky * kw + kx];
                            {
                                let xs = x_row[first..].iter().step_by(sw);
                                for (o, &v) in outs.iter_mut().zip(xs) {
                                    *o = if FMA { t.mul_add(v, *o) } else { *o + t * v };
                                }
                            }
                        }
                        WindowOp::Max => {
                            for (o, &v) in outs.iter_mut().zip(x_row[first..].iter().step_by(sw)) {
                                // NaN wins, as the interpreter's nan_max.
                                if v.is_nan() || v > *o {
                                    *o = v;
                                }
                            }
                        }
                        WindowOp::Avg { .. } => {
                            for (o, &v) in outs.iter_mut().zip(x_row[first..].iter().step_by(sw)) {
                                *o += v;
                            }
                        }
                    }
                }
            }
            if let WindowOp::Avg { count_include_pad } = self.op {
                for (ox, o) in row.iter_mut().enumerate() {
                    let count = if count_include_pad {
                        kh * kw
                    } else {
                        let cols = (0..kw)
                            .filter(|&kx| (ox * sw + kx * dw).wrapping_sub(pl) < w)
                            .count();
                        rows_in * cols
                    };
                    // No tap on the input: 0 / 0 = NaN, as the interpreter.
                    *o /= count as f32;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_ranges_keep_taps_inside_the_input() {
        for (pad, stride, size, k, dil) in [
            (1, 1, 5, 3, 1),
            (0, 2, 7, 3, 1),
            (2, 2, 6, 5, 1),
            (3, 1, 4, 3, 3),
            (0, 1, 1, 1, 1),
            (5, 3, 2, 2, 4),
        ] {
            let out = (size + 2 * pad - (k - 1) * dil - 1) / stride + 1;
            for t in 0..k {
                let (lo, hi) = valid_range(t * dil, pad, stride, size, out);
                for o in 0..out {
                    let i = (o * stride + t * dil) as isize - pad as isize;
                    let inside = (0..size as isize).contains(&i);
                    assert_eq!(
                        inside,
                        (lo..hi).contains(&o),
                        "pad {pad} stride {stride} size {size} tap {t} out {o}"
                    );
                }
            }
        }
    }
}

/// Operands of [`batch_norm`]: `x` and `out` are `[N, C, inner...]`, the
/// four statistics `[C]`.
pub struct BatchNormArgs<'a> {
    pub x: &'a [f32],
    pub mean: &'a [f32],
    pub var: &'a [f32],
    pub gain: &'a [f32],
    pub bias: &'a [f32],
    pub out: &'a mut [f32],
}

/// Inference batch normalisation over axis 1: per channel
/// `(x - mean) * scale + bias`, `scale = gain / sqrt(var + eps)` computed
/// in f64 and rounded once; channel planes split over threads.
pub fn batch_norm(
    args: BatchNormArgs<'_>,
    eps: f64,
    channels: usize,
    inner: usize,
    threads: &Threads,
) -> Result<(), CodegenError> {
    const NAME: &str = "batch_norm";
    let BatchNormArgs {
        x,
        mean,
        var,
        gain,
        bias,
        out,
    } = args;
    for (what, v) in [("mean", mean), ("var", var), ("gain", gain), ("bias", bias)] {
        check_len(NAME, what, v.len(), channels)?;
    }
    check_len(NAME, "the output", out.len(), x.len())?;
    let plane = inner.max(1);
    if channels == 0 || x.is_empty() || !x.len().is_multiple_of(channels * plane) {
        return check_len(NAME, "the input", x.len(), 0);
    }
    let planes = x.len() / plane;
    let shared = SharedMut(out.as_mut_ptr());
    let run = |range: &std::ops::Range<usize>| {
        for p in range.clone() {
            let c = p % channels;
            let scale = (f64::from(gain[c]) / (f64::from(var[c]) + eps).sqrt()) as f32;
            let (m, b) = (mean[c], bias[c]);
            // SAFETY: plane `p` (in bounds: `out` holds `planes * plane`,
            // checked above) is written by this task alone; ranges are
            // disjoint and `out` is exclusively borrowed for the call.
            let dst = unsafe { std::slice::from_raw_parts_mut(shared.get().add(p * plane), plane) };
            for (o, &v) in dst.iter_mut().zip(&x[p * plane..(p + 1) * plane]) {
                *o = (v - m) * scale + b;
            }
        }
    };
    if threads.count() == 1 {
        run(&(0..planes));
    } else {
        threads.for_each(&split_range(planes, 4 * threads.count(), 1), run);
    }
    Ok(())
}
