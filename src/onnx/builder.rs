//! Writes the .lam text while the graph is translated.
//!
//! Every value is either known at import time (initializers, `Constant`
//! nodes, and anything computed from those only: they are folded here with
//! the interpreter's `eval_node`), a shape with symbolic dims (`Shape` of a
//! symbolic input, kept symbolic so that `Reshape` can use it), or a run-time
//! value with a name in the written model. Each lamina op gets its type from
//! `shape_rules::infer`, exactly as lowering will, so the importer knows every
//! operand's shape while it translates.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::dtype::DType;
use crate::ir::ops::{self, BinaryOp, CompareOp, ReduceOp, UnaryOp};
use crate::ir::shape_rules::infer;
use crate::ir::{Dim, Op, TensorType};
use crate::tensor::{Tensor, TensorData};

use super::names::Names;

#[derive(Clone, Debug)]
pub enum Val {
    /// A value of the written model, by its lamina name.
    Rt { name: String, ty: TensorType },
    /// Known at import time. `hint` names it if it becomes a parameter.
    Const { value: Arc<Tensor>, hint: String },
    /// An i64 shape vector (or one entry of one, `scalar`) with at least one
    /// symbolic dim: only shape arithmetic can use it.
    Dims { dims: Vec<Dim>, scalar: bool },
}

impl Val {
    pub fn konst(t: Tensor, hint: &str) -> Val {
        Val::Const {
            value: Arc::new(t),
            hint: hint.to_string(),
        }
    }

    pub fn as_const(&self) -> Option<&Tensor> {
        match self {
            Val::Const { value, .. } => Some(value),
            _ => None,
        }
    }
}

pub fn const_type(t: &Tensor) -> TensorType {
    TensorType::new(
        t.dtype(),
        t.shape().iter().map(|&d| Dim::known(d)).collect(),
    )
}

#[derive(Default)]
pub struct Builder {
    pub names: Names,
    inputs: Vec<String>,
    params: Vec<String>,
    body: Vec<String>,
    outputs: Vec<String>,
    pub weights: BTreeMap<String, Tensor>,
    /// Constants already declared as parameters, by identity.
    declared: HashMap<usize, String>,
    /// Keeps declared constants alive so their addresses stay unique.
    keep: Vec<Arc<Tensor>>,
    /// ONNX dim names to lamina symbols.
    symbols: HashMap<String, String>,
}

impl Builder {
    /// The lamina symbol for an ONNX dim name (the same name, the same symbol).
    pub fn symbol(&mut self, raw: &str) -> String {
        if let Some(s) = self.symbols.get(raw) {
            return s.clone();
        }
        let s = self.names.fresh(raw);
        self.symbols.insert(raw.to_string(), s.clone());
        s
    }

    pub fn input(&mut self, raw: &str, ty: TensorType) -> Val {
        let name = self.names.fresh(raw);
        self.inputs.push(format!("input {name}: {ty}"));
        Val::Rt { name, ty }
    }

    pub fn ty(&self, v: &Val) -> Result<TensorType, String> {
        match v {
            Val::Rt { ty, .. } => Ok(ty.clone()),
            Val::Const { value, .. } => Ok(const_type(value)),
            Val::Dims { dims, scalar } => Ok(TensorType::new(
                DType::I64,
                if *scalar {
                    vec![]
                } else {
                    vec![Dim::known(dims.len())]
                },
            )),
        }
    }

    pub fn rank(&self, v: &Val) -> Result<usize, String> {
        Ok(self.ty(v)?.rank())
    }

    pub fn dtype(&self, v: &Val) -> Result<DType, String> {
        Ok(self.ty(v)?.dtype)
    }

