//! Ops that move elements without arithmetic: `permute` (and `transpose`),
//! `reshape`, `concat`, `slice`. They work on every dtype.

use super::reduce::show_list;
use super::shape::{add_dims, err, expect_axis, ShapeError};
use super::values::{elements, take, with_element_type, Element, StridedOffsets};
use super::ScatterAdd;
use super::{Builtin, CallArgs, EvalError, NodeId, Op, OpKind, Poisoned};
use crate::ir::dim;
use crate::ir::graph::ShapeDisplay;
use crate::ir::vjp::{GradError, Vjp};
use crate::ir::{DType, Dim, TensorType};
use crate::tensor::{strides, Tensor, TensorData};

/// Output axis i is input axis `perm[i]`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Permute {
    pub perm: Vec<usize>,
}

/// Target shape with every dim resolved (no -1 left).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Reshape {
    pub shape: Vec<Dim>,
}

/// Join the operands along `axis`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Concat {
    pub axis: usize,
}

/// Elements `start, start+step, ...` below `end` along `axis`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Slice {
    pub axis: usize,
    pub start: usize,
    pub end: Dim,
    pub step: usize,
}

impl OpKind for Permute {
    fn name(&self) -> &'static str {
        "permute"
    }

    fn arity(&self) -> (usize, usize) {
        (1, 1)
    }

    fn keeps_samples(&self, inputs: &[&TensorType], batched: &[bool]) -> bool {
        let _ = (inputs, batched);
        self.perm.first() == Some(&0)
    }

    fn infer(&self, inputs: &[&TensorType]) -> Result<TensorType, ShapeError> {
        let x = inputs[0];
        let mut sorted = self.perm.clone();
        sorted.sort_unstable();
        if sorted != (0..x.rank()).collect::<Vec<_>>() {
            return err(format!(
                "permute: {:?} is not a permutation of the axes of {x}",
                self.perm
            ));
        }
        Ok(TensorType::new(
            x.dtype,
            self.perm.iter().map(|&p| x.shape[p].clone()).collect(),
        ))
    }

    fn eval(&self, inputs: &[&Tensor], _out_shape: &[usize]) -> Result<Tensor, EvalError> {
        permute(inputs[0], &self.perm)
    }

    fn attributes(&self) -> Vec<(&'static str, String)> {
        vec![("perm", show_list(&self.perm))]
    }

    /// g permuted back.
    fn vjp(
        &self,
        cx: &mut Vjp<'_>,
        _node: NodeId,
        _inputs: &[NodeId],
        g: NodeId,
        _wants: &[bool],
    ) -> Result<Vec<Option<NodeId>>, GradError> {
        let mut inverse = vec![0; self.perm.len()];
        for (i, &p) in self.perm.iter().enumerate() {
            inverse[p] = i;
        }
        Ok(vec![Some(
            cx.add(Op::Permute(Permute { perm: inverse }), &[g])?,
        )])
    }
}

impl OpKind for Reshape {
    fn name(&self) -> &'static str {
        "reshape"
    }

    fn arity(&self) -> (usize, usize) {
        (1, 1)
    }

    fn keeps_samples(&self, inputs: &[&TensorType], batched: &[bool]) -> bool {
        // Axis 0 kept, so each sample keeps its element count and, row-major,
        // its place.
        let _ = batched;
        inputs[0].shape.first().is_some() && inputs[0].shape.first() == self.shape.first()
    }

    fn infer(&self, inputs: &[&TensorType]) -> Result<TensorType, ShapeError> {
        let x = inputs[0];
        let shape = &self.shape;
        let (Some(from), Some(to)) = (dim::product(&x.shape), dim::product(shape)) else {
            return err(format!(
                "reshape: {x} or {} has more elements than fit in memory",
                ShapeDisplay(shape)
            ));
        };
        if from != to {
            return err(format!(
                "reshape: cannot reshape {x} ({from} elements) to {} ({to} elements)",
                ShapeDisplay(shape)
            ));
        }
        Ok(TensorType::new(x.dtype, shape.clone()))
    }

    fn eval(&self, inputs: &[&Tensor], out_shape: &[usize]) -> Result<Tensor, EvalError> {
        Ok(reshape(inputs[0], out_shape))
    }

    fn attributes(&self) -> Vec<(&'static str, String)> {
        vec![("shape", ShapeDisplay(&self.shape).to_string())]
    }

    /// g reshaped back.
    fn vjp(
        &self,
        cx: &mut Vjp<'_>,
        _node: NodeId,
        inputs: &[NodeId],
        g: NodeId,
        _wants: &[bool],
    ) -> Result<Vec<Option<NodeId>>, GradError> {
        let shape = cx.ty(inputs[0]).shape.clone();
        Ok(vec![Some(cx.add(Op::Reshape(Reshape { shape }), &[g])?)])
    }
}

