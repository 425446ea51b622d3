//! `scatter_elements(x, ids, updates, axis=0, reduce="none")`: `x` with
//! each element of `updates` written at the position `ids` gives along
//! `axis` and its own position elsewhere (ONNX `ScatterElements`, the
//! inverse of `gather_elements`). `reduce` combines an update with what is
//! there: `"none"` replaces (a repeated id keeps the last update in
//! row-major order), `"add"`, `"mul"`, `"max"`, `"min"`. f32 combines in f64
//! and rounds once per element; integers wrap.

use super::gather_elements::{index_values, row_of};
use super::shape::{err, expect_axis, show, ShapeError};
use super::{Builtin, CallArgs, EvalError, NodeId, Op, OpKind, Poisoned};
use crate::ir::{DType, TensorType};
use crate::tensor::{strides, Tensor, TensorData};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ScatterReduce {
    None,
    Add,
    Mul,
    Max,
    Min,
}

impl ScatterReduce {
    pub const NAMES: [&'static str; 5] = ["none", "add", "mul", "max", "min"];

    pub fn name(self) -> &'static str {
        match self {
            ScatterReduce::None => "none",
            ScatterReduce::Add => "add",
            ScatterReduce::Mul => "mul",
            ScatterReduce::Max => "max",
            ScatterReduce::Min => "min",
        }
    }

    pub fn from_name(name: &str) -> Option<ScatterReduce> {
        Some(match name {
            "none" => ScatterReduce::None,
            "add" => ScatterReduce::Add,
            "mul" => ScatterReduce::Mul,
            "max" => ScatterReduce::Max,
            "min" => ScatterReduce::Min,
            _ => return None,
        })
    }

    fn f64(self, old: f64, new: f64) -> f64 {
        match self {
            ScatterReduce::None => new,
            ScatterReduce::Add => old + new,
            ScatterReduce::Mul => old * new,
            ScatterReduce::Max => super::math::nan_max(old, new),
            ScatterReduce::Min => -super::math::nan_max(-old, -new),
        }
    }

