//! Reductions over axes: `sum`, `mean`, `max`. Sums accumulate in f64.

use super::math::nan_max;
use super::shape::{err, expect_axis, expect_dtype, ShapeError};
use super::values::{elements, StridedOffsets};
use super::{BinaryOp, Cast, CompareOp, Reshape};
use super::{Builtin, CallArgs, EvalError, NodeId, Op, OpKind, Poisoned};
use crate::ir::vjp::{GradError, Vjp};
use crate::ir::{DType, Dim, TensorType};
use crate::tensor::{strides, Tensor};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReduceOp {
    Sum,
    Mean,
    Max,
}

impl ReduceOp {
    pub fn name(self) -> &'static str {
        match self {
            ReduceOp::Sum => "sum",
            ReduceOp::Mean => "mean",
            ReduceOp::Max => "max",
        }
    }
}

/// `op` over `axes` (sorted, distinct); reduced axes are dropped, or kept
/// with size 1 when `keepdims`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Reduce {
    pub op: ReduceOp,
    pub axes: Vec<usize>,
    pub keepdims: bool,
}

/// `[1, 2, 3]`, as the printer shows axis lists.
pub(super) fn show_list(values: &[usize]) -> String {
    let items: Vec<String> = values.iter().map(|x| x.to_string()).collect();
    format!("[{}]", items.join(", "))
}

impl OpKind for Reduce {
    fn name(&self) -> &'static str {
        self.op.name()
    }

    fn arity(&self) -> (usize, usize) {
        (1, 1)
    }

    fn keeps_samples(&self, inputs: &[&TensorType], batched: &[bool]) -> bool {
        let _ = inputs;
        batched[0] && !self.axes.contains(&0)
    }

    fn infer(&self, inputs: &[&TensorType]) -> Result<TensorType, ShapeError> {
        let name = self.name();
        let x = inputs[0];
        expect_dtype(name, "operand", x, DType::F32)?;
        let mut seen = vec![false; x.rank()];
        for &a in &self.axes {
            expect_axis(name, a, x)?;
            if std::mem::replace(&mut seen[a], true) {
                return err(format!("{name}: axis {a} is listed twice"));
            }
        }
        let shape = x
            .shape
            .iter()
            .enumerate()
            .filter_map(|(i, d)| match (seen[i], self.keepdims) {
                (false, _) => Some(d.clone()),
                (true, true) => Some(Dim::known(1)),
                (true, false) => None,
            })
            .collect();
        Ok(TensorType::new(DType::F32, shape))
    }

    fn eval(&self, inputs: &[&Tensor], out_shape: &[usize]) -> Result<Tensor, EvalError> {
        reduce(self.op, inputs[0], &self.axes, out_shape)
    }

    fn attributes(&self) -> Vec<(&'static str, String)> {
        let mut a = vec![("axes", show_list(&self.axes))];
        if self.keepdims {
            a.push(("keepdims", "true".to_string()));
        }
        a
    }

    /// See `reduce_vjp`.
    fn vjp(
        &self,
        cx: &mut Vjp<'_>,
        node: NodeId,
        inputs: &[NodeId],
        g: NodeId,
        _wants: &[bool],
    ) -> Result<Vec<Option<NodeId>>, GradError> {
        Ok(vec![Some(reduce_vjp(
            cx,
            self.op,
            inputs[0],
            node,
            &self.axes,
            self.keepdims,
            g,
        )?)])
    }
}

/// `sum(x, axis=..., keepdims=false)`, `mean(...)`, `max(...)`: `axis` one
/// int or a list; none reduces every axis.
pub const BUILTIN: Builtin = Builtin {
    names: &["sum", "mean", "max"],
    lower,
};

fn lower(name: &str, args: &mut dyn CallArgs) -> Result<(Op, Vec<NodeId>), Poisoned> {
    let x = args.tensor()?;
    let rank = args.operand_type(x).rank();
    let axes = args
        .int_list("axis", false)?
        .unwrap_or_else(|| (0..rank as i64).collect());
    let keepdims = args.bool("keepdims", false)?;
    let mut resolved = Vec::with_capacity(axes.len());
    for a in axes {
        resolved.push(args.resolve_axis(a, rank)?);
    }
    resolved.sort_unstable();
    let op = match name {
        "sum" => ReduceOp::Sum,
        "mean" => ReduceOp::Mean,
        _ => ReduceOp::Max,
    };
    Ok((
        Op::Reduce(Reduce {
            op,
            axes: resolved,
            keepdims,
        }),
        vec![x],
    ))
}

// ---- reference evaluation ----

