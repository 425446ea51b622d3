//! Elementwise ops with numpy broadcasting: unary, binary, comparison,
//! `where`, and the fused expression that chains them.

use crate::ir::ops::math as scalar;
use crate::ir::ops::unary;
use crate::ir::ops::values::{broadcast_offsets, elements, with_element_type, Element};
use crate::ir::ops::EvalError;
use crate::ir::{BinaryOp, CompareOp, DType, ElementwiseExpr, ExprStep};
use crate::tensor::{Tensor, TensorData};

use super::InterpError;

pub fn binary(
    op: BinaryOp,
    a: &Tensor,
    b: &Tensor,
    out_shape: &[usize],
) -> Result<Tensor, InterpError> {
    let (a_values, b_values) = (
        elements::<f32>(op.name(), a)?,
        elements::<f32>(op.name(), b)?,
    );
    let values = broadcast_offsets(a.shape(), out_shape)
        .zip(broadcast_offsets(b.shape(), out_shape))
        .map(|(i, j)| scalar::binary(op, a_values[i], b_values[j]))
        .collect();
    Ok(Tensor::f32(out_shape.to_vec(), values))
}

pub fn compare(
    op: CompareOp,
    a: &Tensor,
    b: &Tensor,
    out_shape: &[usize],
) -> Result<Tensor, InterpError> {
    fn typed<T: Element>(
        op: CompareOp,
        a: &Tensor,
        b: &Tensor,
        out_shape: &[usize],
    ) -> Result<Vec<bool>, InterpError> {
        let (a_values, b_values) = (elements::<T>(op.name(), a)?, elements::<T>(op.name(), b)?);
        Ok(broadcast_offsets(a.shape(), out_shape)
            .zip(broadcast_offsets(b.shape(), out_shape))
            .map(|(i, j)| scalar::compare(op, a_values[i], b_values[j]))
            .collect())
    }
    let values = with_element_type!(a.dtype(), T => typed::<T>(op, a, b, out_shape)?);
    Ok(Tensor::new(out_shape.to_vec(), TensorData::Bool(values)))
}

/// `where(cond, a, b)`: `a` where `cond` holds, else `b`; all three broadcast.
pub fn select(
    cond: &Tensor,
    a: &Tensor,
    b: &Tensor,
    out_shape: &[usize],
) -> Result<Tensor, InterpError> {
    fn typed<T: Element>(
        cond: &Tensor,
        a: &Tensor,
        b: &Tensor,
        out_shape: &[usize],
    ) -> Result<TensorData, InterpError> {
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

fn expr_error(step: usize, reason: impl Into<String>) -> InterpError {
    InterpError::Eval(EvalError::BadExpr {
        step,
        reason: reason.into(),
    })
}

/// The dtype of every step, checking that each step reads only earlier
/// steps and existing inputs, with operand dtypes its op accepts.
/// `shape_rules::infer` types only the last step, so the rest is checked here.
fn check_expr(expr: &ElementwiseExpr, input_dtypes: &[DType]) -> Result<Vec<DType>, InterpError> {
    if expr.steps.is_empty() {
        return Err(expr_error(0, "the expression has no steps"));
    }
    let mut dtypes: Vec<DType> = Vec::with_capacity(expr.steps.len());
    for (index, step) in expr.steps.iter().enumerate() {
        let operand = |i: usize| -> Result<DType, InterpError> {
            dtypes.get(i).copied().ok_or_else(|| {
                expr_error(
                    index,
                    format!("refers to step {i}, which does not come before it"),
                )
            })
        };
        let need_f32 = |i: usize| -> Result<(), InterpError> {
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
) -> Result<Value, InterpError> {
    scratch.clear();
    for (index, step) in steps.iter().enumerate() {
        let f32_operand = |i: usize| match scratch[i] {
            Value::F32(v) => Ok(v),
            _ => Err(expr_error(index, "arithmetic on a non-f32 value")),
        };
        let value = match step {
            ExprStep::Input(k) => inputs[*k],
            ExprStep::Const(c) => Value::F32(c.0),
            ExprStep::Unary(op, a) => Value::F32(unary::apply(*op, f32_operand(*a)?)),
            ExprStep::Binary(op, a, b) => {
                Value::F32(scalar::binary(*op, f32_operand(*a)?, f32_operand(*b)?))
            }
            ExprStep::Compare(op, a, b) => Value::Bool(match (scratch[*a], scratch[*b]) {
                (Value::F32(x), Value::F32(y)) => scalar::compare(*op, x, y),
                (Value::I64(x), Value::I64(y)) => scalar::compare(*op, x, y),
                (Value::I32(x), Value::I32(y)) => scalar::compare(*op, x, y),
                (Value::Bool(x), Value::Bool(y)) => scalar::compare(*op, x, y),
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

fn push(out: &mut TensorData, value: Value) -> Result<(), InterpError> {
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
pub fn fused(
    expr: &ElementwiseExpr,
    inputs: &[&Tensor],
    out_shape: &[usize],
) -> Result<Tensor, InterpError> {
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
