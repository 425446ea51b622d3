//! The pass manager: order, fixpoint, step limit, statistics, and the
//! checks it makes after every pass.

mod passes_support;

use insta::assert_snapshot;
use lamina::ir::ops::{Cast, MatMul, Reduce};
use lamina::ir::verify::verify;
use lamina::ir::{BinaryOp, DType, Graph, Op, UnaryOp};
use lamina::passes::{Pass, PassContext, PassError, PassManager, Steps};
use passes_support::{count_ops, optimize, Builder};

/// A two-layer MLP as lowering writes it: `relu(x @ w1 + b1) @ w2 + b2`,
/// then softmax written by hand, with duplicate literals.
fn mlp() -> Graph {
    let mut b = Builder::new("mlp");
    let x = b.input("x", "f32[batch, 64]");
    let w1 = b.param("fc1.weight", "f32[64, 32]");
    let b1 = b.param("fc1.bias", "f32[32]");
    let w2 = b.param("fc2.weight", "f32[32, 10]");
    let b2 = b.param("fc2.bias", "f32[10]");
    let mm = Op::MatMul(MatMul {
        transpose_a: false,
        transpose_b: false,
    });
    let m1 = b.op(mm.clone(), &[x, w1]);
    let a1 = b.op(Op::Binary(BinaryOp::Add), &[m1, b1]);
    let h = b.op(Op::Unary(UnaryOp::Relu), &[a1]);
    let m2 = b.op(mm, &[h, w2]);
    let logits = b.op(Op::Binary(BinaryOp::Add), &[m2, b2]);
    let one = b.scalar(1.0);
    let scaled = b.op(Op::Binary(BinaryOp::Mul), &[logits, one]);
    let max = b.op(
        Op::Reduce(Reduce {
            op: lamina::ir::ReduceOp::Max,
            axes: vec![1],
            keepdims: true,
        }),
        &[scaled],
    );
    let d = b.op(Op::Binary(BinaryOp::Sub), &[scaled, max]);
    let e = b.op(Op::Unary(UnaryOp::Exp), &[d]);
    let s = b.op(
        Op::Reduce(Reduce {
            op: lamina::ir::ReduceOp::Sum,
            axes: vec![1],
            keepdims: true,
        }),
        &[e],
    );
    let p = b.op(Op::Binary(BinaryOp::Div), &[e, s]);
    b.output("probs", p);
    b.finish()
}

#[test]
fn all_passes_fuse_the_mlp_and_report_what_changed() {
    let g = mlp();
    let (after, report) = optimize(&g, "all");
    assert_eq!(count_ops(&after, "fused_linear"), 2);
    assert_eq!(count_ops(&after, "softmax"), 1);
    assert_eq!(
        after.node_count(),
        8,
        "x, 4 params, 2 fused layers, softmax"
    );
    assert!(report.reached_fixpoint && !report.stopped_at_limit);
    assert_eq!(report.nodes_before, g.node_count());
    assert_eq!(report.nodes_after, after.node_count());
    assert_snapshot!(format!("{}\n{report}", lamina::ir::printer::print(&after)));
}

#[test]
fn a_second_run_changes_nothing() {
    let (once, _) = optimize(&mlp(), "all");
    let (twice, report) = optimize(&once, "all");
    assert!(report.steps.is_empty(), "{report}");
    assert_eq!(
        lamina::ir::printer::print(&once),
        lamina::ir::printer::print(&twice)
    );
}

#[test]
fn passes_run_in_the_order_given() {
    let g = mlp();
    let (linear_first, _) = optimize(&g, "fuse-linear,fuse-elementwise");
    let (elementwise_first, _) = optimize(&g, "fuse-elementwise,fuse-linear");
    assert_eq!(count_ops(&linear_first, "fused_linear"), 2);
    // Elementwise fusion takes the bias adds (and the relu) first, leaving
    // the matmuls bare.
    assert_eq!(count_ops(&elementwise_first, "fused_linear"), 0);
    assert_eq!(count_ops(&elementwise_first, "matmul"), 2);
}