    /// Applies one lamina op: folded when every operand is known, else
    /// written as `NAME = call` with NAME derived from `hint`.
    pub fn op(&mut self, op: Op, inputs: &[&Val], hint: &str) -> Result<Val, String> {
        let mut types = Vec::with_capacity(inputs.len());
        for v in inputs {
            if let Val::Dims { dims, .. } = v {
                return Err(format!(
                    "a shape with symbolic dims ({}) is used as a tensor by `{}`; lamina computes shapes at compile time only",
                    dims.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", "),
                    op.name()
                ));
            }
            types.push(self.ty(v)?);
        }
        let type_refs: Vec<&TensorType> = types.iter().collect();
        let out_ty = infer(&op, &type_refs).map_err(|e| format!("{}: {e}", op.name()))?;
        let known: Option<Vec<&Tensor>> = inputs.iter().map(|v| v.as_const()).collect();
        if let Some(known) = known {
            if !known.is_empty() {
                let value = crate::interp::eval_node(&op, &known, &out_ty)
                    .map_err(|e| format!("{}: {}", op.name(), e.root()))?;
                return Ok(Val::konst(value, hint));
            }
        }
        let literal_ok = op.is_elementwise();
        let mut args = Vec::with_capacity(inputs.len());
        for v in inputs {
            args.push(self.operand(v, literal_ok.then_some(out_ty.rank()))?);
        }
        let name = self.names.fresh(hint);
        self.body.push(format!("{name} = {}", render(&op, &args)));
        Ok(Val::Rt { name, ty: out_ty })
    }

    /// The text that refers to `v` as an operand: its name, a number
    /// (`literal_rank`: the op is elementwise with a result of that rank, so
    /// a one-element f32 of no higher rank can be written as a number), or a
    /// parameter declared for a constant.
    fn operand(&mut self, v: &Val, literal_rank: Option<usize>) -> Result<String, String> {
        match v {
            Val::Rt { name, .. } => Ok(name.clone()),
            Val::Dims { .. } => Err("a symbolic shape cannot be a tensor operand".into()),
            Val::Const { value, hint } => {
                if let (Some(rank), TensorData::F32(data)) = (literal_rank, value.data()) {
                    if data.len() == 1 && value.shape().len() <= rank && data[0].is_finite() {
                        return Ok(number(data[0]));
                    }
                }
                Ok(self.declare(value, hint))
            }
        }
    }

    /// Declares a known tensor as a parameter (once) and returns its name.
    fn declare(&mut self, value: &Arc<Tensor>, hint: &str) -> String {
        let key = Arc::as_ptr(value) as usize;
        if let Some(name) = self.declared.get(&key) {
            return name.clone();
        }
        let name = self.names.fresh_param(hint);
        self.params
            .push(format!("param {name}: {}", const_type(value)));
        self.weights.insert(name.clone(), Tensor::clone(value));
        self.declared.insert(key, name.clone());
        self.keep.push(Arc::clone(value));
        name
    }

    /// Exports `v` as a model output named after `raw`.
    pub fn output(&mut self, raw: &str, v: &Val) -> Result<String, String> {
        let wanted = super::names::sanitize(raw);
        if let Val::Rt { name, .. } = v {
            if *name == wanted
                && !self
                    .outputs
                    .iter()
                    .any(|o| o.ends_with(&format!(" {name}")))
            {
                self.outputs.push(format!("output {name}"));
                return Ok(name.clone());
            }
        }
        let operand = self.operand(v, None)?;
        let name = self.names.fresh(raw);
        self.outputs.push(format!("output {name} = {operand}"));
        Ok(name)
    }

    /// The whole model file.
    pub fn finish(&self, model_name: &str, header: &str, weights_file: Option<&str>) -> String {
        let mut out = String::new();
        out.push_str(header);
        if let Some(w) = weights_file {
            out.push_str(&format!("weights \"{w}\"\n\n"));
        }
        out.push_str(&format!("model {model_name} {{\n"));
        for section in [&self.inputs, &self.params, &self.body, &self.outputs] {
            for line in section {
                out.push_str("  ");
                out.push_str(line);
                out.push('\n');
            }
        }
        out.push_str("}\n");
        out
    }

    // ---- shorthands used by the op translations

    pub fn scalar(&self, v: f32) -> Val {
        Val::konst(Tensor::scalar(v), "c")
    }

    pub fn unary(&mut self, u: UnaryOp, x: &Val, hint: &str) -> Result<Val, String> {
        self.op(Op::Unary(u), &[x], hint)
    }

    pub fn binary(&mut self, b: BinaryOp, x: &Val, y: &Val, hint: &str) -> Result<Val, String> {
        self.op(Op::Binary(b), &[x, y], hint)
    }

    pub fn compare(&mut self, c: CompareOp, x: &Val, y: &Val, hint: &str) -> Result<Val, String> {
        self.op(Op::Compare(c), &[x, y], hint)
    }

    pub fn select(&mut self, c: &Val, x: &Val, y: &Val, hint: &str) -> Result<Val, String> {
        self.op(Op::Where, &[c, x, y], hint)
    }

    pub fn reduce(
        &mut self,
        r: ReduceOp,
        x: &Val,
        axes: Vec<usize>,
        keepdims: bool,
        hint: &str,
    ) -> Result<Val, String> {
        self.op(
            Op::Reduce(ops::Reduce {
                op: r,
                axes,
                keepdims,
            }),
            &[x],
            hint,
        )
    }

    pub fn reshape(&mut self, x: &Val, shape: Vec<Dim>, hint: &str) -> Result<Val, String> {
        if self.ty(x)?.shape == shape {
            return Ok(x.clone());
        }
        self.op(Op::Reshape(ops::Reshape { shape }), &[x], hint)
    }

    pub fn cast(&mut self, x: &Val, to: DType, hint: &str) -> Result<Val, String> {
        if self.dtype(x)? == to {
            return Ok(x.clone());
        }
        self.op(Op::Cast(ops::Cast { to }), &[x], hint)
    }
}

