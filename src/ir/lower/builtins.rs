//! Built-in functions: each maps a call to one op (or a few, for sugar like
//! `transpose` and `embedding`) and normalises its attributes.
//!
//! Op families registered in `ops::BUILTINS` lower their own calls through
//! the [`CallArgs`] this file implements over `Args`; the rest are still
//! matched here (being migrated into their op files).

use super::args::Args;
use super::{Lowered, Lowerer, Poisoned};
use crate::ir::lower_error::{did_you_mean, LowerError};
use crate::ir::ops::{self, BinaryOp, CallArgs, Float, Init, ReduceOp};
use crate::ir::ops::{
    Cast, Concat, Gather, LayerNorm, LogSoftmax, MatMul, Permute, Reduce, Reshape, Slice, Softmax,
};
use crate::ir::{dim, Dim, NodeId, Op};
use crate::ir::{DType, TensorType};
use crate::span::Span;
use crate::syntax::ast::{self, Expr, PathSegment};

const OTHER_BUILTINS: &[&str] = &[
    "matmul",
    "maximum",
    "minimum",
    "pow",
    "where",
    "softmax",
    "log_softmax",
    "layer_norm",
    "sum",
    "mean",
    "max",
    "transpose",
    "permute",
    "reshape",
    "concat",
    "slice",
    "gather",
    "embedding",
    "cast",
];

const INITIALIZERS: &[&str] = &["zeros", "ones", "uniform", "normal", "xavier", "he"];

pub(super) fn is_builtin(name: &str) -> bool {
    ops::builtin(name).is_some() || OTHER_BUILTINS.contains(&name)
}

fn all_names() -> impl Iterator<Item = &'static str> {
    ops::BUILTINS
        .iter()
        .flat_map(|b| b.names.iter().copied())
        .chain(OTHER_BUILTINS.iter().copied())
}

/// One call's arguments as the op files read them.
struct CallSite<'l, 'a> {
    lw: &'l mut Lowerer<'a>,
    args: &'l mut Args<'a>,
}

impl CallArgs for CallSite<'_, '_> {
    fn tensor(&mut self) -> Lowered<NodeId> {
        self.args.tensor(self.lw)
    }
    fn rest_tensors(&mut self) -> Lowered<Vec<NodeId>> {
        self.args.rest_tensors(self.lw)
    }
    fn int(&mut self, key: &str, default: Option<i64>) -> Lowered<i64> {
        self.args.int(self.lw, key, default)
    }
    fn float(&mut self, key: &str, default: f64) -> Lowered<f64> {
        self.args.float(self.lw, key, default)
    }
    fn bool(&mut self, key: &str, default: bool) -> Lowered<bool> {
        self.args.bool(self.lw, key, default)
    }
    fn int_list(&mut self, key: &str, positional: bool) -> Lowered<Option<Vec<i64>>> {
        self.args.int_list(self.lw, key, positional)
    }
    fn dtype(&mut self, key: &str) -> Lowered<DType> {
        self.args.dtype(self.lw, key)
    }
    fn word(&mut self, key: &str, words: &[&str], default: &'static str) -> Lowered<String> {
        self.args.word(self.lw, key, words, default)
    }
    fn ints_or_word(&mut self, key: &str, words: &[&str]) -> Lowered<Option<ops::IntsOrWord>> {
        self.args.ints_or_word(self.lw, key, words)
    }
    fn operand_type(&self, operand: NodeId) -> &TensorType {
        &self.lw.graph.node(operand).ty
    }
    fn error(&mut self, message: String) -> Poisoned {
        self.lw.error(LowerError::Argument {
            func: self.args.func.clone(),
            message,
            span: self.args.span,
        })
    }
}

/// `axis` counted from the end when negative, checked against `rank`.
fn normalize_axis(lw: &mut Lowerer<'_>, args: &Args<'_>, axis: i64, rank: usize) -> Lowered<usize> {
    let resolved = if axis < 0 { axis + rank as i64 } else { axis };
    if resolved < 0 || resolved >= rank as i64 {
        return Err(lw.error(LowerError::Argument {
            func: args.func.clone(),
            message: format!("axis {axis} is out of range for rank {rank}"),
            span: args.span,
        }));
    }
    Ok(resolved as usize)
}

