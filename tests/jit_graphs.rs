//! Random well-typed graphs, compiled by the JIT executor with and without
//! the optimisation passes, against the interpreter on the original graph.
//!
//! The generator covers every kind of step the executor plans: elementwise
//! chains with numpy broadcasting (scalars, per-feature and per-row
//! partners, lower-rank operands), linear layers (weights in both layouts,
//! computed and activation right operands, bias / activation / residual,
//! hand-built `fused_linear`), batched matmuls with transposes and
//! broadcast batch dims, attention with heads, softmax / log_softmax /
//! layer_norm as ops and written out, reductions over any set of axes,
//! permute / reshape / slice / concat / gather / cast (including the
//! identity cast and casts through bool and i64, which run on the
//! interpreter's ops), and outputs that are inputs or views of them.
//!
//! Also here: GEMM edge shapes through the graph path, and bit-exact
//! agreement of 1 and 2 threads on graphs big enough to run in parallel.

mod jit_support;

use std::collections::HashMap;

use jit_support::{
    compare_outputs, compile_all_passes, compile_plain, same_bits, Builder, Outputs,
};
use lamina::interp;
use lamina::ir::{
    BinaryOp, Bindings, CompareOp, DType, Dim, Float, Graph, LinearEpilogue, NodeId, Op, ReduceOp,
    UnaryOp,
};
use lamina::tensor::{Tensor, TensorData};
use proptest::prelude::*;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const ACTIVATIONS: [UnaryOp; 5] = [
    UnaryOp::Relu,
    UnaryOp::Gelu,
    UnaryOp::GeluTanh,
    UnaryOp::Sigmoid,
    UnaryOp::Tanh,
];
const WIDTHS: [usize; 5] = [1, 3, 5, 8, 17];
/// Rows of the embedding table the `ids` input indexes.
const TABLE_ROWS: usize = 5;

struct Gen {
    b: Builder,
    rng: ChaCha8Rng,
    /// f32 values later ops may read.
    pool: Vec<NodeId>,
    x: NodeId,
    ids: NodeId,
}

fn mm(transpose_a: bool, transpose_b: bool) -> Op {
    Op::MatMul {
        transpose_a,
        transpose_b,
    }
}

impl Gen {
    fn new(seed: u64) -> Gen {
        let mut b = Builder::new("random");
        let x = b.input("x", "f32[batch, 8]");
        let s = b.input("s", "f32[batch, 3, 8]");
        let ids = b.input("ids", "i64[batch, 3]");
        Gen {
            b,
            rng: ChaCha8Rng::seed_from_u64(seed),
            pool: vec![x, s],
            x,
            ids,
        }
    }

    fn shape(&self, id: NodeId) -> Vec<Dim> {
        self.b.ty(id).shape.clone()
    }

    fn known(&self, id: NodeId, axis: usize) -> Option<usize> {
        self.shape(id)[axis].as_known()
    }

    fn last(&self, id: NodeId) -> Option<usize> {
        self.shape(id).last().and_then(|d| d.as_known())
    }

    fn random_tensor(&mut self, shape: Vec<usize>) -> Tensor {
        let n = shape.iter().product();
        Tensor::f32(
            shape,
            (0..n)
                .map(|_| self.rng.random_range(-1.0f32..1.0))
                .collect(),
        )
    }

    fn param(&mut self, shape: &[usize]) -> NodeId {
        let name = format!("p{}", self.b.params.len());
        let value = self.random_tensor(shape.to_vec());
        self.b.param(&name, value)
    }

    fn constant(&mut self, shape: &[usize]) -> NodeId {
        let value = self.random_tensor(shape.to_vec());
        self.b.constant(value)
    }

    fn scalar(&mut self, v: f32) -> NodeId {
        self.b.scalar(v)
    }

    fn op(&mut self, op: Op, inputs: &[NodeId]) -> NodeId {
        self.b.op(op, inputs)
    }

    fn unary(&mut self, u: UnaryOp, x: NodeId) -> NodeId {
        self.op(Op::Unary(u), &[x])
    }

    fn binary(&mut self, op: BinaryOp, x: NodeId, y: NodeId) -> NodeId {
        self.op(Op::Binary(op), &[x, y])
    }

    fn pick(&mut self) -> NodeId {
        // Recent values more often, so chains get long.
        let n = self.pool.len();
        if self.rng.random_bool(0.7) {
            self.pool[n - 1 - self.rng.random_range(0..n.min(3))]
        } else {
            self.pool[self.rng.random_range(0..n)]
        }
    }

    fn pick_where(&mut self, ok: impl Fn(&Gen, NodeId) -> bool) -> Option<NodeId> {
        let first = self.pick();
        if ok(self, first) {
            return Some(first);
        }
        let fits: Vec<NodeId> = self.pool.iter().copied().filter(|&v| ok(self, v)).collect();
        (!fits.is_empty()).then(|| fits[self.rng.random_range(0..fits.len())])
    }

