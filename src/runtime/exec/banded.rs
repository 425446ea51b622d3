//! Banded steps: a convolution whose only reader is a depthwise
//! convolution, computed a few rows at a time while they are in cache.
//!
//! In a MobileNet / EfficientNet block, a 1x1 convolution expands the
//! channels (112 x 112 x 96 in EfficientNet-Lite0's second block: 4.8 MiB
//! per image) and a depthwise convolution reads the result once. Run node
//! by node, the expansion goes out to memory and comes back: larger than a
//! core's L2 cache. A banded step instead runs the pair a band of the
//! depthwise convolution's output rows at a time: the convolution computes
//! the input rows the band reads into a small buffer (kept in L2), the
//! depthwise convolution reads them from there. Consecutive bands share
//! input rows (a 3x3 window at stride 1 reads two rows of the band
//! before): the buffer keeps them, so every row is computed once. The
//! expansion is never stored whole.
//!
//! On several threads, each thread takes a contiguous share of the output
//! rows with its own buffer, and runs both kernels alone on it: one
//! hand-off for the pair instead of one per node.
//!
//! The results are the same bits as node by node: a GEMM row's result does
//! not depend on which rows share the call (`conv2d_nhwc_pixels`), and the
//! depthwise kernel computes each pixel alone (`window2d_nhwc_band`).

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Mutex;

use super::candidates::{accepts_nhwc_depthwise, accepts_nhwc_gemm_conv};
use super::plan::Planner;
use crate::codegen::conv::{conv2d_nhwc_pixels, NhwcConvArgs, WindowGeometry, WindowOp};
use crate::codegen::window_nhwc::{input_rows_read, window2d_nhwc_band, NhwcWindowArgs};
use crate::codegen::{CodegenError, GemmId, KernelLibrary, PackedB, Target};
use crate::codegen::{SharedMut, Split, Threads};
use crate::ir::NodeId;

/// When a convolution and the depthwise convolution reading it run as one
/// banded step ([`CompiledModel::set_banding`](super::CompiledModel::set_banding)).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Banding {
    /// When one image of the convolution's output is larger than half a
    /// core's L2 cache, in bands whose input rows take about an eighth of it.
    #[default]
    Auto,
    /// Never: every node runs alone.
    Never,
    /// Every pair that can, this many depthwise output rows a band (tests
    /// compare it with `Never`).
    Rows(usize),
}

/// How a banded step cuts its work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Band {
    /// Depthwise output rows per band.
    pub rows: usize,
    /// Convolution output rows a band reads at most: one buffer's rows.
    pub capacity: usize,
    /// Buffers (`capacity` rows each): one per thread.
    pub parts: usize,
    /// f32 in one convolution output row (`W * C`).
    pub row_len: usize,
}

impl Band {
    /// f32 of all the buffers.
    pub fn buffers_len(&self) -> usize {
        // Saturating: at most `parts` times one image of a checked tensor;
        // the memory budget then refuses what does not fit.
        self.parts
            .saturating_mul(self.capacity)
            .saturating_mul(self.row_len)
    }
}

impl super::CompiledModel {
    /// Chooses when a convolution and the depthwise convolution reading it
    /// run as one banded step (default [`Banding::Auto`]). Plans made
    /// before are dropped.
    pub fn set_banding(&mut self, banding: Banding) {
        self.banding = banding;
        self.drop_plans();
    }
}

/// The pairs of a plan that run banded, indexed both ways.
#[derive(Default)]
pub(super) struct BandedPairs {
    /// By the depthwise convolution (the consumer): the convolution
    /// feeding it (the producer) and how the step cuts its work.
    by_consumer: HashMap<NodeId, (NodeId, Band)>,
    /// By the producer: its band.
    band_of: HashMap<NodeId, Band>,
}

impl BandedPairs {
    pub(super) fn is_empty(&self) -> bool {
        self.by_consumer.is_empty()
    }

    /// The band of `producer`, when it is a banded pair's convolution.
    pub(super) fn band_of(&self, producer: NodeId) -> Option<&Band> {
        self.band_of.get(&producer)
    }

    /// The convolution and band of `consumer`, when it is a banded pair's
    /// depthwise convolution.
    pub(super) fn of_consumer(&self, consumer: NodeId) -> Option<(NodeId, Band)> {
        self.by_consumer.get(&consumer).copied()
    }

    fn insert(&mut self, producer: NodeId, consumer: NodeId, band: Band) {
        self.by_consumer.insert(consumer, (producer, band));
        self.band_of.insert(producer, band);
    }
}

