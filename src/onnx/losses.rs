//! `NegativeLogLikelihoodLoss` and `SoftmaxCrossEntropyLoss` as lamina ops:
//! each sample's target class picked with `gather_elements` (its weight with
//! `gather`), ignored targets masked with `where`, then the reduction.

use crate::ir::ops::gather_elements::GatherElements;
use crate::ir::ops::{self, BinaryOp, CompareOp, ReduceOp, UnaryOp};
use crate::ir::{Dim, Op};
use crate::tensor::Tensor;

use super::builder::{Builder, Val};
use super::convert::{cast_tensor, float_only, opt, req, Node};

pub fn convert(
    b: &mut Builder,
    n: &Node<'_>,
    ins: &[Option<Val>],
    h: &str,
) -> Result<Vec<Val>, String> {
    let x = req(ins, 0, "input")?;
    float_only(b, x)?;
    let target = req(ins, 1, "target")?;
    let weight = opt(ins, 2);
    let reduction = n.string("reduction").unwrap_or_else(|| "mean".into());
    if !matches!(reduction.as_str(), "none" | "sum" | "mean") {
        return Err(format!("reduction `{reduction}` is not none, sum or mean"));
    }
    let ignore = n.attr("ignore_index").and_then(|a| a.i);
    if n.op_type() == "SoftmaxCrossEntropyLoss" {
        let log_prob = b.op(
            Op::LogSoftmax(ops::LogSoftmax { axis: 1 }),
            &[x],
            &format!("{h}_log_prob"),
        )?;
        let loss = nll(b, &log_prob, target, weight, &reduction, ignore, h)?;
        let mut out = vec![loss];
        if n.wants_output(1) {
            out.push(log_prob);
        }
        return Ok(out);
    }
    Ok(vec![nll(b, x, target, weight, &reduction, ignore, h)?])
}

/// -x[n, target[n, ...], ...] * weight[target], 0 where the target is
/// `ignore`, reduced: `mean` divides by the summed weights of the targets
/// not ignored.
fn nll(
    b: &mut Builder,
    x: &Val,
    target: &Val,
    weight: Option<&Val>,
    reduction: &str,
    ignore: Option<i64>,
    h: &str,
) -> Result<Val, String> {
    let xty = b.ty(x)?;
    let tty = b.ty(target)?;
    if !tty.dtype.is_integer() {
        return Err(format!("the target must be integers, got {tty}"));
    }
    if xty.rank() < 2 || tty.rank() + 1 != xty.rank() {
        return Err(format!(
            "the input must be [N, C, d...] and the target [N, d...], got {xty} and {tty}"
        ));
    }
    // Ignored targets may be any number (out of the class range too): they
    // pick class 0, whose value the mask then drops.
    let (ids, keep) = match ignore {
        Some(ii) => {
            let ignored_id = Val::konst(
                cast_tensor(Tensor::i64(vec![], vec![ii]), tty.dtype)?,
                &format!("{h}_ignore_index"),
            );
            let zero = Val::konst(
                cast_tensor(Tensor::i64(vec![], vec![0]), tty.dtype)?,
                "class_0",
            );
            let ignored = b.compare(CompareOp::Eq, target, &ignored_id, &format!("{h}_ignored"))?;
            let ids = b.select(&ignored, &zero, target, &format!("{h}_target"))?;
            (ids, Some(ignored))
        }
        None => (target.clone(), None),
    };
    let mut column = tty.shape.clone();
    column.insert(1, Dim::known(1));
    let ids_col = b.reshape(&ids, column, &format!("{h}_target_col"))?;
    let picked = b.op(
        Op::GatherElements(GatherElements { axis: 1 }),
        &[x, &ids_col],
        &format!("{h}_picked_col"),
    )?;
    let picked = b.reshape(&picked, tty.shape.clone(), &format!("{h}_picked"))?;
    let w = match weight {
        Some(w) => {
            float_only(b, w)?;
            Some(b.op(
                Op::Gather(ops::Gather { axis: 0 }),
                &[w, &ids],
                &format!("{h}_weight"),
            )?)
        }
        None => None,
    };
    // The effective weight per element: the class weight (or 1), 0 where ignored.
    let w = match (w, keep) {
        (w, Some(ignored)) => {
            // `where` broadcasts over the condition too: a scalar weight of
            // 1 becomes the mask's shape.
            let kept = w.unwrap_or_else(|| b.scalar(1.0));
            Some(b.select(&ignored, &b.scalar(0.0), &kept, &format!("{h}_weight_kept"))?)
        }
        (w, None) => w,
    };
    let weighted = match &w {
        Some(w) => b.binary(BinaryOp::Mul, &picked, w, &format!("{h}_weighted"))?,
        None => picked,
    };
    let all: Vec<usize> = (0..tty.rank()).collect();
    match reduction {
        "none" => b.unary(UnaryOp::Neg, &weighted, h),
        "sum" => {
            let s = b.reduce(ReduceOp::Sum, &weighted, all, false, &format!("{h}_sum"))?;
            b.unary(UnaryOp::Neg, &s, h)
        }
        _ => match &w {
            Some(w) => {
                let s = b.reduce(
                    ReduceOp::Sum,
                    &weighted,
                    all.clone(),
                    false,
                    &format!("{h}_sum"),
                )?;
                let total = b.reduce(ReduceOp::Sum, w, all, false, &format!("{h}_weight_sum"))?;
                let mean = b.binary(BinaryOp::Div, &s, &total, &format!("{h}_mean"))?;
                b.unary(UnaryOp::Neg, &mean, h)
            }
            None => {
                let m = b.reduce(ReduceOp::Mean, &weighted, all, false, &format!("{h}_mean"))?;
                b.unary(UnaryOp::Neg, &m, h)
            }
        },
    }
}