/// An f32 as lamina reads it back exactly: `{:?}` prints the shortest text
/// that round-trips and always has a `.` or an exponent.
pub fn number(v: f32) -> String {
    let text = format!("{v:?}");
    if v.is_sign_negative() {
        format!("({text})")
    } else {
        text
    }
}

fn list<T: std::fmt::Display>(items: &[T]) -> String {
    let parts: Vec<String> = items.iter().map(|x| x.to_string()).collect();
    format!("[{}]", parts.join(", "))
}

/// The lamina call for one op on named operands.
fn render(op: &Op, a: &[String]) -> String {
    match op {
        Op::Unary(UnaryOp::Neg) => format!("-{}", a[0]),
        Op::Unary(u) => format!("{}({})", u.name(), a[0]),
        Op::Binary(b) => {
            let infix = match b {
                BinaryOp::Add => "+",
                BinaryOp::Sub => "-",
                BinaryOp::Mul => "*",
                BinaryOp::Div => "/",
                BinaryOp::Pow => "**",
                BinaryOp::Max => return format!("maximum({}, {})", a[0], a[1]),
                BinaryOp::Min => return format!("minimum({}, {})", a[0], a[1]),
            };
            format!("{} {infix} {}", a[0], a[1])
        }
        Op::Compare(c) => {
            let infix = match c {
                CompareOp::Lt => "<",
                CompareOp::Le => "<=",
                CompareOp::Gt => ">",
                CompareOp::Ge => ">=",
                CompareOp::Eq => "==",
                CompareOp::Ne => "!=",
            };
            format!("{} {infix} {}", a[0], a[1])
        }
        Op::Where => format!("where({}, {}, {})", a[0], a[1], a[2]),
        Op::MatMul(ops::MatMul {
            transpose_a: false,
            transpose_b: false,
        }) => format!("{} @ {}", a[0], a[1]),
        Op::MatMul(ops::MatMul {
            transpose_a,
            transpose_b,
        }) => format!(
            "matmul({}, {}, transpose_a={transpose_a}, transpose_b={transpose_b})",
            a[0], a[1]
        ),
        Op::Softmax(ops::Softmax { axis }) => format!("softmax({}, axis={axis})", a[0]),
        Op::LogSoftmax(ops::LogSoftmax { axis }) => format!("log_softmax({}, axis={axis})", a[0]),
        Op::LayerNorm(ops::LayerNorm { axis, eps }) => format!(
            "layer_norm({}, {}, {}, axis={axis}, eps={})",
            a[0], a[1], a[2], eps
        ),
        Op::Reduce(ops::Reduce { op, axes, keepdims }) => format!(
            "{}({}, axis={}, keepdims={keepdims})",
            op.name(),
            a[0],
            list(axes)
        ),
        Op::Permute(ops::Permute { perm }) => format!("permute({}, {})", a[0], list(perm)),
        Op::Reshape(ops::Reshape { shape }) => format!("reshape({}, {})", a[0], list(shape)),
        Op::Concat(ops::Concat { axis }) => format!("concat({}, axis={axis})", a.join(", ")),
        Op::Slice(ops::Slice {
            axis,
            start,
            end,
            step,
        }) => format!(
            "slice({}, axis={axis}, start={start}, end={end}, step={step})",
            a[0]
        ),
        Op::Gather(ops::Gather { axis }) => format!("gather({}, {}, axis={axis})", a[0], a[1]),
        Op::Cast(ops::Cast { to }) => format!("cast({}, {to})", a[0]),
        // Every other op is written as its built-in call with the printed
        // attributes, which are keyword arguments of that call.
        other => {
            let mut parts: Vec<String> = a.to_vec();
            parts.extend(
                other
                    .kind()
                    .attributes()
                    .into_iter()
                    .map(|(k, v)| format!("{k}={v}")),
            );
            format!("{}({})", other.name(), parts.join(", "))
        }
    }
}
