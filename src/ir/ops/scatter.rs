//! `scatter_add(base, ids, updates, axis=0)`: `base` with each slice of
//! `updates` added at the row its id picks along `axis`; repeated ids
//! accumulate. `updates` has gather's output shape, so this is gather's
//! adjoint (autodiff's gradient of a gathered table).

use super::shape::{err, expect_axis, expect_dtype, show, ShapeError};
use super::values::elements;
use super::{Builtin, CallArgs, EvalError, Gather, NodeId, Op, OpKind, Poisoned};
use crate::ir::graph::{ShapeDisplay, TensorType};
use crate::ir::vjp::{GradError, Vjp};
use crate::ir::DType;
use crate::tensor::{Tensor, TensorData};

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ScatterAdd {
    pub axis: usize,
}

impl OpKind for ScatterAdd {
    fn name(&self) -> &'static str {
        "scatter_add"
    }

    fn arity(&self) -> (usize, usize) {
        (3, 3)
    }

    fn infer(&self, inputs: &[&TensorType]) -> Result<TensorType, ShapeError> {
        let (base, ids, updates) = (inputs[0], inputs[1], inputs[2]);
        let axis = self.axis;
        expect_dtype("scatter_add", "base", base, DType::F32)?;
        expect_dtype("scatter_add", "updates", updates, DType::F32)?;
        expect_axis("scatter_add", axis, base)?;
        if !ids.dtype.is_integer() {
            return err(format!(
                "scatter_add: ids must be integers (i64 or i32), got {}",
                show(ids)
            ));
        }
        let mut want = base.shape[..axis].to_vec();
        want.extend(ids.shape.iter().cloned());
        want.extend(base.shape[axis + 1..].iter().cloned());
        if updates.shape != want {
            return err(format!(
                "scatter_add: updates must be {} (base[..axis] ++ ids ++ base[axis+1..]), got {}",
                ShapeDisplay(&want),
                show(updates)
            ));
        }
        Ok(base.clone())
    }

    /// Each sum is accumulated in f64 and rounded once.
    fn eval(&self, inputs: &[&Tensor], _out_shape: &[usize]) -> Result<Tensor, EvalError> {
        let (base, ids, updates) = (inputs[0], inputs[1], inputs[2]);
        let axis = self.axis;
        let size = base.shape()[axis];
        let ids: Vec<i64> = match ids.data() {
            TensorData::I64(v) => v.clone(),
            TensorData::I32(v) => v.iter().map(|&i| i64::from(i)).collect(),
            TensorData::F32(_) | TensorData::Bool(_) => {
                return Err(EvalError::OperandDType {
                    op: "scatter_add",
                    expected: DType::I64,
                    actual: ids.dtype(),
                })
            }
        };
        let mut rows = Vec::with_capacity(ids.len());
        for (position, &index) in ids.iter().enumerate() {
            // As gather: 0..size from the start, -size..0 from the end.
            let row = i64::try_from(size).ok().and_then(|n| {
                let r = if index < 0 {
                    index.checked_add(n)?
                } else {
                    index
                };
                (0..n).contains(&r).then_some(r as usize)
            });
            match row {
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
        let base_values = elements::<f32>("scatter_add", base)?;
        let update_values = elements::<f32>("scatter_add", updates)?;
        let outer: usize = base.shape()[..axis].iter().product();
        let inner: usize = base.shape()[axis + 1..].iter().product();
        let mut sums: Vec<f64> = base_values.iter().map(|&v| f64::from(v)).collect();
        let mut next = 0;
        for o in 0..outer {
            for &row in &rows {
                for j in 0..inner {
                    sums[(o * size + row) * inner + j] += f64::from(update_values[next]);
                    next += 1;
                }
            }
        }
        Ok(Tensor::f32(
            base.shape().to_vec(),
            sums.into_iter().map(|v| v as f32).collect(),
        ))
    }

    fn attributes(&self) -> Vec<(&'static str, String)> {
        vec![("axis", self.axis.to_string())]
    }

    /// The base's gradient is g; the updates' is g gathered at the ids.
    fn vjp(
        &self,
        cx: &mut Vjp<'_>,
        _node: NodeId,
        inputs: &[NodeId],
        g: NodeId,
        wants: &[bool],
    ) -> Result<Vec<Option<NodeId>>, GradError> {
        let updates = if wants[2] {
            Some(cx.add(Op::Gather(Gather { axis: self.axis }), &[g, inputs[1]])?)
        } else {
            None
        };
        Ok(vec![Some(g), None, updates])
    }
}

pub const BUILTIN: Builtin = Builtin {
    names: &["scatter_add"],
    lower,
};

/// `scatter_add(base, ids, updates, axis=0)`.
fn lower(_name: &str, args: &mut dyn CallArgs) -> Result<(Op, Vec<NodeId>), Poisoned> {
    let base = args.tensor()?;
    let ids = args.tensor()?;
    let updates = args.tensor()?;
    let axis = args.axis("axis", 0, base)?;
    Ok((
        Op::ScatterAdd(ScatterAdd { axis }),
        vec![base, ids, updates],
    ))
}