    /// A value of rank 3 with known matrix dims, made from `s` or `x` if
    /// the pool has none.
    fn rank3(&mut self) -> NodeId {
        let found = self.pick_where(|g, v| {
            let s = g.shape(v);
            s.len() == 3 && s[1].as_known().is_some() && s[2].as_known().is_some()
        });
        found.unwrap_or_else(|| {
            let x = self.x;
            self.op(
                Op::Reshape {
                    shape: vec![Dim::symbol("batch"), 2.into(), 4.into()],
                },
                &[x],
            )
        })
    }

    fn keep(&mut self, id: NodeId) {
        self.pool.push(id);
    }

    /// `abs(x) + 1`: keeps log, sqrt, division and pow finite.
    fn positive(&mut self, x: NodeId) -> NodeId {
        let a = self.unary(UnaryOp::Abs, x);
        let one = self.scalar(1.0);
        self.binary(BinaryOp::Add, a, one)
    }

    /// A value `x` broadcasts against: same-shaped pool value, scalar,
    /// per-feature param, per-row column, a trailing-dims param of lower
    /// rank, or a `[1, .., 1, n]` param.
    fn partner(&mut self, x: NodeId) -> NodeId {
        let shape = self.shape(x);
        let rank = shape.len();
        let last = self.last(x);
        match self.rng.random_range(0..6) {
            0 => {
                let same: Vec<NodeId> = self
                    .pool
                    .iter()
                    .copied()
                    .filter(|&p| self.shape(p) == shape)
                    .collect();
                same[self.rng.random_range(0..same.len())]
            }
            1 if last.is_some() => self.param(&[last.unwrap()]),
            2 if rank >= 1 => {
                let col = self.op(
                    Op::Reduce {
                        op: ReduceOp::Mean,
                        axes: vec![rank - 1],
                        keepdims: true,
                    },
                    &[x],
                );
                self.unary(UnaryOp::Tanh, col)
            }
            3 if rank >= 2 && shape[1..].iter().all(|d| d.as_known().is_some()) => {
                let trailing: Vec<usize> =
                    shape[1..].iter().map(|d| d.as_known().unwrap()).collect();
                self.param(&trailing)
            }
            4 if rank >= 2 && last.is_some() => {
                let mut ones = vec![1; rank];
                ones[rank - 1] = last.unwrap();
                self.param(&ones)
            }
            _ => {
                let v = self.rng.random_range(-2.0f32..2.0);
                self.scalar(v)
            }
        }
    }

    fn elementwise(&mut self) {
        let x = self.pick();
        let y = match self.rng.random_range(0..6) {
            0 => {
                let u = [
                    UnaryOp::Neg,
                    UnaryOp::Relu,
                    UnaryOp::Sigmoid,
                    UnaryOp::Tanh,
                    UnaryOp::Gelu,
                    UnaryOp::GeluTanh,
                    UnaryOp::Erf,
                    UnaryOp::Abs,
                    UnaryOp::Exp,
                ][self.rng.random_range(0..9)];
                if u == UnaryOp::Exp {
                    let t = self.unary(UnaryOp::Tanh, x);
                    self.unary(u, t)
                } else {
                    self.unary(u, x)
                }
            }
            1 => {
                let u = [UnaryOp::Log, UnaryOp::Sqrt, UnaryOp::Rsqrt, UnaryOp::Recip]
                    [self.rng.random_range(0..4)];
                let p = self.positive(x);
                self.unary(u, p)
            }
            2 => {
                let p = self.partner(x);
                let op = [
                    BinaryOp::Add,
                    BinaryOp::Sub,
                    BinaryOp::Mul,
                    BinaryOp::Max,
                    BinaryOp::Min,
                ][self.rng.random_range(0..5)];
                if self.rng.random_bool(0.5) {
                    self.binary(op, x, p)
                } else {
                    self.binary(op, p, x)
                }
            }
            3 => {
                let p = self.partner(x);
                let d = self.positive(p);
                self.binary(BinaryOp::Div, x, d)
            }
            4 => {
                let base = self.positive(x);
                let exponent = [0.5f32, 2.0, 3.0, -1.0][self.rng.random_range(0..4)];
                let e = self.scalar(exponent);
                self.binary(BinaryOp::Pow, base, e)
            }
            // where(x > t, x, 0.1 * y) with a threshold independent of x
            // (comparing values equal in exact arithmetic flips on rounding).
            _ => {
                let t = self.rng.random_range(-1.0f32..1.0);
                let t = self.scalar(t);
                let y = self.partner(x);
                let cmp = [CompareOp::Gt, CompareOp::Le, CompareOp::Ne, CompareOp::Lt]
                    [self.rng.random_range(0..4)];
                let c = self.op(Op::Compare(cmp), &[x, t]);
                let slope = self.scalar(0.1);
                let other = self.binary(BinaryOp::Mul, slope, y);
                match self.b.try_op(Op::Where, &[c, x, other]) {
                    Ok(w) => w,
                    // `other` may broadcast wider than `c`: keep it simple.
                    Err(_) => self.op(Op::Where, &[c, x, x]),
                }
            }
        };
        self.keep(y);
    }