#[test]
fn the_step_limit_stops_after_exactly_n_rewrites() {
    let g = mlp();
    let (_, full) = optimize(&g, "all");
    let total = full.steps.len();
    assert!(total >= 4, "the MLP needs several rewrites, got {total}");
    for limit in 0..=total {
        let mut h = g.clone();
        let report = PassManager::all()
            .run(&mut h, &PassContext::default(), Some(limit))
            .expect("passes run");
        assert_eq!(report.steps.len(), limit);
        assert_eq!(
            report.steps[..],
            full.steps[..limit],
            "the same rewrites in the same order"
        );
        assert!(
            report.stopped_at_limit,
            "a run cut at {limit} of {total} rewrites says so"
        );
        verify(&h).expect("every prefix of the rewrites leaves a valid graph");
    }
}

#[test]
fn the_report_names_the_last_step_when_stopped() {
    let mut h = mlp();
    let report = PassManager::all()
        .run(&mut h, &PassContext::default(), Some(2))
        .unwrap();
    let text = report.render(|_| "HERE".to_string());
    assert!(text.contains("stopped at the step limit"), "{text}");
    assert!(text.contains("last step: #2 recognize: softmax"), "{text}");
}

#[test]
fn pass_lists_are_checked() {
    assert!(matches!(
        PassManager::from_spec("dce,fuse-everything"),
        Err(PassError::UnknownPass { name, .. }) if name == "fuse-everything"
    ));
    assert!(matches!(
        PassManager::from_spec(" , "),
        Err(PassError::EmptyPassList { .. })
    ));
    assert_eq!(
        PassManager::from_spec("cse, dce").unwrap().names(),
        vec!["cse", "dce"]
    );
    assert_eq!(
        PassManager::from_spec("all").unwrap().names(),
        lamina::passes::pass_names()
    );
}

/// A broken pass: changes an output's dtype.
struct Recast;

impl Pass for Recast {
    fn name(&self) -> &'static str {
        "recast"
    }
    fn description(&self) -> &'static str {
        "casts the first output to i64"
    }
    fn run(
        &self,
        graph: &mut Graph,
        _cx: &PassContext<'_>,
        steps: &mut Steps,
    ) -> Result<(), PassError> {
        if !steps.take("recast", None) {
            return Ok(());
        }
        let (_, out) = graph.outputs[0].clone();
        let mut ty = graph.node(out).ty.clone();
        ty.dtype = DType::I64;
        let cast = graph.add_node(Op::Cast(Cast { to: DType::I64 }), &[out], ty, None);
        graph.outputs[0].1 = cast;
        Ok(())
    }
}

/// A broken pass: records a wrong type on a node.
struct Mistype;

impl Pass for Mistype {
    fn name(&self) -> &'static str {
        "mistype"
    }
    fn description(&self) -> &'static str {
        "records a wrong shape"
    }
    fn run(
        &self,
        graph: &mut Graph,
        _cx: &PassContext<'_>,
        steps: &mut Steps,
    ) -> Result<(), PassError> {
        if !steps.take("mistype", None) {
            return Ok(());
        }
        let id = graph
            .node_ids()
            .find(|&id| matches!(graph.node(id).op, Op::Unary(_)))
            .expect("a unary node");
        graph.node_mut(id).ty.shape.push(2.into());
        Ok(())
    }
}

#[test]
fn the_manager_catches_passes_that_break_the_graph() {
    let mut g = mlp();
    let err = PassManager::new(vec![Box::new(Recast)])
        .run(&mut g, &PassContext::default(), None)
        .unwrap_err();
    assert!(
        matches!(&err, PassError::SignatureChanged { pass: "recast", what } if what.contains("probs: i64[batch, 10]")),
        "{err}"
    );
    let mut g = mlp();
    let err = PassManager::new(vec![Box::new(Mistype)])
        .run(&mut g, &PassContext::default(), None)
        .unwrap_err();
    assert!(
        matches!(
            err,
            PassError::Verify {
                pass: "mistype",
                ..
            }
        ),
        "{err}"
    );
}