impl OpKind for Concat {
    fn name(&self) -> &'static str {
        "concat"
    }

    fn arity(&self) -> (usize, usize) {
        (1, usize::MAX)
    }

    fn keeps_samples(&self, inputs: &[&TensorType], batched: &[bool]) -> bool {
        let _ = inputs;
        self.axis != 0 && batched.iter().all(|&b| b)
    }

    fn infer(&self, inputs: &[&TensorType]) -> Result<TensorType, ShapeError> {
        let axis = self.axis;
        let first = inputs[0];
        expect_axis("concat", axis, first)?;
        let mut total = first.shape[axis].clone();
        for t in &inputs[1..] {
            let same_rest = t.rank() == first.rank()
                && t.dtype == first.dtype
                && (0..t.rank()).all(|i| i == axis || t.shape[i] == first.shape[i]);
            if !same_rest {
                return err(format!(
                    "concat: {first} and {t} differ outside axis {axis}"
                ));
            }
            total = add_dims(&total, &t.shape[axis]).ok_or_else(|| {
                ShapeError(format!(
                    "concat: cannot add sizes {total} and {} along axis {axis}",
                    t.shape[axis]
                ))
            })?;
        }
        let mut shape = first.shape.clone();
        shape[axis] = total;
        Ok(TensorType::new(first.dtype, shape))
    }

    fn eval(&self, inputs: &[&Tensor], out_shape: &[usize]) -> Result<Tensor, EvalError> {
        concat(inputs, self.axis, out_shape)
    }

    fn attributes(&self) -> Vec<(&'static str, String)> {
        vec![("axis", self.axis.to_string())]
    }

    /// See `concat_vjp`.
    fn vjp(
        &self,
        cx: &mut Vjp<'_>,
        _node: NodeId,
        inputs: &[NodeId],
        g: NodeId,
        wants: &[bool],
    ) -> Result<Vec<Option<NodeId>>, GradError> {
        concat_vjp(cx, inputs, self.axis, g, wants)
    }
}

