//! Each pass on small targeted graphs: snapshots of the printed graph before
//! and after, including the guard cases that must NOT be rewritten.

mod passes_support;

use insta::assert_snapshot;
use lamina::ir::ops::{
    Constant, FusedElementwise, FusedLinear, Gather, MatMul, Permute, Reduce, Reshape, Softmax,
};
use lamina::ir::{BinaryOp, CompareOp, ExprStep, Op, ReduceOp, UnaryOp};
use lamina::tensor::Tensor;
use passes_support::{before_after, count_ops, optimize, Builder};

fn matmul() -> Op {
    Op::MatMul(MatMul {
        transpose_a: false,
        transpose_b: false,
    })
}

fn transpose2() -> Op {
    Op::Permute(Permute { perm: vec![1, 0] })
}

fn add() -> Op {
    Op::Binary(BinaryOp::Add)
}

fn mul() -> Op {
    Op::Binary(BinaryOp::Mul)
}

fn sub() -> Op {
    Op::Binary(BinaryOp::Sub)
}

fn div() -> Op {
    Op::Binary(BinaryOp::Div)
}

fn unary(u: UnaryOp) -> Op {
    Op::Unary(u)
}

fn reduce(op: ReduceOp, axis: usize) -> Op {
    Op::Reduce(Reduce {
        op,
        axes: vec![axis],
        keepdims: true,
    })
}

// ---- dce --------------------------------------------------------------------

#[test]
fn dce_removes_dead_branches_but_keeps_unused_inputs() {
    let mut b = Builder::new("dce");
    let x = b.input("x", "f32[batch, 4]");
    let _unused = b.input("unused", "f32[3]");
    let w = b.param("w", "f32[4, 4]");
    let dead = b.op(matmul(), &[x, w]);
    let _dead2 = b.op(unary(UnaryOp::Exp), &[dead]);
    let y = b.op(unary(UnaryOp::Relu), &[x]);
    b.output("y", y);
    let g = b.finish();
    let (after, _) = optimize(&g, "dce");
    assert_eq!(after.node_count(), 3, "x, unused, relu remain");
    assert_snapshot!(before_after(&g, "dce"));
}

// ---- cse --------------------------------------------------------------------

#[test]
fn cse_merges_equal_constants_and_commuted_operands() {
    let mut b = Builder::new("cse");
    let x = b.input("x", "f32[batch, 4]");
    let y = b.input("y", "f32[batch, 4]");
    let two_a = b.scalar(2.0);
    let two_b = b.scalar(2.0);
    let zero = b.scalar(0.0);
    let neg_zero = b.scalar(-0.0);
    let s1 = b.op(add(), &[x, y]);
    let s2 = b.op(add(), &[y, x]);
    let d1 = b.op(sub(), &[x, y]);
    let d2 = b.op(sub(), &[y, x]);
    let m1 = b.op(mul(), &[s1, two_a]);
    let m2 = b.op(mul(), &[s2, two_b]);
    let p = b.op(add(), &[m1, m2]);
    let q = b.op(add(), &[d1, d2]);
    let r = b.op(add(), &[p, zero]);
    let s = b.op(add(), &[q, neg_zero]);
    b.output("r", r);
    b.output("s", s);
    let g = b.finish();
    let (after, _) = optimize(&g, "cse");
    // x+y == y+x and the two 2.0 merge (so do the muls); x-y and y-x do
    // not, nor 0.0 and -0.0.
    assert_eq!(after.node_count(), g.node_count() - 3);
    assert_snapshot!(before_after(&g, "cse"));
}

// ---- const-fold -----------------------------------------------------------------

fn constant_values(graph: &lamina::ir::Graph, id: lamina::ir::NodeId) -> Vec<f32> {
    match &graph.node(id).op {
        Op::Constant(Constant { value }) => value.as_f32().expect("f32 constant").to_vec(),
        other => panic!("expected a constant, got {}", other.name()),
    }
}

#[test]
fn const_fold_evaluates_constant_subgraphs() {
    let mut b = Builder::new("constants");
    let x = b.input("x", "f32[batch, 3]");
    let two = b.scalar(2.0);
    let three = b.scalar(3.0);
    let v = b.constant(Tensor::f32(vec![3], vec![0.0, 1.0, 2.0]));
    let six = b.op(mul(), &[two, three]);
    // sqrt, not exp: folding computes only correctly rounded ops
    let e = b.op(unary(UnaryOp::Sqrt), &[v]);
    let shift = b.op(mul(), &[e, six]);
    let y = b.op(add(), &[x, shift]);
    b.output("y", y);
    // ids out of range: left for run time, where the error names the node
    let table = b.constant(Tensor::f32(vec![2, 3], vec![1.0; 6]));
    let ids = b.constant(Tensor::i64(vec![1], vec![5]));
    let rows = b.op(Op::Gather(Gather { axis: 0 }), &[table, ids]);
    b.output("rows", rows);
    // a broadcast to 64 * 128 elements is not materialised
    let col = b.constant(Tensor::f32(vec![64, 1], vec![1.0; 64]));
    let row = b.constant(Tensor::f32(vec![1, 128], vec![2.0; 128]));
    let big = b.op(add(), &[col, row]);
    b.output("big", big);
    let g = b.finish();
    let (after, _) = optimize(&g, "const-fold");
    let (_, y) = &after.outputs[0];
    let shift = after.inputs(*y)[1];
    let expected: Vec<f32> = [0.0f32, 1.0, 2.0].iter().map(|v| v.sqrt() * 6.0).collect();
    assert_eq!(constant_values(&after, shift), expected);
    assert_eq!(count_ops(&after, "gather"), 1);
    assert_eq!(
        count_ops(&after, "add"),
        2,
        "x + shift and the large broadcast stay"
    );
    assert_snapshot!(before_after(&g, "const-fold"));
}