fn rank(lw: &Lowerer<'_>, id: NodeId) -> usize {
    lw.graph.node(id).ty.rank()
}

pub(super) fn call<'a>(
    lw: &mut Lowerer<'a>,
    func: &ast::Ident,
    call_args: &'a [ast::Arg],
    span: Span,
) -> Lowered<NodeId> {
    let name = func.name.as_str();
    if !is_builtin(name) {
        let hint = if INITIALIZERS.contains(&name) {
            " (initializers go after `param NAME: TYPE =`)".to_string()
        } else {
            let mut candidates: Vec<&str> = all_names().collect();
            candidates.extend(lw.blocks.keys().copied());
            did_you_mean(name, candidates)
        };
        return Err(lw.error(LowerError::UnknownFunction {
            name: name.to_string(),
            span: func.span,
            hint,
        }));
    }
    let mut args = Args::new(lw, name, call_args, span)?;
    let op_and_inputs = lower_call(lw, &mut args, name);
    let finished = args.finish(lw);
    let (op, inputs) = op_and_inputs?;
    finished?;
    lw.node(op, &inputs, span)
}

fn lower_call<'a>(
    lw: &mut Lowerer<'a>,
    args: &mut Args<'a>,
    name: &str,
) -> Lowered<(Op, Vec<NodeId>)> {
    if let Some(builtin) = ops::builtin(name) {
        return (builtin.lower)(name, &mut CallSite { lw, args });
    }
    match name {
        "matmul" => {
            let a = args.tensor(lw)?;
            let b = args.tensor(lw)?;
            let transpose_a = args.bool(lw, "transpose_a", false)?;
            let transpose_b = args.bool(lw, "transpose_b", false)?;
            Ok((
                Op::MatMul(MatMul {
                    transpose_a,
                    transpose_b,
                }),
                vec![a, b],
            ))
        }
        "maximum" | "minimum" | "pow" => {
            let op = match name {
                "maximum" => BinaryOp::Max,
                "minimum" => BinaryOp::Min,
                _ => BinaryOp::Pow,
            };
            let a = args.tensor(lw)?;
            let b = args.tensor(lw)?;
            Ok((Op::Binary(op), vec![a, b]))
        }
        "where" => {
            let c = args.tensor(lw)?;
            let a = args.tensor(lw)?;
            let b = args.tensor(lw)?;
            Ok((Op::Where, vec![c, a, b]))
        }
        "softmax" | "log_softmax" => {
            let x = args.tensor(lw)?;
            let axis = args.int(lw, "axis", Some(-1))?;
            let axis = normalize_axis(lw, args, axis, rank(lw, x))?;
            let op = if name == "softmax" {
                Op::Softmax(Softmax { axis })
            } else {
                Op::LogSoftmax(LogSoftmax { axis })
            };
            Ok((op, vec![x]))
        }
        "layer_norm" => {
            let x = args.tensor(lw)?;
            let gain = args.tensor(lw)?;
            let bias = args.tensor(lw)?;
            let axis = args.int(lw, "axis", Some(-1))?;
            let eps = args.float(lw, "eps", 1e-5)?;
            let axis = normalize_axis(lw, args, axis, rank(lw, x))?;
            Ok((
                Op::LayerNorm(LayerNorm {
                    axis,
                    eps: Float(eps as f32),
                }),
                vec![x, gain, bias],
            ))
        }
        "sum" | "mean" | "max" => {
            let x = args.tensor(lw)?;
            let r = rank(lw, x);
            let axes = args
                .int_list(lw, "axis", false)?
                .unwrap_or_else(|| (0..r as i64).collect());
            let keepdims = args.bool(lw, "keepdims", false)?;
            let mut resolved = Vec::with_capacity(axes.len());
            for a in axes {
                resolved.push(normalize_axis(lw, args, a, r)?);
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
        "transpose" => {
            let x = args.tensor(lw)?;
            let r = rank(lw, x);
            if r < 2 {
                return Err(lw.error(LowerError::Argument {
                    func: "transpose".into(),
                    message: format!("swaps the last two axes and needs rank >= 2, got rank {r}"),
                    span: args.span,
                }));
            }
            let mut perm: Vec<usize> = (0..r).collect();
            perm.swap(r - 2, r - 1);
            Ok((Op::Permute(Permute { perm }), vec![x]))
        }
        "permute" => {
            let x = args.tensor(lw)?;
            let r = rank(lw, x);
            let Some(perm) = args.int_list(lw, "perm", true)? else {
                return Err(lw.error(LowerError::Argument {
                    func: "permute".into(),
                    message: "needs `perm=[...]`".into(),
                    span: args.span,
                }));
            };
            let mut resolved = Vec::with_capacity(perm.len());
            for p in perm {
                resolved.push(normalize_axis(lw, args, p, r)?);
            }
            Ok((Op::Permute(Permute { perm: resolved }), vec![x]))
        }
        "reshape" => {
            let x = args.tensor(lw)?;
            let (items, list_span) = args.list(lw, "shape", true)?;
            let shape = reshape_target(lw, x, items, list_span)?;
            Ok((Op::Reshape(Reshape { shape }), vec![x]))
        }
        "concat" => {
            let inputs = args.rest_tensors(lw)?;
            if inputs.is_empty() {
                return Err(lw.error(LowerError::Arity {
                    func: "concat".into(),
                    expected: "at least 1 tensor".into(),
                    got: 0,
                    span: args.span,
                }));
            }
            let axis = args.int(lw, "axis", Some(0))?;
            let axis = normalize_axis(lw, args, axis, rank(lw, inputs[0]))?;
            Ok((Op::Concat(Concat { axis }), inputs))
        }
        "slice" => {
            let x = args.tensor(lw)?;
            let axis = args.int(lw, "axis", Some(0))?;
            let axis = normalize_axis(lw, args, axis, rank(lw, x))?;
            let start = args.int(lw, "start", Some(0))?;
            let step = args.int(lw, "step", Some(1))?;
            let end = match args.raw("end") {
                Some(e) => lw.dim(e, false, "slice end")?,
                None => lw.graph.node(x).ty.shape[axis].clone(),
            };
            if start < 0 || step < 1 {
                return Err(lw.error(LowerError::Argument {
                    func: "slice".into(),
                    message: format!(
                        "needs start >= 0 and step >= 1, got start={start}, step={step}"
                    ),
                    span: args.span,
                }));
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
        "gather" | "embedding" => {
            let (table, ids) = if name == "gather" {
                let t = args.tensor(lw)?;
                (t, args.tensor(lw)?)
            } else {
                let i = args.tensor(lw)?;
                (args.tensor(lw)?, i)
            };
            let axis = if name == "gather" {
                args.int(lw, "axis", Some(0))?
            } else {
                0
            };
            let axis = normalize_axis(lw, args, axis, rank(lw, table))?;
            Ok((Op::Gather(Gather { axis }), vec![table, ids]))
        }
        "cast" => {
            let x = args.tensor(lw)?;
            let to = args.dtype(lw, "dtype")?;
            Ok((Op::Cast(Cast { to }), vec![x]))
        }
        _ => unreachable!("is_builtin lists `{name}` but lower_call does not handle it"),
    }
}

/// Resolves a reshape target: dims as in types, plus one `-1` inferred from
/// the element count.
fn reshape_target(
    lw: &mut Lowerer<'_>,
    x: NodeId,
    items: &[Expr],
    span: Span,
) -> Lowered<Vec<Dim>> {
    let mut dims: Vec<Option<Dim>> = Vec::with_capacity(items.len());
    let mut failed = false;
    for item in items {
        let is_infer = matches!(item, Expr::Neg { operand, .. } if matches!(**operand, Expr::Int { value: 1, .. }));
        if is_infer {
            dims.push(None);
            continue;
        }
        match lw.dim(item, false, "reshape") {
            Ok(d) => dims.push(Some(d)),
            Err(_) => failed = true,
        }
    }
    if failed {
        return Err(Poisoned);
    }
    let inferred = dims.iter().filter(|d| d.is_none()).count();
    if inferred > 1 {
        return Err(lw.error(LowerError::Argument {
            func: "reshape".into(),
            message: "at most one dimension can be -1".into(),
            span,
        }));
    }
    if inferred == 1 {
        let known: Vec<Dim> = dims.iter().flatten().cloned().collect();
        // Operand types passed the size check, so only `rest` can overflow,
        // and an overflowing `rest` cannot divide the operand's count.
        let total = dim::product(&lw.graph.node(x).ty.shape).unwrap_or(Dim::known(0));
        let rest = dim::product(&known);
        let Some(missing) = rest.as_ref().and_then(|rest| total.div(rest)) else {
            let rest = rest.map_or("too many".to_string(), |r| r.to_string());
            let from = lw.graph.node(x).ty.to_string();
            return Err(lw.error(LowerError::Shape {
                op: "reshape".into(),
                message: format!("reshape: cannot infer -1: {from} has {total} elements, not a multiple of {rest}"),
                span,
            }));
        };
        return Ok(dims
            .into_iter()
            .map(|d| d.unwrap_or_else(|| missing.clone()))
            .collect());
    }
    Ok(dims.into_iter().flatten().collect())
}

/// `zeros`, `ones`, `uniform(low=, high=, seed=)`, `normal(mean=, std=, seed=)`,
/// `xavier(seed=)`, `he(seed=)`.
pub(super) fn initializer<'a>(lw: &mut Lowerer<'a>, e: &'a Expr) -> Lowered<Init> {
    let (name, span, call_args): (&str, Span, &'a [ast::Arg]) = match e {
        Expr::Name(p) => match p.segments.as_slice() {
            [PathSegment::Name(n)] => (n.as_str(), p.span, &[]),
            _ => return Err(bad_init(lw, e.span(), "?")),
        },
        Expr::Call {
            func,
            args,
            prefix: None,
            span,
        } => (func.name.as_str(), *span, args.as_slice()),
        _ => return Err(bad_init(lw, e.span(), "?")),
    };
    if !INITIALIZERS.contains(&name) {
        return Err(bad_init(lw, span, name));
    }
    let mut args = Args::new(lw, name, call_args, span)?;
    let seed = |lw: &mut Lowerer<'a>, args: &mut Args<'a>| -> Lowered<u64> {
        let s = args.int(lw, "seed", Some(0))?;
        u64::try_from(s).map_err(|_| {
            lw.error(LowerError::Argument {
                func: name.to_string(),
                message: "seed must be >= 0".into(),
                span,
            })
        })
    };
    let init = match name {
        "zeros" => Init::Zeros,
        "ones" => Init::Ones,
        "uniform" => Init::Uniform {
            low: Float(args.float(lw, "low", -0.1)? as f32),
            high: Float(args.float(lw, "high", 0.1)? as f32),
            seed: seed(lw, &mut args)?,
        },
        "normal" => Init::Normal {
            mean: Float(args.float(lw, "mean", 0.0)? as f32),
            std: Float(args.float(lw, "std", 0.02)? as f32),
            seed: seed(lw, &mut args)?,
        },
        "xavier" => Init::Xavier {
            seed: seed(lw, &mut args)?,
        },
        _ => Init::He {
            seed: seed(lw, &mut args)?,
        },
    };
    args.finish(lw)?;
    Ok(init)
}

fn bad_init(lw: &mut Lowerer<'_>, span: Span, name: &str) -> Poisoned {
    lw.error(LowerError::Invalid {
        message: format!(
            "`{name}` is not an initializer (expected one of {})",
            INITIALIZERS.join(", ")
        ),
        span,
    })
}