impl OpKind for Slice {
    fn name(&self) -> &'static str {
        "slice"
    }

    fn arity(&self) -> (usize, usize) {
        (1, 1)
    }

    fn keeps_samples(&self, inputs: &[&TensorType], batched: &[bool]) -> bool {
        let _ = (inputs, batched);
        self.axis != 0
    }

    fn infer(&self, inputs: &[&TensorType]) -> Result<TensorType, ShapeError> {
        let Slice {
            axis,
            start,
            ref end,
            step,
        } = *self;
        let x = inputs[0];
        expect_axis("slice", axis, x)?;
        if step == 0 {
            return err("slice: step must be at least 1");
        }
        let len = match (end.as_known(), x.shape[axis].as_known()) {
            (Some(e), size) => {
                if let Some(size) = size {
                    if e > size {
                        return err(format!(
                            "slice: end {e} is past the size {size} of axis {axis} of {x}"
                        ));
                    }
                }
                if e < start {
                    return err(format!("slice: end {e} is before start {start}"));
                }
                Dim::known((e - start).div_ceil(step))
            }
            (None, _) if start == 0 && step == 1 => end.clone(),
            (None, _) => {
                return err(format!(
                    "slice: a symbolic end ({end}) needs start 0 and step 1"
                ))
            }
        };
        let mut shape = x.shape.clone();
        shape[axis] = len;
        Ok(TensorType::new(x.dtype, shape))
    }

    /// A symbolic end bound too large is a run-time data error, reported
    /// as such rather than as the shape rule's generic message.
    fn check_values(&self, inputs: &[&Tensor]) -> Result<(), EvalError> {
        match (self.end.as_known(), inputs) {
            (Some(end), [x]) => check_slice_end(x, self.axis, end),
            _ => Ok(()),
        }
    }

    fn eval(&self, inputs: &[&Tensor], out_shape: &[usize]) -> Result<Tensor, EvalError> {
        slice(inputs[0], self.axis, self.start, self.step, out_shape)
    }

    fn attributes(&self) -> Vec<(&'static str, String)> {
        vec![
            ("axis", self.axis.to_string()),
            ("start", self.start.to_string()),
            ("end", self.end.to_string()),
            ("step", self.step.to_string()),
        ]
    }

    /// See `slice_vjp`.
    fn vjp(
        &self,
        cx: &mut Vjp<'_>,
        _node: NodeId,
        inputs: &[NodeId],
        g: NodeId,
        _wants: &[bool],
    ) -> Result<Vec<Option<NodeId>>, GradError> {
        Ok(vec![Some(slice_vjp(
            cx, inputs[0], self.axis, self.start, self.step, g,
        )?)])
    }
}

/// `transpose(x)`, `permute(x, perm)`, `reshape(x, shape)`,
/// `concat(a, b, ..., axis=0)`, `slice(x, axis=0, start=0, end=<size>, step=1)`.
pub const BUILTIN: Builtin = Builtin {
    names: &["transpose", "permute", "reshape", "concat", "slice"],
    lower,
};

fn lower(name: &str, args: &mut dyn CallArgs) -> Result<(Op, Vec<NodeId>), Poisoned> {
    match name {
        "transpose" => {
            let x = args.tensor()?;
            let rank = args.operand_type(x).rank();
            if rank < 2 {
                return Err(args.error(format!(
                    "swaps the last two axes and needs rank >= 2, got rank {rank}"
                )));
            }
            let mut perm: Vec<usize> = (0..rank).collect();
            perm.swap(rank - 2, rank - 1);
            Ok((Op::Permute(Permute { perm }), vec![x]))
        }
        "permute" => {
            let x = args.tensor()?;
            let rank = args.operand_type(x).rank();
            let Some(perm) = args.int_list("perm", true)? else {
                return Err(args.error("needs `perm=[...]`".into()));
            };
            let mut resolved = Vec::with_capacity(perm.len());
            for p in perm {
                resolved.push(args.resolve_axis(p, rank)?);
            }
            Ok((Op::Permute(Permute { perm: resolved }), vec![x]))
        }
        "reshape" => {
            let x = args.tensor()?;
            let shape = reshape_target(args, x)?;
            Ok((Op::Reshape(Reshape { shape }), vec![x]))
        }
        "concat" => {
            let inputs = args.rest_tensors()?;
            let Some(&first) = inputs.first() else {
                return Err(args.arity_error("at least 1 tensor", 0));
            };
            let axis = args.axis("axis", 0, first)?;
            Ok((Op::Concat(Concat { axis }), inputs))
        }
        _ => {
            let x = args.tensor()?;
            let axis = args.axis("axis", 0, x)?;
            let start = args.int("start", Some(0))?;
            let step = args.int("step", Some(1))?;
            let end = match args.dim("end", "slice end")? {
                Some(end) => end,
                None => args.operand_type(x).shape[axis].clone(),
            };
            if start < 0 || step < 1 {
                return Err(args.error(format!(
                    "needs start >= 0 and step >= 1, got start={start}, step={step}"
                )));
            }
            Ok((
                Op::Slice(Slice {
                    axis,
                    start: start as usize,
                    end,
                    step: step as usize,
                }),
                vec![x],
            ))
        }
    }
}

