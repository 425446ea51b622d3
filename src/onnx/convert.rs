//! One ONNX node at a time into lamina ops.
//!
//! Each supported op type maps to one lamina op or a short composition of
//! them (`HardSigmoid` is `maximum(0, minimum(1, alpha*x + beta))`). Inputs
//! that ONNX passes as tensors but lamina needs as attributes (`Reshape`'s
//! shape, `Slice`'s starts, reduction axes in newer opsets) must be known at
//! import time: initializers, constants, or shape arithmetic on known dims.

use std::sync::Arc;

use crate::dtype::DType;
use crate::ir::ops::{self, BinaryOp, CompareOp, Float, ReduceOp, UnaryOp};
use crate::ir::{dim, Dim, Op};
use crate::tensor::{Tensor, TensorData};

use super::builder::{Builder, Val};
use super::proto::{AttributeProto, NodeProto};
use super::tensors;

/// The ONNX op types this importer translates (default domain).
pub const SUPPORTED: &[&str] = &[
    "Abs",
    "Add",
    "And",
    "ArgMax",
    "ArgMin",
    "Attention",
    "AveragePool",
    "BatchNormalization",
    "Cast",
    "CastLike",
    "Celu",
    "Clip",
    "Concat",
    "Constant",
    "Cos",
    "CumSum",
    "ConstantOfShape",
    "Conv",
    "DepthToSpace",
    "Div",
    "Dropout",
    "Elu",
    "Equal",
    "Erf",
    "Exp",
    "Expand",
    "EyeLike",
    "Flatten",
    "Gather",
    "GatherElements",
    "Gelu",
    "Gemm",
    "GlobalAveragePool",
    "GlobalMaxPool",
    "Greater",
    "GreaterOrEqual",
    "HardSigmoid",
    "HardSwish",
    "Identity",
    "InstanceNormalization",
    "IsInf",
    "IsNaN",
    "LayerNormalization",
    "LeakyRelu",
    "Less",
    "LessOrEqual",
    "Log",
    "LogSoftmax",
    "LpNormalization",
    "MatMul",
    "Max",
    "MaxPool",
    "Mean",
    "MeanVarianceNormalization",
    "Min",
    "Mish",
    "Mod",
    "Mul",
    "Neg",
    "NegativeLogLikelihoodLoss",
    "Not",
    "Or",
    "Pad",
    "Pow",
    "PRelu",
    "Range",
    "Reciprocal",
    "ReduceL1",
    "ReduceL2",
    "ReduceLogSum",
    "ReduceLogSumExp",
    "ReduceMax",
    "ReduceMean",
    "ReduceMin",
    "ReduceSum",
    "ReduceSumSquare",
    "Relu",
    "Reshape",
    "Resize",
    "RMSNormalization",
    "Scatter",
    "ScatterElements",
    "Selu",
    "Shape",
    "Shrink",
    "Sigmoid",
    "Sign",
    "Sin",
    "Size",
    "Slice",
    "Softmax",
    "SoftmaxCrossEntropyLoss",
    "Softplus",
    "Softsign",
    "SpaceToDepth",
    "Split",
    "Sqrt",
    "Squeeze",
    "Sub",
    "Sum",
    "Swish",
    "Tanh",
    "ThresholdedRelu",
    "TopK",
    "Tile",
    "Transpose",
    "Trilu",
    "Unsqueeze",
    "Where",
    "Xor",
];

/// Op types that carry subgraphs: named as control flow, not as missing ops.
pub const CONTROL_FLOW: &[&str] = &["If", "Loop", "Scan", "SequenceMap"];

pub struct Node<'a> {
    pub proto: &'a NodeProto,
    pub opset: i64,
}

impl Node<'_> {
    pub(super) fn op_type(&self) -> &str {
        self.proto.op_type.as_deref().unwrap_or("")
    }

    pub(super) fn attr(&self, name: &str) -> Option<&AttributeProto> {
        self.proto
            .attribute
            .iter()
            .find(|a| a.name.as_deref() == Some(name))
    }

    pub(super) fn int(&self, name: &str, default: i64) -> i64 {
        self.attr(name).and_then(|a| a.i).unwrap_or(default)
    }

    pub(super) fn float(&self, name: &str, default: f32) -> f32 {
        self.attr(name).and_then(|a| a.f).unwrap_or(default)
    }

    pub(super) fn ints(&self, name: &str) -> Option<Vec<i64>> {
        self.attr(name).map(|a| a.ints.clone())
    }

    pub(super) fn string(&self, name: &str) -> Option<String> {
        self.attr(name)
            .and_then(|a| a.s.as_ref())
            .map(|s| String::from_utf8_lossy(s).into_owned())
    }

    pub(super) fn output(&self, i: usize) -> &str {
        self.proto.output.get(i).map(String::as_str).unwrap_or("")
    }

    /// The name the node's first result takes in the written model.
    pub(super) fn hint(&self) -> String {
        let out = self.output(0);
        if out.is_empty() {
            self.proto.name.clone().unwrap_or_else(|| "v".into())
        } else {
            out.to_string()
        }
    }

    pub(super) fn wants_output(&self, i: usize) -> bool {
        !self.output(i).is_empty()
    }
}

pub(super) fn req<'v>(ins: &'v [Option<Val>], i: usize, what: &str) -> Result<&'v Val, String> {
    ins.get(i)
        .and_then(|v| v.as_ref())
        .ok_or_else(|| format!("input {i} ({what}) is missing"))
}

pub(super) fn opt(ins: &[Option<Val>], i: usize) -> Option<&Val> {
    ins.get(i).and_then(|v| v.as_ref())
}

/// Integer values of a known tensor (axes, pads, shapes, starts...).
pub(super) fn known_ints(v: &Val, what: &str) -> Result<Vec<i64>, String> {
    match v {
        Val::Const { value, .. } => match value.data() {
            TensorData::I64(d) => Ok(d.clone()),
            TensorData::I32(d) => Ok(d.iter().map(|&x| x as i64).collect()),
            _ => Err(format!("{what} must be integers")),
        },
        Val::Dims { dims, .. } => dims
            .iter()
            .map(|d| d.as_known().map(|k| k as i64))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| format!("{what} depends on symbolic dims")),
        Val::Rt { .. } => Err(format!(
            "{what} must be known when the model is imported (an initializer, a constant, or computed from shapes), but it is computed at run time"
        )),
    }
}

pub(super) fn known_f32(v: &Val, what: &str) -> Result<f32, String> {
    match v.as_const().map(|t| t.data()) {
        Some(TensorData::F32(d)) if d.len() == 1 => Ok(d[0]),
        Some(TensorData::I64(d)) if d.len() == 1 => Ok(d[0] as f32),
        Some(TensorData::I32(d)) if d.len() == 1 => Ok(d[0] as f32),
        _ => Err(format!(
            "{what} must be known when the model is imported (a scalar)"
        )),
    }
}

/// An entry of a shape argument: a number (possibly -1 or 0 with their
/// ONNX meanings) or a symbolic dim.
#[derive(Clone, Debug)]
enum ShapeEntry {
    Int(i64),
    Sym(Dim),
}

fn shape_arg(v: &Val, what: &str) -> Result<Vec<ShapeEntry>, String> {
    match v {
        Val::Dims { dims, .. } => Ok(dims
            .iter()
            .map(|d| match d.as_known() {
                Some(k) => ShapeEntry::Int(k as i64),
                None => ShapeEntry::Sym(d.clone()),
            })
            .collect()),
        _ => Ok(known_ints(v, what)?
            .into_iter()
            .map(ShapeEntry::Int)
            .collect()),
    }
}

pub(super) fn axis(a: i64, rank: usize) -> Result<usize, String> {
    let r = if a < 0 { a + rank as i64 } else { a };
    if r < 0 || r >= rank as i64 {
        return Err(format!("axis {a} is out of range for rank {rank}"));
    }
    Ok(r as usize)
}