    /// `act(x @ w + bias) + residual` with the weight in either layout,
    /// computed, or an activation.
    fn linear(&mut self) {
        let Some(x) = self.pick_where(|g, v| g.shape(v).len() >= 2 && g.last(v).is_some()) else {
            return;
        };
        let k = self.last(x).expect("picked with a known last dim");
        let n = WIDTHS[self.rng.random_range(0..WIDTHS.len())];
        let m = match self.rng.random_range(0..5) {
            0 => {
                let w = self.param(&[k, n]);
                self.op(mm(false, false), &[x, w])
            }
            1 => {
                let w = self.param(&[n, k]);
                self.op(mm(false, true), &[x, w])
            }
            2 => {
                let w = self.param(&[n, k]);
                let wt = self.op(Op::Permute { perm: vec![1, 0] }, &[w]);
                self.op(mm(false, false), &[x, wt])
            }
            // A right operand computed from a weight: a constant once
            // parameters are bound, packed per run without passes.
            3 => {
                let w = self.param(&[k, n]);
                let half = self.scalar(0.5);
                let w = self.binary(BinaryOp::Mul, w, half);
                self.op(mm(false, false), &[x, w])
            }
            _ => {
                let w = self.constant(&[k, n]);
                self.op(mm(false, false), &[x, w])
            }
        };
        let out_shape = self.shape(m);
        let mut y = m;
        if self.rng.random_bool(0.6) {
            let bias = self.param(&[n]);
            y = if self.rng.random_bool(0.5) {
                self.binary(BinaryOp::Add, y, bias)
            } else {
                self.binary(BinaryOp::Add, bias, y)
            };
        }
        if self.rng.random_bool(0.6) {
            let act = ACTIVATIONS[self.rng.random_range(0..ACTIVATIONS.len())];
            y = self.unary(act, y);
        }
        if self.rng.random_bool(0.4) {
            let same: Vec<NodeId> = self
                .pool
                .iter()
                .copied()
                .filter(|&p| self.shape(p) == out_shape)
                .collect();
            if let Some(&r) = same.choose(&mut self.rng) {
                y = self.binary(BinaryOp::Add, r, y);
            }
        }
        if self.rng.random_bool(0.2) {
            self.keep(m);
        }
        self.keep(y);
    }

    /// A `fused_linear` built directly, as the passes would: a weight or an
    /// activation right operand (`x^T x`, computed per run), any epilogue.
    fn fused_linear(&mut self) {
        let Some(a) = self.pick_where(|g, v| g.shape(v).len() >= 2 && g.last(v).is_some()) else {
            return;
        };
        let k = self.last(a).expect("known last dim");
        let transpose_b = self.rng.random_bool(0.5);
        let (b, n) = match self.rng.random_range(0..3) {
            0 => {
                let n = WIDTHS[self.rng.random_range(0..WIDTHS.len())];
                let shape = if transpose_b { [n, k] } else { [k, n] };
                (self.param(&shape), n)
            }
            // [k, k] from the activations: x^T x over a flattened batch.
            _ => {
                let rows = self.shape(a)[..self.shape(a).len() - 1].to_vec();
                let flat = self.op(
                    Op::Reshape {
                        shape: vec![lamina::ir::dim::product(&rows).unwrap(), k.into()],
                    },
                    &[a],
                );
                let gram = self.op(mm(true, false), &[flat, flat]);
                // Scale so the products stay O(1) for any batch.
                let scale = self.scalar(0.25);
                let gram = self.binary(BinaryOp::Mul, gram, scale);
                let gram = self.unary(UnaryOp::Tanh, gram);
                (gram, k)
            }
        };
        let activation = self
            .rng
            .random_bool(0.6)
            .then(|| ACTIVATIONS[self.rng.random_range(0..ACTIVATIONS.len())]);
        let bias = self.rng.random_bool(0.5).then(|| self.param(&[n]));
        let mut out_shape = self.shape(a);
        *out_shape.last_mut().expect("rank >= 2") = n.into();
        let residual = if self.rng.random_bool(0.4) {
            let same: Vec<NodeId> = self
                .pool
                .iter()
                .copied()
                .filter(|&p| self.shape(p) == out_shape)
                .collect();
            same.choose(&mut self.rng).copied()
        } else {
            None
        };
        let mut inputs = vec![a, b];
        inputs.extend(bias);
        inputs.extend(residual);
        let y = self.op(
            Op::FusedLinear {
                transpose_b,
                epilogue: LinearEpilogue {
                    bias: bias.is_some(),
                    activation,
                    residual: residual.is_some(),
                },
            },
            &inputs,
        );
        self.keep(y);
    }