/// `tanh(x @ transpose(w) * 0.5 + b)`: a torch-layout layer with a scaled weight.
fn scaled_torch_layer() -> lamina::ir::Graph {
    let mut b = Builder::new("scaled_weight");
    let x = b.input("x", "f32[batch, 3]");
    let w = b.param("w", "f32[2, 3]");
    let bias = b.param("b", "f32[2]");
    let half = b.scalar(0.5);
    let wt = b.op(transpose2(), &[w]);
    let ws = b.op(mul(), &[wt, half]);
    let m = b.op(matmul(), &[x, ws]);
    let s = b.op(add(), &[m, bias]);
    let h = b.op(unary(UnaryOp::Tanh), &[s]);
    b.output("h", h);
    b.finish()
}

#[test]
fn const_fold_treats_parameters_as_opaque_without_values() {
    let g = scaled_torch_layer();
    let (after, _) = optimize(&g, "all");
    assert_eq!(count_ops(&after, "const"), 1, "only the 0.5 literal");
    assert_eq!(count_ops(&after, "param"), 2);
    // The scaled weight is computed from parameters only: still a weight.
    assert_eq!(count_ops(&after, "fused_linear"), 1);
    assert_snapshot!(before_after(&g, "all"));
}

#[test]
fn const_fold_folds_parameter_subgraphs_once_with_bound_values() {
    let g = scaled_torch_layer();
    let params = std::collections::HashMap::from([
        (
            "w".to_string(),
            Tensor::f32(vec![2, 3], vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]),
        ),
        ("b".to_string(), Tensor::f32(vec![2], vec![0.5, -0.5])),
    ]);
    let cx = lamina::passes::PassContext::with_params(&params);
    let (after, _) = passes_support::optimize_in(&g, "all", &cx);
    assert_eq!(count_ops(&after, "permute") + count_ops(&after, "mul"), 0);
    let fused = after.outputs[0].1;
    let weight = after.inputs(fused)[1];
    // transpose(w) * 0.5, computed once at compile time
    assert_eq!(
        constant_values(&after, weight),
        vec![0.5, 2.0, 1.0, 2.5, 1.5, 3.0]
    );
    assert_eq!(
        after.node(after.inputs(fused)[2]).op.name(),
        "param",
        "the bias is used as is"
    );
    assert_snapshot!(passes_support::before_after_in(&g, "all", &cx));
}

#[test]
fn const_fold_rejects_parameter_values_of_the_wrong_shape() {
    let g = scaled_torch_layer();
    let params =
        std::collections::HashMap::from([("w".to_string(), Tensor::f32(vec![3, 2], vec![0.0; 6]))]);
    let mut h = g.clone();
    let err = lamina::passes::PassManager::all()
        .run(
            &mut h,
            &lamina::passes::PassContext::with_params(&params),
            None,
        )
        .unwrap_err();
    assert!(
        matches!(err, lamina::passes::PassError::ParamType { ref name, .. } if name == "w"),
        "{err}"
    );
}

// ---- fold-batch-norm --------------------------------------------------------

/// conv2d (with its own bias) -> batch_norm -> relu6, as EfficientNet has them.
fn conv_bn_relu6() -> lamina::ir::Graph {
    use lamina::ir::ops::batch_norm::BatchNorm;
    use lamina::ir::ops::window::{DataLayout, Padding2d, Window2d};
    use lamina::ir::ops::Conv2d;
    let mut b = Builder::new("conv_bn");
    let x = b.input("x", "f32[batch, 1, 3, 3]");
    let w = b.param("w", "f32[2, 1, 1, 1]");
    let bias = b.param("b", "f32[2]");
    let stats: Vec<_> = ["mean", "var", "gain", "beta"]
        .iter()
        .map(|n| b.param(n, "f32[2]"))
        .collect();
    let conv = Op::Conv2d(Conv2d {
        window: Window2d {
            stride: [1, 1],
            dilation: [1, 1],
            padding: Padding2d::Same,
            layout: DataLayout::Nchw,
        },
        groups: 1,
    });
    let c = b.op(conv, &[x, w, bias]);
    let bn = Op::BatchNorm(BatchNorm {
        eps: lamina::ir::ops::Float(0.25),
    });
    let n = b.op(bn, &[c, stats[0], stats[1], stats[2], stats[3]]);
    let y = b.op(unary(UnaryOp::Relu6), &[n]);
    b.output("y", y);
    b.finish()
}

