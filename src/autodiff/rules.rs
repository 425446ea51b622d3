//! The vector-Jacobian rule of every differentiable op: given the gradient
//! `g` of the op's output, the gradient of each operand, built as ops.
//!
//! The rules of ops registered in `Op::kind` are their `OpKind::vjp`, in
//! the op's own file (`ir/ops/unary.rs`, ...). This file is the temporary
//! home of the rules of the families not migrated yet: each moves into its
//! op's file with the family (docs/adding-an-op.md).

use super::{GradError, Vjp};
use crate::ir::ops::{
    Cast, Concat, FusedElementwise, FusedLinear, Gather, LayerNorm, LogSoftmax, MatMul, Permute,
    Reduce, Reshape, ScatterAdd, Slice, Softmax,
};
use crate::ir::{
    BinaryOp, CompareOp, DType, Dim, ExprStep, LinearEpilogue, NodeId, Op, ReduceOp, TensorType,
    UnaryOp,
};

/// The gradient of each operand of `op` (at `node`, on `inputs`) given the
/// gradient `g` of its output. `wants[i]` says whether operand i needs one;
/// an entry may be `None` where it does not (or where no gradient flows,
/// as into a condition or an index).
pub fn vjp(
    cx: &mut Vjp<'_>,
    op: &Op,
    node: NodeId,
    inputs: &[NodeId],
    g: NodeId,
    wants: &[bool],
) -> Result<Vec<Option<NodeId>>, GradError> {
    if let Some(kind) = op.kind() {
        return kind.vjp(cx, node, inputs, g, wants);
    }
    let want = |i: usize| wants.get(i).copied().unwrap_or(false);
    let shape_of = |cx: &Vjp<'_>, i: usize| cx.ty(inputs[i]).shape.clone();
    match op {
                Op::Binary(b) => {
            let [da, db] = binary(cx, *b, inputs[0], inputs[1], node, g, [want(0), want(1)])?;
            Ok(vec![da, db])
        }
        Op::Where => {
            let zero = cx.scalar(0.0);
            let cond = inputs[0];
            let mut out = vec![None, None, None];
            if want(1) {
                let picked = cx.add(Op::Where, &[cond, g, zero])?;
                out[1] = Some(cx.unbroadcast(picked, &shape_of(cx, 1))?);
            }
            if want(2) {
                let picked = cx.add(Op::Where, &[cond, zero, g])?;
                out[2] = Some(cx.unbroadcast(picked, &shape_of(cx, 2))?);
            }
            Ok(out)
        }
        Op::MatMul(MatMul {
            transpose_a,
            transpose_b,
        }) => {
            let [da, db] = matmul(
                cx,
                inputs[0],
                inputs[1],
                *transpose_a,
                *transpose_b,
                g,
                [want(0), want(1)],
            )?;
            Ok(vec![da, db])
        }
        Op::FusedLinear(FusedLinear {
            transpose_b,
            epilogue,
        }) => fused_linear(cx, inputs, *transpose_b, epilogue, g, wants),
        Op::FusedElementwise(FusedElementwise { expr }) => fused_elementwise(cx, &expr.steps, node, inputs, g, wants),
        Op::Softmax(Softmax { axis }) => {
            // dx = y * (g - sum(g * y))
            let gy = cx.mul(g, node)?;
            let s = cx.reduce(ReduceOp::Sum, gy, vec![*axis], true)?;
            let centred = cx.binary(BinaryOp::Sub, g, s)?;
            Ok(vec![Some(cx.mul(node, centred)?)])
        }
        Op::LogSoftmax(LogSoftmax { axis }) => {
            // dx = g - softmax(x) * sum(g)
            let p = cx.add(Op::Unary(UnaryOp::Exp), &[node])?;
            let s = cx.reduce(ReduceOp::Sum, g, vec![*axis], true)?;
            let ps = cx.mul(p, s)?;
            Ok(vec![Some(cx.binary(BinaryOp::Sub, g, ps)?)])
        }
        Op::LayerNorm(LayerNorm { axis, eps }) => layer_norm(cx, inputs, *axis, eps.0, g, wants),
        Op::Reduce(Reduce { op, axes, keepdims }) => {
            Ok(vec![Some(reduce(cx, *op, inputs[0], node, axes, *keepdims, g)?)])
        }
        Op::Permute(Permute { perm }) => {
            let mut inverse = vec![0; perm.len()];
            for (i, &p) in perm.iter().enumerate() {
                inverse[p] = i;
            }
            Ok(vec![Some(cx.add(Op::Permute(Permute { perm: inverse }), &[g])?)])
        }
        Op::Reshape(Reshape { .. }) => {
            let shape = shape_of(cx, 0);
            Ok(vec![Some(cx.add(Op::Reshape(Reshape { shape }), &[g])?)])
        }
        Op::Cast(Cast { .. }) => Ok(vec![Some(g)]),
        Op::Concat(Concat { axis }) => concat(cx, inputs, *axis, g, wants),
        Op::Slice(Slice {
            axis,
            start,
            end: _,
            step,
        }) => Ok(vec![Some(slice(cx, inputs[0], *axis, *start, *step, g)?)]),
        Op::Gather(Gather { axis }) => {
            // The table's gradient: g added back at the rows the ids picked.
            let table_ty = cx.ty(inputs[0]).clone();
            let zeros = cx.zeros(&table_ty)?;
            let scattered = cx.add(Op::ScatterAdd(ScatterAdd { axis: *axis }), &[zeros, inputs[1], g])?;
            Ok(vec![Some(scattered), None])
        }
        Op::Compare(_) => cx.no_rule("its result is a bool, which has no gradient"),
        Op::Input(_) | Op::Param(_) | Op::Constant(_) => cx.no_rule("a leaf has no operands"),
        Op::Unary(_) | Op::Broadcast(_) | Op::ScatterAdd(_) => {
            unreachable!("registered in Op::kind")
        }
    }
}

