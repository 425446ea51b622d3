//! `cumsum(x, axis=0, exclusive=false, reverse=false)`: running sums along
//! one axis (ONNX `CumSum`, numpy's `cumsum`). `exclusive` leaves each
//! element out of its own sum (the first is 0); `reverse` sums from the end.
//! f32 sums accumulate in f64 and round once per element; integer sums wrap
//! (as numpy's and ONNX's).

use super::shape::{err, expect_axis, show, ShapeError};
use super::values::elements;
use super::{Builtin, CallArgs, EvalError, NodeId, Op, OpKind, Poisoned};
use crate::ir::{DType, TensorType};
use crate::tensor::{Tensor, TensorData};

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CumSum {
    pub axis: usize,
    pub exclusive: bool,
    pub reverse: bool,
}

impl CumSum {
    /// Visits each line along the axis: `f(offsets in summing order)`.
    fn lines(&self, shape: &[usize], mut f: impl FnMut(&mut dyn Iterator<Item = usize>)) {
        let size = shape[self.axis];
        let outer: usize = shape[..self.axis].iter().product();
        let inner: usize = shape[self.axis + 1..].iter().product();
        for o in 0..outer {
            for i in 0..inner {
                let at = move |k: usize| (o * size + k) * inner + i;
                if self.reverse {
                    f(&mut (0..size).rev().map(at));
                } else {
                    f(&mut (0..size).map(at));
                }
            }
        }
    }
}

impl OpKind for CumSum {
    fn name(&self) -> &'static str {
        "cumsum"
    }

    fn arity(&self) -> (usize, usize) {
        (1, 1)
    }

    fn infer(&self, inputs: &[&TensorType]) -> Result<TensorType, ShapeError> {
        let x = inputs[0];
        if x.dtype == DType::Bool {
            return err(format!("cumsum: sums numbers, got {}", show(x)));
        }
        expect_axis("cumsum", self.axis, x)?;
        Ok(x.clone())
    }

    fn eval(&self, inputs: &[&Tensor], out_shape: &[usize]) -> Result<Tensor, EvalError> {
        let x = inputs[0];
        let n = x.data().len();
        let data = match x.data() {
            TensorData::F32(_) => {
                let v = elements::<f32>("cumsum", x)?;
                let mut out = vec![0f32; n];
                self.lines(x.shape(), |line| {
                    let mut acc = 0f64;
                    for o in line {
                        if self.exclusive {
                            out[o] = acc as f32;
                            acc += f64::from(v[o]);
                        } else {
                            acc += f64::from(v[o]);
                            out[o] = acc as f32;
                        }
                    }
                });
                TensorData::F32(out)
            }
            TensorData::I64(v) => TensorData::I64(self.wrapping(x.shape(), v)),
            TensorData::I32(v) => TensorData::I32(self.wrapping(x.shape(), v)),
            TensorData::Bool(_) => {
                return Err(EvalError::OperandDType {
                    op: "cumsum",
                    expected: DType::F32,
                    actual: DType::Bool,
                })
            }
        };
        Ok(Tensor::new(out_shape.to_vec(), data))
    }

    fn attributes(&self) -> Vec<(&'static str, String)> {
        vec![
            ("axis", self.axis.to_string()),
            ("exclusive", self.exclusive.to_string()),
            ("reverse", self.reverse.to_string()),
        ]
    }
}

/// Integer types whose sums wrap.
trait WrappingAdd: Copy + Default {
    fn wrapping_add(self, other: Self) -> Self;
}
impl WrappingAdd for i64 {
    fn wrapping_add(self, other: i64) -> i64 {
        i64::wrapping_add(self, other)
    }
}
impl WrappingAdd for i32 {
    fn wrapping_add(self, other: i32) -> i32 {
        i32::wrapping_add(self, other)
    }
}

impl CumSum {
    fn wrapping<T: WrappingAdd>(&self, shape: &[usize], v: &[T]) -> Vec<T> {
        let mut out = vec![T::default(); v.len()];
        self.lines(shape, |line| {
            let mut acc = T::default();
            for o in line {
                if self.exclusive {
                    out[o] = acc;
                    acc = acc.wrapping_add(v[o]);
                } else {
                    acc = acc.wrapping_add(v[o]);
                    out[o] = acc;
                }
            }
        });
        out
    }
}

pub const BUILTIN: Builtin = Builtin {
    names: &["cumsum"],
    lower,
};

/// `cumsum(x, axis=0, exclusive=false, reverse=false)`.
fn lower(_name: &str, args: &mut dyn CallArgs) -> Result<(Op, Vec<NodeId>), Poisoned> {
    let x = args.tensor()?;
    let axis = args.axis("axis", 0, x)?;
    let exclusive = args.bool("exclusive", false)?;
    let reverse = args.bool("reverse", false)?;
    Ok((
        Op::CumSum(CumSum {
            axis,
            exclusive,
            reverse,
        }),
        vec![x],
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(op: CumSum, x: &Tensor) -> TensorData {
        op.eval(&[x], x.shape()).unwrap().data().clone()
    }

    #[test]
    fn exclusive_and_reverse_sums_along_an_axis() {
        let x = Tensor::f32(vec![2, 3], vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let op = |axis, exclusive, reverse| CumSum {
            axis,
            exclusive,
            reverse,
        };
        assert_eq!(
            run(op(1, false, false), &x),
            TensorData::F32(vec![1.0, 3.0, 6.0, 4.0, 9.0, 15.0])
        );
        assert_eq!(
            run(op(1, true, true), &x),
            TensorData::F32(vec![5.0, 3.0, 0.0, 11.0, 6.0, 0.0])
        );
        assert_eq!(
            run(op(0, false, false), &x),
            TensorData::F32(vec![1.0, 2.0, 3.0, 5.0, 7.0, 9.0])
        );
        let i = Tensor::new(vec![3], TensorData::I32(vec![i32::MAX, 1, 2]));
        assert_eq!(
            run(op(0, false, false), &i),
            TensorData::I32(vec![i32::MAX, i32::MIN, i32::MIN + 2])
        );
    }
}