#[test]
fn fold_batch_norm_with_bound_values_leaves_one_fused_conv_with_constant_weights() {
    let g = conv_bn_relu6();
    let vector = |v: [f32; 2]| Tensor::f32(vec![2], v.to_vec());
    let params = std::collections::HashMap::from([
        (
            "w".to_string(),
            Tensor::f32(vec![2, 1, 1, 1], vec![2.0, -3.0]),
        ),
        ("b".to_string(), vector([1.0, 0.5])),
        ("mean".to_string(), vector([0.5, -1.0])),
        // var + eps = 4 and 1: scales gain / 2 and gain / 1.
        ("var".to_string(), vector([3.75, 0.75])),
        ("gain".to_string(), vector([3.0, 0.5])),
        ("beta".to_string(), vector([0.25, -2.0])),
    ]);
    let cx = lamina::passes::PassContext::with_params(&params);
    let (after, report) = passes_support::optimize_in(&g, "all", &cx);
    assert_eq!(count_ops(&after, "batch_norm"), 0);
    assert_eq!(count_ops(&after, "fused_conv2d"), 1);
    assert_eq!(
        after.node_count(),
        4,
        "x, weights, bias and one fused_conv2d"
    );
    let fused = after.outputs[0].1;
    let operands = after.inputs(fused);
    // s = gain / sqrt(var + eps) = [1.5, 0.5]; w * s; beta - (mean - b) * s.
    assert_eq!(constant_values(&after, operands[1]), vec![3.0, -1.5]);
    assert_eq!(
        constant_values(&after, operands[2]),
        vec![0.25 - (0.5 - 1.0) * 1.5, -2.0 - (-1.0 - 0.5) * 0.5]
    );
    let steps: Vec<_> = report.steps.iter().map(|s| s.pass).collect();
    assert!(steps.contains(&"fold-batch-norm"), "{steps:?}");
    assert_snapshot!(passes_support::before_after_in(&g, "all", &cx));
}

// ---- simplify ---------------------------------------------------------------

#[test]
fn simplify_identities() {
    let mut b = Builder::new("identities");
    let x = b.input("x", "f32[batch, 3]");
    let one = b.scalar(1.0);
    let zero = b.scalar(0.0);
    let ones = b.constant(Tensor::f32(vec![3], vec![1.0; 3]));
    let a = b.op(mul(), &[one, x]);
    let c = b.op(add(), &[a, zero]);
    let d = b.op(sub(), &[c, zero]);
    let e = b.op(div(), &[d, one]);
    let f = b.op(mul(), &[e, ones]);
    let n1 = b.op(unary(UnaryOp::Neg), &[f]);
    let n2 = b.op(unary(UnaryOp::Neg), &[n1]);
    b.output("y", n2);
    let g = b.finish();
    let (after, _) = optimize(&g, "simplify");
    assert_eq!(
        after.outputs[0].1, after.inputs[0],
        "everything simplifies to x"
    );
    assert_snapshot!(before_after(&g, "simplify"));
}

#[test]
fn simplify_keeps_identities_that_broadcast() {
    let mut b = Builder::new("broadcasting_identity");
    let x = b.input("x", "f32[3]");
    let ones = b.constant(Tensor::f32(vec![2, 3], vec![1.0; 6]));
    let y = b.op(mul(), &[x, ones]);
    b.output("y", y);
    let g = b.finish();
    let (after, _) = optimize(&g, "simplify");
    assert_eq!(
        count_ops(&after, "mul"),
        1,
        "x * ones[2, 3] makes x [2, 3]; it is not x"
    );
    assert_snapshot!(before_after(&g, "simplify"));
}

#[test]
fn simplify_x_minus_x_only_with_a_concrete_shape() {
    let mut b = Builder::new("x_minus_x");
    let x = b.input("x", "f32[2, 3]");
    let s = b.input("s", "f32[batch, 3]");
    let z = b.op(sub(), &[x, x]);
    let zs = b.op(sub(), &[s, s]);
    b.output("z", z);
    b.output("zs", zs);
    let g = b.finish();
    let (after, _) = optimize(&g, "simplify");
    assert_eq!(count_ops(&after, "sub"), 1, "the symbolic one stays");
    assert_snapshot!(before_after(&g, "simplify"));
}