fn axes(list: &[i64], rank: usize) -> Result<Vec<usize>, String> {
    let mut out = list
        .iter()
        .map(|&a| axis(a, rank))
        .collect::<Result<Vec<_>, _>>()?;
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

fn known_dims(b: &Builder, v: &Val, what: &str) -> Result<Vec<usize>, String> {
    b.ty(v)?
        .known_shape()
        .ok_or_else(|| format!("{what} needs a known shape, got {}", b.ty(v).unwrap()))
}

fn i64_tensor(values: Vec<i64>) -> Tensor {
    let n = values.len();
    Tensor::i64(vec![n], values)
}

/// A shape value: a known i64 vector, or a `Dims` when a dim is symbolic.
fn dims_val(dims: Vec<Dim>, scalar: bool, hint: &str) -> Val {
    let known: Option<Vec<i64>> = dims
        .iter()
        .map(|d| d.as_known().map(|k| k as i64))
        .collect();
    match known {
        Some(k) if scalar => Val::konst(Tensor::i64(vec![], k), hint),
        Some(k) => Val::konst(i64_tensor(k), hint),
        None => Val::Dims { dims, scalar },
    }
}

/// Translates one node; returns its outputs in order (`None` for outputs
/// the node does not produce here because nothing names them).
pub fn convert(b: &mut Builder, n: &Node<'_>, ins: &[Option<Val>]) -> Result<Vec<Val>, String> {
    let h = n.hint();
    let x = || req(ins, 0, "X");
    let one = |v: Val| Ok(vec![v]);
    match n.op_type() {
        "Identity" => one(x()?.clone()),
        "Abs" | "Exp" | "Log" | "Sqrt" | "Erf" | "Neg" | "Reciprocal" | "Relu" | "Sigmoid"
        | "Tanh" | "Sin" | "Cos" => {
            let u = match n.op_type() {
                "Abs" => UnaryOp::Abs,
                "Exp" => UnaryOp::Exp,
                "Log" => UnaryOp::Log,
                "Sqrt" => UnaryOp::Sqrt,
                "Erf" => UnaryOp::Erf,
                "Neg" => UnaryOp::Neg,
                "Reciprocal" => UnaryOp::Recip,
                "Relu" => UnaryOp::Relu,
                "Sigmoid" => UnaryOp::Sigmoid,
                "Sin" => UnaryOp::Sin,
                "Cos" => UnaryOp::Cos,
                _ => UnaryOp::Tanh,
            };
            let x = x()?;
            if let (Some(t), "Neg" | "Abs") = (x.as_const(), n.op_type()) {
                if t.dtype().is_integer() {
                    let v: Vec<i64> = ints_of(t)
                        .into_iter()
                        .map(|v| {
                            if n.op_type() == "Neg" {
                                v.wrapping_neg()
                            } else {
                                v.wrapping_abs()
                            }
                        })
                        .collect();
                    let r = cast_tensor(
                        Tensor::new(t.shape().to_vec(), TensorData::I64(v)),
                        t.dtype(),
                    )?;
                    return one(Val::konst(r, &h));
                }
            }
            float_only(b, x)?;
            one(b.unary(u, x, &h)?)
        }
        "Mod" => {
            let (a, c) = (req(ins, 0, "A")?, req(ins, 1, "B")?);
            match fold_int_binary(if n.int("fmod", 0) != 0 { "Fmod" } else { "Mod" }, a, c, &h)? {
                Some(v) => one(v),
                None => Err("computes on run-time values; lamina has no remainder op (only known integers are folded)".into()),
            }
        }
        "Add" | "Sub" | "Mul" | "Div" => {
            let (a, c) = (req(ins, 0, "A")?, req(ins, 1, "B")?);
            if let Some(v) = fold_int_binary(n.op_type(), a, c, &h)? {
                return one(v);
            }
            // f32, or two operands of one integer type (the op's shape rule
            // says which).
            let op = match n.op_type() {
                "Add" => BinaryOp::Add,
                "Sub" => BinaryOp::Sub,
                "Mul" => BinaryOp::Mul,
                _ => BinaryOp::Div,
            };
            one(b.binary(op, a, c, &h)?)
        }
        "Pow" => {
            let (a, e) = (req(ins, 0, "X")?, req(ins, 1, "Y")?);
            float_only(b, a)?;
            let e = b.cast(e, DType::F32, &format!("{h}_exponent"))?;
            one(b.binary(BinaryOp::Pow, a, &e, &h)?)
        }
        "Max" | "Min" | "Sum" | "Mean" => {
            let op = match n.op_type() {
                "Max" => BinaryOp::Max,
                "Min" => BinaryOp::Min,
                _ => BinaryOp::Add,
            };
            let mut acc = req(ins, 0, "data_0")?.clone();
            if n.op_type() == "Mean" {
                float_only(b, &acc)?;
            }
            let count = ins.iter().flatten().count();
            for (i, v) in ins.iter().flatten().enumerate().skip(1) {
                let last = i + 1 == count && n.op_type() != "Mean";
                let name = if last { h.clone() } else { format!("{h}_{i}") };
                acc = b.binary(op, &acc, v, &name)?;
            }
            if n.op_type() == "Mean" {
                acc = b.binary(BinaryOp::Div, &acc, &b.scalar(count as f32), &h)?;
            }
            one(acc)
        }
        "Equal" | "Less" | "Greater" | "LessOrEqual" | "GreaterOrEqual" => {
            let c = match n.op_type() {
                "Equal" => CompareOp::Eq,
                "Less" => CompareOp::Lt,
                "Greater" => CompareOp::Gt,
                "LessOrEqual" => CompareOp::Le,
                _ => CompareOp::Ge,
            };
            one(b.compare(c, req(ins, 0, "A")?, req(ins, 1, "B")?, &h)?)
        }
        "Not" => {
            let x = x()?;
            bool_only(b, x)?;
            let f = b.cast(x, DType::F32, &format!("{h}_f32"))?;
            one(b.compare(CompareOp::Eq, &f, &b.scalar(0.0), &h)?)
        }
        "And" | "Or" | "Xor" => {
            let (p, q) = (req(ins, 0, "A")?, req(ins, 1, "B")?);
            bool_only(b, p)?;
            bool_only(b, q)?;
            one(match n.op_type() {
                "And" => b.select(p, q, p, &h)?,
                "Or" => b.select(p, p, q, &h)?,
                _ => b.compare(CompareOp::Ne, p, q, &h)?,
            })
        }
        "Where" => one(b.select(
            req(ins, 0, "condition")?,
            req(ins, 1, "X")?,
            req(ins, 2, "Y")?,
            &h,
        )?),
        "IsNaN" => {
            let x = x()?;
            float_only(b, x)?;
            one(b.compare(CompareOp::Ne, x, x, &h)?)
        }
        "IsInf" => {
            let x = x()?;
            float_only(b, x)?;
            let pos = n.int("detect_positive", 1) != 0;
            let neg = n.int("detect_negative", 1) != 0;
            let inf = Val::konst(Tensor::scalar(f32::INFINITY), "inf");
            let r = match (pos, neg) {
                (true, true) => {
                    let a = b.unary(UnaryOp::Abs, x, &format!("{h}_abs"))?;
                    b.compare(CompareOp::Eq, &a, &inf, &h)?
                }
                (true, false) => b.compare(CompareOp::Eq, x, &inf, &h)?,
                (false, true) => {
                    let m = b.unary(UnaryOp::Neg, x, &format!("{h}_neg"))?;
                    b.compare(CompareOp::Eq, &m, &inf, &h)?
                }
                (false, false) => b
                    .compare(CompareOp::Ne, x, x, &format!("{h}_nan"))
                    .and_then(|nan| {
                        let f = b.cast(&nan, DType::F32, &format!("{h}_f"))?;
                        b.compare(CompareOp::Lt, &f, &b.scalar(0.0), &h)
                    })?,
            };
            one(r)
        }
        "Sign" => {
            let x = x()?;
            float_only(b, x)?;
            let pos = b.compare(CompareOp::Gt, x, &b.scalar(0.0), &format!("{h}_pos"))?;
            let neg = b.compare(CompareOp::Lt, x, &b.scalar(0.0), &format!("{h}_neg"))?;
            let inner = b.select(&neg, &b.scalar(-1.0), &b.scalar(0.0), &format!("{h}_n"))?;
            // where(neg, -1, 0) is a plain f32 of x's shape only if x is.
            one(b.select(&pos, &b.scalar(1.0), &inner, &h)?)
        }
        "LeakyRelu" | "PRelu" => {
            let x = x()?;
            float_only(b, x)?;
            let slope = if n.op_type() == "PRelu" {
                req(ins, 1, "slope")?.clone()
            } else {
                b.scalar(n.float("alpha", 0.01))
            };
            let neg = b.compare(CompareOp::Lt, x, &b.scalar(0.0), &format!("{h}_neg"))?;
            let scaled = b.binary(BinaryOp::Mul, x, &slope, &format!("{h}_scaled"))?;
            one(b.select(&neg, &scaled, x, &h)?)
        }
        "ThresholdedRelu" => {
            let x = x()?;
            float_only(b, x)?;
            let above = b.compare(
                CompareOp::Gt,
                x,
                &b.scalar(n.float("alpha", 1.0)),
                &format!("{h}_above"),
            )?;
            one(b.select(&above, x, &b.scalar(0.0), &h)?)
        }
        "Elu" | "Selu" | "Celu" => {
            let x = x()?;
            float_only(b, x)?;
            let (alpha, gamma) = match n.op_type() {
                "Elu" => (n.float("alpha", 1.0), 1.0),
                "Selu" => (n.float("alpha", 1.673_263_2), n.float("gamma", 1.050_701)),
                _ => (n.float("alpha", 1.0), 1.0),
            };
            let inner = if n.op_type() == "Celu" {
                b.binary(BinaryOp::Div, x, &b.scalar(alpha), &format!("{h}_scaled"))?
            } else {
                x.clone()
            };
            let e = b.unary(UnaryOp::Exp, &inner, &format!("{h}_exp"))?;
            let em1 = b.binary(BinaryOp::Sub, &e, &b.scalar(1.0), &format!("{h}_expm1"))?;
            let negpart = b.binary(
                BinaryOp::Mul,
                &em1,
                &b.scalar(alpha),
                &format!("{h}_negpart"),
            )?;
            let cond = if n.op_type() == "Selu" {
                b.compare(CompareOp::Le, x, &b.scalar(0.0), &format!("{h}_neg"))?
            } else {
                b.compare(CompareOp::Lt, x, &b.scalar(0.0), &format!("{h}_neg"))?
            };
            if gamma == 1.0 {
                one(b.select(&cond, &negpart, x, &h)?)
            } else {
                let sel = b.select(&cond, &negpart, x, &format!("{h}_unscaled"))?;
                one(b.binary(BinaryOp::Mul, &sel, &b.scalar(gamma), &h)?)
            }
        }
        "HardSigmoid" | "HardSwish" => {
            let x = x()?;
            float_only(b, x)?;
            let (alpha, beta) = if n.op_type() == "HardSwish" {
                (1.0 / 6.0, 0.5)
            } else {
                (n.float("alpha", 0.2), n.float("beta", 0.5))
            };
            let lin = b.binary(BinaryOp::Mul, x, &b.scalar(alpha), &format!("{h}_scaled"))?;
            let lin = b.binary(
                BinaryOp::Add,
                &lin,
                &b.scalar(beta),
                &format!("{h}_shifted"),
            )?;
            let lo = b.binary(BinaryOp::Min, &lin, &b.scalar(1.0), &format!("{h}_capped"))?;
            let name = if n.op_type() == "HardSwish" {
                format!("{h}_gate")
            } else {
                h.clone()
            };
            let hs = b.binary(BinaryOp::Max, &lo, &b.scalar(0.0), &name)?;
            if n.op_type() == "HardSwish" {
                one(b.binary(BinaryOp::Mul, x, &hs, &h)?)
            } else {
                one(hs)
            }
        }
        "Softplus" | "Mish" => {
            let x = x()?;
            float_only(b, x)?;
            let e = b.unary(UnaryOp::Exp, x, &format!("{h}_exp"))?;
            let e1 = b.binary(BinaryOp::Add, &e, &b.scalar(1.0), &format!("{h}_exp1"))?;
            if n.op_type() == "Softplus" {
                return one(b.unary(UnaryOp::Log, &e1, &h)?);
            }
            let sp = b.unary(UnaryOp::Log, &e1, &format!("{h}_softplus"))?;
            let t = b.unary(UnaryOp::Tanh, &sp, &format!("{h}_tanh"))?;
            one(b.binary(BinaryOp::Mul, x, &t, &h)?)
        }
        "Softsign" => {
            let x = x()?;
            float_only(b, x)?;
            let a = b.unary(UnaryOp::Abs, x, &format!("{h}_abs"))?;
            let d = b.binary(BinaryOp::Add, &a, &b.scalar(1.0), &format!("{h}_den"))?;
            one(b.binary(BinaryOp::Div, x, &d, &h)?)
        }
        "Swish" => {
            let x = x()?;
            float_only(b, x)?;
            let ax = b.binary(
                BinaryOp::Mul,
                x,
                &b.scalar(n.float("alpha", 1.0)),
                &format!("{h}_scaled"),
            )?;
            let s = b.unary(UnaryOp::Sigmoid, &ax, &format!("{h}_gate"))?;
            one(b.binary(BinaryOp::Mul, x, &s, &h)?)
        }
        "Shrink" => {
            let x = x()?;
            float_only(b, x)?;
            let (bias, lambd) = (n.float("bias", 0.0), n.float("lambd", 0.5));
            let lo = b.compare(CompareOp::Lt, x, &b.scalar(-lambd), &format!("{h}_below"))?;
            let hi = b.compare(CompareOp::Gt, x, &b.scalar(lambd), &format!("{h}_above"))?;
            let up = b.binary(BinaryOp::Add, x, &b.scalar(bias), &format!("{h}_up"))?;
            let down = b.binary(BinaryOp::Sub, x, &b.scalar(bias), &format!("{h}_down"))?;
            let zero = b.binary(BinaryOp::Mul, x, &b.scalar(0.0), &format!("{h}_zero"))?;
            let inner = b.select(&hi, &down, &zero, &format!("{h}_hi"))?;
            one(b.select(&lo, &up, &inner, &h)?)
        }
        "Gelu" => {
            let x = x()?;
            float_only(b, x)?;
            let u = match n.string("approximate").as_deref() {
                Some("tanh") => UnaryOp::GeluTanh,
                _ => UnaryOp::Gelu,
            };
            one(b.unary(u, x, &h)?)
        }
        "Clip" => {
            let x = x()?;
            float_only(b, x)?;
            let (lo, hi) = if n.opset < 11 {
                (
                    Some(b.scalar(n.float("min", f32::MIN))),
                    Some(b.scalar(n.float("max", f32::MAX))),
                )
            } else {
                (opt(ins, 1).cloned(), opt(ins, 2).cloned())
            };
            // Clip(0, 6) and Clip(0, +inf) are activations: written as
            // `relu6` / `relu`, the conv and linear fusions take them into
            // the GEMM epilogue (a maximum/minimum pair they do not).
            let bound = |v: &Option<Val>| v.as_ref().map(|v| known_f32(v, "").ok());
            let activation = match (bound(&lo), bound(&hi)) {
                (Some(Some(l)), Some(Some(h))) if l == 0.0 && h == 6.0 => Some(UnaryOp::Relu6),
                (Some(Some(l)), None) if l == 0.0 => Some(UnaryOp::Relu),
                (Some(Some(l)), Some(Some(h))) if l == 0.0 && h == f32::INFINITY => {
                    Some(UnaryOp::Relu)
                }
                _ => None,
            };
            if let Some(activation) = activation {
                return one(b.unary(activation, x, &h)?);
            }
            let mut v = x.clone();
            if let Some(lo) = lo {
                let name = if hi.is_some() {
                    format!("{h}_lo")
                } else {
                    h.clone()
                };
                v = b.binary(BinaryOp::Max, &v, &lo, &name)?;
            }
            if let Some(hi) = hi {
                v = b.binary(BinaryOp::Min, &v, &hi, &h)?;
            }
            one(v)
        }
        "Softmax" | "LogSoftmax" => {
            let x = x()?;
            float_only(b, x)?;
            let ty = b.ty(x)?;
            let r = ty.rank();
            let make = |axis| {
                if n.op_type() == "Softmax" {
                    Op::Softmax(ops::Softmax { axis })
                } else {
                    Op::LogSoftmax(ops::LogSoftmax { axis })
                }
            };
            if n.opset >= 13 {
                let a = axis(n.int("axis", -1), r)?;
                return one(b.op(make(a), &[x], &h)?);
            }
            // Before opset 13 the input is flattened to 2-D at `axis` and
            // normalised over the whole second part.
            let a = axis(n.int("axis", 1), r.max(1))?;
            if a + 1 == r {
                return one(b.op(make(a), &[x], &h)?);
            }
            let outer = product(&ty.shape[..a])?;
            let inner = product(&ty.shape[a..])?;
            let flat = b.reshape(x, vec![outer, inner], &format!("{h}_flat"))?;
            let s = b.op(make(1), &[&flat], &format!("{h}_2d"))?;
            one(b.reshape(&s, ty.shape.clone(), &h)?)
        }
        "MatMul" => one(matmul(b, req(ins, 0, "A")?, req(ins, 1, "B")?, &h)?),
        "Gemm" => {
            let (a, w) = (req(ins, 0, "A")?, req(ins, 1, "B")?);
            let (alpha, beta) = (n.float("alpha", 1.0), n.float("beta", 1.0));
            let c = opt(ins, 2);
            let last = c.is_none() && alpha == 1.0;
            let mm = b.op(
                Op::MatMul(ops::MatMul {
                    transpose_a: n.int("transA", 0) != 0,
                    transpose_b: n.int("transB", 0) != 0,
                }),
                &[a, w],
                &if last { h.clone() } else { format!("{h}_mm") },
            )?;
            let mut y = mm;
            if alpha != 1.0 {
                let name = if c.is_none() {
                    h.clone()
                } else {
                    format!("{h}_scaled")
                };
                y = b.binary(BinaryOp::Mul, &y, &b.scalar(alpha), &name)?;
            }
            if let Some(c) = c {
                let c = if beta == 1.0 {
                    c.clone()
                } else {
                    b.binary(BinaryOp::Mul, c, &b.scalar(beta), &format!("{h}_bias"))?
                };
                y = b.binary(BinaryOp::Add, &y, &c, &h)?;
            }
            one(y)
        }
        "LayerNormalization" => layer_norm(b, n, ins, &h),
        "Attention" => attention(b, n, ins, &h),
        "RMSNormalization" => {
            let x = x()?;
            float_only(b, x)?;
            let r = b.rank(x)?;
            let a = axis(n.int("axis", -1), r)?;
            let eps = n.float("epsilon", 1e-5);
            let sq = b.binary(BinaryOp::Mul, x, x, &format!("{h}_sq"))?;
            let ms = b.reduce(
                ReduceOp::Mean,
                &sq,
                (a..r).collect(),
                true,
                &format!("{h}_meansq"),
            )?;
            let ms = b.binary(BinaryOp::Add, &ms, &b.scalar(eps), &format!("{h}_var"))?;
            let inv = b.unary(UnaryOp::Rsqrt, &ms, &format!("{h}_inv"))?;
            let normed = b.binary(BinaryOp::Mul, x, &inv, &format!("{h}_normed"))?;
            one(b.binary(BinaryOp::Mul, &normed, req(ins, 1, "scale")?, &h)?)
        }
        "BatchNormalization" => {
            if n.int("training_mode", 0) != 0
                || (1..n.proto.output.len()).any(|i| n.wants_output(i))
            {
                return Err("training mode (running statistics outputs) is not supported".into());
            }
            let x = x()?;
            float_only(b, x)?;
            let r = b.rank(x)?;
            if r < 2 {
                return Err("input must have rank >= 2".into());
            }
            let eps = n.float("epsilon", 1e-5);
            let [scale, bias, mean, var] = [
                req(ins, 1, "scale")?,
                req(ins, 2, "B")?,
                req(ins, 3, "input_mean")?,
                req(ins, 4, "input_var")?,
            ];
            // lamina's own batch_norm when every operand is an f32 [C]
            // vector: fold-batch-norm then folds it into the convolution
            // before it (an exporter's eval-mode graph keeps it separate).
            let channels = b.ty(x)?.shape[1].clone();
            let f32_vector = |b: &Builder, v: &Val| {
                b.ty(v)
                    .is_ok_and(|t| t.dtype == DType::F32 && t.shape == [channels.clone()])
            };
            if b.dtype(x)? == DType::F32
                && eps.is_finite()
                && eps >= 0.0
                && [scale, bias, mean, var].iter().all(|v| f32_vector(b, v))
            {
                return one(b.op(
                    Op::BatchNorm(ops::batch_norm::BatchNorm { eps: Float(eps) }),
                    &[x, mean, var, scale, bias],
                    &h,
                )?);
            }
            let per_channel = |b: &mut Builder, v: &Val, what: &str| -> Result<Val, String> {
                let c = b.ty(v)?.shape;
                let mut shape = c.clone();
                shape.extend(std::iter::repeat_n(Dim::known(1), r - 2));
                b.reshape(v, shape, &format!("{h}_{what}"))
            };
            let scale = per_channel(b, scale, "scale")?;
            let bias = per_channel(b, bias, "bias")?;
            let mean = per_channel(b, mean, "mean")?;
            let var = per_channel(b, var, "var")?;
            let var = b.binary(BinaryOp::Add, &var, &b.scalar(eps), &format!("{h}_vareps"))?;
            let inv = b.unary(UnaryOp::Rsqrt, &var, &format!("{h}_inv"))?;
            let k = b.binary(BinaryOp::Mul, &scale, &inv, &format!("{h}_k"))?;
            let c = b.binary(BinaryOp::Sub, x, &mean, &format!("{h}_centered"))?;
            let y = b.binary(BinaryOp::Mul, &c, &k, &format!("{h}_scaled"))?;
            one(b.binary(BinaryOp::Add, &y, &bias, &h)?)
        }
        "InstanceNormalization" | "MeanVarianceNormalization" => {
            let x = x()?;
            float_only(b, x)?;
            let r = b.rank(x)?;
            let (over, eps) = if n.op_type() == "InstanceNormalization" {
                ((2..r).collect::<Vec<_>>(), n.float("epsilon", 1e-5))
            } else {
                (axes(&n.ints("axes").unwrap_or(vec![0, 2, 3]), r)?, 1e-9)
            };
            if n.op_type() == "MeanVarianceNormalization" {
                return one(normalize(b, x, &over, eps, &h)?);
            }
            let normed = normalize(b, x, &over, eps, &format!("{h}_normed"))?;
            let per_channel = |b: &mut Builder, v: &Val, what: &str| -> Result<Val, String> {
                let mut shape = b.ty(v)?.shape;
                shape.extend(std::iter::repeat_n(Dim::known(1), r - 2));
                b.reshape(v, shape, &format!("{h}_{what}"))
            };
            let scale = per_channel(b, req(ins, 1, "scale")?, "scale")?;
            let bias = per_channel(b, req(ins, 2, "B")?, "bias")?;
            let y = b.binary(BinaryOp::Mul, &normed, &scale, &format!("{h}_scaled"))?;
            one(b.binary(BinaryOp::Add, &y, &bias, &h)?)
        }
        "LpNormalization" => {
            let x = x()?;
            float_only(b, x)?;
            let a = axis(n.int("axis", -1), b.rank(x)?)?;
            let norm = match n.int("p", 2) {
                1 => {
                    let ab = b.unary(UnaryOp::Abs, x, &format!("{h}_abs"))?;
                    b.reduce(ReduceOp::Sum, &ab, vec![a], true, &format!("{h}_norm"))?
                }
                2 => {
                    let sq = b.binary(BinaryOp::Mul, x, x, &format!("{h}_sq"))?;
                    let s = b.reduce(ReduceOp::Sum, &sq, vec![a], true, &format!("{h}_sumsq"))?;
                    b.unary(UnaryOp::Sqrt, &s, &format!("{h}_norm"))?
                }
                p => return Err(format!("p={p} (only 1 and 2 are defined)")),
            };
            one(b.binary(BinaryOp::Div, x, &norm, &h)?)
        }
        "GlobalAveragePool" | "GlobalMaxPool" => {
            let x = x()?;
            float_only(b, x)?;
            let r = b.rank(x)?;
            let op = if n.op_type() == "GlobalAveragePool" {
                ReduceOp::Mean
            } else {
                ReduceOp::Max
            };
            one(b.reduce(op, x, (2..r).collect(), true, &h)?)
        }
        "ReduceSum" | "ReduceMean" | "ReduceMax" | "ReduceMin" | "ReduceL1" | "ReduceL2"
        | "ReduceSumSquare" | "ReduceLogSum" | "ReduceLogSumExp" => reduce(b, n, ins, &h),
        "Transpose" => {
            let x = x()?;
            let r = b.rank(x)?;
            let perm = match n.ints("perm") {
                Some(p) => p
                    .iter()
                    .map(|&a| axis(a, r))
                    .collect::<Result<Vec<_>, _>>()?,
                None => (0..r).rev().collect(),
            };
            if perm.iter().copied().eq(0..r) {
                return one(x.clone());
            }
            one(b.op(Op::Permute(ops::Permute { perm }), &[x], &h)?)
        }
        "Reshape" => {
            let x = x()?;
            let target = if n.opset < 5 {
                n.ints("shape")
                    .unwrap_or_default()
                    .into_iter()
                    .map(ShapeEntry::Int)
                    .collect()
            } else {
                shape_arg(req(ins, 1, "shape")?, "the shape")?
            };
            let shape = reshape_dims(&b.ty(x)?.shape, &target, n.int("allowzero", 0) != 0)?;
            one(b.reshape(x, shape, &h)?)
        }
        "Flatten" => {
            let x = x()?;
            let ty = b.ty(x)?;
            let a = n.int("axis", 1);
            let a = if a < 0 { a + ty.rank() as i64 } else { a };
            if a < 0 || a > ty.rank() as i64 {
                return Err(format!("axis {a} is out of range for rank {}", ty.rank()));
            }
            let a = a as usize;
            let shape = vec![product(&ty.shape[..a])?, product(&ty.shape[a..])?];
            one(b.reshape(x, shape, &h)?)
        }
        "Squeeze" | "Unsqueeze" => squeeze(b, n, ins, &h),
        "Concat" => {
            let vals: Vec<&Val> = ins.iter().flatten().collect();
            if vals.iter().any(|v| matches!(v, Val::Dims { .. })) {
                let mut dims = Vec::new();
                for v in &vals {
                    for e in shape_arg(v, "a shape part")? {
                        dims.push(match e {
                            ShapeEntry::Sym(d) => d,
                            ShapeEntry::Int(i) if i >= 0 => Dim::known(i as usize),
                            ShapeEntry::Int(i) => {
                                return Err(format!(
                                    "concatenates the number {i} with symbolic dims"
                                ))
                            }
                        });
                    }
                }
                return one(dims_val(dims, false, &h));
            }
            let first = vals.first().ok_or("needs at least one input")?;
            let a = axis(n.int("axis", 0), b.rank(first)?)?;
            // ONNX allows empty operands; lamina's concat needs each to
            // match, and an empty one adds nothing.
            let parts: Vec<&Val> = vals
                .iter()
                .copied()
                .filter(|v| {
                    b.ty(v)
                        .map(|t| t.shape.get(a).and_then(Dim::as_known) != Some(0))
                        .unwrap_or(true)
                })
                .collect();
            if parts.len() == 1 {
                return one(parts[0].clone());
            }
            if parts.is_empty() {
                return one((*first).clone());
            }
            one(b.op(Op::Concat(ops::Concat { axis: a }), &parts, &h)?)
        }
        "Split" => split(b, n, ins, &h),
        "Slice" => one(slice(b, n, ins, &h)?),
        "Gather" => {
            let (data, ids) = (req(ins, 0, "data")?, req(ins, 1, "indices")?);
            if let Val::Dims { dims, .. } = data {
                let picks = known_ints(ids, "the indices into a symbolic shape")?;
                let scalar = b.rank(ids)? == 0;
                let mut out = Vec::new();
                for p in picks {
                    let i = axis(p, dims.len())?;
                    out.push(dims[i].clone());
                }
                return one(dims_val(out, scalar, &h));
            }
            let a = axis(n.int("axis", 0), b.rank(data)?)?;
            one(b.op(Op::Gather(ops::Gather { axis: a }), &[data, ids], &h)?)
        }
        "Cast" | "CastLike" => {
            let x = x()?;
            let to = if n.op_type() == "Cast" {
                tensors::dtype_of(n.int("to", 0) as i32)?
            } else {
                b.dtype(req(ins, 1, "target_type")?)?
            };
            if let Val::Dims { .. } = x {
                if to.is_integer() {
                    return one(x.clone());
                }
            }
            if b.dtype(x)? == to {
                return one(x.clone());
            }
            one(b.op(Op::Cast(ops::Cast { to }), &[x], &h)?)
        }
        "Constant" => {
            let a = n.proto.attribute.first().ok_or("has no value attribute")?;
            let name = a.name.as_deref().unwrap_or("");
            let t = match name {
                "value" => tensors::to_tensor(a.t.as_ref().ok_or("`value` holds no tensor")?)?,
                "value_float" => Tensor::scalar(a.f.unwrap_or(0.0)),
                "value_floats" => Tensor::f32(vec![a.floats.len()], a.floats.clone()),
                "value_int" => Tensor::i64(vec![], vec![a.i.unwrap_or(0)]),
                "value_ints" => i64_tensor(a.ints.clone()),
                other => return Err(format!("`{other}` constants are not supported")),
            };
            one(Val::konst(t, &h))
        }
        "ConstantOfShape" => {
            let shape = known_ints(x()?, "the shape")?;
            let value = match n.attr("value").and_then(|a| a.t.as_ref()) {
                Some(t) => tensors::to_tensor(t)?,
                None => Tensor::scalar(0.0),
            };
            let dims = shape
                .iter()
                .map(|&d| usize::try_from(d).map_err(|_| format!("negative dim {d}")))
                .collect::<Result<Vec<_>, _>>()?;
            one(Val::konst(fill(&value, dims)?, &h))
        }
        "EyeLike" => {
            let x = x()?;
            let dims = known_dims(b, x, "EyeLike")?;
            if dims.len() != 2 {
                return Err("input must be 2-D".into());
            }
            let k = n.int("k", 0);
            let to = match n.attr("dtype").and_then(|a| a.i) {
                Some(code) => tensors::dtype_of(code as i32)?,
                None => b.dtype(x)?,
            };
            let ones: Vec<f32> = (0..dims[0] * dims[1])
                .map(|i| ((i % dims[1]) as i64 - (i / dims[1]) as i64 == k) as u8 as f32)
                .collect();
            let t = cast_tensor(Tensor::f32(dims, ones), to)?;
            one(Val::konst(t, &h))
        }
        "Shape" => {
            let x = x()?;
            let shape = b.ty(x)?.shape;
            let r = shape.len() as i64;
            let clamp = |v: i64| (if v < 0 { v + r } else { v }).clamp(0, r) as usize;
            let start = clamp(n.int("start", 0));
            let end = clamp(n.int("end", r));
            let dims = if start < end {
                shape[start..end].to_vec()
            } else {
                vec![]
            };
            one(dims_val(dims, false, &h))
        }
        "Size" => {
            let x = x()?;
            let total = product(&b.ty(x)?.shape)?;
            one(dims_val(vec![total], true, &h))
        }
        "Range" => {
            let (s, l, d) = (
                req(ins, 0, "start")?,
                req(ins, 1, "limit")?,
                req(ins, 2, "delta")?,
            );
            one(Val::konst(range(s, l, d)?, &h))
        }
        "Expand" => {
            let x = x()?;
            let target = shape_arg(req(ins, 1, "shape")?, "the shape")?;
            let target: Vec<Dim> = target
                .into_iter()
                .map(|e| match e {
                    ShapeEntry::Int(i) if i >= 0 => Ok(Dim::known(i as usize)),
                    ShapeEntry::Int(i) => Err(format!("negative dim {i}")),
                    ShapeEntry::Sym(d) => Ok(d),
                })
                .collect::<Result<_, _>>()?;
            let from = b.ty(x)?.shape;
            let out = crate::ir::shape_rules::broadcast_shapes(&from, &target)
                .ok_or_else(|| format!("cannot broadcast {from:?} to {target:?}"))?;
            one(broadcast_to(b, x, &out, &h)?)
        }
        "Tile" => {
            let x = x()?;
            let reps = known_ints(req(ins, 1, "repeats")?, "repeats")?;
            let dims = known_dims(b, x, "Tile")?;
            if reps.len() != dims.len() {
                return Err(format!("{} repeats for rank {}", reps.len(), dims.len()));
            }
            let mut v = x.clone();
            for (a, (&r, &d)) in reps.iter().zip(&dims).enumerate() {
                if r == 1 {
                    continue;
                }
                let r = usize::try_from(r).map_err(|_| format!("negative repeat {r}"))?;
                let ids: Vec<i64> = (0..r).flat_map(|_| 0..d as i64).collect();
                let ids = Val::konst(i64_tensor(ids), &format!("{h}_tile{a}"));
                v = b.op(Op::Gather(ops::Gather { axis: a }), &[&v, &ids], &h)?;
            }
            one(v)
        }
        "Trilu" => {
            let x = x()?;
            let dims = known_dims(b, x, "Trilu")?;
            if dims.len() < 2 {
                return Err("input must have rank >= 2".into());
            }
            let k = match opt(ins, 1) {
                Some(k) => known_ints(k, "k")?.first().copied().unwrap_or(0),
                None => 0,
            };
            let upper = n.int("upper", 1) != 0;
            let (rows, cols) = (dims[dims.len() - 2], dims[dims.len() - 1]);
            let keep: Vec<bool> = (0..rows * cols)
                .map(|i| {
                    let d = (i % cols) as i64 - (i / cols) as i64;
                    if upper {
                        d >= k
                    } else {
                        d <= k
                    }
                })
                .collect();
            let mask = Val::konst(
                Tensor::new(vec![rows, cols], TensorData::Bool(keep)),
                &format!("{h}_mask"),
            );
            let zero = cast_tensor(Tensor::scalar(0.0), b.dtype(x)?)?;
            one(b.select(&mask, x, &Val::konst(zero, "zero"), &h)?)
        }
        "Dropout" => {
            if let Some(t) = opt(ins, 2) {
                if known_ints(&cast_known_bool(t)?, "training_mode")?
                    .iter()
                    .any(|&v| v != 0)
                {
                    return Err(
                        "training mode is random; only inference (training_mode false) is imported"
                            .into(),
                    );
                }
            }
            let x = x()?;
            let mut outs = vec![x.clone()];
            if n.wants_output(1) {
                let dims = known_dims(b, x, "Dropout's mask")?;
                let count = dims.iter().product();
                outs.push(Val::konst(
                    Tensor::new(dims, TensorData::Bool(vec![true; count])),
                    n.output(1),
                ));
            }
            Ok(outs)
        }
        "DepthToSpace" | "SpaceToDepth" => {
            let x = x()?;
            let s = b.ty(x)?.shape;
            if s.len() != 4 {
                return Err("input must be 4-D (N, C, H, W)".into());
            }
            let bs = n.int("blocksize", 0);
            let bs = usize::try_from(bs)
                .ok()
                .filter(|&v| v > 0)
                .ok_or("blocksize must be positive")?;
            let k = Dim::known(bs);
            let (nn, c, hh, ww) = (s[0].clone(), s[1].clone(), s[2].clone(), s[3].clone());
            let div = |d: &Dim| {
                d.div(&k)
                    .ok_or_else(|| format!("{d} is not a multiple of {bs}"))
            };
            let mul = |d: &Dim| d.checked_mul(&k).ok_or("too large".to_string());
            let (split, perm, merged) = if n.op_type() == "DepthToSpace" {
                let c2 = div(&div(&c)?)?;
                let crd = n.string("mode").as_deref() == Some("CRD");
                let (split, perm) = if crd {
                    (
                        vec![
                            nn.clone(),
                            c2.clone(),
                            k.clone(),
                            k.clone(),
                            hh.clone(),
                            ww.clone(),
                        ],
                        vec![0, 1, 4, 2, 5, 3],
                    )
                } else {
                    (
                        vec![
                            nn.clone(),
                            k.clone(),
                            k.clone(),
                            c2.clone(),
                            hh.clone(),
                            ww.clone(),
                        ],
                        vec![0, 3, 4, 1, 5, 2],
                    )
                };
                (split, perm, vec![nn, c2, mul(&hh)?, mul(&ww)?])
            } else {
                let (h2, w2) = (div(&hh)?, div(&ww)?);
                (
                    vec![
                        nn.clone(),
                        c.clone(),
                        h2.clone(),
                        k.clone(),
                        w2.clone(),
                        k.clone(),
                    ],
                    vec![0, 3, 5, 1, 2, 4],
                    vec![nn, mul(&mul(&c)?)?, h2, w2],
                )
            };
            let v = b.reshape(x, split, &format!("{h}_split"))?;
            let v = b.op(
                Op::Permute(ops::Permute { perm }),
                &[&v],
                &format!("{h}_moved"),
            )?;
            one(b.reshape(&v, merged, &h)?)
        }
        "Conv" => one(super::vision::conv(b, n, ins, &h)?),
        "MaxPool" | "AveragePool" => one(super::vision::pool(b, n, ins, &h)?),
        "Pad" => one(super::vision::pad(b, n, ins, &h)?),
        "Resize" => one(super::vision::resize(b, n, ins, &h)?),
        "NegativeLogLikelihoodLoss" | "SoftmaxCrossEntropyLoss" => {
            super::losses::convert(b, n, ins, &h)
        }
        "GatherElements" => {
            let (data, ids) = (req(ins, 0, "data")?, req(ins, 1, "indices")?);
            let a = axis(n.int("axis", 0), b.rank(data)?)?;
            one(b.op(
                Op::GatherElements(ops::gather_elements::GatherElements { axis: a }),
                &[data, ids],
                &h,
            )?)
        }
        "CumSum" => {
            let x = x()?;
            let a = known_ints(req(ins, 1, "axis")?, "the axis")?;
            let [a] = a[..] else {
                return Err(format!("the axis must be one integer, got {a:?}"));
            };
            one(b.op(
                Op::CumSum(ops::cumsum::CumSum {
                    axis: axis(a, b.rank(x)?)?,
                    exclusive: n.int("exclusive", 0) != 0,
                    reverse: n.int("reverse", 0) != 0,
                }),
                &[x],
                &h,
            )?)
        }
        "TopK" => {
            let x = x()?;
            let k = if n.opset < 10 {
                n.int("k", -1)
            } else {
                match known_ints(req(ins, 1, "K")?, "K")?[..] {
                    [k] => k,
                    ref other => return Err(format!("K must be one integer, got {other:?}")),
                }
            };
            let k = usize::try_from(k).map_err(|_| format!("K must be >= 0, got {k}"))?;
            let a = axis(n.int("axis", -1), b.rank(x)?)?;
            let indices = b.op(
                Op::TopK(ops::topk::TopK {
                    k,
                    axis: a,
                    largest: n.int("largest", 1) != 0,
                }),
                &[x],
                n.output(1)
                    .is_empty()
                    .then(|| format!("{h}_indices"))
                    .as_deref()
                    .unwrap_or(n.output(1)),
            )?;
            let values = b.op(
                Op::GatherElements(ops::gather_elements::GatherElements { axis: a }),
                &[x, &indices],
                &h,
            )?;
            Ok(vec![values, indices])
        }
        "ScatterElements" | "Scatter" => {
            let (data, ids, updates) = (
                req(ins, 0, "data")?,
                req(ins, 1, "indices")?,
                req(ins, 2, "updates")?,
            );
            let reduction = n.string("reduction").unwrap_or_else(|| "none".into());
            let reduce =
                ops::scatter_elements::ScatterReduce::from_name(&reduction).ok_or_else(|| {
                    format!("reduction `{reduction}` is not none, add, mul, max or min")
                })?;
            let a = axis(n.int("axis", 0), b.rank(data)?)?;
            one(b.op(
                Op::ScatterElements(ops::scatter_elements::ScatterElements { axis: a, reduce }),
                &[data, ids, updates],
                &h,
            )?)
        }
        "ArgMax" | "ArgMin" => {
            let x = x()?;
            float_only(b, x)?;
            let op = if n.op_type() == "ArgMax" {
                ops::arg_reduce::ArgOp::Max
            } else {
                ops::arg_reduce::ArgOp::Min
            };
            let a = axis(n.int("axis", 0), b.rank(x)?)?;
            one(b.op(
                Op::ArgReduce(ops::arg_reduce::ArgReduce {
                    op,
                    axis: a,
                    keepdims: n.int("keepdims", 1) != 0,
                    last: n.int("select_last_index", 0) != 0,
                }),
                &[x],
                &h,
            )?)
        }
        other => Err(format!("`{other}` has no translation")),
    }
}

pub(super) fn float_only(b: &Builder, v: &Val) -> Result<(), String> {
    let t = b.dtype(v)?;
    if t != DType::F32 {
        return Err(format!(
            "operates on {t} here; lamina computes this op on f32 only"
        ));
    }
    Ok(())
}

fn bool_only(b: &Builder, v: &Val) -> Result<(), String> {
    let t = b.dtype(v)?;
    if t != DType::Bool {
        return Err(format!("expects bool, got {t}"));
    }
    Ok(())
}

fn product(dims: &[Dim]) -> Result<Dim, String> {
    dim::product(dims).ok_or_else(|| "the element count overflows".to_string())
}

/// ONNX `Reshape` semantics: 0 copies the input dim (unless `allowzero`),
/// one -1 is inferred.
fn reshape_dims(from: &[Dim], target: &[ShapeEntry], allowzero: bool) -> Result<Vec<Dim>, String> {
    let mut out: Vec<Option<Dim>> = Vec::with_capacity(target.len());
    for (i, e) in target.iter().enumerate() {
        out.push(match e {
            ShapeEntry::Sym(d) => Some(d.clone()),
            ShapeEntry::Int(-1) => None,
            ShapeEntry::Int(0) if !allowzero => Some(
                from.get(i)
                    .cloned()
                    .ok_or_else(|| format!("0 at position {i} copies a dim the input lacks"))?,
            ),
            ShapeEntry::Int(v) if *v >= 0 => Some(Dim::known(*v as usize)),
            ShapeEntry::Int(v) => return Err(format!("invalid dim {v} in the shape")),
        });
    }
    let unknown = out.iter().filter(|d| d.is_none()).count();
    if unknown > 1 {
        return Err("more than one -1 in the shape".into());
    }
    if unknown == 1 {
        let total = product(from)?;
        let known: Vec<Dim> = out.iter().flatten().cloned().collect();
        let rest = product(&known)?;
        let missing = total.div(&rest).ok_or_else(|| {
            format!("cannot infer -1: {total} elements are not a multiple of {rest}")
        })?;
        return Ok(out
            .into_iter()
            .map(|d| d.unwrap_or_else(|| missing.clone()))
            .collect());
    }
    Ok(out.into_iter().flatten().collect())
}

/// `a @ b` with ONNX's 1-D promotion: a 1-D `a` is a row, a 1-D `b` a
/// column, and the added axis is removed again.
fn matmul(b: &mut Builder, a: &Val, w: &Val, h: &str) -> Result<Val, String> {
    float_only(b, a)?;
    float_only(b, w)?;
    let (ta, tw) = (b.ty(a)?, b.ty(w)?);
    let a1 = ta.rank() == 1;
    let w1 = tw.rank() == 1;
    if !a1 && !w1 {
        return b.op(
            Op::MatMul(ops::MatMul {
                transpose_a: false,
                transpose_b: false,
            }),
            &[a, w],
            h,
        );
    }
    let a2 = if a1 {
        b.reshape(
            a,
            vec![Dim::known(1), ta.shape[0].clone()],
            &format!("{h}_row"),
        )?
    } else {
        a.clone()
    };
    let w2 = if w1 {
        b.reshape(
            w,
            vec![tw.shape[0].clone(), Dim::known(1)],
            &format!("{h}_col"),
        )?
    } else {
        w.clone()
    };
    let m = b.op(
        Op::MatMul(ops::MatMul {
            transpose_a: false,
            transpose_b: false,
        }),
        &[&a2, &w2],
        &format!("{h}_2d"),
    )?;
    let mut shape = b.ty(&m)?.shape;
    if w1 {
        shape.pop();
    }
    if a1 {
        let r = shape.len();
        shape.remove(r - 1 - (!w1) as usize);
    }
    b.reshape(&m, shape, h)
}

/// `(x - mean) / sqrt(var + eps)` over `over`, statistics kept for
/// broadcasting.
fn normalize(b: &mut Builder, x: &Val, over: &[usize], eps: f32, h: &str) -> Result<Val, String> {
    let mean = b.reduce(ReduceOp::Mean, x, over.to_vec(), true, &format!("{h}_mean"))?;
    let c = b.binary(BinaryOp::Sub, x, &mean, &format!("{h}_centered"))?;
    let sq = b.binary(BinaryOp::Mul, &c, &c, &format!("{h}_sq"))?;
    let var = b.reduce(
        ReduceOp::Mean,
        &sq,
        over.to_vec(),
        true,
        &format!("{h}_var"),
    )?;
    let var = b.binary(BinaryOp::Add, &var, &b.scalar(eps), &format!("{h}_vareps"))?;
    let sd = b.unary(UnaryOp::Sqrt, &var, &format!("{h}_std"))?;
    b.binary(BinaryOp::Div, &c, &sd, h)
}

fn layer_norm(
    b: &mut Builder,
    n: &Node<'_>,
    ins: &[Option<Val>],
    h: &str,
) -> Result<Vec<Val>, String> {
    let x = req(ins, 0, "X")?;
    float_only(b, x)?;
    let ty = b.ty(x)?;
    let r = ty.rank();
    let a = axis(n.int("axis", -1), r)?;
    let eps = n.float("epsilon", 1e-5);
    let scale = req(ins, 1, "Scale")?;
    let bias = opt(ins, 2);
    let stats_wanted = n.wants_output(1) || n.wants_output(2);
    let last_only = a + 1 == r && b.ty(scale)?.shape == [ty.shape[a].clone()];
    if last_only
        && !stats_wanted
        && bias.is_none_or(|v| {
            b.ty(v)
                .map(|t| t.shape == [ty.shape[a].clone()])
                .unwrap_or(false)
        })
    {
        let zero_bias;
        let bias = match bias {
            Some(v) => v,
            None => {
                let len = ty.shape[a]
                    .as_known()
                    .ok_or("a symbolic normalised axis needs a bias")?;
                zero_bias =
                    Val::konst(Tensor::f32(vec![len], vec![0.0; len]), &format!("{h}_bias"));
                &zero_bias
            }
        };
        return Ok(vec![b.op(
            Op::LayerNorm(ops::LayerNorm {
                axis: a,
                eps: Float(eps),
            }),
            &[x, scale, bias],
            h,
        )?]);
    }
    let over: Vec<usize> = (a..r).collect();
    let mean = b.reduce(ReduceOp::Mean, x, over.clone(), true, &format!("{h}_mean"))?;
    let c = b.binary(BinaryOp::Sub, x, &mean, &format!("{h}_centered"))?;
    let sq = b.binary(BinaryOp::Mul, &c, &c, &format!("{h}_sq"))?;
    let var = b.reduce(ReduceOp::Mean, &sq, over, true, &format!("{h}_var"))?;
    let var = b.binary(BinaryOp::Add, &var, &b.scalar(eps), &format!("{h}_vareps"))?;
    let inv = b.unary(UnaryOp::Rsqrt, &var, &format!("{h}_invstd"))?;
    let normed = b.binary(BinaryOp::Mul, &c, &inv, &format!("{h}_normed"))?;
    let y = match bias {
        Some(bias) => {
            let s = b.binary(BinaryOp::Mul, &normed, scale, &format!("{h}_scaled"))?;
            b.binary(BinaryOp::Add, &s, bias, h)?
        }
        None => b.binary(BinaryOp::Mul, &normed, scale, h)?,
    };
    Ok(vec![y, mean, inv])
}

fn reduce(b: &mut Builder, n: &Node<'_>, ins: &[Option<Val>], h: &str) -> Result<Vec<Val>, String> {
    let x = req(ins, 0, "data")?;
    float_only(b, x)?;
    let r = b.rank(x)?;
    let listed = match opt(ins, 1) {
        Some(v) => Some(known_ints(v, "axes")?),
        None => n.ints("axes"),
    };
    let keep = n.int("keepdims", 1) != 0;
    let over = match listed {
        Some(list) if !list.is_empty() => axes(&list, r)?,
        _ if n.int("noop_with_empty_axes", 0) != 0 => {
            return Ok(vec![x.clone()]);
        }
        _ => (0..r).collect(),
    };
    let tmp = |s: &str| format!("{h}_{s}");
    let v = match n.op_type() {
        "ReduceSum" => b.reduce(ReduceOp::Sum, x, over, keep, h)?,
        "ReduceMean" => b.reduce(ReduceOp::Mean, x, over, keep, h)?,
        "ReduceMax" => b.reduce(ReduceOp::Max, x, over, keep, h)?,
        "ReduceMin" => {
            let m = b.unary(UnaryOp::Neg, x, &tmp("neg"))?;
            let mx = b.reduce(ReduceOp::Max, &m, over, keep, &tmp("negmax"))?;
            b.unary(UnaryOp::Neg, &mx, h)?
        }
        "ReduceL1" => {
            let a = b.unary(UnaryOp::Abs, x, &tmp("abs"))?;
            b.reduce(ReduceOp::Sum, &a, over, keep, h)?
        }
        "ReduceL2" => {
            let sq = b.binary(BinaryOp::Mul, x, x, &tmp("sq"))?;
            let s = b.reduce(ReduceOp::Sum, &sq, over, keep, &tmp("sumsq"))?;
            b.unary(UnaryOp::Sqrt, &s, h)?
        }
        "ReduceSumSquare" => {
            let sq = b.binary(BinaryOp::Mul, x, x, &tmp("sq"))?;
            b.reduce(ReduceOp::Sum, &sq, over, keep, h)?
        }
        "ReduceLogSum" => {
            let s = b.reduce(ReduceOp::Sum, x, over, keep, &tmp("sum"))?;
            b.unary(UnaryOp::Log, &s, h)?
        }
        _ => {
            let e = b.unary(UnaryOp::Exp, x, &tmp("exp"))?;
            let s = b.reduce(ReduceOp::Sum, &e, over, keep, &tmp("sum"))?;
            b.unary(UnaryOp::Log, &s, h)?
        }
    };
    Ok(vec![v])
}

fn squeeze(
    b: &mut Builder,
    n: &Node<'_>,
    ins: &[Option<Val>],
    h: &str,
) -> Result<Vec<Val>, String> {
    let x = req(ins, 0, "data")?;
    let listed = match opt(ins, 1) {
        Some(v) => Some(known_ints(v, "axes")?),
        None => n.ints("axes"),
    };
    let (shape, scalar_in) = match x {
        Val::Dims { dims, scalar } => (None, Some((dims.clone(), *scalar))),
        _ => (Some(b.ty(x)?.shape), None),
    };
    if let Some((dims, scalar)) = scalar_in {
        // Shape arithmetic: a scalar dim becomes a 1-entry vector or back.
        let out_scalar = if n.op_type() == "Unsqueeze" {
            false
        } else {
            !scalar && dims.len() == 1
        };
        if n.op_type() == "Unsqueeze" && !scalar {
            return Err("unsqueezing a shape vector to 2-D is not supported".into());
        }
        return Ok(vec![dims_val(dims, out_scalar, h)]);
    }
    let shape = shape.expect("set above");
    let out = if n.op_type() == "Squeeze" {
        let drop = match listed {
            Some(list) => axes(&list, shape.len())?,
            None => (0..shape.len()).filter(|&i| shape[i].is_one()).collect(),
        };
        for &a in &drop {
            if !shape[a].is_one() {
                return Err(format!("cannot squeeze axis {a} of size {}", shape[a]));
            }
        }
        shape
            .iter()
            .enumerate()
            .filter(|(i, _)| !drop.contains(i))
            .map(|(_, d)| d.clone())
            .collect()
    } else {
        let list = listed.ok_or("needs axes")?;
        let r = shape.len() + list.len();
        let add = axes(&list, r)?;
        if add.len() != list.len() {
            return Err("an axis is listed twice".into());
        }
        let mut it = shape.iter();
        (0..r)
            .map(|i| {
                if add.contains(&i) {
                    Dim::known(1)
                } else {
                    it.next().cloned().expect("rank adds up")
                }
            })
            .collect()
    };
    Ok(vec![b.reshape(x, out, h)?])
}

fn split(b: &mut Builder, n: &Node<'_>, ins: &[Option<Val>], h: &str) -> Result<Vec<Val>, String> {
    let x = req(ins, 0, "input")?;
    let ty = b.ty(x)?;
    let a = axis(n.int("axis", 0), ty.rank())?;
    let len = ty.shape[a]
        .as_known()
        .ok_or("splitting a symbolic axis is not supported")?;
    let count = n.proto.output.len();
    let sizes: Vec<usize> = match opt(ins, 1)
        .map(|v| known_ints(v, "split"))
        .transpose()?
        .or(n.ints("split"))
    {
        Some(s) if !s.is_empty() => s
            .iter()
            .map(|&v| usize::try_from(v).map_err(|_| format!("negative split {v}")))
            .collect::<Result<_, _>>()?,
        _ => {
            let parts = n.int("num_outputs", count as i64).max(1) as usize;
            let each = len.div_ceil(parts);
            (0..parts)
                .map(|i| each.min(len.saturating_sub(i * each)))
                .collect()
        }
    };
    if sizes.iter().sum::<usize>() != len {
        return Err(format!("split sizes {sizes:?} do not add up to {len}"));
    }
    let mut start = 0;
    let mut outs = Vec::new();
    for (i, s) in sizes.iter().enumerate() {
        let name = if n.output(i).is_empty() {
            format!("{h}_{i}")
        } else {
            n.output(i).to_string()
        };
        outs.push(b.op(
            Op::Slice(ops::Slice {
                axis: a,
                start,
                end: Dim::known(start + s),
                step: 1,
            }),
            &[x],
            &name,
        )?);
        start += s;
    }
    Ok(outs)
}

fn slice(b: &mut Builder, n: &Node<'_>, ins: &[Option<Val>], h: &str) -> Result<Val, String> {
    let x = req(ins, 0, "data")?;
    let (starts, ends, ax, steps) = if n.opset < 10 {
        (
            n.ints("starts").ok_or("needs starts")?,
            n.ints("ends").ok_or("needs ends")?,
            n.ints("axes"),
            None,
        )
    } else {
        (
            known_ints(req(ins, 1, "starts")?, "starts")?,
            known_ints(req(ins, 2, "ends")?, "ends")?,
            opt(ins, 3).map(|v| known_ints(v, "axes")).transpose()?,
            opt(ins, 4).map(|v| known_ints(v, "steps")).transpose()?,
        )
    };
    if let Val::Dims {
        dims,
        scalar: false,
    } = x
    {
        // Slicing a symbolic shape vector.
        let (s, e, st) = (starts[0], ends[0], steps.as_ref().map_or(1, |v| v[0]));
        let idx = slice_indices(dims.len(), s, e, st)?;
        return Ok(dims_val(
            idx.into_iter().map(|i| dims[i].clone()).collect(),
            false,
            h,
        ));
    }
    let r = b.rank(x)?;
    let ax = ax.unwrap_or_else(|| (0..starts.len() as i64).collect());
    if starts.len() != ends.len() || ax.len() != starts.len() {
        return Err("starts, ends and axes differ in length".into());
    }
    let mut v = x.clone();
    for (i, &a) in ax.iter().enumerate() {
        let a = axis(a, r)?;
        let step = steps.as_ref().map_or(1, |s| s[i]);
        if step == 0 {
            return Err("a step of 0".into());
        }
        let size = b.ty(&v)?.shape[a].clone();
        let (start, end) = (starts[i], ends[i]);
        let Some(len) = size.as_known() else {
            // Symbolic axis: only the whole axis or a known prefix.
            if start == 0 && step == 1 && end >= i32::MAX as i64 {
                continue;
            }
            if start >= 0 && end >= 0 && end < i32::MAX as i64 && step > 0 {
                v = b.op(
                    Op::Slice(ops::Slice {
                        axis: a,
                        start: start as usize,
                        end: Dim::known(end as usize),
                        step: step as usize,
                    }),
                    &[&v],
                    h,
                )?;
                continue;
            }
            return Err(format!(
                "slicing symbolic axis {a} ({size}) from the end is not supported"
            ));
        };
        let idx = slice_indices(len, start, end, step)?;
        if idx.len() == len && step == 1 {
            continue;
        }
        if step > 0 {
            let s = idx.first().copied().unwrap_or(0);
            let e = idx.last().map_or(s, |&l| l + 1);
            v = b.op(
                Op::Slice(ops::Slice {
                    axis: a,
                    start: s,
                    end: Dim::known(e),
                    step: step as usize,
                }),
                &[&v],
                h,
            )?;
        } else {
            let ids = Val::konst(
                i64_tensor(idx.iter().map(|&i| i as i64).collect()),
                &format!("{h}_ids"),
            );
            v = b.op(Op::Gather(ops::Gather { axis: a }), &[&v, &ids], h)?;
        }
    }
    if let Val::Rt { name, .. } = &v {
        if let Val::Rt { name: xn, .. } = x {
            if name == xn {
                return Ok(x.clone());
            }
        }
    }
    Ok(v)
}

/// The indices numpy's `a[start:end:step]` visits on an axis of `len`.
fn slice_indices(len: usize, start: i64, end: i64, step: i64) -> Result<Vec<usize>, String> {
    let n = len as i64;
    let norm = |v: i64, lo: i64, hi: i64| {
        let v = if v < 0 { v.saturating_add(n) } else { v };
        v.clamp(lo, hi)
    };
    let mut out = Vec::new();
    if step > 0 {
        let (mut i, e) = (norm(start, 0, n), norm(end, 0, n));
        while i < e {
            out.push(i as usize);
            i += step;
        }
    } else {
        let (mut i, e) = (norm(start, -1, n - 1), norm(end, -1, n - 1));
        while i > e {
            out.push(i as usize);
            i += step;
        }
    }
    Ok(out)
}

/// `x` broadcast to `out` (rank may grow): a reshape adds leading 1-dims,
/// then each size-1 axis is repeated by gathering index 0.
fn broadcast_to(b: &mut Builder, x: &Val, out: &[Dim], h: &str) -> Result<Val, String> {
    let from = b.ty(x)?.shape;
    let mut padded = vec![Dim::known(1); out.len() - from.len()];
    padded.extend(from.iter().cloned());
    let mut v = b.reshape(x, padded.clone(), &format!("{h}_ranked"))?;
    for (a, (have, want)) in padded.iter().zip(out).enumerate() {
        if have == want {
            continue;
        }
        let count = want
            .as_known()
            .ok_or_else(|| format!("expanding to a symbolic size ({want}) is not supported"))?;
        let ids = Val::konst(i64_tensor(vec![0; count]), &format!("{h}_repeat{a}"));
        v = b.op(Op::Gather(ops::Gather { axis: a }), &[&v, &ids], h)?;
    }
    Ok(v)
}

fn fill(value: &Tensor, dims: Vec<usize>) -> Result<Tensor, String> {
    let count: usize = dims
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or("the shape is too large")?;
    if count > 1 << 26 {
        return Err(format!(
            "a constant of {count} elements is too large to write"
        ));
    }
    Ok(match value.data() {
        TensorData::F32(v) => Tensor::new(dims, TensorData::F32(vec![v[0]; count])),
        TensorData::I64(v) => Tensor::new(dims, TensorData::I64(vec![v[0]; count])),
        TensorData::I32(v) => Tensor::new(dims, TensorData::I32(vec![v[0]; count])),
        TensorData::Bool(v) => Tensor::new(dims, TensorData::Bool(vec![v[0]; count])),
    })
}

pub(super) fn cast_tensor(t: Tensor, to: DType) -> Result<Tensor, String> {
    let ty = super::builder::const_type(&t);
    let out = crate::ir::TensorType::new(to, ty.shape);
    crate::interp::eval_node(&Op::Cast(ops::Cast { to }), &[&t], &out)
        .map_err(|e| e.root().to_string())
}

fn cast_known_bool(v: &Val) -> Result<Val, String> {
    match v.as_const() {
        Some(t) => Ok(Val::konst(cast_tensor(t.clone(), DType::I64)?, "flag")),
        None => Err("training_mode must be known".into()),
    }
}

fn range(s: &Val, l: &Val, d: &Val) -> Result<Tensor, String> {
    let dt = s
        .as_const()
        .map(|t| t.dtype())
        .ok_or("start must be known when the model is imported (Range builds a constant)")?;
    match dt {
        DType::F32 => {
            let (s, l, d) = (
                known_f32(s, "start")?,
                known_f32(l, "limit")?,
                known_f32(d, "delta")?,
            );
            let count = (((l - s) / d).ceil().max(0.0)) as usize;
            if count > 1 << 26 {
                return Err("the range is too long".into());
            }
            Ok(Tensor::f32(
                vec![count],
                (0..count).map(|i| s + i as f32 * d).collect(),
            ))
        }
        DType::I64 | DType::I32 => {
            let one = |v: &Val, w: &str| {
                known_ints(v, w).and_then(|x| x.first().copied().ok_or(format!("{w} is empty")))
            };
            let (s, l, d) = (one(s, "start")?, one(l, "limit")?, one(d, "delta")?);
            if d == 0 {
                return Err("delta is 0".into());
            }
            let count = ((l - s) as f64 / d as f64).ceil().max(0.0) as usize;
            if count > 1 << 26 {
                return Err("the range is too long".into());
            }
            let vals: Vec<i64> = (0..count as i64).map(|i| s + i * d).collect();
            let t = i64_tensor(vals);
            if dt == DType::I32 {
                cast_tensor(t, DType::I32)
            } else {
                Ok(t)
            }
        }
        DType::Bool => Err("a bool range".into()),
    }
}

/// Integer arithmetic on known tensors (shape computations), folded here:
/// lamina's arithmetic ops are f32.
fn fold_int_binary(op: &str, a: &Val, c: &Val, h: &str) -> Result<Option<Val>, String> {
    let dims_of = |v: &Val| -> Option<(Vec<Dim>, bool)> {
        match v {
            Val::Dims { dims, scalar } => Some((dims.clone(), *scalar)),
            Val::Const { value, .. } if value.dtype() == DType::I64 && value.shape().len() <= 1 => {
                let TensorData::I64(d) = value.data() else {
                    return None;
                };
                let dims = d
                    .iter()
                    .map(|&x| usize::try_from(x).ok().map(Dim::known))
                    .collect::<Option<Vec<_>>>()?;
                Some((dims, value.shape().is_empty()))
            }
            _ => None,
        }
    };
    if matches!(a, Val::Dims { .. }) || matches!(c, Val::Dims { .. }) {
        // Symbolic dims: products and exact quotients stay monomials.
        let ((x, xs), (y, ys)) = (
            dims_of(a).ok_or("shape arithmetic with a non-shape operand")?,
            dims_of(c).ok_or("shape arithmetic with a non-shape operand")?,
        );
        if x.len() != y.len() && x.len() != 1 && y.len() != 1 {
            return Err("shape arithmetic on vectors of different lengths".into());
        }
        let len = x.len().max(y.len());
        let mut out = Vec::with_capacity(len);
        for i in 0..len {
            let (p, q) = (&x[i.min(x.len() - 1)], &y[i.min(y.len() - 1)]);
            out.push(match op {
                "Mul" => p.checked_mul(q).ok_or("overflow")?,
                "Div" => p
                    .div(q)
                    .ok_or_else(|| format!("{p} / {q} is not a whole dim"))?,
                _ => {
                    return Err(format!(
                        "`{op}` on symbolic dims ({p}, {q}): lamina's dims are products of symbols"
                    ))
                }
            });
        }
        return Ok(Some(dims_val(out, xs && ys, h)));
    }
    let (Some(x), Some(y)) = (a.as_const(), c.as_const()) else {
        return Ok(None);
    };
    if !x.dtype().is_integer() || x.dtype() != y.dtype() {
        return Ok(None);
    }
    let (xs, ys) = (x.shape().to_vec(), y.shape().to_vec());
    let xd: Vec<Dim> = xs.iter().map(|&d| Dim::known(d)).collect();
    let yd: Vec<Dim> = ys.iter().map(|&d| Dim::known(d)).collect();
    let out =
        crate::ir::shape_rules::broadcast_shapes(&xd, &yd).ok_or("operands do not broadcast")?;
    let out: Vec<usize> = out.iter().map(|d| d.as_known().expect("known")).collect();
    let (xv, yv) = (ints_of(x), ints_of(y));
    let count: usize = out.iter().product();
    let at = |shape: &[usize], v: &[i64], flat: usize| -> i64 {
        // Index of the broadcast element `flat` of `out` in `v`.
        let mut rem = flat;
        let mut idx = 0;
        let mut stride = 1;
        for (k, &o) in out.iter().enumerate().rev() {
            let coord = rem % o;
            rem /= o;
            let off = out.len() - shape.len();
            if k >= off {
                let d = shape[k - off];
                if d != 1 {
                    idx += coord * stride;
                }
                stride *= d;
            }
        }
        v[idx]
    };
    let mut vals = Vec::with_capacity(count);
    for i in 0..count {
        let (p, q) = (at(&xs, &xv, i), at(&ys, &yv, i));
        vals.push(match op {
            "Add" => p.wrapping_add(q),
            "Sub" => p.wrapping_sub(q),
            "Mul" => p.wrapping_mul(q),
            "Mod" | "Fmod" => {
                if q == 0 {
                    return Err("integer remainder by zero".into());
                }
                let r = p.wrapping_rem(q);
                // Mod takes the divisor's sign (Python's %); Fmod the dividend's.
                if op == "Mod" && r != 0 && ((r < 0) != (q < 0)) {
                    r + q
                } else {
                    r
                }
            }
            _ => {
                if q == 0 {
                    return Err("integer division by zero".into());
                }
                // C semantics, as ONNX specifies: the quotient truncates.
                p.wrapping_div(q)
            }
        });
    }
    let t = Tensor::new(out, TensorData::I64(vals));
    let t = if x.dtype() == DType::I32 {
        cast_tensor(t, DType::I32)?
    } else {
        t
    };
    Ok(Some(Val::Const {
        value: Arc::new(t),
        hint: h.to_string(),
    }))
}

fn ints_of(t: &Tensor) -> Vec<i64> {
    match t.data() {
        TensorData::I64(v) => v.clone(),
        TensorData::I32(v) => v.iter().map(|&x| x as i64).collect(),
        _ => vec![],
    }
}

/// `Attention` (opset 23) written out as ONNX's reference computes it:
/// heads split from 3-D inputs, the KV cache concatenated, grouped KV heads
/// repeated, `softmax((q s)(k s)^T + bias) v` with `s = sqrt(scale)`, the
/// bias from the mask (bool: 0 or -inf; shorter masks padded) and the causal
/// triangle, `softcap` before the bias.
fn attention(
    b: &mut Builder,
    n: &Node<'_>,
    ins: &[Option<Val>],
    h: &str,
) -> Result<Vec<Val>, String> {
    if opt(ins, 6).is_some() {
        return Err("nonpad_kv_seqlen is not supported".into());
    }
    let (q, k, v) = (req(ins, 0, "Q")?, req(ins, 1, "K")?, req(ins, 2, "V")?);
    for t in [q, k, v] {
        float_only(b, t)?;
    }
    let tmp = |s: &str| format!("{h}_{s}");
    let three_d = b.rank(q)? == 3;
    let heads = |b: &mut Builder, x: &Val, count: i64, what: &str| -> Result<Val, String> {
        if !three_d {
            return Ok(x.clone());
        }
        let s = b.ty(x)?.shape;
        let count = usize::try_from(count)
            .ok()
            .filter(|&c| c > 0)
            .ok_or("3-D inputs need q_num_heads and kv_num_heads")?;
        let size = s[2]
            .div(&Dim::known(count))
            .ok_or_else(|| format!("{} is not a multiple of {count} heads", s[2]))?;
        let split = b.reshape(
            x,
            vec![s[0].clone(), s[1].clone(), Dim::known(count), size],
            &tmp(&format!("{what}_split")),
        )?;
        b.op(
            Op::Permute(ops::Permute {
                perm: vec![0, 2, 1, 3],
            }),
            &[&split],
            &tmp(&format!("{what}_heads")),
        )
    };
    let q = heads(b, q, n.int("q_num_heads", 0), "q")?;
    let mut k = heads(b, k, n.int("kv_num_heads", 0), "k")?;
    let mut v = heads(b, v, n.int("kv_num_heads", 0), "v")?;
    let qs = b.ty(&q)?.shape;
    let head_size = qs[3].as_known().ok_or("a symbolic head size")?;
    let scale = match n.attr("scale").and_then(|a| a.f) {
        Some(s) => s,
        None => 1.0 / (head_size as f32).sqrt(),
    };
    let past_len = match opt(ins, 4) {
        Some(pk) => {
            let len = b.ty(pk)?.shape[2].clone();
            k = b.op(
                Op::Concat(ops::Concat { axis: 2 }),
                &[pk, &k],
                &tmp("present_key"),
            )?;
            len.as_known().ok_or("a symbolic past length")?
        }
        None => 0,
    };
    if let Some(pv) = opt(ins, 5) {
        v = b.op(
            Op::Concat(ops::Concat { axis: 2 }),
            &[pv, &v],
            &tmp("present_value"),
        )?;
    }
    let (present_k, present_v) = (k.clone(), v.clone());
    let q_seq = qs[2].as_known().ok_or("a symbolic query length")?;
    let kv_seq = b.ty(&k)?.shape[2]
        .as_known()
        .ok_or("a symbolic key length")?;

    let neg_inf = Val::konst(Tensor::scalar(f32::NEG_INFINITY), "neg_inf");
    let mut bias = None;
    if let Some(mask) = opt(ins, 3) {
        let ms = b.ty(mask)?.shape;
        let last = ms
            .last()
            .and_then(Dim::as_known)
            .ok_or("a symbolic mask length")?;
        let is_bool = b.dtype(mask)? == DType::Bool;
        let mut mask = mask.clone();
        if last < kv_seq {
            let mut pad_shape: Vec<usize> = ms[..ms.len() - 1]
                .iter()
                .map(|d| d.as_known().ok_or("a symbolic mask shape"))
                .collect::<Result<_, _>>()?;
            pad_shape.push(kv_seq - last);
            let fill_value = if is_bool {
                Tensor::new(vec![], TensorData::Bool(vec![false]))
            } else {
                Tensor::scalar(f32::NEG_INFINITY)
            };
            let pad = Val::konst(fill(&fill_value, pad_shape)?, &tmp("mask_pad"));
            mask = b.op(
                Op::Concat(ops::Concat { axis: ms.len() - 1 }),
                &[&mask, &pad],
                &tmp("mask_padded"),
            )?;
        }
        if is_bool {
            if n.int("is_causal", 0) != 0 {
                return Err("a bool mask together with is_causal is not supported".into());
            }
            mask = b.select(&mask, &b.scalar(0.0), &neg_inf, &tmp("mask_bias"))?;
        }
        bias = Some(mask);
    }
    if n.int("is_causal", 0) != 0 {
        let tri: Vec<f32> = (0..q_seq * kv_seq)
            .map(|i| {
                let (r, c) = (i / kv_seq, i % kv_seq);
                if c >= past_len && c - past_len > r {
                    f32::NEG_INFINITY
                } else {
                    0.0
                }
            })
            .collect();
        let causal = Val::konst(Tensor::f32(vec![q_seq, kv_seq], tri), &tmp("causal"));
        bias = Some(match bias {
            Some(m) => b.binary(BinaryOp::Add, &m, &causal, &tmp("bias"))?,
            None => causal,
        });
    }
    let (qh, kh) = (
        qs[1].as_known().ok_or("a symbolic head count")?,
        b.ty(&k)?.shape[1]
            .as_known()
            .ok_or("a symbolic head count")?,
    );
    if qh != kh {
        if kh == 0 || qh % kh != 0 {
            return Err(format!(
                "{qh} query heads cannot share {kh} key/value heads"
            ));
        }
        let ids = Val::konst(
            i64_tensor((0..qh).map(|i| (i / (qh / kh)) as i64).collect()),
            &tmp("kv_head_ids"),
        );
        k = b.op(
            Op::Gather(ops::Gather { axis: 1 }),
            &[&k, &ids],
            &tmp("k_shared"),
        )?;
        v = b.op(
            Op::Gather(ops::Gather { axis: 1 }),
            &[&v, &ids],
            &tmp("v_shared"),
        )?;
    }
    let s = b.scalar(scale.sqrt());
    let qs_ = b.binary(BinaryOp::Mul, &q, &s, &tmp("q_scaled"))?;
    let ks_ = b.binary(BinaryOp::Mul, &k, &s, &tmp("k_scaled"))?;
    let mut qk = b.op(
        Op::MatMul(ops::MatMul {
            transpose_a: false,
            transpose_b: true,
        }),
        &[&qs_, &ks_],
        &tmp("qk"),
    )?;
    let softcap = n.float("softcap", 0.0);
    if softcap > 0.0 {
        let d = b.binary(BinaryOp::Div, &qk, &b.scalar(softcap), &tmp("qk_capped"))?;
        let t = b.unary(UnaryOp::Tanh, &d, &tmp("qk_tanh"))?;
        qk = b.binary(BinaryOp::Mul, &t, &b.scalar(softcap), &tmp("qk_softcap"))?;
    }
    let with_bias = match &bias {
        Some(bias) => b.binary(BinaryOp::Add, &qk, bias, &tmp("scores"))?,
        None => qk.clone(),
    };
    let probs = b.op(
        Op::Softmax(ops::Softmax { axis: 3 }),
        &[&with_bias],
        &tmp("probs"),
    )?;
    let mode_out = match n.int("qk_matmul_output_mode", 0) {
        2 => with_bias.clone(),
        3 => probs.clone(),
        _ => qk.clone(),
    };
    let ctx = b.op(
        Op::MatMul(ops::MatMul {
            transpose_a: false,
            transpose_b: false,
        }),
        &[&probs, &v],
        &if three_d {
            tmp("context")
        } else {
            h.to_string()
        },
    )?;
    let y = if three_d {
        let merged = b.op(
            Op::Permute(ops::Permute {
                perm: vec![0, 2, 1, 3],
            }),
            &[&ctx],
            &tmp("context_merged"),
        )?;
        let cs = b.ty(&merged)?.shape;
        let hidden = cs[2].checked_mul(&cs[3]).ok_or("too large")?;
        b.reshape(&merged, vec![cs[0].clone(), cs[1].clone(), hidden], h)?
    } else {
        ctx
    };
    Ok(vec![y, present_k, present_v, mode_out])
}