    /// Batched matmuls: `v v^T`, `v^T v`, broadcast weights, attention
    /// over heads.
    fn batched(&mut self) {
        let v = self.rank3();
        let (r, c) = (self.known(v, 1).unwrap(), self.known(v, 2).unwrap());
        let y = match self.rng.random_range(0..6) {
            // scores [batch, r, r] -> softmax -> @ v: back to [batch, r, c]
            0 => {
                let scores = self.op(mm(false, true), &[v, v]);
                let p = self.op(Op::Softmax { axis: 2 }, &[scores]);
                self.op(mm(false, false), &[p, v])
            }
            // v^T v: [batch, c, c], then v @ that
            1 => {
                let g = self.op(mm(true, false), &[v, v]);
                let g = self.unary(UnaryOp::Tanh, g);
                self.op(mm(false, false), &[v, g])
            }
            // a weight broadcast over the batch
            2 => {
                let n = WIDTHS[self.rng.random_range(0..WIDTHS.len())];
                let w = self.param(&[1, c, n]);
                self.op(mm(false, false), &[v, w])
            }
            // transposed left operand against a 2-D weight: [batch, c, n]
            3 => {
                let n = WIDTHS[self.rng.random_range(0..WIDTHS.len())];
                let w = self.param(&[r, n]);
                self.op(mm(true, false), &[v, w])
            }
            // explicit permute instead of a transpose flag, transposed weight
            4 => {
                let vt = self.op(
                    Op::Permute {
                        perm: vec![0, 2, 1],
                    },
                    &[v],
                );
                let w = self.param(&[c, r]);
                self.op(mm(false, true), &[vt, w])
            }
            // attention with two heads
            _ if c % 2 == 0 => {
                let half = c / 2;
                let batch = self.shape(v)[0].clone();
                let heads = |g: &mut Gen, t: NodeId| {
                    let split = g.op(
                        Op::Reshape {
                            shape: vec![batch.clone(), r.into(), 2.into(), half.into()],
                        },
                        &[t],
                    );
                    g.op(
                        Op::Permute {
                            perm: vec![0, 2, 1, 3],
                        },
                        &[split],
                    )
                };
                let wq = self.param(&[c, c]);
                let q = self.op(mm(false, true), &[v, wq]);
                let qh = heads(self, q);
                let kh = heads(self, v);
                let scores = self.op(mm(false, true), &[qh, kh]);
                let scale = self.scalar(1.0 / (half as f32).sqrt());
                let scores = self.binary(BinaryOp::Mul, scores, scale);
                let p = self.op(Op::Softmax { axis: 3 }, &[scores]);
                let ctx = self.op(mm(false, false), &[p, kh]);
                let back = self.op(
                    Op::Permute {
                        perm: vec![0, 2, 1, 3],
                    },
                    &[ctx],
                );
                self.op(
                    Op::Reshape {
                        shape: vec![batch, r.into(), c.into()],
                    },
                    &[back],
                )
            }
            _ => self.op(mm(false, true), &[v, v]),
        };
        self.keep(y);
    }

    fn normalization(&mut self) {
        let x = self.pick();
        let rank = self.shape(x).len();
        if rank == 0 {
            return;
        }
        let last = rank - 1;
        let y = match self.rng.random_range(0..5) {
            0 => self.op(Op::Softmax { axis: last }, &[x]),
            1 => self.op(Op::LogSoftmax { axis: last }, &[x]),
            // over another axis: not a row kernel
            2 => {
                let axis = self.rng.random_range(0..rank);
                if self.rng.random_bool(0.5) {
                    self.op(Op::Softmax { axis }, &[x])
                } else {
                    self.op(Op::LogSoftmax { axis }, &[x])
                }
            }
            // Layer norm amplifies rounding by 1/sqrt(var + eps): compare
            // only on well-spread rows (a fixed spread is added).
            3 if self.last(x).is_some_and(|f| f >= 4) => {
                let f = self.last(x).unwrap();
                let spread: Vec<f32> = (0..f)
                    .map(|i| 2.0 * i as f32 / (f - 1) as f32 - 1.0)
                    .collect();
                let offsets = self.b.constant(Tensor::f32(vec![f], spread));
                let spread_x = self.binary(BinaryOp::Add, x, offsets);
                let gain = self.param(&[f]);
                let bias = self.param(&[f]);
                self.op(
                    Op::LayerNorm {
                        axis: last,
                        eps: Float(1e-5),
                    },
                    &[spread_x, gain, bias],
                )
            }
            // softmax written out, for the passes to recognise
            _ => {
                let reduce = |op| Op::Reduce {
                    op,
                    axes: vec![last],
                    keepdims: true,
                };
                let m = self.op(reduce(ReduceOp::Max), &[x]);
                let d = self.binary(BinaryOp::Sub, x, m);
                let e = self.unary(UnaryOp::Exp, d);
                let s = self.op(reduce(ReduceOp::Sum), &[e]);
                self.binary(BinaryOp::Div, e, s)
            }
        };
        self.keep(y);
    }