/// Gradients of `a op b` (output `y`), each summed back to its operand's shape.
fn binary(
    cx: &mut Vjp<'_>,
    op: BinaryOp,
    a: NodeId,
    b: NodeId,
    y: NodeId,
    g: NodeId,
    wants: [bool; 2],
) -> Result<[Option<NodeId>; 2], GradError> {
    let a_shape = cx.ty(a).shape.clone();
    let b_shape = cx.ty(b).shape.clone();
    let (da, db) = match op {
        BinaryOp::Add => (Some(g), Some(g)),
        BinaryOp::Sub => (Some(g), wants[1].then(|| cx.neg(g)).transpose()?),
        BinaryOp::Mul => (
            wants[0].then(|| cx.mul(g, b)).transpose()?,
            wants[1].then(|| cx.mul(g, a)).transpose()?,
        ),
        BinaryOp::Div => {
            let da = wants[0]
                .then(|| cx.binary(BinaryOp::Div, g, b))
                .transpose()?;
            let db = if wants[1] {
                // -g a / b^2 = -g y / b
                let gy = cx.mul(g, y)?;
                let q = cx.binary(BinaryOp::Div, gy, b)?;
                Some(cx.neg(q)?)
            } else {
                None
            };
            (da, db)
        }
        BinaryOp::Pow => {
            let da = if wants[0] {
                // b a^(b-1)
                let one = cx.scalar(1.0);
                let bm1 = cx.binary(BinaryOp::Sub, b, one)?;
                let p = cx.binary(BinaryOp::Pow, a, bm1)?;
                let d = cx.mul(b, p)?;
                Some(cx.mul(g, d)?)
            } else {
                None
            };
            let db = if wants[1] {
                // y ln a
                let ln = cx.add(Op::Unary(UnaryOp::Log), &[a])?;
                let d = cx.mul(y, ln)?;
                Some(cx.mul(g, d)?)
            } else {
                None
            };
            (da, db)
        }
        BinaryOp::Max | BinaryOp::Min => {
            // The gradient goes to the operand chosen; a tie goes to `a`.
            let cmp = if op == BinaryOp::Max {
                CompareOp::Ge
            } else {
                CompareOp::Le
            };
            let a_chosen = cx.add(Op::Compare(cmp), &[a, b])?;
            let zero = cx.scalar(0.0);
            let da = wants[0]
                .then(|| cx.add(Op::Where, &[a_chosen, g, zero]))
                .transpose()?;
            let db = wants[1]
                .then(|| cx.add(Op::Where, &[a_chosen, zero, g]))
                .transpose()?;
            (da, db)
        }
    };
    let da = match (da, wants[0]) {
        (Some(d), true) => Some(cx.unbroadcast(d, &a_shape)?),
        _ => None,
    };
    let db = match (db, wants[1]) {
        (Some(d), true) => Some(cx.unbroadcast(d, &b_shape)?),
        _ => None,
    };
    Ok([da, db])
}

