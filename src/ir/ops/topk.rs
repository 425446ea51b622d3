//! `topk(x, k=, axis=-1, largest=true)`: the i64 positions of the `k`
//! largest (or smallest) elements along one axis, best first; equal values
//! keep their order (the lower position first), and a NaN counts as larger
//! than every number. The values themselves are
//! `gather_elements(x, topk(x, ...), axis)` (ONNX `TopK` gives both).

use std::cmp::Ordering;

use super::shape::{err, expect_axis, ShapeError};
use super::{Builtin, CallArgs, EvalError, NodeId, Op, OpKind, Poisoned};
use crate::ir::{DType, Dim, TensorType};
use crate::tensor::{Tensor, TensorData};

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TopK {
    pub k: usize,
    pub axis: usize,
    pub largest: bool,
}

/// Numbers in ascending order with NaN above everything.
fn ascending(a: f32, b: f32) -> Ordering {
    match (a.is_nan(), b.is_nan()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Greater,
        (false, true) => Ordering::Less,
        _ => a.partial_cmp(&b).unwrap_or(Ordering::Equal),
    }
}

impl OpKind for TopK {
    fn name(&self) -> &'static str {
        "topk"
    }

    fn arity(&self) -> (usize, usize) {
        (1, 1)
    }

    fn infer(&self, inputs: &[&TensorType]) -> Result<TensorType, ShapeError> {
        let x = inputs[0];
        if !(x.dtype == DType::F32 || x.dtype.is_integer()) {
            return err(format!("topk: ranks numbers (f32, i64, i32), got {x}"));
        }
        expect_axis("topk", self.axis, x)?;
        if let Some(size) = x.shape[self.axis].as_known() {
            if self.k > size {
                return err(format!(
                    "topk: k = {} is more than the {size} elements along axis {} of {x}",
                    self.k, self.axis
                ));
            }
        }
        let mut shape = x.shape.clone();
        shape[self.axis] = Dim::known(self.k);
        Ok(TensorType::new(DType::I64, shape))
    }

    fn eval(&self, inputs: &[&Tensor], out_shape: &[usize]) -> Result<Tensor, EvalError> {
        let x = inputs[0];
        // The order of two positions of `x`, ascending (NaN above all).
        let order_of: Box<dyn Fn(usize, usize) -> Ordering> = match x.data() {
            TensorData::F32(v) => Box::new(move |a, b| ascending(v[a], v[b])),
            TensorData::I64(v) => Box::new(move |a, b| v[a].cmp(&v[b])),
            TensorData::I32(v) => Box::new(move |a, b| v[a].cmp(&v[b])),
            TensorData::Bool(_) => {
                return Err(EvalError::OperandDType {
                    op: "topk",
                    expected: DType::F32,
                    actual: DType::Bool,
                })
            }
        };
        let size = x.shape()[self.axis];
        if self.k > size {
            return Err(EvalError::Invalid {
                op: "topk",
                message: format!(
                    "k = {} is more than the {size} elements along axis {}",
                    self.k, self.axis
                ),
            });
        }
        let outer: usize = x.shape()[..self.axis].iter().product();
        let inner: usize = x.shape()[self.axis + 1..].iter().product();
        let mut out = vec![0i64; outer * self.k * inner];
        let mut order: Vec<usize> = Vec::with_capacity(size);
        for o in 0..outer {
            for i in 0..inner {
                let at = |j: usize| (o * size + j) * inner + i;
                order.clear();
                order.extend(0..size);
                // A stable sort keeps equal values in position order.
                if self.largest {
                    order.sort_by(|&a, &b| order_of(at(b), at(a)));
                } else {
                    order.sort_by(|&a, &b| order_of(at(a), at(b)));
                }
                for (r, &j) in order.iter().take(self.k).enumerate() {
                    out[(o * self.k + r) * inner + i] = j as i64;
                }
            }
        }
        Ok(Tensor::i64(out_shape.to_vec(), out))
    }

    fn attributes(&self) -> Vec<(&'static str, String)> {
        vec![
            ("k", self.k.to_string()),
            ("axis", self.axis.to_string()),
            ("largest", self.largest.to_string()),
        ]
    }
}

pub const BUILTIN: Builtin = Builtin {
    names: &["topk"],
    lower,
};

/// `topk(x, k=, axis=-1, largest=true)`.
fn lower(_name: &str, args: &mut dyn CallArgs) -> Result<(Op, Vec<NodeId>), Poisoned> {
    let x = args.tensor()?;
    let k = args.int("k", None)?;
    let axis = args.axis("axis", -1, x)?;
    let largest = args.bool("largest", true)?;
    let k = usize::try_from(k).map_err(|_| args.error(format!("k must be >= 0, got {k}")))?;
    Ok((Op::TopK(TopK { k, axis, largest }), vec![x]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn best_first_with_ties_in_position_order() {
        let x = Tensor::f32(
            vec![2, 4],
            vec![1.0, 3.0, 3.0, 0.0, f32::NAN, -1.0, 2.0, 2.0],
        );
        let top = |k, largest| {
            TopK {
                k,
                axis: 1,
                largest,
            }
            .eval(&[&x], &[2, k])
            .unwrap()
            .data()
            .clone()
        };
        assert_eq!(top(2, true), TensorData::I64(vec![1, 2, 0, 2]));
        assert_eq!(top(3, false), TensorData::I64(vec![3, 0, 1, 1, 2, 3]));
        let e = TopK {
            k: 5,
            axis: 1,
            largest: true,
        }
        .eval(&[&x], &[2, 5])
        .unwrap_err();
        assert!(e.to_string().contains("k = 5"), "{e}");
        let ints = Tensor::i64(vec![5], vec![3, 9, 3, i64::MAX, -1]);
        let top = TopK {
            k: 3,
            axis: 0,
            largest: false,
        }
        .eval(&[&ints], &[3])
        .unwrap();
        assert_eq!(top.data(), &TensorData::I64(vec![4, 0, 2]));
    }
}