    /// A reduction over a random non-empty set of axes.
    fn reduction(&mut self) {
        let x = self.pick();
        let rank = self.shape(x).len();
        if rank == 0 {
            return;
        }
        let mut axes: Vec<usize> = (0..rank).filter(|_| self.rng.random_bool(0.5)).collect();
        if axes.is_empty() {
            axes.push(self.rng.random_range(0..rank));
        }
        let op = [ReduceOp::Sum, ReduceOp::Mean, ReduceOp::Max][self.rng.random_range(0..3)];
        let keepdims = self.rng.random_bool(0.5);
        let r = self.op(Op::Reduce { op, axes, keepdims }, &[x]);
        // Sums over the batch grow with it: bring them back to O(1).
        let r = self.unary(UnaryOp::Tanh, r);
        if self.shape(r).is_empty() {
            // A scalar: use it as a broadcast partner right away.
            let y = self.binary(BinaryOp::Mul, x, r);
            self.keep(y);
        } else {
            self.keep(r);
        }
    }

    fn layout(&mut self) {
        let x = self.pick();
        let shape = self.shape(x);
        let rank = shape.len();
        if rank == 0 {
            return;
        }
        let y = match self.rng.random_range(0..5) {
            0 if rank >= 2 => {
                let mut perm: Vec<usize> = (0..rank).collect();
                perm.shuffle(&mut self.rng);
                self.op(Op::Permute { perm }, &[x])
            }
            // merge the last two dims, or split an even last dim
            1 => {
                let mut to = shape.clone();
                if rank >= 2 && self.rng.random_bool(0.5) {
                    let merged = to[rank - 2].mul(&to[rank - 1]);
                    to.truncate(rank - 2);
                    to.push(merged);
                } else if let Some(f) = self.last(x).filter(|f| f % 2 == 0) {
                    to[rank - 1] = 2.into();
                    to.push((f / 2).into());
                } else {
                    to.push(1.into());
                }
                self.op(Op::Reshape { shape: to }, &[x])
            }
            2 => {
                let axes: Vec<usize> = (0..rank)
                    .filter(|&a| shape[a].as_known().is_some_and(|s| s >= 2))
                    .collect();
                let Some(&axis) = axes.choose(&mut self.rng) else {
                    return;
                };
                let size = shape[axis].as_known().unwrap();
                let start = self.rng.random_range(0..size - 1);
                let end = self.rng.random_range(start + 1..=size);
                let step = self.rng.random_range(1..=3);
                self.op(
                    Op::Slice {
                        axis,
                        start,
                        end: end.into(),
                        step,
                    },
                    &[x],
                )
            }
            // concat with a transformed copy (any axis, the batch too) or
            // with a param of another size along a known axis
            3 => {
                let axis = self.rng.random_range(0..rank);
                match shape[axis].as_known() {
                    Some(_) if self.rng.random_bool(0.5) => {
                        let mut other: Vec<usize> = Vec::new();
                        for (a, d) in shape.iter().enumerate() {
                            match d.as_known() {
                                Some(_) if a == axis => other.push(self.rng.random_range(1..4)),
                                Some(s) => other.push(s),
                                None => return,
                            }
                        }
                        let p = self.param(&other);
                        self.op(Op::Concat { axis }, &[x, p])
                    }
                    _ => {
                        let t = self.unary(UnaryOp::Tanh, x);
                        self.op(Op::Concat { axis }, &[t, x, t])
                    }
                }
            }
            _ => {
                let axes: Vec<usize> = (0..rank)
                    .filter(|&a| shape[a].as_known().is_some())
                    .collect();
                let Some(&axis) = axes.choose(&mut self.rng) else {
                    return;
                };
                let size = shape[axis].as_known().unwrap() as i64;
                let count = self.rng.random_range(1..4);
                let picks: Vec<i64> = (0..count).map(|_| self.rng.random_range(0..size)).collect();
                let ids = if self.rng.random_bool(0.5) {
                    Tensor::i64(vec![count], picks)
                } else {
                    Tensor::new(
                        vec![1, count],
                        TensorData::I32(picks.iter().map(|&v| v as i32).collect()),
                    )
                };
                let ids = self.b.constant(ids);
                self.op(Op::Gather { axis }, &[x, ids])
            }
        };
        self.keep(y);
    }

