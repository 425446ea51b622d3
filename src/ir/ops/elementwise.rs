//! Elementwise ops with numpy broadcasting: binary arithmetic, comparisons,
//! `where`, and the fused expression that chains them.

use super::shape::{broadcast_all, broadcast_keeps_samples, err, expect_dtype, show, ShapeError};
use crate::ir::vjp::{GradError, Vjp};
use std::fmt;

use super::math;
use super::values::{broadcast_offsets, elements, with_element_type, Element};
use super::{Builtin, CallArgs, EvalError, Float, NodeId, Op, OpKind, Poisoned, UnaryOp};
use crate::ir::{DType, TensorType};
use crate::tensor::{Tensor, TensorData};

/// Elementwise arithmetic on f32 with numpy broadcasting.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    Div,
    Pow,
    Max,
    Min,
}

impl BinaryOp {
    pub fn name(self) -> &'static str {
        match self {
            BinaryOp::Add => "add",
            BinaryOp::Sub => "sub",
            BinaryOp::Mul => "mul",
            BinaryOp::Div => "div",
            BinaryOp::Pow => "pow",
            BinaryOp::Max => "maximum",
            BinaryOp::Min => "minimum",
        }
    }
}

/// Elementwise comparison with broadcasting; the result is bool.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CompareOp {
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
    Ne,
}

impl CompareOp {
    pub fn name(self) -> &'static str {
        match self {
            CompareOp::Lt => "lt",
            CompareOp::Le => "le",
            CompareOp::Gt => "gt",
            CompareOp::Ge => "ge",
            CompareOp::Eq => "eq",
            CompareOp::Ne => "ne",
        }
    }
}

/// One step of a fused elementwise expression. Steps refer to earlier steps
/// by index; the last step is the result.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ExprStep {
    /// The i-th input of the fused node (broadcast to the output shape).
    Input(usize),
    Const(Float),
    Unary(UnaryOp, usize),
    Binary(BinaryOp, usize, usize),
    Compare(CompareOp, usize, usize),
    Where(usize, usize, usize),
}

/// The expression a `FusedElementwise` node evaluates per element.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ElementwiseExpr {
    pub steps: Vec<ExprStep>,
}

impl fmt::Display for ElementwiseExpr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn write_step(e: &ElementwiseExpr, i: usize, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            match &e.steps[i] {
                ExprStep::Input(k) => write!(f, "${k}"),
                ExprStep::Const(c) => write!(f, "{c}"),
                ExprStep::Unary(op, a) => {
                    write!(f, "{}(", op.name())?;
                    write_step(e, *a, f)?;
                    write!(f, ")")
                }
                ExprStep::Binary(op, a, b) => {
                    write!(f, "{}(", op.name())?;
                    write_step(e, *a, f)?;
                    write!(f, ", ")?;
                    write_step(e, *b, f)?;
                    write!(f, ")")
                }
                ExprStep::Compare(op, a, b) => {
                    write!(f, "{}(", op.name())?;
                    write_step(e, *a, f)?;
                    write!(f, ", ")?;
                    write_step(e, *b, f)?;
                    write!(f, ")")
                }
                ExprStep::Where(c, a, b) => {
                    write!(f, "where(")?;
                    write_step(e, *c, f)?;
                    write!(f, ", ")?;
                    write_step(e, *a, f)?;
                    write!(f, ", ")?;
                    write_step(e, *b, f)?;
                    write!(f, ")")
                }
            }
        }
        if self.steps.is_empty() {
            return write!(f, "<empty>");
        }
        write_step(self, self.steps.len() - 1, f)
    }
}

/// `where(cond, a, b)`, broadcasting all three.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Where;

/// A tree of elementwise ops evaluated in one pass over memory (made by
/// the `fuse-elementwise` pass only).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct FusedElementwise {
    pub expr: ElementwiseExpr,
}

