//! Pooling over height and width of an NCHW tensor (NHWC with
//! `layout="nhwc"`):
//! `max_pool2d(x, kernel=, stride=kernel, padding=0, dilation=1)`,
//! `avg_pool2d(x, kernel=, stride=kernel, padding=0, dilation=1,
//! count_include_pad=false)`, and `global_avg_pool2d(x)` (the mean over
//! height and width, kept as `[N, C, 1, 1]` (`[N, 1, 1, C]`); it lowers to
//! `mean`).
//!
//! Padding never takes part in a max. An average divides by the taps that
//! land on the input, or, with `count_include_pad=true`, by all taps of the
//! window (padding counted as zeros, as PyTorch's default). A window that
//! covers no input pixel (possible only with large dilation) gives -inf
//! (max) or NaN (average without padding counted: 0 / 0).

use super::conv::layout_shape_words;
use super::math;
use super::pool_grad::Pool2dGrad;
use super::reduce::Reduce;
use super::shape::{err, expect_dtype, only_keeps_samples, ShapeError};
use super::values::elements;
use super::window::{read_layout, read_pair, DataLayout, Window2d};
use super::{Builtin, CallArgs, EvalError, NodeId, Op, OpKind, Poisoned, ReduceOp};
use crate::ir::vjp::{GradError, Vjp};
use crate::ir::{DType, TensorType};
use crate::tensor::Tensor;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PoolKind {
    Max,
    Avg { count_include_pad: bool },
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Pool2d {
    pub kind: PoolKind,
    pub kernel: [usize; 2],
    pub window: Window2d,
}

impl OpKind for Pool2d {
    fn name(&self) -> &'static str {
        match self.kind {
            PoolKind::Max => "max_pool2d",
            PoolKind::Avg { .. } => "avg_pool2d",
        }
    }

    fn arity(&self) -> (usize, usize) {
        (1, 1)
    }

    fn keeps_samples(&self, inputs: &[&TensorType], batched: &[bool]) -> bool {
        let _ = inputs;
        only_keeps_samples(batched, 0)
    }

    fn infer(&self, inputs: &[&TensorType]) -> Result<TensorType, ShapeError> {
        let x = inputs[0];
        let name = self.name();
        expect_dtype(name, "input", x, DType::F32)?;
        let layout = self.window.layout;
        if x.rank() != 4 {
            return err(format!(
                "{name}: takes an input {}, got {x}",
                layout_shape_words(layout)
            ));
        }
        let [n, c, h, w] = layout.to_nchw(&x.shape);
        let h = self.window.out_dim(name, 0, &h, self.kernel[0])?;
        let w = self.window.out_dim(name, 1, &w, self.kernel[1])?;
        Ok(TensorType::new(DType::F32, layout.from_nchw([n, c, h, w])))
    }

    fn eval(&self, inputs: &[&Tensor], out_shape: &[usize]) -> Result<Tensor, EvalError> {
        let x = elements::<f32>(self.name(), inputs[0])?;
        let layout = self.window.layout;
        let [n, c, h, w] = layout.to_nchw(inputs[0].shape());
        let [kh, kw] = self.kernel;
        let pad = |axis, size, k| self.window.pads(axis, size, k).expect("checked").0;
        let (top, left) = (pad(0, h, kh), pad(1, w, kw));
        let [_, _, out_h, out_w] = layout.to_nchw(out_shape);
        let mut out = vec![0.0f32; n * c * out_h * out_w];
        for (image, channel) in (0..n).flat_map(|i| (0..c).map(move |ch| (i, ch))) {
            for oy in 0..out_h {
                for ox in 0..out_w {
                    let mut max = f64::NEG_INFINITY;
                    let (mut sum, mut count) = (0.0f64, 0usize);
                    for (iy, _) in self.window.taps(0, oy, top, h, kh) {
                        for (ix, _) in self.window.taps(1, ox, left, w, kw) {
                            let v = f64::from(x[layout.index([c, h, w], image, channel, iy, ix)]);
                            max = math::nan_max(max, v);
                            sum += v;
                            count += 1;
                        }
                    }
                    out[layout.index([c, out_h, out_w], image, channel, oy, ox)] = match self.kind {
                        PoolKind::Max => max as f32,
                        PoolKind::Avg {
                            count_include_pad: false,
                        } => (sum / count as f64) as f32,
                        PoolKind::Avg {
                            count_include_pad: true,
                        } => (sum / (kh * kw) as f64) as f32,
                    };
                }
            }
        }
        Ok(Tensor::f32(out_shape.to_vec(), out))
    }

    fn attributes(&self) -> Vec<(&'static str, String)> {
        let mut attributes = vec![(
            "kernel",
            format!("[{}, {}]", self.kernel[0], self.kernel[1]),
        )];
        attributes.extend(self.window.attributes());
        if let PoolKind::Avg { count_include_pad } = self.kind {
            attributes.push(("count_include_pad", count_include_pad.to_string()));
        }
        attributes
    }

    /// `max_pool2d_grad` / `avg_pool2d_grad` (pool_grad.rs), which take
    /// NCHW only: in NHWC, `x` and `g` are permuted to NCHW and the
    /// gradient back.
    fn vjp(
        &self,
        cx: &mut Vjp<'_>,
        _node: NodeId,
        inputs: &[NodeId],
        g: NodeId,
        _wants: &[bool],
    ) -> Result<Vec<Option<NodeId>>, GradError> {
        let layout = self.window.layout;
        let (x, g) = if layout == DataLayout::Nchw {
            (inputs[0], g)
        } else {
            (
                cx.permute(inputs[0], layout.to_nchw_perm().to_vec())?,
                cx.permute(g, layout.to_nchw_perm().to_vec())?,
            )
        };
        let pool = Pool2d {
            window: Window2d {
                layout: DataLayout::Nchw,
                ..self.window
            },
            ..self.clone()
        };
        let grad = cx.add(Op::Pool2dGrad(Pool2dGrad { pool }), &[x, g])?;
        let grad = if layout == DataLayout::Nchw {
            grad
        } else {
            cx.permute(grad, layout.from_nchw_perm().to_vec())?
        };
        Ok(vec![Some(grad)])
    }
}

