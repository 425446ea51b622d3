//! Edge cases of the interpreter: rank 0, size 0, size-1 broadcasting, NaN,
//! bad data at run time, and fused ops agreeing bit for bit with the ops
//! they replace. Numerical agreement with numpy is in tests/interp_numpy.rs.

use crate::ir::ops::{
    Cast, Concat, Constant, FusedElementwise, FusedLinear, Gather, Input, MatMul, Param, Reduce,
    Slice, Softmax,
};
use std::collections::HashMap;
use std::sync::Arc;

use super::*;
use crate::ir::{
    BinaryOp, CompareOp, Dim, ElementwiseExpr, ExprStep, Float, LinearEpilogue, ReduceOp, UnaryOp,
};
use crate::tensor::TensorData;

/// Evaluates `op` with the output type its shape rule gives.
fn eval(op: Op, inputs: &[&Tensor]) -> Result<Tensor, InterpError> {
    let types: Vec<TensorType> = inputs.iter().map(|t| concrete_type(t)).collect();
    let refs: Vec<&TensorType> = types.iter().collect();
    let out_ty = shape_rules::infer(&op, &refs)?;
    eval_node(&op, inputs, &out_ty)
}

fn f32s(t: &Tensor) -> &[f32] {
    t.as_f32().expect("an f32 tensor")
}

fn i32_tensor(shape: Vec<usize>, data: Vec<i32>) -> Tensor {
    Tensor::new(shape, TensorData::I32(data))
}

fn bools(shape: Vec<usize>, data: Vec<bool>) -> Tensor {
    Tensor::new(shape, TensorData::Bool(data))
}

fn ty(dtype: DType, dims: &[Dim]) -> TensorType {
    TensorType::new(dtype, dims.to_vec())
}

/// Adds a node whose type its shape rule infers from its operands.
fn add(graph: &mut Graph, op: Op, operands: &[NodeId]) -> NodeId {
    crate::ir::builder::add_typed(graph, op, operands, None).expect("a well-typed test graph")
}

fn input(graph: &mut Graph, name: &str, ty: TensorType) -> NodeId {
    let id = graph.add_node(Op::Input(Input { name: name.into() }), &[], ty, None);
    graph.inputs.push(id);
    id
}

fn feed(pairs: Vec<(&str, Tensor)>) -> HashMap<String, Tensor> {
    pairs.into_iter().map(|(n, t)| (n.to_string(), t)).collect()
}