#[test]
fn simplify_division_by_constants() {
    let mut b = Builder::new("div_by_constant");
    let x = b.input("x", "f32[batch, 3]");
    let four = b.scalar(4.0);
    let zero = b.scalar(0.0);
    let per_column = b.constant(Tensor::f32(vec![3], vec![2.0, 0.5, -8.0]));
    let y = b.op(div(), &[x, four]);
    let z = b.op(div(), &[x, zero]);
    let w = b.op(div(), &[x, per_column]);
    b.output("y", y);
    b.output("z", z);
    b.output("w", w);
    let g = b.finish();
    let (after, _) = optimize(&g, "simplify");
    assert_eq!(
        count_ops(&after, "div"),
        1,
        "division by zero is left as written"
    );
    let mut factors: Vec<Vec<f32>> = after
        .node_ids()
        .filter(|&id| matches!(after.node(id).op, Op::Binary(BinaryOp::Mul)))
        .map(|id| match &after.node(after.inputs(id)[1]).op {
            Op::Constant(Constant { value }) => value.as_f32().unwrap().to_vec(),
            other => panic!("expected a constant factor, got {}", other.name()),
        })
        .collect();
    factors.sort_by_key(|f| f.len());
    assert_eq!(factors, vec![vec![0.25], vec![0.5, 2.0, -0.125]]);
    assert_snapshot!(before_after(&g, "simplify"));
}

#[test]
fn simplify_permute_and_reshape_chains() {
    let mut b = Builder::new("layout");
    let x = b.input("x", "f32[batch, seq, 4, 8]");
    // transpose(transpose(x)) is x
    let t1 = b.op(
        Op::Permute(Permute {
            perm: vec![0, 1, 3, 2],
        }),
        &[x],
    );
    let t2 = b.op(
        Op::Permute(Permute {
            perm: vec![0, 1, 3, 2],
        }),
        &[t1],
    );
    // two permutes compose into one
    let p1 = b.op(
        Op::Permute(Permute {
            perm: vec![0, 2, 1, 3],
        }),
        &[t2],
    );
    let p2 = b.op(
        Op::Permute(Permute {
            perm: vec![0, 1, 3, 2],
        }),
        &[p1],
    );
    b.output("permuted", p2);
    // reshape of reshape is one reshape; an identity reshape disappears
    let y = b.input("y", "f32[2, 12]");
    let r1 = b.op(
        Op::Reshape(Reshape {
            shape: vec![6.into(), 4.into()],
        }),
        &[y],
    );
    let r2 = b.op(
        Op::Reshape(Reshape {
            shape: vec![3.into(), 8.into()],
        }),
        &[r1],
    );
    let r3 = b.op(
        Op::Reshape(Reshape {
            shape: vec![3.into(), 8.into()],
        }),
        &[r2],
    );
    b.output("reshaped", r3);
    // a transpose of a reshape that only moves a unit axis is a reshape
    let z = b.input("z", "f32[4, 6]");
    let unit = b.op(
        Op::Reshape(Reshape {
            shape: vec![4.into(), 1.into(), 6.into()],
        }),
        &[z],
    );
    let moved = b.op(
        Op::Permute(Permute {
            perm: vec![1, 0, 2],
        }),
        &[unit],
    );
    b.output("unit_moved", moved);
    let g = b.finish();
    let (after, _) = optimize(&g, "simplify");
    assert_eq!(count_ops(&after, "permute"), 1);
    assert_eq!(count_ops(&after, "reshape"), 2);
    assert_snapshot!(before_after(&g, "simplify"));
}

#[test]
fn simplify_keeps_a_real_transpose_of_a_reshape() {
    let mut b = Builder::new("real_transpose");
    let z = b.input("z", "f32[4, 6]");
    let r = b.op(
        Op::Reshape(Reshape {
            shape: vec![2.into(), 2.into(), 6.into()],
        }),
        &[z],
    );
    let t = b.op(
        Op::Permute(Permute {
            perm: vec![1, 0, 2],
        }),
        &[r],
    );
    b.output("t", t);
    let g = b.finish();
    let (after, _) = optimize(&g, "simplify");
    assert_eq!(
        count_ops(&after, "permute"),
        1,
        "moving data between non-unit axes is not a reshape"
    );
    assert_snapshot!(before_after(&g, "simplify"));
}

// ---- transpose-matmul ---------------------------------------------------------

#[test]
fn transposes_fold_into_matmul_flags() {
    let mut b = Builder::new("transpose_matmul");
    let x = b.input("x", "f32[batch, 4]");
    let w = b.param("w", "f32[8, 4]");
    let wt = b.op(transpose2(), &[w]);
    let y = b.op(matmul(), &[x, wt]);
    b.output("y", y);
    // transpose(a) @ v for an activation v: the flag saves the copy
    let a = b.input("a", "f32[batch, seq, 5]");
    let v = b.input("v", "f32[batch, seq, 3]");
    let at = b.op(
        Op::Permute(Permute {
            perm: vec![0, 2, 1],
        }),
        &[a],
    );
    let z = b.op(matmul(), &[at, v]);
    b.output("z", z);
    // a transpose that is also an output is computed anyway
    let c = b.input("c", "f32[4, 5]");
    let d = b.input("d", "f32[4, 3]");
    let ct = b.op(transpose2(), &[c]);
    let e = b.op(matmul(), &[ct, d]);
    b.output("e", e);
    b.output("c_t", ct);
    // transpose(a) @ weight keeps its transpose, so the layer can fuse
    let u = b.param("u", "f32[4, 3]");
    let c2 = b.input("c2", "f32[4, 5]");
    let c2t = b.op(transpose2(), &[c2]);
    let f = b.op(matmul(), &[c2t, u]);
    b.output("f", f);
    let g = b.finish();
    let (after, _) = optimize(&g, "transpose-matmul");
    assert_eq!(
        count_ops(&after, "permute"),
        2,
        "the output transpose and the weight layer's input stay"
    );
    assert_snapshot!(before_after(&g, "transpose-matmul"));
}

