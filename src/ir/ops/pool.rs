//! Pooling over height and width of an NCHW tensor:
//! `max_pool2d(x, kernel=, stride=kernel, padding=0, dilation=1)`,
//! `avg_pool2d(x, kernel=, stride=kernel, padding=0, dilation=1,
//! count_include_pad=false)`, and `global_avg_pool2d(x)` (the mean over
//! height and width, kept as `[N, C, 1, 1]`; it lowers to `mean`).
//!
//! Padding never takes part in a max. An average divides by the taps that
//! land on the input, or, with `count_include_pad=true`, by all taps of the
//! window (padding counted as zeros, as PyTorch's default). A window that
//! covers no input pixel (possible only with large dilation) gives -inf
//! (max) or NaN (average without padding counted: 0 / 0).

use super::math;
use super::pool_grad::Pool2dGrad;
use super::reduce::Reduce;
use super::shape::{err, expect_dtype, ShapeError};
use super::values::elements;
use super::window::{read_pair, Window2d};
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

    fn infer(&self, inputs: &[&TensorType]) -> Result<TensorType, ShapeError> {
        let x = inputs[0];
        let name = self.name();
        expect_dtype(name, "input", x, DType::F32)?;
        if x.rank() != 4 {
            return err(format!(
                "{name}: takes an input [batch, channels, height, width], got {x}"
            ));
        }
        let h = self.window.out_dim(name, 0, &x.shape[2], self.kernel[0])?;
        let w = self.window.out_dim(name, 1, &x.shape[3], self.kernel[1])?;
        Ok(TensorType::new(
            DType::F32,
            vec![x.shape[0].clone(), x.shape[1].clone(), h, w],
        ))
    }

    fn eval(&self, inputs: &[&Tensor], out_shape: &[usize]) -> Result<Tensor, EvalError> {
        let x = elements::<f32>(self.name(), inputs[0])?;
        let [n, c, h, w] = <[usize; 4]>::try_from(inputs[0].shape()).expect("rank 4");
        let [kh, kw] = self.kernel;
        let pad = |axis, size, k| self.window.pads(axis, size, k).expect("checked").0;
        let (top, left) = (pad(0, h, kh), pad(1, w, kw));
        let (out_h, out_w) = (out_shape[2], out_shape[3]);
        let mut out = Vec::with_capacity(n * c * out_h * out_w);
        for plane in x.chunks_exact(h * w).take(n * c) {
            for oy in 0..out_h {
                for ox in 0..out_w {
                    let mut max = f64::NEG_INFINITY;
                    let (mut sum, mut count) = (0.0f64, 0usize);
                    for (iy, _) in self.window.taps(0, oy, top, h, kh) {
                        for (ix, _) in self.window.taps(1, ox, left, w, kw) {
                            let v = f64::from(plane[iy * w + ix]);
                            max = math::nan_max(max, v);
                            sum += v;
                            count += 1;
                        }
                    }
                    out.push(match self.kind {
                        PoolKind::Max => max as f32,
                        PoolKind::Avg {
                            count_include_pad: false,
                        } => (sum / count as f64) as f32,
                        PoolKind::Avg {
                            count_include_pad: true,
                        } => (sum / (kh * kw) as f64) as f32,
                    });
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

    /// `max_pool2d_grad` / `avg_pool2d_grad` (pool_grad.rs).
    fn vjp(
        &self,
        cx: &mut Vjp<'_>,
        _node: NodeId,
        inputs: &[NodeId],
        g: NodeId,
        _wants: &[bool],
    ) -> Result<Vec<Option<NodeId>>, GradError> {
        let grad = cx.add(
            Op::Pool2dGrad(Pool2dGrad { pool: self.clone() }),
            &[inputs[0], g],
        )?;
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
        let rank = args.operand_type(x).rank();
        if rank != 4 {
            return Err(args.error(format!(
                "takes an input [batch, channels, height, width], got {}",
                args.operand_type(x)
            )));
        }
        return Ok((
            Op::Reduce(Reduce {
                op: ReduceOp::Mean,
                axes: vec![2, 3],
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