/// Sum, mean or max over `axes`. An empty `axes` reduces nothing (numpy's
/// `axis=()`); an empty reduced axis gives 0 for sum, NaN for mean (0/0) and
/// an error for max, which has no identity.
pub(super) fn reduce(
    op: ReduceOp,
    x: &Tensor,
    axes: &[usize],
    out_shape: &[usize],
) -> Result<Tensor, EvalError> {
    let values = elements::<f32>(op.name(), x)?;
    // The output with reduced axes kept as size 1; reading it with stride 0
    // on those axes maps each input position to the output it folds into.
    let kept_shape: Vec<usize> = (0..x.shape().len())
        .map(|axis| {
            if axes.contains(&axis) {
                1
            } else {
                x.shape()[axis]
            }
        })
        .collect();
    let mut fold_strides = strides(&kept_shape);
    for &axis in axes {
        fold_strides[axis] = 0;
    }
    let out_len: usize = kept_shape.iter().product();
    let count: usize = axes.iter().map(|&axis| x.shape()[axis]).product();
    if op == ReduceOp::Max && count == 0 && out_len > 0 {
        let axis = axes
            .iter()
            .copied()
            .find(|&a| x.shape()[a] == 0)
            .unwrap_or(0);
        return Err(EvalError::EmptyMax { axis });
    }
    let init = match op {
        ReduceOp::Sum | ReduceOp::Mean => 0.0,
        ReduceOp::Max => f64::NEG_INFINITY,
    };
    let mut accumulators = vec![init; out_len];
    for (&value, target) in values
        .iter()
        .zip(StridedOffsets::new(x.shape(), &fold_strides, 0))
    {
        let acc = &mut accumulators[target];
        *acc = match op {
            ReduceOp::Sum | ReduceOp::Mean => *acc + f64::from(value),
            ReduceOp::Max => nan_max(*acc, f64::from(value)),
        };
    }
    let out = accumulators
        .into_iter()
        .map(|acc| match op {
            ReduceOp::Sum | ReduceOp::Max => acc as f32,
            ReduceOp::Mean => (acc / count as f64) as f32,
        })
        .collect();
    Ok(Tensor::f32(out_shape.to_vec(), out))
}

/// sum: g spread over the reduced axes; mean: also divided by their count;
/// max: g to the positions equal to the maximum, shared among ties.
fn reduce_vjp(
    cx: &mut Vjp<'_>,
    op: ReduceOp,
    x: NodeId,
    y: NodeId,
    axes: &[usize],
    keepdims: bool,
    g: NodeId,
) -> Result<NodeId, GradError> {
    let x_ty: TensorType = cx.ty(x).clone();
    let kept: Vec<Dim> = x_ty
        .shape
        .iter()
        .enumerate()
        .map(|(i, d)| {
            if axes.contains(&i) {
                Dim::known(1)
            } else {
                d.clone()
            }
        })
        .collect();
    let with_kept_axes = |cx: &mut Vjp<'_>, v: NodeId| {
        if keepdims {
            Ok(v)
        } else {
            cx.add(
                Op::Reshape(Reshape {
                    shape: kept.clone(),
                }),
                &[v],
            )
        }
    };
    let gk = with_kept_axes(cx, g)?;
    match op {
        ReduceOp::Sum => cx.broadcast(gk, &x_ty.shape),
        ReduceOp::Mean => {
            let reduced: Vec<Dim> = axes.iter().map(|&a| x_ty.shape[a].clone()).collect();
            let scaled = match crate::ir::dim::product(&reduced).and_then(|n| n.as_known()) {
                Some(n) => cx.mul_scalar(gk, 1.0 / n as f32)?,
                None => {
                    // A symbolic count, computed at run time: the sum of ones.
                    let one = cx.scalar(1.0);
                    let ones = cx.broadcast(one, &reduced)?;
                    let count =
                        cx.reduce(ReduceOp::Sum, ones, (0..reduced.len()).collect(), false)?;
                    cx.binary(BinaryOp::Div, gk, count)?
                }
            };
            cx.broadcast(scaled, &x_ty.shape)
        }
        ReduceOp::Max => {
            // Ties share g evenly (the derivative when they are copies of
            // one value, as a broadcast makes them).
            let yk = with_kept_axes(cx, y)?;
            let at_max = cx.add(Op::Compare(CompareOp::Eq), &[x, yk])?;
            let hits = cx.add(Op::Cast(Cast { to: DType::F32 }), &[at_max])?;
            let ties = cx.reduce(ReduceOp::Sum, hits, axes.to_vec(), true)?;
            let share = cx.binary(BinaryOp::Div, gk, ties)?;
            let zero = cx.scalar(0.0);
            cx.add(Op::Where, &[at_max, share, zero])
        }
    }
}