/// The pairs of `planner`'s graph that run banded. A pair qualifies when
/// both nodes are the kernels' (`conv_nhwc_gemm` and `window2d_nhwc` with
/// taps laid out at compile time), the depthwise convolution is the
/// convolution's only reader, reading it once, and the convolution is not
/// an output.
pub(super) fn banded_pairs(planner: &Planner<'_>, banding: Banding, threads: usize) -> BandedPairs {
    let mut pairs = BandedPairs::default();
    if banding == Banding::Never || planner.only.is_some() {
        return pairs;
    }
    let graph = planner.graph;
    let l2 = Target::detected().caches.l2;
    for consumer in graph.node_ids() {
        let Some(g) = accepts_nhwc_depthwise(planner, consumer) else {
            continue;
        };
        let inputs = graph.inputs(consumer);
        let producer = inputs[0];
        if inputs.iter().filter(|&&i| i == producer).count() != 1
            || graph.single_user(producer) != Some(consumer)
            || graph.is_output(producer)
            || !accepts_nhwc_gemm_conv(planner, producer)
        {
            continue;
        }
        let row_len = g.in_w * g.in_channels;
        let image_bytes = g.in_h.saturating_mul(row_len).saturating_mul(4);
        let rows = match banding {
            Banding::Rows(rows) => rows.max(1),
            Banding::Auto if image_bytes > l2 / 2 => {
                let budget_rows = l2 / 8 / row_len.saturating_mul(4).max(1);
                // Output rows whose window rows fit the budget: (rows - 1)
                // * stride + the window's height.
                let window = reads_per_band(&g, 1);
                (budget_rows.saturating_sub(window) / g.stride[0].max(1) + 1).max(1)
            }
            Banding::Auto | Banding::Never => continue,
        };
        let rows = rows.min(g.out_h.max(1));
        let parts = threads.max(1).min(g.batch * g.out_h).max(1);
        let band = Band {
            rows,
            capacity: reads_per_band(&g, rows).min(g.in_h),
            parts,
            row_len,
        };
        pairs.insert(producer, consumer, band);
    }
    pairs
}

/// Input rows `rows` consecutive output rows read at most (the whole
/// window of each, padding included).
fn reads_per_band(g: &WindowGeometry, rows: usize) -> usize {
    (rows.max(1) - 1) * g.stride[0] + (g.kernel[0].max(1) - 1) * g.dilation[0] + 1
}

/// The convolution of a banded step, as `Step::ConvNhwc` has it.
pub(super) struct Producer<'a> {
    pub library: &'a KernelLibrary,
    pub gemm: GemmId,
    pub geometry: &'a WindowGeometry,
    pub x: &'a [f32],
    pub weights: &'a [PackedB],
    pub bias: Option<&'a [f32]>,
    pub residual: Option<&'a [f32]>,
}

/// The depthwise convolution of a banded step, as `Step::WindowNhwc` has it.
pub(super) struct Consumer<'a> {
    pub op: WindowOp,
    pub geometry: &'a WindowGeometry,
    pub args: NhwcWindowArgs<'a>,
}