pub const BUILTIN: Builtin = Builtin {
    names: &["max_pool2d", "avg_pool2d", "global_avg_pool2d"],
    lower,
};

fn lower(name: &str, args: &mut dyn CallArgs) -> Result<(Op, Vec<NodeId>), Poisoned> {
    lower_pool(name, args, 1)
}

/// A pool's call: `tensors` tensor operands (the pool's input first), then
/// the pool's attributes. Also how `pool_grad.rs` reads its calls.
pub(super) fn lower_pool(
    name: &str,
    args: &mut dyn CallArgs,
    tensors: usize,
) -> Result<(Op, Vec<NodeId>), Poisoned> {
    let x = args.tensor()?;
    let mut operands = vec![x];
    for _ in 1..tensors {
        operands.push(args.tensor()?);
    }
    if name == "global_avg_pool2d" {
        let layout = read_layout(args)?;
        let rank = args.operand_type(x).rank();
        if rank != 4 {
            return Err(args.error(format!(
                "takes an input {}, got {}",
                layout_shape_words(layout),
                args.operand_type(x)
            )));
        }
        return Ok((
            Op::Reduce(Reduce {
                op: ReduceOp::Mean,
                axes: layout.spatial_axes().to_vec(),
                keepdims: true,
            }),
            vec![x],
        ));
    }
    // [0, 0] only when absent: read_pair accepts positive sizes only.
    let kernel = read_pair(args, "kernel", [0, 0])?;
    if kernel == [0, 0] {
        return Err(args.error("needs `kernel=` (one int or [height, width])".into()));
    }
    let window = Window2d::read(args, kernel)?;
    let kind = if name == "max_pool2d" {
        PoolKind::Max
    } else {
        PoolKind::Avg {
            count_include_pad: args.bool("count_include_pad", false)?,
        }
    };
    let pool = Pool2d {
        kind,
        kernel,
        window,
    };
    if let super::window::Padding2d::Explicit {
        top,
        left,
        bottom,
        right,
    } = window.padding
    {
        let extent = |axis: usize| (kernel[axis] - 1) * window.dilation[axis] + 1;
        if top.max(bottom) >= extent(0) || left.max(right) >= extent(1) {
            return Err(args.error(format!(
                "padding [{top}, {left}, {bottom}, {right}] must be smaller than the window \
                 ({} x {}) on every side, or some windows would cover only padding",
                extent(0),
                extent(1)
            )));
        }
    }
    Ok((Op::Pool2d(pool), operands))
}