// ---- fuse-linear -------------------------------------------------------------

#[test]
fn fuse_linear_mlp_layer() {
    let mut b = Builder::new("mlp_layer");
    let x = b.input("x", "f32[batch, 784]");
    let w = b.param("fc1.weight", "f32[784, 128]");
    let bias = b.param("fc1.bias", "f32[128]");
    let m = b.op(matmul(), &[x, w]);
    let s = b.op(add(), &[m, bias]);
    let h = b.op(unary(UnaryOp::Relu), &[s]);
    b.output("h", h);
    let g = b.finish();
    let (after, _) = optimize(&g, "fuse-linear");
    assert_eq!(count_ops(&after, "fused_linear"), 1);
    assert_eq!(after.node_count(), 4);
    assert_snapshot!(before_after(&g, "fuse-linear"));
}

#[test]
fn fuse_linear_every_activation() {
    for act in UnaryOp::ALL {
        let mut b = Builder::new("act");
        let x = b.input("x", "f32[batch, 4]");
        let w = b.param("w", "f32[4, 3]");
        let bias = b.param("b", "f32[3]");
        let m = b.op(matmul(), &[x, w]);
        let s = b.op(add(), &[bias, m]);
        let h = b.op(unary(act), &[s]);
        b.output("h", h);
        let g = b.finish();
        let (after, _) = optimize(&g, "fuse-linear");
        let fused = after
            .node_ids()
            .find_map(|id| match &after.node(id).op {
                Op::FusedLinear(FusedLinear { epilogue, .. }) => Some(epilogue.clone()),
                _ => None,
            })
            .expect("the bias add fuses");
        assert!(fused.bias);
        if act.is_activation() {
            assert_eq!(fused.activation, Some(act), "{act:?}");
        } else {
            assert_eq!(
                fused.activation, None,
                "{act:?} is not an epilogue activation"
            );
            assert_eq!(count_ops(&after, act.name()), 1);
        }
    }
}

#[test]
fn fuse_linear_residual_and_rank3_activations() {
    let mut b = Builder::new("residual_block");
    let x = b.input("x", "f32[batch, seq, 16]");
    let w = b.param("w", "f32[16, 16]");
    let bias = b.param("b", "f32[16]");
    let m = b.op(matmul(), &[x, w]);
    let s = b.op(add(), &[m, bias]);
    let h = b.op(unary(UnaryOp::Gelu), &[s]);
    let y = b.op(add(), &[x, h]);
    b.output("y", y);
    let g = b.finish();
    let (after, _) = optimize(&g, "fuse-linear");
    assert_eq!(after.node_count(), 4, "x, w, b and one fused_linear");
    assert_snapshot!(before_after(&g, "fuse-linear"));
}

#[test]
fn fuse_linear_transposed_weight_via_all() {
    let mut b = Builder::new("torch_linear");
    let x = b.input("x", "f32[batch, 32]");
    let w = b.param("w", "f32[10, 32]");
    let bias = b.param("b", "f32[10]");
    let wt = b.op(transpose2(), &[w]);
    let m = b.op(matmul(), &[x, wt]);
    let s = b.op(add(), &[m, bias]);
    let h = b.op(unary(UnaryOp::Tanh), &[s]);
    b.output("h", h);
    let g = b.finish();
    let (after, _) = optimize(&g, "all");
    assert_eq!(count_ops(&after, "fused_linear"), 1);
    assert_eq!(count_ops(&after, "permute"), 0);
    assert_snapshot!(before_after(&g, "all"));
}