/// A reshape target: dims as in types, plus one `-1` inferred from the
/// element count.
fn reshape_target(args: &mut dyn CallArgs, x: NodeId) -> Result<Vec<Dim>, Poisoned> {
    let (dims, span) = args.dim_list("shape", "reshape")?;
    let inferred = dims.iter().filter(|d| d.is_none()).count();
    if inferred > 1 {
        return Err(args.error_at(span, "at most one dimension can be -1".into()));
    }
    if inferred == 1 {
        let known: Vec<Dim> = dims.iter().flatten().cloned().collect();
        // Operand types passed the size check, so only `rest` can overflow,
        // and an overflowing `rest` cannot divide the operand's count.
        let from = args.operand_type(x).clone();
        let total = dim::product(&from.shape).unwrap_or(Dim::known(0));
        let rest = dim::product(&known);
        let Some(missing) = rest.as_ref().and_then(|rest| total.div(rest)) else {
            let rest = rest.map_or("too many".to_string(), |r| r.to_string());
            return Err(args.shape_error_at(
                span,
                format!(
                    "reshape: cannot infer -1: {from} has {total} elements, not a multiple of {rest}"
                ),
            ));
        };
        return Ok(dims
            .into_iter()
            .map(|d| d.unwrap_or_else(|| missing.clone()))
            .collect());
    }
    Ok(dims.into_iter().flatten().collect())
}

// ---- reference evaluation ----

/// Output axis i is input axis `perm[i]`.
pub(super) fn permute(x: &Tensor, perm: &[usize]) -> Result<Tensor, EvalError> {
    let own = strides(x.shape());
    let out_shape: Vec<usize> = perm.iter().map(|&p| x.shape()[p]).collect();
    let view_strides: Vec<usize> = perm.iter().map(|&p| own[p]).collect();
    take(
        "permute",
        x,
        out_shape.clone(),
        StridedOffsets::new(&out_shape, &view_strides, 0),
    )
}

/// Swaps the last two axes (for matmul's transpose flags).
pub(super) fn transpose_last_two(x: &Tensor) -> Result<Tensor, EvalError> {
    let rank = x.shape().len();
    let mut perm: Vec<usize> = (0..rank).collect();
    perm.swap(rank - 2, rank - 1);
    permute(x, &perm)
}

/// Row-major data is unchanged; only the shape is new.
pub(super) fn reshape(x: &Tensor, out_shape: &[usize]) -> Tensor {
    Tensor::new(out_shape.to_vec(), x.data().clone())
}

pub(super) fn concat(
    parts: &[&Tensor],
    axis: usize,
    out_shape: &[usize],
) -> Result<Tensor, EvalError> {
    fn typed<T: Element>(
        parts: &[&Tensor],
        axis: usize,
        out_shape: &[usize],
    ) -> Result<TensorData, EvalError> {
        // Each part contributes one contiguous block of `size[axis] * inner`
        // elements per index of the axes before `axis`.
        let outer: usize = out_shape[..axis].iter().product();
        let inner: usize = out_shape[axis + 1..].iter().product();
        let slices = parts
            .iter()
            .map(|p| Ok((elements::<T>("concat", p)?, p.shape()[axis] * inner)))
            .collect::<Result<Vec<_>, EvalError>>()?;
        let mut values = Vec::with_capacity(out_shape.iter().product());
        for o in 0..outer {
            for (part, block) in &slices {
                values.extend_from_slice(&part[o * block..(o + 1) * block]);
            }
        }
        Ok(T::wrap(values))
    }
    let dtype = parts.first().map_or(DType::F32, |p| p.dtype());
    let data = with_element_type!(dtype, T => typed::<T>(parts, axis, out_shape)?);
    Ok(Tensor::new(out_shape.to_vec(), data))
}

/// Elements `start, start + step, ...` below `end` along `axis`. `end` past
/// the axis size is an error, not a clamp: symbolic ends are bound at run
/// time, and a too-short input must not silently give a shorter result.
pub(super) fn check_slice_end(x: &Tensor, axis: usize, end: usize) -> Result<(), EvalError> {
    match x.shape().get(axis) {
        Some(&size) if end > size => Err(EvalError::SliceEnd { end, size, axis }),
        _ => Ok(()),
    }
}

