//! `max_pool2d_grad(x, g, kernel=, ...)` and `avg_pool2d_grad(x, g,
//! kernel=, ...)`: the gradients of `max_pool2d` and `avg_pool2d` with
//! respect to their input `x`, given `g`, the gradient of the pool's output.
//! They take the pool's own attributes (read by the same code) and are what
//! the pools' derivative rules emit; written by hand, they check `g`
//! against the pool of `x`.
//!
//! A max pool sends each window's gradient to the input pixel that won it,
//! the first in the window (row by row) among equal values, as PyTorch
//! does; a NaN wins over numbers. An average pool shares it equally among
//! the taps it divided by: the taps landing on the input, or with
//! `count_include_pad=true` all the window's taps (those in padding are
//! dropped). A window covering no input pixel sends nothing. NCHW only:
//! the NHWC pools' rule permutes around them.

use super::math;
use super::pool::{Pool2d, PoolKind};
use super::shape::{err, ShapeError};
use super::values::elements;
use super::window::DataLayout;
use super::{Builtin, CallArgs, EvalError, NodeId, Op, OpKind, Poisoned};
use crate::ir::TensorType;
use crate::tensor::Tensor;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Pool2dGrad {
    /// The pool being differentiated.
    pub pool: Pool2d,
}

impl OpKind for Pool2dGrad {
    fn name(&self) -> &'static str {
        match self.pool.kind {
            PoolKind::Max => "max_pool2d_grad",
            PoolKind::Avg { .. } => "avg_pool2d_grad",
        }
    }

    fn arity(&self) -> (usize, usize) {
        (2, 2)
    }

    fn infer(&self, inputs: &[&TensorType]) -> Result<TensorType, ShapeError> {
        let (x, g) = (inputs[0], inputs[1]);
        let name = self.name();
        // The pools' NHWC rule permutes around this op, so it never needs NHWC.
        if self.pool.window.layout != DataLayout::Nchw {
            return err(format!(
                "{name}: takes NCHW tensors only, got layout \"{}\"",
                self.pool.window.layout.name()
            ));
        }
        let pooled = self
            .pool
            .infer(&[x])
            .map_err(|ShapeError(m)| ShapeError(format!("{name}: {m}")))?;
        if *g != pooled {
            return err(format!(
                "{name}: the output gradient must have the pool's output type {pooled} \
                 (for the input {x}), got {g}"
            ));
        }
        Ok(x.clone())
    }

    fn eval(&self, inputs: &[&Tensor], out_shape: &[usize]) -> Result<Tensor, EvalError> {
        let name = self.name();
        let x = elements::<f32>(name, inputs[0])?;
        let g = elements::<f32>(name, inputs[1])?;
        let [_, _, h, w] = <[usize; 4]>::try_from(out_shape).expect("rank 4");
        let (out_h, out_w) = (inputs[1].shape()[2], inputs[1].shape()[3]);
        let window = &self.pool.window;
        let [kh, kw] = self.pool.kernel;
        let pad = |axis, size, k| window.pads(axis, size, k).expect("checked").0;
        let (top, left) = (pad(0, h, kh), pad(1, w, kw));
        let mut dx = vec![0.0f64; x.len()];
        let planes = x.chunks_exact(h * w).zip(g.chunks_exact(out_h * out_w));
        for (p, (plane, grads)) in planes.enumerate() {
            let base = p * h * w;
            for oy in 0..out_h {
                for ox in 0..out_w {
                    let grad = f64::from(grads[oy * out_w + ox]);
                    let taps = || {
                        window.taps(0, oy, top, h, kh).flat_map(move |(iy, _)| {
                            window
                                .taps(1, ox, left, w, kw)
                                .map(move |(ix, _)| iy * w + ix)
                        })
                    };
                    match self.pool.kind {
                        PoolKind::Max => {
                            let mut winner: Option<(usize, f64)> = None;
                            for at in taps() {
                                let v = f64::from(plane[at]);
                                let wins = match winner {
                                    None => true,
                                    Some((_, best)) => {
                                        !best.is_nan() && math::nan_max(best, v) != best
                                    }
                                };
                                if wins {
                                    winner = Some((at, v));
                                }
                            }
                            if let Some((at, _)) = winner {
                                dx[base + at] += grad;
                            }
                        }
                        PoolKind::Avg { count_include_pad } => {
                            let count = if count_include_pad {
                                kh * kw
                            } else {
                                taps().count()
                            };
                            for at in taps() {
                                dx[base + at] += grad / count as f64;
                            }
                        }
                    }
                }
            }
        }
        Ok(Tensor::f32(
            out_shape.to_vec(),
            dx.into_iter().map(|v| v as f32).collect(),
        ))
    }

    fn attributes(&self) -> Vec<(&'static str, String)> {
        self.pool.attributes()
    }
}

pub const BUILTIN: Builtin = Builtin {
    names: &["max_pool2d_grad", "avg_pool2d_grad"],
    lower,
};

/// `max_pool2d_grad(x, g, kernel=, stride=, padding=, dilation=)`,
/// `avg_pool2d_grad(..., count_include_pad=)`: the pool's arguments after
/// the two tensors.
fn lower(name: &str, args: &mut dyn CallArgs) -> Result<(Op, Vec<NodeId>), Poisoned> {
    let pool_name = name.trim_end_matches("_grad");
    let (op, operands) = super::pool::lower_pool(pool_name, args, 2)?;
    let Op::Pool2d(pool) = op else {
        unreachable!("lower_pool makes pools")
    };
    Ok((Op::Pool2dGrad(Pool2dGrad { pool }), operands))
}