#[test]
fn fuse_linear_guards() {
    let mut b = Builder::new("not_linear_layers");
    let x = b.input("x", "f32[4, 8]");
    let w = b.param("w", "f32[8, 6]");
    // a [m, 1] "bias" is per row, not per output feature
    let col = b.param("col", "f32[4, 1]");
    let m1 = b.op(matmul(), &[x, w]);
    let a1 = b.op(add(), &[m1, col]);
    b.output("per_row", a1);
    // a [1, n] "bias" does not have the bias shape [n]
    let row = b.param("row", "f32[1, 6]");
    let m2 = b.op(matmul(), &[x, w]);
    let a2 = b.op(add(), &[m2, row]);
    b.output("row_bias", a2);
    // batched weights are not a linear layer
    let xb = b.input("xb", "f32[2, 4, 8]");
    let wb = b.param("wb", "f32[2, 8, 6]");
    let bias = b.param("bias", "f32[6]");
    let m3 = b.op(matmul(), &[xb, wb]);
    let a3 = b.op(add(), &[m3, bias]);
    b.output("batched", a3);
    // a computed right operand (attention scores) is not a weight
    let k = b.input("k", "f32[8, 6]");
    let m4 = b.op(matmul(), &[x, k]);
    let a4 = b.op(add(), &[m4, bias]);
    b.output("activation_operand", a4);
    // the matmul result is read twice: fusing would lose it
    let m5 = b.op(matmul(), &[x, w]);
    let a5 = b.op(add(), &[m5, bias]);
    let r5 = b.op(unary(UnaryOp::Relu), &[m5]);
    b.output("shared_a", a5);
    b.output("shared_b", r5);
    // the pre-activation is an output itself
    let m6 = b.op(
        Op::MatMul(MatMul {
            transpose_a: true,
            transpose_b: false,
        }),
        &[k, w],
    );
    b.output("transpose_a", m6);
    let g = b.finish();
    let (after, _) = optimize(&g, "fuse-linear");
    assert_eq!(count_ops(&after, "fused_linear"), 0);
    assert_eq!(after.node_count(), g.node_count());
    assert_snapshot!(before_after(&g, "fuse-linear"));
}

#[test]
fn fuse_linear_stops_at_shared_intermediates() {
    let mut b = Builder::new("partial");
    let x = b.input("x", "f32[batch, 8]");
    let w = b.param("w", "f32[8, 8]");
    let bias = b.param("b", "f32[8]");
    let m = b.op(matmul(), &[x, w]);
    let pre = b.op(add(), &[m, bias]);
    let h = b.op(unary(UnaryOp::Sigmoid), &[pre]);
    b.output("pre", pre);
    b.output("h", h);
    // a [m, n] "bias" is a residual
    let w2 = b.param("w2", "f32[8, 8]");
    let m2 = b.op(matmul(), &[h, w2]);
    let r = b.op(add(), &[m2, x]);
    b.output("res", r);
    let g = b.finish();
    let (after, _) = optimize(&g, "fuse-linear");
    assert_eq!(count_ops(&after, "fused_linear"), 2);
    assert_eq!(
        count_ops(&after, "sigmoid"),
        1,
        "the bias add is an output, so the activation stays apart"
    );
    assert_snapshot!(before_after(&g, "fuse-linear"));
}

// ---- fuse-elementwise ----------------------------------------------------------

#[test]
fn fuse_elementwise_chain_with_literals() {
    let mut b = Builder::new("swish_plus_one");
    let x = b.input("x", "f32[batch, 16]");
    let one = b.scalar(1.0);
    let s = b.op(unary(UnaryOp::Sigmoid), &[x]);
    let m = b.op(mul(), &[x, s]);
    let y = b.op(add(), &[m, one]);
    b.output("y", y);
    let g = b.finish();
    let (after, _) = optimize(&g, "fuse-elementwise");
    assert_eq!(
        after.node_count(),
        2,
        "x and one fused node; the literal is inlined"
    );
    assert_snapshot!(before_after(&g, "fuse-elementwise"));
}

#[test]
fn fuse_elementwise_shared_subtree_and_where() {
    let mut b = Builder::new("shared");
    let x = b.input("x", "f32[batch, 16]");
    let t = b.op(unary(UnaryOp::Exp), &[x]);
    let tt = b.op(mul(), &[t, t]);
    let y = b.op(add(), &[tt, t]);
    b.output("y", y);
    // leaky relu: where(x > 0, x, 0.1 * x)
    let zero = b.scalar(0.0);
    let slope = b.scalar(0.1);
    let pos = b.op(Op::Compare(CompareOp::Gt), &[x, zero]);
    let leak = b.op(mul(), &[slope, x]);
    let l = b.op(Op::Where, &[pos, x, leak]);
    b.output("leaky", l);
    let g = b.finish();
    let (after, _) = optimize(&g, "fuse-elementwise");
    assert_eq!(count_ops(&after, "fused_elementwise"), 2);
    let (_, y_id) = &after.outputs[0];
    let Op::FusedElementwise(FusedElementwise { expr }) = &after.node(*y_id).op else {
        panic!("y is fused")
    };
    let exps = expr
        .steps
        .iter()
        .filter(|s| matches!(s, ExprStep::Unary(UnaryOp::Exp, _)))
        .count();
    assert_eq!(
        exps, 1,
        "the shared exp is one step, read three times (the printer repeats it)"
    );
    assert_snapshot!(before_after(&g, "fuse-elementwise"));
}

