//! Constant folding computes its values without the reference interpreter
//! (`src/passes/fold_eval.rs`), so here every op it folds is checked
//! against the interpreter's `eval_node` on generated operands: fixed
//! seeds, shapes with size-1 and odd axes, broadcasting, and the special
//! values (signed zeros, infinities, NaN, subnormals) where f32 rounding
//! and numpy semantics differ most.
//!
//! Tolerance: none. Layout ops copy elements; the arithmetic ops folded
//! are the ones IEEE 754 rounds correctly, which the interpreter's f64
//! evaluation rounded once to f32 also gives, so a folded value must have
//! the interpreter's exact bits (any NaN matching any NaN). The same
//! exactness is what `tests/passes_differential.rs` relies on.

mod passes_support;

use lamina::interp::eval_node;
use lamina::ir::ops::{Cast, Concat, Constant, MatMul, Permute, Reduce, Reshape, Slice};
use lamina::ir::{BinaryOp, DType, Dim, Graph, NodeId, Op, ReduceOp, UnaryOp};
use lamina::tensor::{Tensor, TensorData};
use passes_support::{optimize, Builder};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Values a generated operand draws from besides ordinary numbers.
const SPECIAL: [f32; 9] = [
    0.0,
    -0.0,
    1.0,
    f32::INFINITY,
    f32::NEG_INFINITY,
    f32::NAN,
    1e-40, // subnormal
    3.4e38,
    -1.5e-45,
];

fn generated(rng: &mut ChaCha8Rng, shape: &[usize]) -> Tensor {
    let n = shape.iter().product();
    let values = (0..n)
        .map(|_| {
            if rng.random_bool(0.2) {
                SPECIAL[rng.random_range(0..SPECIAL.len())]
            } else {
                // Wide exponents, so sums and products round.
                let m: f32 = rng.random_range(-1.0..1.0);
                m * 2f32.powi(rng.random_range(-20..20))
            }
        })
        .collect();
    Tensor::f32(shape.to_vec(), values)
}

/// The graph `op(constants...)`, folded; returns the folded value, or
/// `None` if the op was left in place.
fn fold(op: &Op, operands: &[Tensor]) -> (Option<Tensor>, Graph) {
    let mut b = Builder::new("fold");
    let ids: Vec<NodeId> = operands.iter().map(|t| b.constant(t.clone())).collect();
    let y = b.op(op.clone(), &ids);
    b.output("y", y);
    let g = b.finish();
    let (after, _) = optimize(&g, "const-fold");
    let value = match &after.node(after.outputs[0].1).op {
        Op::Constant(Constant { value }) => Some(Tensor::clone(value)),
        _ => None,
    };
    (value, g)
}

fn same_bits(a: &Tensor, b: &Tensor) -> bool {
    if a.shape() != b.shape() || a.dtype() != b.dtype() {
        return false;
    }
    match (a.data(), b.data()) {
        (TensorData::F32(x), TensorData::F32(y)) => x
            .iter()
            .zip(y)
            .all(|(p, q)| p.to_bits() == q.to_bits() || (p.is_nan() && q.is_nan())),
        _ => a == b,
    }
}

/// Folds `op` on `operands` and compares with the interpreter.
fn check(op: &Op, operands: &[Tensor]) {
    let (folded, g) = fold(op, operands);
    let folded = folded.unwrap_or_else(|| {
        panic!(
            "{} on {:?} was not folded",
            op.name(),
            operands.iter().map(Tensor::shape).collect::<Vec<_>>()
        )
    });
    let out_ty = &g.node(g.outputs[0].1).ty;
    let refs: Vec<&Tensor> = operands.iter().collect();
    let oracle = eval_node(op, &refs, out_ty).expect("the interpreter evaluates it");
    assert!(
        same_bits(&folded, &oracle),
        "{} on {:?}:\nfolded {:?}\noracle {:?}",
        op.name(),
        operands,
        folded,
        oracle
    );
}

const SHAPE_PAIRS: [(&[usize], &[usize]); 8] = [
    (&[], &[]),
    (&[1], &[3]),
    (&[7], &[7]),
    (&[5, 1], &[1, 7]),
    (&[2, 3, 5], &[5]),
    (&[], &[3, 4]),
    (&[2, 1, 5], &[3, 1]),
    (&[3, 1, 1], &[1, 1, 1]),
];

#[test]
fn folded_binary_ops_equal_the_interpreter_with_broadcasting() {
    let ops = [
        BinaryOp::Add,
        BinaryOp::Sub,
        BinaryOp::Mul,
        BinaryOp::Div,
        BinaryOp::Max,
        BinaryOp::Min,
    ];
    for (seed, op) in ops.into_iter().enumerate() {
        let mut rng = ChaCha8Rng::seed_from_u64(seed as u64);
        for (a, b) in SHAPE_PAIRS {
            for _ in 0..20 {
                let (x, y) = (generated(&mut rng, a), generated(&mut rng, b));
                check(&Op::Binary(op), &[x.clone(), y.clone()]);
                // Both orders: broadcasting and max/min ties are not symmetric.
                check(&Op::Binary(op), &[y, x]);
            }
        }
    }
}