impl OpKind for BinaryOp {
    fn name(&self) -> &'static str {
        BinaryOp::name(*self)
    }

    fn arity(&self) -> (usize, usize) {
        (2, 2)
    }

    /// f32, or (all but `**`) two operands of one integer type: ids, masks
    /// and shape arithmetic stay integers.
    fn keeps_samples(&self, inputs: &[&TensorType], batched: &[bool]) -> bool {
        broadcast_keeps_samples(inputs.iter().copied().zip(batched.iter().copied()))
    }

    fn infer(&self, inputs: &[&TensorType]) -> Result<TensorType, ShapeError> {
        let dtype = inputs[0].dtype;
        if dtype.is_integer() && *self != BinaryOp::Pow {
            if inputs[1].dtype != dtype {
                return err(format!(
                    "{}: operands have different dtypes: {} and {} (cast one)",
                    self.name(),
                    show(inputs[0]),
                    show(inputs[1])
                ));
            }
        } else {
            for x in inputs {
                expect_dtype(self.name(), "operand", x, DType::F32)?;
            }
        }
        Ok(TensorType::new(dtype, broadcast_all(self.name(), inputs)?))
    }

    fn eval(&self, inputs: &[&Tensor], out_shape: &[usize]) -> Result<Tensor, EvalError> {
        match (inputs[0].data(), inputs[1].data()) {
            (TensorData::I64(a), TensorData::I64(b)) => {
                let values = integer_binary(*self, inputs, out_shape, a, b, |x| x, |x| x)?;
                Ok(Tensor::i64(out_shape.to_vec(), values))
            }
            (TensorData::I32(a), TensorData::I32(b)) => {
                let values =
                    integer_binary(*self, inputs, out_shape, a, b, i64::from, |x| x as i32)?;
                Ok(Tensor::new(out_shape.to_vec(), TensorData::I32(values)))
            }
            _ => binary(*self, inputs[0], inputs[1], out_shape),
        }
    }

    /// Each operand's partial derivative times g, summed back to its shape.
    fn vjp(
        &self,
        cx: &mut Vjp<'_>,
        node: NodeId,
        inputs: &[NodeId],
        g: NodeId,
        wants: &[bool],
    ) -> Result<Vec<Option<NodeId>>, GradError> {
        let [da, db] = binary_vjp(
            cx,
            *self,
            inputs[0],
            inputs[1],
            node,
            g,
            [wants[0], wants[1]],
        )?;
        Ok(vec![da, db])
    }
}

impl OpKind for CompareOp {
    fn name(&self) -> &'static str {
        CompareOp::name(*self)
    }

    fn arity(&self) -> (usize, usize) {
        (2, 2)
    }

    fn keeps_samples(&self, inputs: &[&TensorType], batched: &[bool]) -> bool {
        broadcast_keeps_samples(inputs.iter().copied().zip(batched.iter().copied()))
    }

    fn infer(&self, inputs: &[&TensorType]) -> Result<TensorType, ShapeError> {
        if inputs[0].dtype != inputs[1].dtype {
            return err(format!(
                "{}: operands have different dtypes: {} and {}",
                self.name(),
                show(inputs[0]),
                show(inputs[1])
            ));
        }
        Ok(TensorType::new(
            DType::Bool,
            broadcast_all(self.name(), inputs)?,
        ))
    }

    fn eval(&self, inputs: &[&Tensor], out_shape: &[usize]) -> Result<Tensor, EvalError> {
        compare(*self, inputs[0], inputs[1], out_shape)
    }
}