#[test]
fn fuse_elementwise_guards() {
    let mut b = Builder::new("elementwise_guards");
    let x = b.input("x", "f32[batch, 16]");
    let bias = b.param("b", "f32[16]");
    // exp(bias) is [16]: fusing it would compute it batch times over
    let e = b.op(unary(UnaryOp::Exp), &[bias]);
    let y = b.op(add(), &[x, e]);
    let z = b.op(unary(UnaryOp::Tanh), &[y]);
    // the tanh is read by two fused candidates: it stays on its own
    let p = b.op(unary(UnaryOp::Abs), &[z]);
    let q = b.op(unary(UnaryOp::Neg), &[z]);
    let pp = b.op(unary(UnaryOp::Sqrt), &[p]);
    let qq = b.op(unary(UnaryOp::Exp), &[q]);
    b.output("p", pp);
    b.output("q", qq);
    let g = b.finish();
    let (after, _) = optimize(&g, "fuse-elementwise");
    assert_eq!(count_ops(&after, "exp"), 1, "exp(bias) stays unfused");
    assert_eq!(count_ops(&after, "fused_elementwise"), 3);
    assert_snapshot!(before_after(&g, "fuse-elementwise"));
}

#[test]
fn fuse_elementwise_caps_inputs() {
    let mut b = Builder::new("wide_sum");
    let inputs: Vec<_> = (0..10)
        .map(|i| b.input(&format!("x{i}"), "f32[4]"))
        .collect();
    let mut acc = inputs[0];
    for &x in &inputs[1..] {
        acc = b.op(add(), &[acc, x]);
    }
    b.output("sum", acc);
    let g = b.finish();
    let (after, _) = optimize(&g, "fuse-elementwise");
    for id in after.node_ids() {
        assert!(after.inputs(id).len() <= lamina::passes::MAX_FUSED_INPUTS);
    }
    assert_eq!(count_ops(&after, "fused_elementwise"), 2);
    assert_snapshot!(before_after(&g, "fuse-elementwise"));
}

// ---- recognize -----------------------------------------------------------------

/// `exp(x - max(x)) / sum(exp(x - max(x)))` over `axis`.
fn hand_softmax(b: &mut Builder, x: lamina::ir::NodeId, axis: usize) -> lamina::ir::NodeId {
    let m = b.op(reduce(ReduceOp::Max, axis), &[x]);
    let d = b.op(sub(), &[x, m]);
    let e = b.op(unary(UnaryOp::Exp), &[d]);
    let s = b.op(reduce(ReduceOp::Sum, axis), &[e]);
    b.op(div(), &[e, s])
}

#[test]
fn recognize_softmax_and_log_softmax() {
    let mut b = Builder::new("softmaxes");
    let x = b.input("x", "f32[batch, 10]");
    let p = hand_softmax(&mut b, x, 1);
    b.output("probs", p);
    // d - log(sum(exp(d))) with d = x - max(x), over axis 0
    let m = b.op(reduce(ReduceOp::Max, 0), &[x]);
    let d = b.op(sub(), &[x, m]);
    let e = b.op(unary(UnaryOp::Exp), &[d]);
    let s = b.op(reduce(ReduceOp::Sum, 0), &[e]);
    let l = b.op(unary(UnaryOp::Log), &[s]);
    let ls = b.op(sub(), &[d, l]);
    b.output("log_probs", ls);
    // log(softmax(x)) from the built-in
    let sm = b.op(Op::Softmax(Softmax { axis: 1 }), &[x]);
    let lsm = b.op(unary(UnaryOp::Log), &[sm]);
    b.output("log_of_softmax", lsm);
    // the naive form exp(x) / sum(exp(x))
    let e2 = b.op(unary(UnaryOp::Exp), &[x]);
    let s2 = b.op(reduce(ReduceOp::Sum, 1), &[e2]);
    let naive = b.op(div(), &[e2, s2]);
    b.output("naive", naive);
    let g = b.finish();
    let (after, _) = optimize(&g, "recognize");
    assert_eq!(count_ops(&after, "softmax"), 2);
    assert_eq!(count_ops(&after, "log_softmax"), 2);
    assert_eq!(count_ops(&after, "exp"), 0);
    assert_snapshot!(before_after(&g, "recognize"));
}

#[test]
fn recognize_softmax_guards() {
    let mut b = Builder::new("not_softmax");
    let x = b.input("x", "f32[4, 10]");
    // normalising over two axes at once is not a one-axis softmax
    let e = b.op(unary(UnaryOp::Exp), &[x]);
    let s = b.op(
        Op::Reduce(Reduce {
            op: ReduceOp::Sum,
            axes: vec![0, 1],
            keepdims: true,
        }),
        &[e],
    );
    let y = b.op(div(), &[e, s]);
    b.output("two_axes", y);
    // dividing by the sum of something else
    let e2 = b.op(unary(UnaryOp::Exp), &[x]);
    let other = b.op(unary(UnaryOp::Abs), &[x]);
    let s2 = b.op(reduce(ReduceOp::Sum, 1), &[other]);
    let y2 = b.op(div(), &[e2, s2]);
    b.output("other_sum", y2);
    let g = b.finish();
    let (after, _) = optimize(&g, "recognize");
    assert_eq!(count_ops(&after, "softmax"), 0);
    assert_snapshot!(before_after(&g, "recognize"));
}