/// C = op(A) @ op(B), op a transpose of the last two axes or not:
/// dop(A) = G op(B)^T and dop(B) = op(A)^T G, each transposed back when the
/// operand was, and summed over batch axes broadcasting added.
fn matmul(
    cx: &mut Vjp<'_>,
    a: NodeId,
    b: NodeId,
    ta: bool,
    tb: bool,
    g: NodeId,
    wants: [bool; 2],
) -> Result<[Option<NodeId>; 2], GradError> {
    let mm = |cx: &mut Vjp<'_>, x: NodeId, y: NodeId, tx: bool, ty: bool| {
        cx.add(
            Op::MatMul(MatMul {
                transpose_a: tx,
                transpose_b: ty,
            }),
            &[x, y],
        )
    };
    let da = if wants[0] {
        let d = if ta {
            mm(cx, b, g, tb, true)?
        } else {
            mm(cx, g, b, false, !tb)?
        };
        let shape = cx.ty(a).shape.clone();
        Some(cx.unbroadcast(d, &shape)?)
    } else {
        None
    };
    let db = if wants[1] {
        let d = if tb {
            mm(cx, g, a, true, ta)?
        } else {
            mm(cx, a, g, !ta, false)?
        };
        let shape = cx.ty(b).shape.clone();
        Some(cx.unbroadcast(d, &shape)?)
    } else {
        None
    };
    Ok([da, db])
}

/// `act(a @ op(b) + bias) + residual`: the pre-activation is recomputed
/// from the operands (the fused node keeps only the result).
fn fused_linear(
    cx: &mut Vjp<'_>,
    inputs: &[NodeId],
    tb: bool,
    epilogue: &LinearEpilogue,
    g: NodeId,
    wants: &[bool],
) -> Result<Vec<Option<NodeId>>, GradError> {
    let (a, b) = (inputs[0], inputs[1]);
    let bias = epilogue.bias.then(|| inputs[2]);
    let mut out = vec![None; inputs.len()];
    if epilogue.residual {
        out[inputs.len() - 1] = Some(g);
    }
    let gz = match epilogue.activation {
        Some(act) => {
            let product = cx.add(
                Op::MatMul(MatMul {
                    transpose_a: false,
                    transpose_b: tb,
                }),
                &[a, b],
            )?;
            let z = match bias {
                Some(bias) => cx.binary(BinaryOp::Add, product, bias)?,
                None => product,
            };
            let y = cx.add(Op::Unary(act), &[z])?;
            act.derivative(cx, z, y, g)?
        }
        None => g,
    };
    if let Some(bias) = bias {
        let shape = cx.ty(bias).shape.clone();
        out[2] = Some(cx.unbroadcast(gz, &shape)?);
    }
    let [da, db] = matmul(cx, a, b, false, tb, gz, [wants[0], wants[1]])?;
    out[0] = da;
    out[1] = db;
    Ok(out)
}

/// A fused expression is differentiated step by step: its intermediate
/// values are recomputed as separate ops (the last is the fused node
/// itself), then each step's rule runs in reverse order.
fn fused_elementwise(
    cx: &mut Vjp<'_>,
    steps: &[ExprStep],
    node: NodeId,
    inputs: &[NodeId],
    g: NodeId,
    wants: &[bool],
) -> Result<Vec<Option<NodeId>>, GradError> {
    let last = steps.len() - 1;
    let mut values: Vec<NodeId> = Vec::with_capacity(steps.len());
    for (i, step) in steps.iter().enumerate() {
        let value = if i == last {
            node
        } else {
            match *step {
                ExprStep::Input(k) => inputs[k],
                ExprStep::Const(c) => cx.scalar(c.0),
                ExprStep::Unary(u, a) => cx.add(Op::Unary(u), &[values[a]])?,
                ExprStep::Binary(b, x, y) => cx.add(Op::Binary(b), &[values[x], values[y]])?,
                ExprStep::Compare(c, x, y) => cx.add(Op::Compare(c), &[values[x], values[y]])?,
                ExprStep::Where(c, x, y) => {
                    cx.add(Op::Where, &[values[c], values[x], values[y]])?
                }
            }
        };
        values.push(value);
    }
    let mut grads: Vec<Vec<NodeId>> = vec![Vec::new(); steps.len()];
    grads[last].push(g);
    let mut out: Vec<Vec<NodeId>> = vec![Vec::new(); inputs.len()];
    for i in (0..steps.len()).rev() {
        if grads[i].is_empty() {
            continue;
        }
        let parts = std::mem::take(&mut grads[i]);
        let gi = cx.sum_all(&parts)?;
        match steps[i] {
            ExprStep::Input(k) => {
                if wants[k] {
                    out[k].push(gi);
                }
            }
            ExprStep::Const(_) | ExprStep::Compare(..) => {}
            ExprStep::Unary(u, a) => {
                let d = u.derivative(cx, values[a], values[i], gi)?;
                grads[a].push(d);
            }
            ExprStep::Binary(b, x, y) => {
                let [dx, dy] = binary(cx, b, values[x], values[y], values[i], gi, [true, true])?;
                grads[x].extend(dx);
                grads[y].extend(dy);
            }
            ExprStep::Where(c, x, y) => {
                let zero = cx.scalar(0.0);
                for (branch, picks) in [(x, [gi, zero]), (y, [zero, gi])] {
                    let picked = cx.add(Op::Where, &[values[c], picks[0], picks[1]])?;
                    let shape = cx.ty(values[branch]).shape.clone();
                    grads[branch].push(cx.unbroadcast(picked, &shape)?);
                }
            }
        }
    }
    out.into_iter()
        .map(|parts| {
            if parts.is_empty() {
                Ok(None)
            } else {
                cx.sum_all(&parts).map(Some)
            }
        })
        .collect()
}