pub(super) fn slice(
    x: &Tensor,
    axis: usize,
    start: usize,
    step: usize,
    out_shape: &[usize],
) -> Result<Tensor, EvalError> {
    let mut view_strides = strides(x.shape());
    let base = start * view_strides[axis];
    view_strides[axis] *= step;
    take(
        "slice",
        x,
        out_shape.to_vec(),
        StridedOffsets::new(out_shape, &view_strides, base),
    )
}

/// Each operand gets the slice of g at its place along the axis. Symbolic
/// parts are multiples of one symbolic unit (the concat shape rule admits
/// nothing else): g's axis is split into [multiples, unit], sliced along
/// the multiples, and joined back.
fn concat_vjp(
    cx: &mut Vjp<'_>,
    inputs: &[NodeId],
    axis: usize,
    g: NodeId,
    wants: &[bool],
) -> Result<Vec<Option<NodeId>>, GradError> {
    let lens: Vec<Dim> = inputs
        .iter()
        .map(|&i| cx.ty(i).shape[axis].clone())
        .collect();
    let symbolic = lens.iter().any(|d| d.as_known().is_none());
    let unit = if symbolic {
        let first = &lens[0];
        first.div(&Dim::known(first.factor()))
    } else {
        Some(Dim::known(1))
    };
    let Some(unit) = unit else {
        return cx.no_rule(format!(
            "the parts along axis {axis} have no common size unit"
        ));
    };
    let multiples: Option<Vec<usize>> = lens
        .iter()
        .map(|d| {
            if symbolic {
                (d.div(&Dim::known(d.factor())).as_ref() == Some(&unit)).then(|| d.factor())
            } else {
                d.as_known()
            }
        })
        .collect();
    let Some(multiples) = multiples else {
        return cx.no_rule(format!(
            "the parts along axis {axis} are not multiples of one size ({})",
            lens.iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    };
    let total: usize = multiples.iter().sum();
    let g_shape = cx.ty(g).shape.clone();
    // g with its concat axis split into [total multiples, unit].
    let split = if symbolic {
        let mut shape = g_shape[..axis].to_vec();
        shape.push(Dim::known(total));
        shape.push(unit.clone());
        shape.extend(g_shape[axis + 1..].iter().cloned());
        cx.add(Op::Reshape(Reshape { shape }), &[g])?
    } else {
        g
    };
    let mut out = Vec::with_capacity(inputs.len());
    let mut offset = 0;
    for (i, &input) in inputs.iter().enumerate() {
        let n = multiples[i];
        if wants[i] {
            let part = cx.add(
                Op::Slice(Slice {
                    axis,
                    start: offset,
                    end: Dim::known(offset + n),
                    step: 1,
                }),
                &[split],
            )?;
            let part = if symbolic {
                let shape = cx.ty(input).shape.clone();
                cx.add(Op::Reshape(Reshape { shape }), &[part])?
            } else {
                part
            };
            out.push(Some(part));
        } else {
            out.push(None);
        }
        offset += n;
    }
    Ok(out)
}

/// g scattered back to the positions the slice took; zeros elsewhere.
fn slice_vjp(
    cx: &mut Vjp<'_>,
    x: NodeId,
    axis: usize,
    start: usize,
    step: usize,
    g: NodeId,
) -> Result<NodeId, GradError> {
    let x_ty = cx.ty(x).clone();
    let g_ty = cx.ty(g).clone();
    if x_ty.shape == g_ty.shape {
        return Ok(g);
    }
    let Some(taken) = g_ty.shape[axis].as_known() else {
        return cx.no_rule(format!(
            "the slice keeps a symbolic part ({}) of axis {axis}, which is not all of it ({})",
            g_ty.shape[axis], x_ty.shape[axis]
        ));
    };
    let positions: Vec<i64> = (0..taken).map(|j| (start + j * step) as i64).collect();
    let ids = cx.ids(positions);
    let zeros = cx.zeros(&x_ty)?;
    cx.add(Op::ScatterAdd(ScatterAdd { axis }), &[zeros, ids, g])
}
