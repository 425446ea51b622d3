use super::*;
use crate::ir::builder::GraphBuilder;
use crate::ir::ops::Reduce;
use crate::ir::{BinaryOp, Op, ReduceOp, UnaryOp};

#[test]
fn broadcast_operands_get_gradients_of_their_own_shape() {
    let mut b = GraphBuilder::new("t");
    let x = b.input("x", "f32[batch, 3]");
    let bias = b.param_decl("bias", "f32[3]");
    let y = b.op(Op::Binary(BinaryOp::Add), &[x, bias]);
    let y = b.op(Op::Unary(UnaryOp::Tanh), &[y]);
    let loss = b.op(
        Op::Reduce(Reduce {
            op: ReduceOp::Sum,
            axes: vec![0, 1],
            keepdims: false,
        }),
        &[y],
    );
    b.output("loss", loss);
    let mut graph = b.graph;
    let grads = append_gradients(&mut graph, "loss", &Wrt::Params).unwrap();
    assert_eq!(grads.len(), 1);
    assert_eq!(grads[0].output, "grad.bias");
    assert_eq!(graph.node(grads[0].node).ty.to_string(), "f32[3]");
    crate::ir::verify::verify(&graph).unwrap();
}

#[test]
fn bad_requests_are_errors_naming_what_exists() {
    let mut b = GraphBuilder::new("t");
    let x = b.input("x", "f32[2, 3]");
    b.output("y", x);
    let mut graph = b.graph;
    let e = append_gradients(&mut graph, "z", &Wrt::Inputs).unwrap_err();
    assert_eq!(e[0].to_string(), "the model has no output `z` (outputs: y)");
    let e = append_gradients(&mut graph, "y", &Wrt::Inputs).unwrap_err();
    assert!(matches!(e[0], GradError::NotScalar { .. }), "{e:?}");
}
