//! `argmax(x, axis=-1, keepdims=false, last=false)` and `argmin`: the i64
//! position of the largest (smallest) element along one axis. Ties pick the
//! first position, or the last with `last=true` (ONNX `select_last_index`);
//! a NaN counts as larger and smaller than everything (numpy's rule), so the
//! first NaN wins.

use super::shape::{err, expect_axis, expect_dtype, ShapeError};
use super::values::elements;
use super::{Builtin, CallArgs, EvalError, NodeId, Op, OpKind, Poisoned};
use crate::ir::{DType, Dim, TensorType};
use crate::tensor::Tensor;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ArgOp {
    Max,
    Min,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ArgReduce {
    pub op: ArgOp,
    pub axis: usize,
    pub keepdims: bool,
    /// Ties go to the last position instead of the first.
    pub last: bool,
}

impl OpKind for ArgReduce {
    fn name(&self) -> &'static str {
        match self.op {
            ArgOp::Max => "argmax",
            ArgOp::Min => "argmin",
        }
    }

    fn arity(&self) -> (usize, usize) {
        (1, 1)
    }

    fn infer(&self, inputs: &[&TensorType]) -> Result<TensorType, ShapeError> {
        let name = self.name();
        let x = inputs[0];
        expect_dtype(name, "operand", x, DType::F32)?;
        expect_axis(name, self.axis, x)?;
        if x.shape[self.axis].as_known() == Some(0) {
            return err(format!(
                "{name}: axis {} has size 0, and there is no position to pick",
                self.axis
            ));
        }
        let mut shape = x.shape.clone();
        if self.keepdims {
            shape[self.axis] = Dim::known(1);
        } else {
            shape.remove(self.axis);
        }
        Ok(TensorType::new(DType::I64, shape))
    }

    fn eval(&self, inputs: &[&Tensor], out_shape: &[usize]) -> Result<Tensor, EvalError> {
        let x = inputs[0];
        let values = elements::<f32>(self.name(), x)?;
        let size = x.shape()[self.axis];
        if size == 0 {
            return Err(EvalError::Invalid {
                op: self.name(),
                message: format!("axis {} has size 0", self.axis),
            });
        }
        let outer: usize = x.shape()[..self.axis].iter().product();
        let inner: usize = x.shape()[self.axis + 1..].iter().product();
        let mut out = Vec::with_capacity(outer * inner);
        for o in 0..outer {
            for i in 0..inner {
                let at = |k: usize| values[(o * size + k) * inner + i];
                let mut best = 0;
                for k in 1..size {
                    let (v, b) = (at(k), at(best));
                    if b.is_nan() {
                        break;
                    }
                    let better = v.is_nan()
                        || match self.op {
                            ArgOp::Max => v > b || (self.last && v == b),
                            ArgOp::Min => v < b || (self.last && v == b),
                        };
                    if better {
                        best = k;
                    }
                }
                out.push(best as i64);
            }
        }
        Ok(Tensor::i64(out_shape.to_vec(), out))
    }

    fn attributes(&self) -> Vec<(&'static str, String)> {
        vec![
            ("axis", self.axis.to_string()),
            ("keepdims", self.keepdims.to_string()),
            ("last", self.last.to_string()),
        ]
    }
}

pub const BUILTIN: Builtin = Builtin {
    names: &["argmax", "argmin"],
    lower,
};

/// `argmax(x, axis=-1, keepdims=false, last=false)`, likewise `argmin`.
fn lower(name: &str, args: &mut dyn CallArgs) -> Result<(Op, Vec<NodeId>), Poisoned> {
    let x = args.tensor()?;
    let axis = args.axis("axis", -1, x)?;
    let keepdims = args.bool("keepdims", false)?;
    let last = args.bool("last", false)?;
    let op = if name == "argmax" {
        ArgOp::Max
    } else {
        ArgOp::Min
    };
    Ok((
        Op::ArgReduce(ArgReduce {
            op,
            axis,
            keepdims,
            last,
        }),
        vec![x],
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arg(op: ArgOp, axis: usize, last: bool, x: &Tensor, out: &[usize]) -> Vec<i64> {
        let t = ArgReduce {
            op,
            axis,
            keepdims: false,
            last,
        }
        .eval(&[x], out)
        .unwrap();
        match t.data() {
            crate::tensor::TensorData::I64(v) => v.clone(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn ties_pick_the_first_or_last_position_and_nan_wins() {
        let x = Tensor::f32(vec![2, 3], vec![1.0, 3.0, 3.0, 2.0, 0.0, 0.0]);
        assert_eq!(arg(ArgOp::Max, 1, false, &x, &[2]), vec![1, 0]);
        assert_eq!(arg(ArgOp::Max, 1, true, &x, &[2]), vec![2, 0]);
        assert_eq!(arg(ArgOp::Min, 1, true, &x, &[2]), vec![0, 2]);
        assert_eq!(arg(ArgOp::Min, 0, false, &x, &[3]), vec![0, 1, 1]);
        let x = Tensor::f32(vec![4], vec![1.0, f32::NAN, 5.0, f32::NAN]);
        assert_eq!(arg(ArgOp::Max, 0, true, &x, &[]), vec![1]);
        assert_eq!(arg(ArgOp::Min, 0, false, &x, &[]), vec![1]);
    }
}