    /// Embedding lookups and casts.
    fn gather_cast(&mut self) {
        let ids = self.ids;
        let y = match self.rng.random_range(0..5) {
            0 => {
                let f = [4usize, 8][self.rng.random_range(0..2)];
                let table = self.param(&[TABLE_ROWS, f]);
                self.op(Op::Gather { axis: 0 }, &[table, ids])
            }
            1 => {
                let c = self.op(Op::Cast { to: DType::F32 }, &[ids]);
                let s = self.scalar(0.25);
                self.binary(BinaryOp::Mul, c, s)
            }
            // the identity cast of a computed value
            2 => {
                let x = self.pick();
                self.op(Op::Cast { to: DType::F32 }, &[x])
            }
            // through bool
            3 => {
                let x = self.pick();
                let zero = self.scalar(0.0);
                let c = self.op(Op::Compare(CompareOp::Gt), &[x, zero]);
                self.op(Op::Cast { to: DType::F32 }, &[c])
            }
            // through i64 (truncation)
            _ => {
                let x = self.pick();
                let three = self.scalar(3.0);
                let big = self.binary(BinaryOp::Mul, x, three);
                let i = self.op(Op::Cast { to: DType::I64 }, &[big]);
                self.op(Op::Cast { to: DType::F32 }, &[i])
            }
        };
        self.keep(y);
    }

    fn finish(mut self, outputs: usize) -> (Graph, HashMap<String, Tensor>) {
        let last = *self.pool.last().expect("pool is never empty");
        self.b.output("out0", last);
        for i in 1..outputs {
            let v = self.pool[self.rng.random_range(0..self.pool.len())];
            self.b.output(&format!("out{i}"), v);
        }
        // An input, or a view of it, as an output: its value never passes
        // through the arena.
        if self.rng.random_bool(0.2) {
            let x = self.x;
            let view = self.op(
                Op::Reshape {
                    shape: vec![Dim::symbol("batch"), 2.into(), 4.into()],
                },
                &[x],
            );
            let which = if self.rng.random_bool(0.5) { view } else { x };
            self.b.output("view", which);
        }
        self.b.finish()
    }
}

fn generate(seed: u64, recipe: &[u8], outputs: usize) -> (Graph, HashMap<String, Tensor>) {
    let mut g = Gen::new(seed);
    for &step in recipe {
        match step % 9 {
            0 => g.linear(),
            1 => g.elementwise(),
            2 => g.normalization(),
            3 => g.reduction(),
            4 => g.layout(),
            5 => g.gather_cast(),
            6 => g.batched(),
            7 => g.fused_linear(),
            _ => g.elementwise(),
        }
    }
    g.finish(outputs)
}

fn inputs(seed: u64, batch: usize) -> HashMap<String, Tensor> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed);
    let x = jit_support::random_f32(&mut rng, vec![batch, 8], -2.0, 2.0);
    let s = jit_support::random_f32(&mut rng, vec![batch, 3, 8], -2.0, 2.0);
    let ids = jit_support::random_ids(&mut rng, vec![batch, 3], TABLE_ROWS as i64);
    HashMap::from([
        ("x".to_string(), x),
        ("s".to_string(), s),
        ("ids".to_string(), ids),
    ])
}

/// The largest finite magnitude of any f32 value the graph computes.
fn largest_intermediate(
    graph: &Graph,
    params: &HashMap<String, Tensor>,
    feed: &HashMap<String, Tensor>,
) -> f64 {
    let mut probe = graph.clone();
    probe.outputs = probe
        .node_ids()
        .filter(|&id| probe.node(id).ty.dtype == DType::F32)
        .map(|id| (format!("n{}", id.index()), id))
        .collect();
    interp::run(&probe, params, feed, &Bindings::new())
        .expect("the graph runs")
        .iter()
        .flat_map(|(_, t)| t.to_f64_vec())
        .filter(|v| v.is_finite())
        .fold(0.0, |m, v| m.max(v.abs()))
}

fn run(
    model: &lamina::runtime::exec::CompiledModel,
    feed: &HashMap<String, Tensor>,
) -> Result<Outputs, TestCaseError> {
    model
        .run(feed)
        .map_err(|e| TestCaseError::fail(format!("the JIT run fails: {e}")))
}