impl OpKind for Where {
    fn name(&self) -> &'static str {
        "where"
    }

    fn arity(&self) -> (usize, usize) {
        (3, 3)
    }

    fn keeps_samples(&self, inputs: &[&TensorType], batched: &[bool]) -> bool {
        broadcast_keeps_samples(inputs.iter().copied().zip(batched.iter().copied()))
    }

    fn infer(&self, inputs: &[&TensorType]) -> Result<TensorType, ShapeError> {
        expect_dtype("where", "condition", inputs[0], DType::Bool)?;
        if inputs[1].dtype != inputs[2].dtype {
            return err(format!(
                "where: branches have different dtypes: {} and {}",
                show(inputs[1]),
                show(inputs[2])
            ));
        }
        Ok(TensorType::new(
            inputs[1].dtype,
            broadcast_all("where", inputs)?,
        ))
    }

    fn eval(&self, inputs: &[&Tensor], out_shape: &[usize]) -> Result<Tensor, EvalError> {
        select(inputs[0], inputs[1], inputs[2], out_shape)
    }

    /// g goes to the branch each element took; none to the condition.
    fn vjp(
        &self,
        cx: &mut Vjp<'_>,
        _node: NodeId,
        inputs: &[NodeId],
        g: NodeId,
        wants: &[bool],
    ) -> Result<Vec<Option<NodeId>>, GradError> {
        let zero = cx.scalar(0.0);
        let cond = inputs[0];
        let mut out = vec![None, None, None];
        for (i, picks) in [(1, [g, zero]), (2, [zero, g])] {
            if wants[i] {
                let picked = cx.add(Op::Where, &[cond, picks[0], picks[1]])?;
                let shape = cx.ty(inputs[i]).shape.clone();
                out[i] = Some(cx.unbroadcast(picked, &shape)?);
            }
        }
        Ok(out)
    }
}

impl OpKind for FusedElementwise {
    fn name(&self) -> &'static str {
        "fused_elementwise"
    }

    fn arity(&self) -> (usize, usize) {
        let n = self
            .expr
            .steps
            .iter()
            .filter_map(|s| match s {
                ExprStep::Input(i) => Some(i + 1),
                _ => None,
            })
            .max()
            .unwrap_or(0);
        (n, n)
    }

    /// Types the last step only; `eval` (and the code generator) check
    /// every step.
    fn keeps_samples(&self, inputs: &[&TensorType], batched: &[bool]) -> bool {
        broadcast_keeps_samples(inputs.iter().copied().zip(batched.iter().copied()))
    }

    fn infer(&self, inputs: &[&TensorType]) -> Result<TensorType, ShapeError> {
        let shape = broadcast_all(self.name(), inputs)?;
        let mut dtypes: Vec<DType> = Vec::with_capacity(self.expr.steps.len());
        for step in &self.expr.steps {
            let d = match step {
                ExprStep::Input(i) => inputs[*i].dtype,
                ExprStep::Const(_) | ExprStep::Unary(..) | ExprStep::Binary(..) => DType::F32,
                ExprStep::Compare(..) => DType::Bool,
                ExprStep::Where(_, a, _) => *dtypes.get(*a).ok_or_else(|| {
                    ShapeError(format!("fused_elementwise: step refers to later step {a}"))
                })?,
            };
            dtypes.push(d);
        }
        let dtype = *dtypes
            .last()
            .ok_or_else(|| ShapeError("fused_elementwise: empty expression".into()))?;
        Ok(TensorType::new(dtype, shape))
    }

    fn eval(&self, inputs: &[&Tensor], out_shape: &[usize]) -> Result<Tensor, EvalError> {
        fused(&self.expr, inputs, out_shape)
    }

    fn attributes(&self) -> Vec<(&'static str, String)> {
        vec![("expr", self.expr.to_string())]
    }

    /// Differentiated step by step, as the ops it fuses.
    fn vjp(
        &self,
        cx: &mut Vjp<'_>,
        node: NodeId,
        inputs: &[NodeId],
        g: NodeId,
        wants: &[bool],
    ) -> Result<Vec<Option<NodeId>>, GradError> {
        fused_elementwise(cx, &self.expr.steps, node, inputs, g, wants)
    }
}

/// `maximum(a, b)`, `minimum(a, b)`, `pow(a, b)` (also `a ** b`) and
/// `where(cond, a, b)`. The arithmetic and comparison operators are lowered
/// from the expression syntax to `Op::Binary` and `Op::Compare` directly.
pub const BUILTIN: Builtin = Builtin {
    names: &["maximum", "minimum", "pow", "where"],
    lower,
};