/// `(x - mean) / sqrt(mean((x - mean)^2) + eps)`, with `sq` choosing the square.
fn hand_normalize(
    b: &mut Builder,
    x: lamina::ir::NodeId,
    last: usize,
    pow: bool,
) -> lamina::ir::NodeId {
    let mu = b.op(reduce(ReduceOp::Mean, last), &[x]);
    let d = b.op(sub(), &[x, mu]);
    let sq = if pow {
        let two = b.scalar(2.0);
        b.op(Op::Binary(BinaryOp::Pow), &[d, two])
    } else {
        b.op(mul(), &[d, d])
    };
    let var = b.op(reduce(ReduceOp::Mean, last), &[sq]);
    let eps = b.scalar(1e-5);
    let ve = b.op(add(), &[var, eps]);
    let sd = b.op(unary(UnaryOp::Sqrt), &[ve]);
    b.op(div(), &[d, sd])
}

#[test]
fn recognize_layer_norm_forms() {
    let mut b = Builder::new("layer_norms");
    let x = b.input("x", "f32[batch, seq, 8]");
    let gain = b.param("ln.gain", "f32[8]");
    let bias = b.param("ln.bias", "f32[8]");
    let n = hand_normalize(&mut b, x, 2, true);
    let scaled = b.op(mul(), &[gain, n]);
    let full = b.op(add(), &[scaled, bias]);
    b.output("full", full);
    // bare normalisation, d * d for the square: gain ones, bias zeros
    let y = b.input("y", "f32[batch, 8]");
    let bare = hand_normalize(&mut b, y, 1, false);
    b.output("bare", bare);
    // rsqrt form
    let mu = b.op(reduce(ReduceOp::Mean, 1), &[y]);
    let d = b.op(sub(), &[y, mu]);
    let sq = b.op(mul(), &[d, d]);
    let var = b.op(reduce(ReduceOp::Mean, 1), &[sq]);
    let eps = b.scalar(1e-6);
    let ve = b.op(add(), &[eps, var]);
    let r = b.op(unary(UnaryOp::Rsqrt), &[ve]);
    let nr = b.op(mul(), &[d, r]);
    let scaled_r = b.op(mul(), &[nr, gain]);
    b.output("rsqrt_form", scaled_r);
    let g = b.finish();
    let (after, _) = optimize(&g, "recognize");
    assert_eq!(count_ops(&after, "layer_norm"), 3);
    assert_eq!(count_ops(&after, "mean"), 0);
    let (_, bare_id) = after.outputs.iter().find(|(n, _)| n == "bare").unwrap();
    let operands = after.inputs(*bare_id);
    let values = |i: usize| match &after.node(operands[i]).op {
        Op::Constant(Constant { value }) => value.as_f32().unwrap().to_vec(),
        other => panic!("expected a constant, got {}", other.name()),
    };
    assert_eq!(
        values(1),
        vec![1.0; 8],
        "gain of a bare normalisation is ones"
    );
    assert_eq!(
        values(2),
        vec![0.0; 8],
        "bias of a bare normalisation is zeros"
    );
    assert_snapshot!(before_after(&g, "recognize"));
}

#[test]
fn recognize_layer_norm_guards() {
    let mut b = Builder::new("not_layer_norm");
    let x = b.input("x", "f32[4, 8]");
    // normalising over the first axis is not layer_norm's last axis
    let n0 = hand_normalize(&mut b, x, 0, false);
    b.output("axis0", n0);
    // a [4, 8] "gain" is not a per-feature gain
    let big = b.param("big", "f32[4, 8]");
    let n1 = hand_normalize(&mut b, x, 1, false);
    let s = b.op(mul(), &[n1, big]);
    b.output("big_gain", s);
    // the variance of something other than x - mean
    let mu = b.op(reduce(ReduceOp::Mean, 1), &[x]);
    let d = b.op(sub(), &[x, mu]);
    let sq = b.op(mul(), &[x, x]);
    let var = b.op(reduce(ReduceOp::Mean, 1), &[sq]);
    let sd = b.op(unary(UnaryOp::Sqrt), &[var]);
    let n2 = b.op(div(), &[d, sd]);
    b.output("wrong_variance", n2);
    let g = b.finish();
    let (after, _) = optimize(&g, "recognize");
    // only the bare normalisation inside `big_gain` is a layer norm: the
    // product with the [4, 8] tensor stays a mul
    assert_eq!(count_ops(&after, "layer_norm"), 1);
    assert_eq!(count_ops(&after, "mul"), 3);
    assert_snapshot!(before_after(&g, "recognize"));
}