fn check(seed: u64, recipe: &[u8], outputs: usize, batch: usize) -> Result<(), TestCaseError> {
    let (graph, params) = generate(seed, recipe, outputs);
    let feed = inputs(seed, batch);
    // Rounding differences grow with magnitudes downstream; 1e-5 only
    // means something on well-scaled graphs.
    prop_assume!(largest_intermediate(&graph, &params, &feed) < 16.0);
    let reference = interp::run(&graph, &params, &feed, &Bindings::new())
        .map_err(|e| TestCaseError::fail(format!("the interpreter fails: {e}")))?;
    let show = |g: &Graph| lamina::ir::printer::print(g);
    let plain = run(&compile_plain(&graph, &params, 1), &feed)?;
    compare_outputs("without passes", &plain, &reference, 1e-5)
        .map_err(|e| TestCaseError::fail(format!("{e}\n{}", show(&graph))))?;
    let optimised = compile_all_passes(&graph, &params, 1);
    let fused = run(&optimised, &feed)?;
    compare_outputs("after all passes", &fused, &reference, 1e-5).map_err(|e| {
        TestCaseError::fail(format!(
            "{e}\n{}\noptimised:\n{}",
            show(&graph),
            show(optimised.graph())
        ))
    })?;
    Ok(())
}

/// `default` cases, or `PROPTEST_CASES` when set (for long local runs).
fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(96), max_global_rejects: 10_000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn random_graphs_match_the_interpreter(
        seed in any::<u64>(),
        recipe in prop::collection::vec(any::<u8>(), 1..16),
        outputs in 1usize..4,
        batch in 1usize..4,
    ) {
        check(seed, &recipe, outputs, batch)?;
    }
}