/// Runs a banded step: `consumer.args.out` gets the depthwise
/// convolution of the convolution of `producer.x`, `buffers` holding
/// `band.parts` buffers of `band.capacity` rows.
pub(super) fn run_banded(
    producer: Producer<'_>,
    consumer: Consumer<'_>,
    band: &Band,
    buffers: &mut [f32],
    threads: &Threads,
) -> Result<(), CodegenError> {
    let gw = consumer.geometry;
    let gp = producer.geometry;
    let row_len = gw.in_w * gw.in_channels;
    let fits = (gp.batch, gp.out_h, gp.out_w * gp.out_channels) == (gw.batch, gw.in_h, row_len)
        && row_len == band.row_len
        && band.rows > 0
        && reads_per_band(gw, band.rows).min(gw.in_h) <= band.capacity
        && buffers.len() >= band.buffers_len();
    if !fits {
        return Err(CodegenError::shape(
            "banded step",
            format!(
                "the convolution's output {}x{}x{}x{} and the depthwise input {}x{}x{}x{} \
                 or the band {band:?} of {} f32 disagree",
                gp.batch,
                gp.out_h,
                gp.out_w,
                gp.out_channels,
                gw.batch,
                gw.in_h,
                gw.in_w,
                gw.in_channels,
                buffers.len()
            ),
        ));
    }
    let out_row = gw.out_w * gw.out_channels;
    let out_rows = gw.batch * gw.out_h;
    if out_rows == 0 || out_row == 0 {
        return Ok(());
    }
    let Consumer { op, args, .. } = consumer;
    if args.out.len() != out_rows * out_row
        || args.residual.is_some_and(|r| r.len() != args.out.len())
    {
        return Err(CodegenError::shape(
            "banded step",
            format!("the output must hold {out_rows} rows of {out_row} f32"),
        ));
    }
    let split = Split::new(out_rows, band.parts.min(threads.count()), 1);
    let out = SharedMut(args.out.as_mut_ptr());
    let buffer_len = band.capacity * row_len;
    let buffers = SharedMut(buffers.as_mut_ptr());
    let failure: Mutex<Option<CodegenError>> = Mutex::new(None);
    threads.for_each_index(split.count(), |part| {
        let rows = split.get(part);
        // SAFETY: part `part` alone uses buffer `part` (`split.count() <=
        // band.parts` buffers, checked above) and writes output rows
        // `rows` (parts are disjoint); both are exclusively borrowed for
        // the call.
        let (buffer, out) = unsafe {
            (
                std::slice::from_raw_parts_mut(buffers.get().add(part * buffer_len), buffer_len),
                std::slice::from_raw_parts_mut(
                    out.get().add(rows.start * out_row),
                    rows.len() * out_row,
                ),
            )
        };
        let window = NhwcWindowArgs {
            x: &[],
            taps: args.taps,
            bias: args.bias,
            post: args.post,
            residual: args
                .residual
                .map(|r| &r[rows.start * out_row..rows.end * out_row]),
            out,
        };
        if let Err(e) = run_part(&producer, gw, op, window, band, rows, buffer) {
            let mut failure = failure.lock().unwrap_or_else(|e| e.into_inner());
            failure.get_or_insert(e);
        }
    });
    match failure.into_inner().unwrap_or_else(|e| e.into_inner()) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Output rows `rows` (over the whole batch) on the calling thread, band
/// by band through `buffer`; `window.out` and `window.residual` hold those
/// rows.
fn run_part(
    producer: &Producer<'_>,
    gw: &WindowGeometry,
    op: WindowOp,
    window: NhwcWindowArgs<'_>,
    band: &Band,
    rows: Range<usize>,
    buffer: &mut [f32],
) -> Result<(), CodegenError> {
    let single = Threads::single();
    let row_len = band.row_len;
    let out_row = gw.out_w * gw.out_channels;
    let channels = producer.geometry.out_channels;
    let image_pixels = gw.in_h * gw.in_w;
    // The image and input rows the buffer holds, from its start.
    let mut held: Option<(usize, Range<usize>)> = None;
    let mut r = rows.start;
    while r < rows.end {
        let (n, oy) = (r / gw.out_h, r % gw.out_h);
        let count = band.rows.min(gw.out_h - oy).min(rows.end - r);
        let needed = input_rows_read(gw, oy..oy + count);
        // Rows already held move to the buffer's start; the rest is computed.
        let first_new = match &held {
            Some((image, have))
                if *image == n && have.start <= needed.start && needed.start < have.end =>
            {
                let keep = (needed.start - have.start) * row_len..(have.end - have.start) * row_len;
                buffer.copy_within(keep, 0);
                have.end.min(needed.end)
            }
            _ => needed.start,
        };
        if first_new < needed.end {
            let pixels =
                n * image_pixels + first_new * gw.in_w..n * image_pixels + needed.end * gw.in_w;
            let at = (first_new - needed.start) * row_len..needed.len() * row_len;
            conv2d_nhwc_pixels(
                producer.library,
                producer.gemm,
                producer.geometry,
                NhwcConvArgs {
                    x: producer.x,
                    weights: producer.weights,
                    bias: producer.bias,
                    residual: producer
                        .residual
                        .map(|res| &res[pixels.start * channels..pixels.end * channels]),
                    out: &mut buffer[at],
                },
                pixels,
                &single,
            )?;
        }
        let done = r - rows.start;
        let at = done * out_row..(done + count) * out_row;
        window2d_nhwc_band(
            producer.library.isa(),
            op,
            gw,
            NhwcWindowArgs {
                x: &buffer[..needed.len() * row_len],
                taps: window.taps,
                bias: window.bias,
                post: window.post,
                residual: window.residual.map(|res| &res[at.clone()]),
                out: &mut window.out[at],
            },
            needed.start,
            oy..oy + count,
        )?;
        held = Some((n, needed));
        r += count;
    }
    Ok(())
}
