//! `flatten(x, axis=1)`: `x` as a matrix, the axes before `axis` multiplied
//! into the rows and the rest into the columns (ONNX Flatten). It lowers to
//! a `reshape`, so it adds no op of its own; symbolic dims multiply as
//! monomials (`[batch, 1280, 1, 1]` flattens to `[batch, 1280]`).

use super::layout::Reshape;
use super::{Builtin, CallArgs, NodeId, Op, Poisoned};
use crate::ir::dim;

pub const BUILTIN: Builtin = Builtin {
    names: &["flatten"],
    lower,
};

/// `flatten(x, axis=1)`; `axis` may be 0 (one row) up to the rank (one column).
fn lower(_name: &str, args: &mut dyn CallArgs) -> Result<(Op, Vec<NodeId>), Poisoned> {
    let x = args.tensor()?;
    let axis = args.int("axis", Some(1))?;
    let shape = args.operand_type(x).shape.clone();
    let rank = shape.len() as i64;
    let resolved = if axis < 0 { axis + rank } else { axis };
    if !(0..=rank).contains(&resolved) {
        return Err(args.error(format!(
            "axis {axis} is out of range for rank {rank} (0 to {rank}, or negative from the end)"
        )));
    }
    let (rows, cols) = shape.split_at(resolved as usize);
    match (dim::product(rows), dim::product(cols)) {
        (Some(rows), Some(cols)) => Ok((
            Op::Reshape(Reshape {
                shape: vec![rows, cols],
            }),
            vec![x],
        )),
        _ => Err(args.error(format!(
            "the flattened sizes of {} overflow",
            args.operand_type(x)
        ))),
    }
}