fn lower(name: &str, args: &mut dyn CallArgs) -> Result<(Op, Vec<NodeId>), Poisoned> {
    let op = match name {
        "maximum" => Op::Binary(BinaryOp::Max),
        "minimum" => Op::Binary(BinaryOp::Min),
        "pow" => Op::Binary(BinaryOp::Pow),
        _ => {
            let cond = args.tensor()?;
            let a = args.tensor()?;
            let b = args.tensor()?;
            return Ok((Op::Where, vec![cond, a, b]));
        }
    };
    let a = args.tensor()?;
    let b = args.tensor()?;
    Ok((op, vec![a, b]))
}

// ---- reference evaluation ----

pub(super) fn binary(
    op: BinaryOp,
    a: &Tensor,
    b: &Tensor,
    out_shape: &[usize],
) -> Result<Tensor, EvalError> {
    let (a_values, b_values) = (
        elements::<f32>(op.name(), a)?,
        elements::<f32>(op.name(), b)?,
    );
    let values = broadcast_offsets(a.shape(), out_shape)
        .zip(broadcast_offsets(b.shape(), out_shape))
        .map(|(i, j)| math::binary(op, a_values[i], b_values[j]))
        .collect();
    Ok(Tensor::f32(out_shape.to_vec(), values))
}

/// An integer binary op in i64, wrapped back into the element type by
/// `narrow` (two's complement, as numpy and ONNX wrap): `/` truncates toward
/// zero (C and ONNX `Div`), and a division by zero is an error.
fn integer_binary<T: Copy, U>(
    op: BinaryOp,
    inputs: &[&Tensor],
    out_shape: &[usize],
    a: &[T],
    b: &[T],
    widen: impl Fn(T) -> i64,
    narrow: impl Fn(i64) -> U,
) -> Result<Vec<U>, EvalError> {
    broadcast_offsets(inputs[0].shape(), out_shape)
        .zip(broadcast_offsets(inputs[1].shape(), out_shape))
        .map(|(i, j)| {
            let (x, y) = (widen(a[i]), widen(b[j]));
            let v = match op {
                BinaryOp::Add => x.wrapping_add(y),
                BinaryOp::Sub => x.wrapping_sub(y),
                BinaryOp::Mul => x.wrapping_mul(y),
                BinaryOp::Div if y == 0 => {
                    return Err(EvalError::Invalid {
                        op: "div",
                        message: format!("integer division by zero ({x} / 0)"),
                    })
                }
                BinaryOp::Div => x.wrapping_div(y),
                BinaryOp::Max => x.max(y),
                BinaryOp::Min => x.min(y),
                BinaryOp::Pow => {
                    return Err(EvalError::OperandDType {
                        op: "pow",
                        expected: DType::F32,
                        actual: inputs[0].dtype(),
                    })
                }
            };
            Ok(narrow(v))
        })
        .collect()
}

pub(super) fn compare(
    op: CompareOp,
    a: &Tensor,
    b: &Tensor,
    out_shape: &[usize],
) -> Result<Tensor, EvalError> {
    fn typed<T: Element>(
        op: CompareOp,
        a: &Tensor,
        b: &Tensor,
        out_shape: &[usize],
    ) -> Result<Vec<bool>, EvalError> {
        let (a_values, b_values) = (elements::<T>(op.name(), a)?, elements::<T>(op.name(), b)?);
        Ok(broadcast_offsets(a.shape(), out_shape)
            .zip(broadcast_offsets(b.shape(), out_shape))
            .map(|(i, j)| math::compare(op, a_values[i], b_values[j]))
            .collect())
    }
    let values = with_element_type!(a.dtype(), T => typed::<T>(op, a, b, out_shape)?);
    Ok(Tensor::new(out_shape.to_vec(), TensorData::Bool(values)))
}