    fn i64(self, old: i64, new: i64) -> i64 {
        match self {
            ScatterReduce::None => new,
            ScatterReduce::Add => old.wrapping_add(new),
            ScatterReduce::Mul => old.wrapping_mul(new),
            ScatterReduce::Max => old.max(new),
            ScatterReduce::Min => old.min(new),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ScatterElements {
    pub axis: usize,
    pub reduce: ScatterReduce,
}

impl OpKind for ScatterElements {
    fn name(&self) -> &'static str {
        "scatter_elements"
    }

    fn arity(&self) -> (usize, usize) {
        (3, 3)
    }

    fn infer(&self, inputs: &[&TensorType]) -> Result<TensorType, ShapeError> {
        let (x, ids, updates) = (inputs[0], inputs[1], inputs[2]);
        expect_axis("scatter_elements", self.axis, x)?;
        if x.dtype == DType::Bool || updates.dtype != x.dtype {
            return err(format!(
                "scatter_elements: x and updates must be numbers of one dtype, got {} and {}",
                show(x),
                show(updates)
            ));
        }
        if !ids.dtype.is_integer() || ids.shape != updates.shape {
            return err(format!(
                "scatter_elements: ids must be integers shaped like updates, got {} and {}",
                show(ids),
                show(updates)
            ));
        }
        // As gather_elements: the ids' shape must fit inside x off the axis.
        let probe = super::gather_elements::GatherElements { axis: self.axis };
        probe.infer(&[x, ids]).map_err(|e| {
            super::shape::ShapeError(e.0.replace("gather_elements", "scatter_elements"))
        })?;
        Ok(x.clone())
    }

    fn eval(&self, inputs: &[&Tensor], _out_shape: &[usize]) -> Result<Tensor, EvalError> {
        let (x, ids, updates) = (inputs[0], inputs[1], inputs[2]);
        let ids = index_values("scatter_elements", ids)?;
        let axis = self.axis;
        let size = x.shape()[axis];
        let x_strides = strides(x.shape());
        let ids_shape = updates.shape();
        let mut targets = Vec::with_capacity(ids.len());
        let mut position = vec![0usize; ids_shape.len()];
        for (n, &index) in ids.iter().enumerate() {
            let row = row_of(index, size).ok_or_else(|| EvalError::Invalid {
                op: "scatter_elements",
                message: format!(
                    "id {index} (at position {n} of the ids) is out of range for axis {axis} of size {size} (valid ids: -{size} to {})",
                    size as i64 - 1
                ),
            })?;
            targets.push(
                position
                    .iter()
                    .enumerate()
                    .map(|(d, &p)| if d == axis { row } else { p } * x_strides[d])
                    .sum::<usize>(),
            );
            for d in (0..position.len()).rev() {
                position[d] += 1;
                if position[d] < ids_shape[d] {
                    break;
                }
                position[d] = 0;
            }
        }
        let data = match (x.data(), updates.data()) {
            (TensorData::F32(base), TensorData::F32(new)) => {
                let mut out: Vec<f64> = base.iter().map(|&v| f64::from(v)).collect();
                for (&t, &u) in targets.iter().zip(new) {
                    out[t] = self.reduce.f64(out[t], f64::from(u));
                }
                TensorData::F32(out.into_iter().map(|v| v as f32).collect())
            }
            (TensorData::I64(base), TensorData::I64(new)) => {
                let mut out = base.clone();
                for (&t, &u) in targets.iter().zip(new) {
                    out[t] = self.reduce.i64(out[t], u);
                }
                TensorData::I64(out)
            }
            (TensorData::I32(base), TensorData::I32(new)) => {
                let mut out: Vec<i64> = base.iter().map(|&v| i64::from(v)).collect();
                for (&t, &u) in targets.iter().zip(new) {
                    // Wrapping in i32, as the element type does.
                    out[t] = i64::from(self.reduce.i64(out[t], i64::from(u)) as i32);
                }
                TensorData::I32(out.into_iter().map(|v| v as i32).collect())
            }
            _ => {
                return Err(EvalError::OperandDType {
                    op: "scatter_elements",
                    expected: x.dtype(),
                    actual: updates.dtype(),
                })
            }
        };
        Ok(Tensor::new(x.shape().to_vec(), data))
    }

    fn attributes(&self) -> Vec<(&'static str, String)> {
        vec![
            ("axis", self.axis.to_string()),
            ("reduce", format!("\"{}\"", self.reduce.name())),
        ]
    }
}

pub const BUILTIN: Builtin = Builtin {
    names: &["scatter_elements"],
    lower,
};

/// `scatter_elements(x, ids, updates, axis=0, reduce="none")`.
fn lower(_name: &str, args: &mut dyn CallArgs) -> Result<(Op, Vec<NodeId>), Poisoned> {
    let x = args.tensor()?;
    let ids = args.tensor()?;
    let updates = args.tensor()?;
    let axis = args.axis("axis", 0, x)?;
    let reduce = args.word("reduce", &ScatterReduce::NAMES, "none")?;
    let reduce = ScatterReduce::from_name(&reduce).unwrap_or(ScatterReduce::None);
    Ok((
        Op::ScatterElements(ScatterElements { axis, reduce }),
        vec![x, ids, updates],
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_and_combines_at_the_ids() {
        let x = Tensor::f32(vec![2, 3], vec![1.0; 6]);
        let ids = Tensor::i64(vec![2, 2], vec![0, 0, -1, 1]);
        let updates = Tensor::f32(vec![2, 2], vec![2.0, 3.0, 4.0, 5.0]);
        let run = |reduce| {
            ScatterElements { axis: 1, reduce }
                .eval(&[&x, &ids, &updates], &[2, 3])
                .unwrap()
        };
        assert_eq!(
            run(ScatterReduce::None),
            Tensor::f32(vec![2, 3], vec![3.0, 1.0, 1.0, 1.0, 5.0, 4.0])
        );
        assert_eq!(
            run(ScatterReduce::Add),
            Tensor::f32(vec![2, 3], vec![6.0, 1.0, 1.0, 1.0, 6.0, 5.0])
        );
        assert_eq!(
            run(ScatterReduce::Mul),
            Tensor::f32(vec![2, 3], vec![6.0, 1.0, 1.0, 1.0, 5.0, 4.0])
        );
        let bad = Tensor::i64(vec![2, 2], vec![0, 3, 0, 0]);
        let e = ScatterElements {
            axis: 1,
            reduce: ScatterReduce::None,
        }
        .eval(&[&x, &bad, &updates], &[2, 3])
        .unwrap_err();
        assert!(e.to_string().contains("id 3"), "{e}");
    }
}