#[test]
fn folded_unary_ops_equal_the_interpreter() {
    let ops = [UnaryOp::Neg, UnaryOp::Abs, UnaryOp::Sqrt, UnaryOp::Recip];
    for (seed, op) in ops.into_iter().enumerate() {
        let mut rng = ChaCha8Rng::seed_from_u64(100 + seed as u64);
        for shape in [&[][..], &[1], &[9], &[3, 5]] {
            for _ in 0..30 {
                check(&Op::Unary(op), &[generated(&mut rng, shape)]);
            }
        }
    }
}

#[test]
fn folded_layout_ops_equal_the_interpreter() {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let x = generated(&mut rng, &[2, 3, 5]);
    for perm in [
        [0, 1, 2],
        [0, 2, 1],
        [1, 0, 2],
        [1, 2, 0],
        [2, 0, 1],
        [2, 1, 0],
    ] {
        check(
            &Op::Permute(Permute {
                perm: perm.to_vec(),
            }),
            &[x.clone()],
        );
    }
    check(
        &Op::Permute(Permute { perm: vec![1, 0] }),
        &[generated(&mut rng, &[1, 7])],
    );
    for shape in [vec![5, 6], vec![30], vec![1, 30, 1], vec![3, 2, 5]] {
        let shape = shape.into_iter().map(Dim::known).collect();
        check(&Op::Reshape(Reshape { shape }), &[x.clone()]);
    }
    for axis in 0..3 {
        let len = x.shape()[axis];
        for start in 0..len {
            for step in 1..=3 {
                for end in start..=len {
                    let op = Op::Slice(Slice {
                        axis,
                        start,
                        end: Dim::known(end),
                        step,
                    });
                    check(&op, &[x.clone()]);
                }
            }
        }
    }
    for axis in 0..3 {
        let mut other = x.shape().to_vec();
        other[axis] = 1;
        let y = generated(&mut rng, &other);
        other[axis] = 4;
        let z = generated(&mut rng, &other);
        check(&Op::Concat(Concat { axis }), &[x.clone(), y.clone()]);
        check(&Op::Concat(Concat { axis }), &[y, x.clone(), z]);
    }
    let ids = Tensor::i64(vec![2, 3], vec![0, -1, i64::MAX, 5, 1 << 53, 3]);
    check(&Op::Concat(Concat { axis: 1 }), &[ids.clone(), ids.clone()]);
}

#[test]
fn folded_casts_equal_the_interpreter() {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let mut floats = generated(&mut rng, &[40]);
    // Truncation toward zero, saturation and NaN -> 0 happen only with
    // values beyond the integer ranges and fractions near zero.
    floats.as_f32_mut().unwrap()[..6].copy_from_slice(&[2.5, -2.5, 3e9, -3e9, 1e20, -0.7]);
    let ints = Tensor::i64(
        vec![6],
        vec![0, -1, (1 << 53) + 1, i64::MIN, 1 << 40, 3_000_000_000],
    );
    let i32s = Tensor::new(vec![3], TensorData::I32(vec![i32::MIN, 0, 7]));
    let bools = Tensor::new(vec![2], TensorData::Bool(vec![true, false]));
    for to in DType::ALL {
        for x in [&floats, &ints, &i32s, &bools] {
            check(&Op::Cast(Cast { to }), &[x.clone()]);
        }
    }
}

/// Ops whose f32 result depends on how they are computed are not folded:
/// an approximation at compile time would change the model's output.
#[test]
fn ops_outside_the_exact_set_stay_in_the_graph() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let v = generated(&mut rng, &[4]);
    let m = generated(&mut rng, &[2, 2]);
    for (op, operands) in [
        (Op::Unary(UnaryOp::Exp), vec![v.clone()]),
        (Op::Unary(UnaryOp::Tanh), vec![v.clone()]),
        (Op::Unary(UnaryOp::Rsqrt), vec![v.clone()]),
        (Op::Unary(UnaryOp::Relu), vec![v.clone()]),
        (Op::Binary(BinaryOp::Pow), vec![v.clone(), v.clone()]),
        (
            Op::Reduce(Reduce {
                op: ReduceOp::Sum,
                axes: vec![0],
                keepdims: false,
            }),
            vec![v.clone()],
        ),
        (
            Op::MatMul(MatMul {
                transpose_a: false,
                transpose_b: false,
            }),
            vec![m.clone(), m],
        ),
    ] {
        let (folded, _) = fold(&op, &operands);
        assert!(folded.is_none(), "{} was folded", op.name());
    }
}