/// `where(cond, a, b)`: `a` where `cond` holds, else `b`; all three broadcast.
pub(super) fn select(
    cond: &Tensor,
    a: &Tensor,
    b: &Tensor,
    out_shape: &[usize],
) -> Result<Tensor, EvalError> {
    fn typed<T: Element>(
        cond: &Tensor,
        a: &Tensor,
        b: &Tensor,
        out_shape: &[usize],
    ) -> Result<TensorData, EvalError> {
        let conditions = elements::<bool>("where", cond)?;
        let (a_values, b_values) = (elements::<T>("where", a)?, elements::<T>("where", b)?);
        let values = broadcast_offsets(cond.shape(), out_shape)
            .zip(broadcast_offsets(a.shape(), out_shape))
            .zip(broadcast_offsets(b.shape(), out_shape))
            .map(|((c, i), j)| {
                if conditions[c] {
                    a_values[i]
                } else {
                    b_values[j]
                }
            })
            .collect();
        Ok(T::wrap(values))
    }
    let data = with_element_type!(a.dtype(), T => typed::<T>(cond, a, b, out_shape)?);
    Ok(Tensor::new(out_shape.to_vec(), data))
}

/// One element of any dtype, as a fused expression's steps pass them along.
#[derive(Clone, Copy, Debug)]
enum Value {
    F32(f32),
    I64(i64),
    I32(i32),
    Bool(bool),
}

impl Value {
    fn read(data: &TensorData, offset: usize) -> Value {
        match data {
            TensorData::F32(v) => Value::F32(v[offset]),
            TensorData::I64(v) => Value::I64(v[offset]),
            TensorData::I32(v) => Value::I32(v[offset]),
            TensorData::Bool(v) => Value::Bool(v[offset]),
        }
    }
}

fn expr_error(step: usize, reason: impl Into<String>) -> EvalError {
    EvalError::BadExpr {
        step,
        reason: reason.into(),
    }
}

/// The dtype of every step, checking that each step reads only earlier
/// steps and existing inputs, with operand dtypes its op accepts.
/// `shape_rules::infer` types only the last step, so the rest is checked here.
fn check_expr(expr: &ElementwiseExpr, input_dtypes: &[DType]) -> Result<Vec<DType>, EvalError> {
    if expr.steps.is_empty() {
        return Err(expr_error(0, "the expression has no steps"));
    }
    let mut dtypes: Vec<DType> = Vec::with_capacity(expr.steps.len());
    for (index, step) in expr.steps.iter().enumerate() {
        let operand = |i: usize| -> Result<DType, EvalError> {
            dtypes.get(i).copied().ok_or_else(|| {
                expr_error(
                    index,
                    format!("refers to step {i}, which does not come before it"),
                )
            })
        };
        let need_f32 = |i: usize| -> Result<(), EvalError> {
            match operand(i)? {
                DType::F32 => Ok(()),
                other => Err(expr_error(
                    index,
                    format!("operand step {i} is {other}, arithmetic needs f32"),
                )),
            }
        };
        let dtype = match step {
            ExprStep::Input(k) => *input_dtypes.get(*k).ok_or_else(|| {
                expr_error(
                    index,
                    format!("reads input {k}, but the node has {}", input_dtypes.len()),
                )
            })?,
            ExprStep::Const(_) => DType::F32,
            ExprStep::Unary(_, a) => {
                need_f32(*a)?;
                DType::F32
            }
            ExprStep::Binary(_, a, b) => {
                need_f32(*a)?;
                need_f32(*b)?;
                DType::F32
            }
            ExprStep::Compare(_, a, b) => {
                let (x, y) = (operand(*a)?, operand(*b)?);
                if x != y {
                    return Err(expr_error(index, format!("compares {x} with {y}")));
                }
                DType::Bool
            }
            ExprStep::Where(c, a, b) => {
                if operand(*c)? != DType::Bool {
                    return Err(expr_error(index, format!("condition step {c} is not bool")));
                }
                let (x, y) = (operand(*a)?, operand(*b)?);
                if x != y {
                    return Err(expr_error(index, format!("branches are {x} and {y}")));
                }
                x
            }
        };
        dtypes.push(dtype);
    }
    Ok(dtypes)
}