#[test]
fn rank_zero_tensors_add_broadcast_and_reduce() {
    let sum = eval(
        Op::Binary(BinaryOp::Add),
        &[&Tensor::scalar(1.5), &Tensor::scalar(2.25)],
    )
    .unwrap();
    assert_eq!(sum.shape(), &[] as &[usize]);
    assert_eq!(f32s(&sum), &[3.75]);

    let row = Tensor::f32(vec![3], vec![1.0, 2.0, 3.0]);
    let scaled = eval(Op::Binary(BinaryOp::Mul), &[&Tensor::scalar(2.0), &row]).unwrap();
    assert_eq!(scaled.shape(), &[3]);
    assert_eq!(f32s(&scaled), &[2.0, 4.0, 6.0]);

    let matrix = Tensor::f32(vec![2, 3], vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    let total = eval(
        Op::Reduce(Reduce {
            op: ReduceOp::Sum,
            axes: vec![0, 1],
            keepdims: false,
        }),
        &[&matrix],
    )
    .unwrap();
    assert_eq!(total.shape(), &[] as &[usize]);
    assert_eq!(f32s(&total), &[21.0]);

    // Reducing no axes of a scalar is the identity, as numpy's axis=().
    let same = eval(
        Op::Reduce(Reduce {
            op: ReduceOp::Max,
            axes: vec![],
            keepdims: false,
        }),
        &[&Tensor::scalar(-4.0)],
    )
    .unwrap();
    assert_eq!(f32s(&same), &[-4.0]);
    let cast = eval(Op::Cast(Cast { to: DType::I64 }), &[&Tensor::scalar(-2.9)]).unwrap();
    assert_eq!(cast.data(), &TensorData::I64(vec![-2]));
}

#[test]
fn size_zero_dims_flow_through_every_kind_of_op() {
    let empty = Tensor::f32(vec![0, 3], vec![]);
    let row = Tensor::f32(vec![3], vec![1.0, 2.0, 3.0]);
    let added = eval(Op::Binary(BinaryOp::Add), &[&empty, &row]).unwrap();
    assert_eq!(added.shape(), &[0, 3]);

    // An empty inner dimension: every output element is an empty sum.
    let a = Tensor::f32(vec![2, 0], vec![]);
    let b = Tensor::f32(vec![0, 3], vec![]);
    let product = eval(
        Op::MatMul(MatMul {
            transpose_a: false,
            transpose_b: false,
        }),
        &[&a, &b],
    )
    .unwrap();
    assert_eq!(product.shape(), &[2, 3]);
    assert_eq!(f32s(&product), &[0.0; 6]);
    let no_rows = eval(
        Op::MatMul(MatMul {
            transpose_a: false,
            transpose_b: true,
        }),
        &[&empty, &Tensor::f32(vec![4, 3], vec![1.0; 12])],
    )
    .unwrap();
    assert_eq!(no_rows.shape(), &[0, 4]);

    let sum = eval(
        Op::Reduce(Reduce {
            op: ReduceOp::Sum,
            axes: vec![0],
            keepdims: true,
        }),
        &[&empty],
    )
    .unwrap();
    assert_eq!(
        (sum.shape(), f32s(&sum)),
        (&[1, 3][..], &[0.0, 0.0, 0.0][..])
    );
    let mean = eval(
        Op::Reduce(Reduce {
            op: ReduceOp::Mean,
            axes: vec![0],
            keepdims: false,
        }),
        &[&empty],
    )
    .unwrap();
    assert!(
        f32s(&mean).iter().all(|v| v.is_nan()),
        "mean of nothing is 0/0"
    );
    let max = eval(
        Op::Reduce(Reduce {
            op: ReduceOp::Max,
            axes: vec![0],
            keepdims: false,
        }),
        &[&empty],
    );
    assert!(
        matches!(max, Err(InterpError::Eval(EvalError::EmptyMax { axis: 0 }))),
        "{max:?}"
    );

    // The empty part goes second: shape_rules' concat cannot yet add a known
    // 0 on the left (it divides by the factor), which is outside this module.
    let joined = eval(
        Op::Concat(Concat { axis: 0 }),
        &[&Tensor::f32(vec![1, 3], vec![7.0, 8.0, 9.0]), &empty],
    )
    .unwrap();
    assert_eq!(
        (joined.shape(), f32s(&joined)),
        (&[1, 3][..], &[7.0, 8.0, 9.0][..])
    );
    let none = eval(
        Op::Gather(Gather { axis: 0 }),
        &[&row, &Tensor::i64(vec![0], vec![])],
    )
    .unwrap();
    assert_eq!(none.shape(), &[0]);
    let softmax = eval(Op::Softmax(Softmax { axis: 1 }), &[&empty]).unwrap();
    assert_eq!(softmax.shape(), &[0, 3]);
    let sliced = eval(
        Op::Slice(Slice {
            axis: 0,
            start: 3,
            end: Dim::known(3),
            step: 1,
        }),
        &[&row],
    )
    .unwrap();
    assert_eq!(sliced.shape(), &[0]);
}

#[test]
fn size_one_broadcasts_against_n() {
    let one = Tensor::f32(vec![1], vec![10.0]);
    let many = Tensor::f32(vec![4], vec![1.0, 2.0, 3.0, 4.0]);
    let left = eval(Op::Binary(BinaryOp::Sub), &[&one, &many]).unwrap();
    assert_eq!(f32s(&left), &[9.0, 8.0, 7.0, 6.0]);
    let right = eval(Op::Binary(BinaryOp::Sub), &[&many, &one]).unwrap();
    assert_eq!(f32s(&right), &[-9.0, -8.0, -7.0, -6.0]);

    let condition = bools(vec![1], vec![true]);
    let picked = eval(Op::Where, &[&condition, &one, &many]).unwrap();
    assert_eq!(f32s(&picked), &[10.0; 4]);
    let less = eval(
        Op::Compare(CompareOp::Lt),
        &[&many, &Tensor::f32(vec![1], vec![2.5])],
    )
    .unwrap();
    assert_eq!(
        less.data(),
        &TensorData::Bool(vec![true, true, false, false])
    );

    // [2, 1] against [1, 3]: both sides stretch.
    let column = Tensor::f32(vec![2, 1], vec![10.0, 20.0]);
    let row = Tensor::f32(vec![1, 3], vec![1.0, 2.0, 3.0]);
    let grid = eval(Op::Binary(BinaryOp::Add), &[&column, &row]).unwrap();
    assert_eq!(
        (grid.shape(), f32s(&grid)),
        (&[2, 3][..], &[11.0, 12.0, 13.0, 21.0, 22.0, 23.0][..])
    );
}

#[test]
fn nan_propagates_through_relu_max_softmax_and_matmul() {
    let x = Tensor::f32(vec![4], vec![f32::NAN, -1.0, 2.0, 0.5]);
    let relu = eval(Op::Unary(UnaryOp::Relu), &[&x]).unwrap();
    assert!(f32s(&relu)[0].is_nan());
    assert_eq!(&f32s(&relu)[1..], &[0.0, 2.0, 0.5]);

    let zeros = Tensor::f32(vec![4], vec![0.0; 4]);
    let maximum = eval(Op::Binary(BinaryOp::Max), &[&zeros, &x]).unwrap();
    assert!(
        f32s(&maximum)[0].is_nan(),
        "maximum(0, NaN) is NaN as in numpy"
    );
    let reduced = eval(
        Op::Reduce(Reduce {
            op: ReduceOp::Max,
            axes: vec![0],
            keepdims: false,
        }),
        &[&x],
    )
    .unwrap();
    assert!(f32s(&reduced)[0].is_nan());

    let lanes = Tensor::f32(vec![2, 2], vec![f32::NAN, 1.0, 0.0, 0.0]);
    let softmax = eval(Op::Softmax(Softmax { axis: 1 }), &[&lanes]).unwrap();
    assert!(
        f32s(&softmax)[..2].iter().all(|v| v.is_nan()),
        "the NaN lane is all NaN"
    );
    assert_eq!(
        &f32s(&softmax)[2..],
        &[0.5, 0.5],
        "other lanes are untouched"
    );

    // NaN times an exact zero is still NaN: no term is skipped.
    let a = Tensor::f32(vec![1, 2], vec![f32::NAN, 1.0]);
    let b = Tensor::f32(vec![2, 1], vec![0.0, 3.0]);
    let product = eval(
        Op::MatMul(MatMul {
            transpose_a: false,
            transpose_b: false,
        }),
        &[&a, &b],
    )
    .unwrap();
    assert!(f32s(&product)[0].is_nan());
}

#[test]
fn gather_counts_negative_ids_from_the_end_and_rejects_out_of_range() {
    let table = Tensor::f32(vec![3, 2], vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
    for (ids, axis, size, bad, position) in [
        (vec![0, 2, 3], 0, 3, 3, 2),
        (vec![-3, -4], 0, 3, -4, 1),
        (vec![i64::MIN], 1, 2, i64::MIN, 0),
    ] {
        let n = ids.len();
        match eval(
            Op::Gather(Gather { axis }),
            &[&table, &Tensor::i64(vec![n], ids)],
        ) {
            Err(
                e @ InterpError::Eval(EvalError::GatherIndex {
                    index,
                    position: p,
                    axis: a,
                    size: s,
                }),
            ) if (index, p, a, s) == (bad, position, axis, size) => {
                let valid = format!("valid ids: -{size} to {}", size - 1);
                assert!(e.to_string().contains(&valid), "{e}");
            }
            other => panic!("id {bad}: expected a gather index error, got {other:?}"),
        }
    }
    // -1 is the last row (numpy's take, ONNX Gather); -3 the first.
    let from_end = eval(
        Op::Gather(Gather { axis: 0 }),
        &[&table, &i32_tensor(vec![2], vec![-1, -3])],
    )
    .unwrap();
    assert_eq!(f32s(&from_end), &[4.0, 5.0, 0.0, 1.0]);
    let from_end = eval(
        Op::Gather(Gather { axis: 1 }),
        &[&table, &Tensor::i64(vec![1], vec![-2])],
    )
    .unwrap();
    assert_eq!(f32s(&from_end), &[0.0, 2.0, 4.0]);
    // i32 ids along a middle axis pick columns.
    let columns = eval(
        Op::Gather(Gather { axis: 1 }),
        &[&table, &i32_tensor(vec![2], vec![1, 1])],
    )
    .unwrap();
    assert_eq!(
        (columns.shape(), f32s(&columns)),
        (&[3, 2][..], &[1.0, 1.0, 3.0, 3.0, 5.0, 5.0][..])
    );
}

#[test]
fn a_bad_gather_in_a_graph_names_the_node_and_the_index() {
    let mut graph = Graph::new("lookup");
    let ids = input(&mut graph, "ids", ty(DType::I64, &[Dim::symbol("n")]));
    let table = graph.add_node(
        Op::Param(Param {
            name: "embed.table".into(),
            init: None,
        }),
        &[],
        ty(DType::F32, &[Dim::known(4), Dim::known(2)]),
        None,
    );
    let rows = add(&mut graph, Op::Gather(Gather { axis: 0 }), &[table, ids]);
    graph.node_mut(rows).span = Some(Span::new(10, 24));
    graph.outputs.push(("rows".into(), rows));
    let params = feed(vec![("embed.table", Tensor::f32(vec![4, 2], vec![0.0; 8]))]);
    let err = run(
        &graph,
        &params,
        &feed(vec![("ids", Tensor::i64(vec![2], vec![1, 9]))]),
        &Bindings::new(),
    )
    .unwrap_err();
    let message = err.to_string();
    assert!(
        matches!(
            err.root(),
            InterpError::Eval(EvalError::GatherIndex { index: 9, .. })
        ),
        "{err:?}"
    );
    assert!(
        matches!(err, InterpError::AtNode { node, span: Some(Span { start: 10, end: 24 }), .. } if node == rows.index())
            && message.starts_with("gather: id 9"),
        "{message}"
    );
}

#[test]
fn slice_end_bound_past_the_input_size_is_a_run_time_error() {
    let mut graph = Graph::new("prefix");
    let x = input(&mut graph, "x", ty(DType::F32, &[Dim::symbol("seq")]));
    let head = add(
        &mut graph,
        Op::Slice(Slice {
            axis: 0,
            start: 0,
            end: Dim::symbol("keep"),
            step: 1,
        }),
        &[x],
    );
    graph.outputs.push(("head".into(), head));
    let x_value = feed(vec![(
        "x",
        Tensor::f32(vec![5], vec![1.0, 2.0, 3.0, 4.0, 5.0]),
    )]);

    let fits: Bindings = [("keep".to_string(), 2)].into();
    let out = run(&graph, &HashMap::new(), &x_value, &fits).unwrap();
    assert_eq!(f32s(&out[0].1), &[1.0, 2.0]);

    let too_long: Bindings = [("keep".to_string(), 8)].into();
    let err = run(&graph, &HashMap::new(), &x_value, &too_long).unwrap_err();
    // The concrete graph is checked before anything is evaluated.
    assert!(
        matches!(err.root(), InterpError::Bind(errs) if errs.len() == 1),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .contains("end 8 is past the size 5 of axis 0"),
        "{err}"
    );
}

#[test]
fn run_reports_every_bad_input_and_names_missing_or_mistyped_params() {
    let mut graph = Graph::new("affine");
    let x = input(
        &mut graph,
        "x",
        ty(DType::F32, &[Dim::symbol("batch"), Dim::known(2)]),
    );
    let mask = input(&mut graph, "mask", ty(DType::Bool, &[Dim::symbol("batch")]));
    let w = graph.add_node(
        Op::Param(Param {
            name: "w".into(),
            init: Some(crate::ir::Init::Zeros),
        }),
        &[],
        ty(DType::F32, &[Dim::known(2), Dim::known(2)]),
        None,
    );
    let y = add(
        &mut graph,
        Op::MatMul(MatMul {
            transpose_a: false,
            transpose_b: false,
        }),
        &[x, w],
    );
    graph.outputs.push(("y".into(), y));
    graph.outputs.push(("mask".into(), mask));

    let wrong = feed(vec![
        ("x", Tensor::i64(vec![3, 2], vec![0; 6])),
        ("extra", Tensor::scalar(0.0)),
    ]);
    match run(&graph, &HashMap::new(), &wrong, &Bindings::new()) {
        Err(InterpError::Bind(errors)) => {
            assert_eq!(
                errors.len(),
                3,
                "unknown `extra`, missing `mask`, wrong dtype of `x`: {errors:?}"
            )
        }
        other => panic!("expected bind errors, got {other:?}"),
    }

    let good = feed(vec![
        ("x", Tensor::f32(vec![3, 2], vec![1.0; 6])),
        ("mask", bools(vec![3], vec![true, false, true])),
    ]);
    let missing = run(&graph, &HashMap::new(), &good, &Bindings::new()).unwrap_err();
    assert!(
        matches!(&missing, InterpError::MissingParam { name, has_init: true } if name == "w"),
        "{missing:?}"
    );
    assert!(missing.to_string().contains("`w`"));

    let misshapen = feed(vec![("w", Tensor::f32(vec![2, 3], vec![0.0; 6]))]);
    let err = run(&graph, &misshapen, &good, &Bindings::new()).unwrap_err();
    assert!(
        matches!(&err, InterpError::ParamType { name, .. } if name == "w"),
        "{err:?}"
    );

    let identity = feed(vec![(
        "w",
        Tensor::f32(vec![2, 2], vec![1.0, 0.0, 0.0, 1.0]),
    )]);
    let outputs = run(&graph, &identity, &good, &Bindings::new()).unwrap();
    let names: Vec<&str> = outputs.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["y", "mask"], "declaration order");
    assert_eq!(f32s(&outputs[0].1), &[1.0; 6]);
    assert_eq!(outputs[1].1, good["mask"], "an input can be an output");
}

#[test]
fn an_intermediate_output_survives_its_readers() {
    let mut graph = Graph::new("chain");
    let x = input(&mut graph, "x", ty(DType::F32, &[Dim::known(3)]));
    let doubled = add(&mut graph, Op::Binary(BinaryOp::Add), &[x, x]);
    let squared = add(&mut graph, Op::Binary(BinaryOp::Mul), &[doubled, doubled]);
    let total = add(
        &mut graph,
        Op::Reduce(Reduce {
            op: ReduceOp::Sum,
            axes: vec![0],
            keepdims: false,
        }),
        &[squared],
    );
    graph.outputs.push(("total".into(), total));
    graph.outputs.push(("doubled".into(), doubled));
    let x_value = feed(vec![("x", Tensor::f32(vec![3], vec![1.0, 2.0, 3.0]))]);
    let out = run(&graph, &HashMap::new(), &x_value, &Bindings::new()).unwrap();
    assert_eq!(f32s(&out[0].1), &[56.0]);
    assert_eq!(f32s(&out[1].1), &[2.0, 4.0, 6.0]);
}

#[test]
fn eval_node_checks_the_declared_type_and_refuses_sources() {
    let x = Tensor::f32(vec![2], vec![1.0, 2.0]);
    let wrong = ty(DType::F32, &[Dim::known(3)]);
    let err = eval_node(&Op::Unary(UnaryOp::Neg), &[&x], &wrong).unwrap_err();
    assert!(
        matches!(err, InterpError::TypeMismatch { op: "neg", .. }),
        "{err:?}"
    );
    let err = eval_node(&Op::Input(Input { name: "x".into() }), &[], &wrong).unwrap_err();
    assert!(
        matches!(err, InterpError::Eval(EvalError::SourceOp { op: "input" })),
        "{err:?}"
    );
    let ill_typed = eval(
        Op::Binary(BinaryOp::Add),
        &[&x, &Tensor::i64(vec![2], vec![1, 2])],
    );
    assert!(
        matches!(ill_typed, Err(InterpError::Shape(_))),
        "{ill_typed:?}"
    );
    let constant = Op::Constant(Constant {
        value: Arc::new(x.clone()),
    });
    assert_eq!(eval(constant, &[]).unwrap(), x);
}

#[test]
fn cast_truncates_toward_zero_and_maps_truth() {
    let x = Tensor::f32(vec![5], vec![-1.7, -0.2, 0.0, 2.9, f32::NAN]);
    let ints = eval(Op::Cast(Cast { to: DType::I32 }), &[&x]).unwrap();
    assert_eq!(ints.data(), &TensorData::I32(vec![-1, 0, 0, 2, 0]));
    let truth = eval(Op::Cast(Cast { to: DType::Bool }), &[&x]).unwrap();
    assert_eq!(
        truth.data(),
        &TensorData::Bool(vec![true, true, false, true, true])
    );
    let back = eval(Op::Cast(Cast { to: DType::F32 }), &[&truth]).unwrap();
    assert_eq!(f32s(&back), &[1.0, 1.0, 0.0, 1.0, 1.0]);
    let wide = Tensor::i64(vec![2], vec![(1 << 32) + 5, -3]);
    let narrow = eval(Op::Cast(Cast { to: DType::I32 }), &[&wide]).unwrap();
    assert_eq!(
        narrow.data(),
        &TensorData::I32(vec![5, -3]),
        "narrowing wraps like numpy"
    );
}

#[test]
fn fused_elementwise_matches_the_unfused_ops_bit_for_bit() {
    // where(x > 0, gelu(x * 1.7 + bias), x - 3)
    let x = Tensor::f32(vec![2, 3], vec![-1.3, 0.4, 2.2, 0.0, -0.07, 5.5]);
    let bias = Tensor::f32(vec![3], vec![0.1, -0.2, 0.3]);
    let expr = ElementwiseExpr {
        steps: vec![
            ExprStep::Input(0),
            ExprStep::Input(1),
            ExprStep::Const(Float(1.7)),
            ExprStep::Binary(BinaryOp::Mul, 0, 2),
            ExprStep::Binary(BinaryOp::Add, 3, 1),
            ExprStep::Unary(UnaryOp::Gelu, 4),
            ExprStep::Const(Float(0.0)),
            ExprStep::Compare(CompareOp::Gt, 0, 6),
            ExprStep::Const(Float(3.0)),
            ExprStep::Binary(BinaryOp::Sub, 0, 8),
            ExprStep::Where(7, 5, 9),
        ],
    };
    let fused = eval(
        Op::FusedElementwise(FusedElementwise { expr }),
        &[&x, &bias],
    )
    .unwrap();

    let scaled = eval(Op::Binary(BinaryOp::Mul), &[&x, &Tensor::scalar(1.7)]).unwrap();
    let shifted = eval(Op::Binary(BinaryOp::Add), &[&scaled, &bias]).unwrap();
    let activated = eval(Op::Unary(UnaryOp::Gelu), &[&shifted]).unwrap();
    let positive = eval(Op::Compare(CompareOp::Gt), &[&x, &Tensor::scalar(0.0)]).unwrap();
    let lowered = eval(Op::Binary(BinaryOp::Sub), &[&x, &Tensor::scalar(3.0)]).unwrap();
    let unfused = eval(Op::Where, &[&positive, &activated, &lowered]).unwrap();
    assert_eq!(fused, unfused);
}

#[test]
fn fused_elementwise_rejects_ill_formed_expressions() {
    let flags = bools(vec![2], vec![true, false]);
    let on_bool = ElementwiseExpr {
        steps: vec![ExprStep::Input(0), ExprStep::Unary(UnaryOp::Exp, 0)],
    };
    let err = eval(
        Op::FusedElementwise(FusedElementwise { expr: on_bool }),
        &[&flags],
    )
    .unwrap_err();
    assert!(
        matches!(err, InterpError::Eval(EvalError::BadExpr { step: 1, .. })),
        "{err:?}"
    );
    let forward = ElementwiseExpr {
        steps: vec![
            ExprStep::Input(0),
            ExprStep::Binary(BinaryOp::Add, 0, 2),
            ExprStep::Const(Float(1.0)),
        ],
    };
    let x = Tensor::f32(vec![2], vec![1.0, 2.0]);
    let err = eval(
        Op::FusedElementwise(FusedElementwise { expr: forward }),
        &[&x],
    )
    .unwrap_err();
    assert!(
        matches!(err, InterpError::Eval(EvalError::BadExpr { step: 1, .. })),
        "{err:?}"
    );
}

#[test]
fn fused_linear_matches_matmul_bias_activation_residual_bit_for_bit() {
    let a = Tensor::f32(
        vec![2, 2, 3],
        (0..12).map(|i| (i as f32 * 0.37).sin()).collect(),
    );
    let b_t = Tensor::f32(
        vec![4, 3],
        (0..12).map(|i| (i as f32 * 0.91).cos()).collect(),
    );
    let bias = Tensor::f32(vec![4], vec![0.5, -0.25, 0.125, -1.0]);
    let residual = Tensor::f32(vec![2, 2, 4], (0..16).map(|i| i as f32 / 7.0).collect());
    let epilogue = LinearEpilogue {
        bias: true,
        activation: Some(UnaryOp::GeluTanh),
        residual: true,
    };
    let fused = eval(
        Op::FusedLinear(FusedLinear {
            transpose_b: true,
            epilogue,
        }),
        &[&a, &b_t, &bias, &residual],
    )
    .unwrap();

    let product = eval(
        Op::MatMul(MatMul {
            transpose_a: false,
            transpose_b: true,
        }),
        &[&a, &b_t],
    )
    .unwrap();
    let shifted = eval(Op::Binary(BinaryOp::Add), &[&product, &bias]).unwrap();
    let activated = eval(Op::Unary(UnaryOp::GeluTanh), &[&shifted]).unwrap();
    let unfused = eval(Op::Binary(BinaryOp::Add), &[&activated, &residual]).unwrap();
    assert_eq!(fused, unfused);
}

#[test]
fn fused_conv2d_matches_conv2d_activation_residual_bit_for_bit() {
    use crate::ir::ops::window::{DataLayout, Padding2d, Window2d};
    use crate::ir::ops::{Conv2d, FusedConv2d};
    let x = Tensor::f32(
        vec![2, 2, 5, 4],
        (0..80).map(|i| (i as f32 * 0.37).sin()).collect(),
    );
    // Depthwise-by-two: 2 groups, 4 output channels.
    let w = Tensor::f32(
        vec![4, 1, 3, 2],
        (0..24).map(|i| (i as f32 * 0.91).cos()).collect(),
    );
    let bias = Tensor::f32(vec![4], vec![0.5, -0.25, 0.125, -1.0]);
    let conv = Conv2d {
        window: Window2d {
            stride: [2, 1],
            dilation: [1, 2],
            padding: Padding2d::Same,
            layout: DataLayout::Nchw,
        },
        groups: 2,
    };
    let unfused_conv = eval(Op::Conv2d(conv.clone()), &[&x, &w, &bias]).unwrap();
    let residual = Tensor::f32(
        unfused_conv.shape().to_vec(),
        (0..unfused_conv.len()).map(|i| i as f32 / 7.0).collect(),
    );
    let fused = eval(
        Op::FusedConv2d(FusedConv2d {
            conv,
            epilogue: LinearEpilogue {
                bias: true,
                activation: Some(UnaryOp::HardSwish),
                residual: true,
            },
        }),
        &[&x, &w, &bias, &residual],
    )
    .unwrap();
    let activated = eval(Op::Unary(UnaryOp::HardSwish), &[&unfused_conv]).unwrap();
    let unfused = eval(Op::Binary(BinaryOp::Add), &[&activated, &residual]).unwrap();
    assert_eq!(fused, unfused);
}

#[test]
fn matmul_accumulates_in_double_precision() {
    // 1e8 + 1 - 1e8 is 0 with an f32 running sum, 1 with an f64 one.
    let a = Tensor::f32(vec![1, 3], vec![1e8, 1.0, -1e8]);
    let b = Tensor::f32(vec![3, 1], vec![1.0, 1.0, 1.0]);
    let product = eval(
        Op::MatMul(MatMul {
            transpose_a: false,
            transpose_b: false,
        }),
        &[&a, &b],
    )
    .unwrap();
    assert_eq!(f32s(&product), &[1.0]);
    let sum = eval(
        Op::Reduce(Reduce {
            op: ReduceOp::Sum,
            axes: vec![1],
            keepdims: false,
        }),
        &[&a],
    )
    .unwrap();
    assert_eq!(f32s(&sum), &[1.0]);
}
