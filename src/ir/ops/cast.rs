//! `cast`: dtype conversion.

use super::shape::ShapeError;
use super::values::{elements, with_element_type, Element};
use super::{Builtin, CallArgs, DType, EvalError, NodeId, Op, OpKind, Poisoned};
use crate::ir::vjp::{GradError, Vjp};
use crate::ir::TensorType;
use crate::tensor::{Tensor, TensorData};

/// Convert to `to`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Cast {
    pub to: DType,
}

impl OpKind for Cast {
    fn name(&self) -> &'static str {
        "cast"
    }

    fn arity(&self) -> (usize, usize) {
        (1, 1)
    }

    fn keeps_samples(&self, inputs: &[&TensorType], batched: &[bool]) -> bool {
        let _ = (inputs, batched);
        true
    }

    fn infer(&self, inputs: &[&TensorType]) -> Result<TensorType, ShapeError> {
        Ok(TensorType::new(self.to, inputs[0].shape.clone()))
    }

    fn eval(&self, inputs: &[&Tensor], _out_shape: &[usize]) -> Result<Tensor, EvalError> {
        cast(inputs[0], self.to)
    }

    fn attributes(&self) -> Vec<(&'static str, String)> {
        vec![("to", self.to.to_string())]
    }

    /// The identity: a gradient flows only through a cast from f32 to f32.
    fn vjp(
        &self,
        _cx: &mut Vjp<'_>,
        _node: NodeId,
        _inputs: &[NodeId],
        g: NodeId,
        _wants: &[bool],
    ) -> Result<Vec<Option<NodeId>>, GradError> {
        // Only f32 -> f32 carries a gradient (the driver follows f32 values only).
        Ok(vec![Some(g)])
    }
}

/// `cast(x, f32)` or `cast(x, dtype=i64)`.
pub const BUILTIN: Builtin = Builtin {
    names: &["cast"],
    lower,
};

fn lower(_name: &str, args: &mut dyn CallArgs) -> Result<(Op, Vec<NodeId>), Poisoned> {
    let x = args.tensor()?;
    let to = args.dtype("dtype")?;
    Ok((Op::Cast(Cast { to }), vec![x]))
}

// ---- reference evaluation ----

/// Conversions between the element types, one table row per source type.
/// Float to integer truncates toward zero like numpy's `astype`; where
/// numpy's result is platform-defined (NaN, out of range) the value
/// saturates and NaN becomes 0, as Rust's `as` defines. Integer narrowing
/// wraps like numpy. Anything non-zero (NaN included) is `true`.
trait Convert: Element {
    fn to_f32(self) -> f32;
    fn to_i64(self) -> i64;
    fn to_i32(self) -> i32;
    fn to_bool(self) -> bool;
}

impl Convert for f32 {
    fn to_f32(self) -> f32 {
        self
    }
    fn to_i64(self) -> i64 {
        self as i64
    }
    fn to_i32(self) -> i32 {
        self as i32
    }
    fn to_bool(self) -> bool {
        self != 0.0
    }
}

impl Convert for i64 {
    fn to_f32(self) -> f32 {
        self as f32
    }
    fn to_i64(self) -> i64 {
        self
    }
    fn to_i32(self) -> i32 {
        self as i32
    }
    fn to_bool(self) -> bool {
        self != 0
    }
}

impl Convert for i32 {
    fn to_f32(self) -> f32 {
        self as f32
    }
    fn to_i64(self) -> i64 {
        i64::from(self)
    }
    fn to_i32(self) -> i32 {
        self
    }
    fn to_bool(self) -> bool {
        self != 0
    }
}

impl Convert for bool {
    fn to_f32(self) -> f32 {
        f32::from(u8::from(self))
    }
    fn to_i64(self) -> i64 {
        i64::from(self)
    }
    fn to_i32(self) -> i32 {
        i32::from(self)
    }
    fn to_bool(self) -> bool {
        self
    }
}

pub(super) fn cast(x: &Tensor, to: DType) -> Result<Tensor, EvalError> {
    fn typed<T: Convert>(x: &Tensor, to: DType) -> Result<TensorData, EvalError> {
        let values = elements::<T>("cast", x)?;
        Ok(match to {
            DType::F32 => TensorData::F32(values.iter().map(|v| v.to_f32()).collect()),
            DType::I64 => TensorData::I64(values.iter().map(|v| v.to_i64()).collect()),
            DType::I32 => TensorData::I32(values.iter().map(|v| v.to_i32()).collect()),
            DType::Bool => TensorData::Bool(values.iter().map(|v| v.to_bool()).collect()),
        })
    }
    let data = with_element_type!(x.dtype(), T => typed::<T>(x, to)?);
    Ok(Tensor::new(x.shape().to_vec(), data))
}