/// layer_norm over the last axis: y = xhat * gain + bias with
/// xhat = (x - mean) * rstd. The statistics are recomputed.
fn layer_norm(
    cx: &mut Vjp<'_>,
    inputs: &[NodeId],
    axis: usize,
    eps: f32,
    g: NodeId,
    wants: &[bool],
) -> Result<Vec<Option<NodeId>>, GradError> {
    let (x, gain, bias) = (inputs[0], inputs[1], inputs[2]);
    let mean = cx.reduce(ReduceOp::Mean, x, vec![axis], true)?;
    let centred = cx.binary(BinaryOp::Sub, x, mean)?;
    let squares = cx.mul(centred, centred)?;
    let var = cx.reduce(ReduceOp::Mean, squares, vec![axis], true)?;
    let eps = cx.scalar(eps);
    let var_eps = cx.binary(BinaryOp::Add, var, eps)?;
    let rstd = cx.add(Op::Unary(UnaryOp::Rsqrt), &[var_eps])?;
    let xhat = cx.mul(centred, rstd)?;
    let mut out = vec![None, None, None];
    if wants[2] {
        let shape = cx.ty(bias).shape.clone();
        out[2] = Some(cx.unbroadcast(g, &shape)?);
    }
    if wants[1] {
        let gx = cx.mul(g, xhat)?;
        let shape = cx.ty(gain).shape.clone();
        out[1] = Some(cx.unbroadcast(gx, &shape)?);
    }
    if wants[0] {
        // dx = rstd (dxhat - mean(dxhat) - xhat mean(dxhat xhat))
        let dxhat = cx.mul(g, gain)?;
        let m1 = cx.reduce(ReduceOp::Mean, dxhat, vec![axis], true)?;
        let dx_xhat = cx.mul(dxhat, xhat)?;
        let m2 = cx.reduce(ReduceOp::Mean, dx_xhat, vec![axis], true)?;
        let t = cx.binary(BinaryOp::Sub, dxhat, m1)?;
        let xm2 = cx.mul(xhat, m2)?;
        let t = cx.binary(BinaryOp::Sub, t, xm2)?;
        out[0] = Some(cx.mul(rstd, t)?);
    }
    Ok(out)
}

/// sum: g spread over the reduced axes; mean: also divided by their count;
/// max: g to the positions equal to the maximum, shared among ties.
fn reduce(
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

/// Each operand gets the slice of g at its place along the axis. Symbolic
/// parts are multiples of one symbolic unit (the concat shape rule admits
/// nothing else): g's axis is split into [multiples, unit], sliced along
/// the multiples, and joined back.
fn concat(
    cx: &mut Vjp<'_>,
    inputs: &[NodeId],
    axis: usize,
    g: NodeId,
    wants: &[bool],
) -> Result<Vec<Option<NodeId>>, GradError> {
    let lens: Vec<Dim> = inputs.iter().map(|&i| cx.ty(i).shape[axis].clone()).collect();
    let symbolic = lens.iter().any(|d| d.as_known().is_none());
    let unit = if symbolic {
        let first = &lens[0];
        first.div(&Dim::known(first.factor()))
    } else {
        Some(Dim::known(1))
    };
    let Some(unit) = unit else {
        return cx.no_rule(format!("the parts along axis {axis} have no common size unit"));
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
            lens.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")
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
fn slice(
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