/// Evaluates the steps for one element. `check_expr` has accepted the
/// expression, so the dtype mismatch arms are unreachable in practice; they
/// report instead of panicking.
fn eval_steps(
    steps: &[ExprStep],
    inputs: &[Value],
    scratch: &mut Vec<Value>,
) -> Result<Value, EvalError> {
    scratch.clear();
    for (index, step) in steps.iter().enumerate() {
        let f32_operand = |i: usize| match scratch[i] {
            Value::F32(v) => Ok(v),
            _ => Err(expr_error(index, "arithmetic on a non-f32 value")),
        };
        let value = match step {
            ExprStep::Input(k) => inputs[*k],
            ExprStep::Const(c) => Value::F32(c.0),
            ExprStep::Unary(op, a) => Value::F32(super::unary::apply(*op, f32_operand(*a)?)),
            ExprStep::Binary(op, a, b) => {
                Value::F32(math::binary(*op, f32_operand(*a)?, f32_operand(*b)?))
            }
            ExprStep::Compare(op, a, b) => Value::Bool(match (scratch[*a], scratch[*b]) {
                (Value::F32(x), Value::F32(y)) => math::compare(*op, x, y),
                (Value::I64(x), Value::I64(y)) => math::compare(*op, x, y),
                (Value::I32(x), Value::I32(y)) => math::compare(*op, x, y),
                (Value::Bool(x), Value::Bool(y)) => math::compare(*op, x, y),
                _ => return Err(expr_error(index, "comparison of different dtypes")),
            }),
            ExprStep::Where(c, a, b) => match scratch[*c] {
                Value::Bool(true) => scratch[*a],
                Value::Bool(false) => scratch[*b],
                _ => return Err(expr_error(index, "non-bool condition")),
            },
        };
        scratch.push(value);
    }
    scratch
        .last()
        .copied()
        .ok_or_else(|| expr_error(0, "the expression has no steps"))
}

fn push(out: &mut TensorData, value: Value) -> Result<(), EvalError> {
    match (out, value) {
        (TensorData::F32(v), Value::F32(x)) => v.push(x),
        (TensorData::I64(v), Value::I64(x)) => v.push(x),
        (TensorData::I32(v), Value::I32(x)) => v.push(x),
        (TensorData::Bool(v), Value::Bool(x)) => v.push(x),
        _ => return Err(expr_error(0, "the result dtype changed between elements")),
    }
    Ok(())
}

/// Evaluates `expr` per output element, each input broadcast to
/// `out_shape`. Each step rounds to f32 exactly as the unfused node would,
/// so fusion does not change a single bit of the result.
pub(super) fn fused(
    expr: &ElementwiseExpr,
    inputs: &[&Tensor],
    out_shape: &[usize],
) -> Result<Tensor, EvalError> {
    let input_dtypes: Vec<DType> = inputs.iter().map(|t| t.dtype()).collect();
    let step_dtypes = check_expr(expr, &input_dtypes)?;
    let out_dtype = *step_dtypes
        .last()
        .ok_or_else(|| expr_error(0, "the expression has no steps"))?;
    let mut out = Tensor::zeros(out_dtype, vec![0]).into_data();
    let mut offsets: Vec<_> = inputs
        .iter()
        .map(|t| broadcast_offsets(t.shape(), out_shape))
        .collect();
    let count: usize = out_shape.iter().product();
    let mut element_inputs: Vec<Value> = Vec::with_capacity(inputs.len());
    let mut scratch = Vec::with_capacity(expr.steps.len());
    for _ in 0..count {
        element_inputs.clear();
        for (tensor, walk) in inputs.iter().zip(offsets.iter_mut()) {
            let offset = walk
                .next()
                .ok_or_else(|| expr_error(0, "an input ran out of elements"))?;
            element_inputs.push(Value::read(tensor.data(), offset));
        }
        push(
            &mut out,
            eval_steps(&expr.steps, &element_inputs, &mut scratch)?,
        )?;
    }
    Ok(Tensor::new(out_shape.to_vec(), out))
}

/// Gradients of `a op b` (output `y`), each summed back to its operand's shape.
pub(crate) fn binary_vjp(
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
                let [dx, dy] =
                    binary_vjp(cx, b, values[x], values[y], values[i], gi, [true, true])?;
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