/// Thread counts must not change a bit. Batches of 1500 to 3000 make every kind
/// of step big enough to split across threads (elementwise and row
/// kernels from 32768 elements, GEMMs from 2^18 flops, batched matmuls
/// over their batch entries).
fn check_threads_agree(
    seed: u64,
    recipe: &[u8],
    outputs: usize,
    batch: usize,
) -> Result<(), TestCaseError> {
    let (graph, params) = generate(seed, recipe, outputs);
    let feed = inputs(seed, batch);
    for with_passes in [false, true] {
        let compile = if with_passes {
            compile_all_passes
        } else {
            compile_plain
        };
        let one = run(&compile(&graph, &params, 1), &feed)?;
        let two = run(&compile(&graph, &params, 2), &feed)?;
        same_bits(
            &format!("passes: {with_passes}, 1 vs 2 threads"),
            &one,
            &two,
        )
        .map_err(|e| TestCaseError::fail(format!("{e}\n{}", lamina::ir::printer::print(&graph))))?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(12), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn random_graphs_give_the_same_bits_on_1_and_2_threads(
        seed in any::<u64>(),
        recipe in prop::collection::vec(any::<u8>(), 4..16),
        outputs in 1usize..4,
        batch in 1500usize..3000,
    ) {
        check_threads_agree(seed, &recipe, outputs, batch)?;
    }
}

/// Every kind of step shows up over a fixed set of seeds, so the property
/// above does exercise them.
#[test]
fn the_generator_reaches_every_op() {
    let mut seen: HashMap<&'static str, usize> = HashMap::new();
    for seed in 0..120u64 {
        let recipe: Vec<u8> = (0..12)
            .map(|i| (seed as u8).wrapping_mul(37).wrapping_add(i * 5))
            .collect();
        let (graph, _) = generate(seed, &recipe, 2);
        for id in graph.node_ids() {
            *seen.entry(graph.node(id).op.name()).or_default() += 1;
        }
    }
    for op in [
        "matmul",
        "fused_linear",
        "softmax",
        "log_softmax",
        "layer_norm",
        "sum",
        "mean",
        "max",
        "permute",
        "reshape",
        "slice",
        "concat",
        "gather",
        "cast",
        "where",
        "gt",
        "pow",
        "div",
    ] {
        assert!(
            seen.contains_key(op),
            "no generated graph has `{op}`: {seen:?}"
        );
    }
}

/// Every GEMM form the executor plans, on one `m x k @ k x n` shape:
/// weights (packed once) in both layouts with and without an epilogue,
/// activation right operands (packed per run) in both layouts, a
/// transposed left operand, rank-3 left operands (M folds the batch), and
/// batched matmuls with transposes.
fn gemm_graph(k: usize, n: usize, rng: &mut ChaCha8Rng) -> (Graph, HashMap<String, Tensor>) {
    let mut b = Builder::new("gemm");
    let a = b.input("a", &format!("f32[m, {k}]"));
    let at = b.input("at", &format!("f32[{k}, m]"));
    let act_b = b.input("b", &format!("f32[{k}, {n}]"));
    let act_bt = b.input("bt", &format!("f32[{n}, {k}]"));
    let a3 = b.input("a3", &format!("f32[2, m, {k}]"));
    let at3 = b.input("at3", &format!("f32[2, {k}, m]"));
    let bt3 = b.input("bt3", &format!("f32[2, {n}, {k}]"));
    let w = b.param("w", jit_support::random_f32(rng, vec![k, n], -1.0, 1.0));
    let wt = b.param("wt", jit_support::random_f32(rng, vec![n, k], -1.0, 1.0));
    let bias = b.param("bias", jit_support::random_f32(rng, vec![n], -1.0, 1.0));
    let fused = |activation, bias: bool, residual: bool, transpose_b| Op::FusedLinear {
        transpose_b,
        epilogue: LinearEpilogue {
            bias,
            activation,
            residual,
        },
    };
    let plain = b.op(mm(false, false), &[a, w]);
    b.output("weight", plain);
    let torch = b.op(
        fused(Some(UnaryOp::Gelu), true, true, true),
        &[a, wt, bias, plain],
    );
    b.output("weight_t_bias_gelu_residual", torch);
    let o = b.op(mm(false, false), &[a, act_b]);
    b.output("activation", o);
    let o = b.op(mm(false, true), &[a, act_bt]);
    b.output("activation_t", o);
    let o = b.op(mm(true, false), &[at, w]);
    b.output("transposed_a", o);
    let rank3 = b.op(mm(false, false), &[a3, w]);
    b.output("rank3_weight", rank3);
    // (The epilogue of the other fused layer: one more kernel set costs
    // compile time and covers nothing new.)
    let o = b.op(
        fused(Some(UnaryOp::Gelu), true, true, false),
        &[a3, act_b, bias, rank3],
    );
    b.output("rank3_activation_bias_gelu_residual", o);
    let o = b.op(mm(false, true), &[a3, bt3]);
    b.output("batched_t", o);
    let o = b.op(mm(true, false), &[at3, act_b]);
    b.output("batched_transposed_a", o);
    b.finish()
}

fn gemm_inputs(m: usize, k: usize, n: usize, rng: &mut ChaCha8Rng) -> HashMap<String, Tensor> {
    let mut t = |shape: Vec<usize>| jit_support::random_f32(rng, shape, -1.0, 1.0);
    HashMap::from([
        ("a".to_string(), t(vec![m, k])),
        ("at".to_string(), t(vec![k, m])),
        ("b".to_string(), t(vec![k, n])),
        ("bt".to_string(), t(vec![n, k])),
        ("a3".to_string(), t(vec![2, m, k])),
        ("at3".to_string(), t(vec![2, k, m])),
        ("bt3".to_string(), t(vec![2, n, k])),
    ])
}

/// m, n and k over {1, 3, 17, 127, 1000}: every combination up to 2.2M
/// multiply-adds, and two large ones with every size at 1000 somewhere.
/// Accumulating K = 1000 in f32 is a long reduction: 1e-4.
#[test]
fn gemm_edge_shapes_match_the_interpreter() {
    const SIZES: [usize; 5] = [1, 3, 17, 127, 1000];
    let mut rng = jit_support::rng(0x6e33);
    let mut failures = Vec::new();
    let started = std::time::Instant::now();
    for k in SIZES {
        for n in SIZES {
            let ms: Vec<usize> = SIZES
                .into_iter()
                .filter(|&m| {
                    m * n * k <= 2_200_000
                        || (m, n, k) == (1000, 1000, 17)
                        || (m, n, k) == (17, 1000, 1000)
                })
                .collect();
            if ms.is_empty() {
                continue;
            }
            let (graph, params) = gemm_graph(k, n, &mut rng);
            let single = compile_plain(&graph, &params, 1);
            let double = compile_plain(&graph, &params, 2);
            for m in ms {
                let feed = gemm_inputs(m, k, n, &mut rng);
                let reference = interp::run(&graph, &params, &feed, &Bindings::new())
                    .expect("interpreter runs");
                let rtol = if k > 256 { 1e-4 } else { 1e-5 };
                let what = format!("m={m} n={n} k={k}");
                let ours = single.run(&feed).unwrap_or_else(|e| panic!("{what}: {e}"));
                if let Err(e) = compare_outputs(&what, &ours, &reference, rtol) {
                    failures.push(e);
                }
                // Big enough to split across threads: must give the same bits.
                if 2 * m * n * k >= 1 << 20 {
                    let theirs = double.run(&feed).unwrap_or_else(|e| panic!("{what}: {e}"));
                    if let Err(e) = same_bits(&format!("{what}: 1 vs 2 threads"), &ours, &theirs) {
                        failures.push(e);
                    }
                }
            }
        }
    }
    eprintln!("gemm shapes: {:.1?}", started.elapsed());
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
