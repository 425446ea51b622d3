//! `gather` (and `embedding`): entries of a table picked by integer ids.

use super::shape::{err, expect_axis, ShapeError};
use super::values::take;
use super::ScatterAdd;
use super::{Builtin, CallArgs, EvalError, NodeId, Op, OpKind, Poisoned};
use crate::ir::vjp::{GradError, Vjp};
use crate::ir::{DType, TensorType};
use crate::tensor::{Tensor, TensorData};

/// `gather(table, ids)`: rows of `table` along `axis` picked by integer
/// ids; out shape = table[..axis] ++ ids ++ table[axis+1..].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Gather {
    pub axis: usize,
}

impl OpKind for Gather {
    fn name(&self) -> &'static str {
        "gather"
    }

    fn arity(&self) -> (usize, usize) {
        (2, 2)
    }

    fn infer(&self, inputs: &[&TensorType]) -> Result<TensorType, ShapeError> {
        let (table, ids) = (inputs[0], inputs[1]);
        let axis = self.axis;
        expect_axis("gather", axis, table)?;
        if !ids.dtype.is_integer() {
            return err(format!(
                "gather: ids must be integers (i64 or i32), got {ids}"
            ));
        }
        let mut shape = table.shape[..axis].to_vec();
        shape.extend(ids.shape.iter().cloned());
        shape.extend(table.shape[axis + 1..].iter().cloned());
        Ok(TensorType::new(table.dtype, shape))
    }

    fn eval(&self, inputs: &[&Tensor], out_shape: &[usize]) -> Result<Tensor, EvalError> {
        gather(inputs[0], inputs[1], self.axis, out_shape)
    }

    fn attributes(&self) -> Vec<(&'static str, String)> {
        vec![("axis", self.axis.to_string())]
    }

    /// g scattered back to the rows the ids picked; none to the ids.
    fn vjp(
        &self,
        cx: &mut Vjp<'_>,
        _node: NodeId,
        inputs: &[NodeId],
        g: NodeId,
        _wants: &[bool],
    ) -> Result<Vec<Option<NodeId>>, GradError> {
        // The table's gradient: g added back at the rows the ids picked.
        let table_ty = cx.ty(inputs[0]).clone();
        let zeros = cx.zeros(&table_ty)?;
        let scattered = cx.add(
            Op::ScatterAdd(ScatterAdd { axis: self.axis }),
            &[zeros, inputs[1], g],
        )?;
        Ok(vec![Some(scattered), None])
    }
}

/// `gather(table, ids, axis=0)` and `embedding(ids, table)` (= `gather(table, ids)`).
pub const BUILTIN: Builtin = Builtin {
    names: &["gather", "embedding"],
    lower,
};

fn lower(name: &str, args: &mut dyn CallArgs) -> Result<(Op, Vec<NodeId>), Poisoned> {
    let (table, ids) = if name == "gather" {
        let table = args.tensor()?;
        (table, args.tensor()?)
    } else {
        let ids = args.tensor()?;
        (args.tensor()?, ids)
    };
    let axis = if name == "gather" {
        args.int("axis", Some(0))?
    } else {
        0
    };
    let rank = args.operand_type(table).rank();
    let axis = args.resolve_axis(axis, rank)?;
    Ok((Op::Gather(Gather { axis }), vec![table, ids]))
}

// ---- reference evaluation ----

/// Rows of `table` along `axis`, picked by integer `ids`.
pub(super) fn gather(
    table: &Tensor,
    ids: &Tensor,
    axis: usize,
    out_shape: &[usize],
) -> Result<Tensor, EvalError> {
    let ids: Vec<i64> = match ids.data() {
        TensorData::I64(v) => v.clone(),
        TensorData::I32(v) => v.iter().map(|&i| i64::from(i)).collect(),
        TensorData::F32(_) | TensorData::Bool(_) => {
            return Err(EvalError::OperandDType {
                op: "gather",
                expected: DType::I64,
                actual: ids.dtype(),
            })
        }
    };
    let size = table.shape()[axis];
    let mut rows = Vec::with_capacity(ids.len());
    for (position, &index) in ids.iter().enumerate() {
        match gather_row(index, size) {
            Some(row) => rows.push(row),
            None => {
                return Err(EvalError::GatherIndex {
                    index,
                    position,
                    axis,
                    size,
                })
            }
        }
    }
    let outer: usize = table.shape()[..axis].iter().product();
    let inner: usize = table.shape()[axis + 1..].iter().product();
    let offsets = (0..outer).flat_map(|o| {
        rows.iter()
            .flat_map(move |&row| (0..inner).map(move |j| (o * size + row) * inner + j))
    });
    take("gather", table, out_shape.to_vec(), offsets)
}

/// The row an id picks on an axis of `size`: ids in `0..size` count from
/// the start and ids in `-size..0` from the end, as numpy's `take` and
/// ONNX `Gather`; anything else is out of range.
fn gather_row(index: i64, size: usize) -> Option<usize> {
    let size = i64::try_from(size).ok()?;
    let row = if index < 0 {
        index.checked_add(size)?
    } else {
        index
    };
    (0..size).contains(&row).then_some(row as usize)
}
