//! `gather_elements(x, ids, axis=0)`: each output element is the element of
//! `x` at the same position, except along `axis`, where `ids` picks the row
//! (numpy's `take_along_axis`, ONNX `GatherElements`). The losses of an
//! imported model pick each sample's target class with it.

use super::shape::{err, expect_axis, show, ShapeError};
use super::values::take;
use super::{Builtin, CallArgs, EvalError, NodeId, Op, OpKind, Poisoned};
use crate::ir::{DType, TensorType};
use crate::tensor::{strides, Tensor, TensorData};

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct GatherElements {
    pub axis: usize,
}

impl OpKind for GatherElements {
    fn name(&self) -> &'static str {
        "gather_elements"
    }

    fn arity(&self) -> (usize, usize) {
        (2, 2)
    }

    fn infer(&self, inputs: &[&TensorType]) -> Result<TensorType, ShapeError> {
        let (x, ids) = (inputs[0], inputs[1]);
        expect_axis("gather_elements", self.axis, x)?;
        if !ids.dtype.is_integer() {
            return err(format!(
                "gather_elements: ids must be integers (i64 or i32), got {}",
                show(ids)
            ));
        }
        if ids.rank() != x.rank() {
            return err(format!(
                "gather_elements: ids must have the rank of the operand ({}), got {}",
                show(x),
                show(ids)
            ));
        }
        // Off the gathered axis, ids may cover less of x than all of it (as
        // ONNX allows), never more.
        for (i, (xd, id)) in x.shape.iter().zip(&ids.shape).enumerate() {
            if i == self.axis || xd == id {
                continue;
            }
            let fits = matches!((xd.as_known(), id.as_known()), (Some(a), Some(b)) if b <= a);
            if !fits {
                return err(format!(
                    "gather_elements: ids axis {i} ({id}) is longer than the operand's ({xd}): {} and {}",
                    show(x),
                    show(ids)
                ));
            }
        }
        Ok(TensorType::new(x.dtype, ids.shape.clone()))
    }

    fn eval(&self, inputs: &[&Tensor], out_shape: &[usize]) -> Result<Tensor, EvalError> {
        let (x, ids) = (inputs[0], inputs[1]);
        let ids = index_values("gather_elements", ids)?;
        let axis = self.axis;
        let size = x.shape()[axis];
        let x_strides = strides(x.shape());
        let mut offsets = Vec::with_capacity(ids.len());
        let mut position = vec![0usize; out_shape.len()];
        for (n, &index) in ids.iter().enumerate() {
            let row = row_of(index, size).ok_or_else(|| EvalError::Invalid {
                op: "gather_elements",
                message: format!(
                    "id {index} (at position {n} of the ids) is out of range for axis {axis} of size {size} (valid ids: -{size} to {})",
                    size as i64 - 1
                ),
            })?;
            let offset: usize = position
                .iter()
                .enumerate()
                .map(|(d, &p)| if d == axis { row } else { p } * x_strides[d])
                .sum();
            offsets.push(offset);
            // Next position in row-major order over the ids' shape.
            for d in (0..position.len()).rev() {
                position[d] += 1;
                if position[d] < out_shape[d] {
                    break;
                }
                position[d] = 0;
            }
        }
        take(
            "gather_elements",
            x,
            out_shape.to_vec(),
            offsets.into_iter(),
        )
    }

    fn attributes(&self) -> Vec<(&'static str, String)> {
        vec![("axis", self.axis.to_string())]
    }
}

/// Integer ids as i64 (an operand the shape rule accepted as integers).
pub(super) fn index_values(op: &'static str, ids: &Tensor) -> Result<Vec<i64>, EvalError> {
    match ids.data() {
        TensorData::I64(v) => Ok(v.clone()),
        TensorData::I32(v) => Ok(v.iter().map(|&i| i64::from(i)).collect()),
        _ => Err(EvalError::OperandDType {
            op,
            expected: DType::I64,
            actual: ids.dtype(),
        }),
    }
}

/// The row an id picks on an axis of `size`: `0..size` from the start,
/// `-size..0` from the end (as `gather`); `None` out of range.
pub(super) fn row_of(index: i64, size: usize) -> Option<usize> {
    let size = i64::try_from(size).ok()?;
    let row = if index < 0 {
        index.checked_add(size)?
    } else {
        index
    };
    (0..size).contains(&row).then_some(row as usize)
}

pub const BUILTIN: Builtin = Builtin {
    names: &["gather_elements"],
    lower,
};

/// `gather_elements(x, ids, axis=0)`.
fn lower(_name: &str, args: &mut dyn CallArgs) -> Result<(Op, Vec<NodeId>), Poisoned> {
    let x = args.tensor()?;
    let ids = args.tensor()?;
    let axis = args.axis("axis", 0, x)?;
    Ok((Op::GatherElements(GatherElements { axis }), vec![x, ids]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::Dim;

    fn ty(dtype: DType, shape: &[usize]) -> TensorType {
        TensorType::new(dtype, shape.iter().map(|&d| Dim::known(d)).collect())
    }

    #[test]
    fn picks_along_the_axis_and_counts_negative_ids_from_the_end() {
        let x = Tensor::f32(vec![2, 3], vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let ids = Tensor::i64(vec![2, 2], vec![0, -1, 1, 0]);
        let op = GatherElements { axis: 1 };
        let out = op.eval(&[&x, &ids], &[2, 2]).unwrap();
        assert_eq!(out, Tensor::f32(vec![2, 2], vec![1.0, 3.0, 5.0, 4.0]));
        let op = GatherElements { axis: 0 };
        let ids = Tensor::i64(vec![1, 3], vec![1, 0, 1]);
        let out = op.eval(&[&x, &ids], &[1, 3]).unwrap();
        assert_eq!(out, Tensor::f32(vec![1, 3], vec![4.0, 2.0, 6.0]));
    }

    #[test]
    fn an_id_out_of_range_is_an_error_not_a_panic() {
        let x = Tensor::f32(vec![2], vec![1.0, 2.0]);
        let ids = Tensor::i64(vec![1], vec![2]);
        let e = GatherElements { axis: 0 }
            .eval(&[&x, &ids], &[1])
            .unwrap_err();
        assert!(e.to_string().contains("out of range"), "{e}");
    }

    #[test]
    fn ids_longer_than_the_operand_off_the_axis_are_a_shape_error() {
        let op = GatherElements { axis: 0 };
        let e = op
            .infer(&[&ty(DType::F32, &[2, 3]), &ty(DType::I64, &[2, 4])])
            .unwrap_err();
        assert!(e.to_string().contains("longer"), "{e}");
        let e = op
            .infer(&[&ty(DType::F32, &[2, 3]), &ty(DType::F32, &[2, 3])])
            .unwrap_err();
        assert!(e.to_string().contains("integers"), "{e}");
    }
}
