//! The random-graph generator shared by `tests/jit_graphs.rs` (the JIT
//! against the interpreter) and `tests/passes_differential.rs` (the
//! interpreter before and after the passes): random well-typed graphs with
//! parameter values, and inputs for them.
//!
//! Step kinds cover every kind of step the executor plans (elementwise
//! chains with numpy broadcasting, linear layers in every layout and
//! epilogue, hand-built `fused_linear`, batched matmuls and attention,
//! softmax / log_softmax / layer_norm as ops and written out, reductions
//! over any axes, permute / reshape / slice / concat / gather / cast) and
//! what the passes rewrite, with their traps: lookalike linear layers that
//! must not fuse, identities, duplicates for CSE, constant subgraphs,
//! layout round trips, convolution layers (with batch norms, biases,
//! activations, residuals and their lookalikes). Recipes are byte strings; each byte picks a step.
//!
//! Values stay of order 1 by construction where it is cheap (tanh after
//! sums, `abs(x) + 1` under log / sqrt / division); tests that compare at
//! 1e-5 also skip graphs whose intermediates grow (`largest_intermediate`).

use lamina::ir::ops::batch_norm::BatchNorm;
use lamina::ir::ops::window::{DataLayout, Padding2d, Window2d};
use lamina::ir::ops::{
    Cast, Concat, Conv2d, FusedLinear, Gather, LayerNorm, LogSoftmax, MatMul, Permute, Reduce,
    Reshape, Slice, Softmax,
};
use std::collections::HashMap;

use lamina::interp;
use lamina::ir::{
    BinaryOp, Bindings, CompareOp, DType, Dim, Float, Graph, LinearEpilogue, NodeId, Op, ReduceOp,
    UnaryOp,
};
use lamina::tensor::{Tensor, TensorData};
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::Builder;

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
/// Activations a convolution's epilogue may take (`fuse-conv`).
const CONV_ACTIVATIONS: [UnaryOp; 5] = [
    UnaryOp::Relu,
    UnaryOp::Relu6,
    UnaryOp::HardSwish,
    UnaryOp::HardSigmoid,
    UnaryOp::Sigmoid,
];
/// NCHW views of `s: [batch, 3, 8]` a convolution step starts from when
/// the pool has no image yet.
const IMAGE_VIEWS: [[usize; 3]; 4] = [[3, 2, 4], [1, 4, 6], [2, 3, 4], [6, 2, 2]];
/// Step kinds a recipe byte picks from (elementwise has two of them).
const STEP_KINDS: u8 = 14;

struct Gen {
    b: Builder,
    rng: ChaCha8Rng,
    /// f32 values later ops may read.
    pool: Vec<NodeId>,
    x: NodeId,
    s: NodeId,
    ids: NodeId,
}

pub fn mm(transpose_a: bool, transpose_b: bool) -> Op {
    Op::MatMul(MatMul {
        transpose_a,
        transpose_b,
    })
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
            s,
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
                Op::Reshape(Reshape {
                    shape: vec![Dim::symbol("batch"), 2.into(), 4.into()],
                }),
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
                    Op::Reduce(Reduce {
                        op: ReduceOp::Mean,
                        axes: vec![rank - 1],
                        keepdims: true,
                    }),
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
                    UnaryOp::Sin,
                    UnaryOp::Cos,
                    UnaryOp::Relu6,
                    UnaryOp::HardSigmoid,
                    UnaryOp::HardSwish,
                ][self.rng.random_range(0..14)];
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
                let wt = self.op(Op::Permute(Permute { perm: vec![1, 0] }), &[w]);
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
                    Op::Reshape(Reshape {
                        shape: vec![lamina::ir::dim::product(&rows).unwrap(), k.into()],
                    }),
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
            Op::FusedLinear(FusedLinear {
                transpose_b,
                epilogue: LinearEpilogue {
                    bias: bias.is_some(),
                    activation,
                    residual: residual.is_some(),
                },
            }),
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
                let p = self.op(Op::Softmax(Softmax { axis: 2 }), &[scores]);
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
                    Op::Permute(Permute {
                        perm: vec![0, 2, 1],
                    }),
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
                        Op::Reshape(Reshape {
                            shape: vec![batch.clone(), r.into(), 2.into(), half.into()],
                        }),
                        &[t],
                    );
                    g.op(
                        Op::Permute(Permute {
                            perm: vec![0, 2, 1, 3],
                        }),
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
                let p = self.op(Op::Softmax(Softmax { axis: 3 }), &[scores]);
                let ctx = self.op(mm(false, false), &[p, kh]);
                let back = self.op(
                    Op::Permute(Permute {
                        perm: vec![0, 2, 1, 3],
                    }),
                    &[ctx],
                );
                self.op(
                    Op::Reshape(Reshape {
                        shape: vec![batch, r.into(), c.into()],
                    }),
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
            0 => self.op(Op::Softmax(Softmax { axis: last }), &[x]),
            1 => self.op(Op::LogSoftmax(LogSoftmax { axis: last }), &[x]),
            // over another axis: not a row kernel
            2 => {
                let axis = self.rng.random_range(0..rank);
                if self.rng.random_bool(0.5) {
                    self.op(Op::Softmax(Softmax { axis }), &[x])
                } else {
                    self.op(Op::LogSoftmax(LogSoftmax { axis }), &[x])
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
                    Op::LayerNorm(LayerNorm {
                        axis: last,
                        eps: Float(1e-5),
                    }),
                    &[spread_x, gain, bias],
                )
            }
            // softmax written out, for the passes to recognise
            _ => {
                let reduce = |op| {
                    Op::Reduce(Reduce {
                        op,
                        axes: vec![last],
                        keepdims: true,
                    })
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
        let r = self.op(Op::Reduce(Reduce { op, axes, keepdims }), &[x]);
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
                self.op(Op::Permute(Permute { perm }), &[x])
            }
            // merge the last two dims, or split an even last dim
            1 => {
                let mut to = shape.clone();
                if rank >= 2 && self.rng.random_bool(0.5) {
                    let merged = to[rank - 2].checked_mul(&to[rank - 1]).unwrap();
                    to.truncate(rank - 2);
                    to.push(merged);
                } else if let Some(f) = self.last(x).filter(|f| f % 2 == 0) {
                    to[rank - 1] = 2.into();
                    to.push((f / 2).into());
                } else {
                    to.push(1.into());
                }
                self.op(Op::Reshape(Reshape { shape: to }), &[x])
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
                    Op::Slice(Slice {
                        axis,
                        start,
                        end: end.into(),
                        step,
                    }),
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
                        self.op(Op::Concat(Concat { axis }), &[x, p])
                    }
                    _ => {
                        let t = self.unary(UnaryOp::Tanh, x);
                        self.op(Op::Concat(Concat { axis }), &[t, x, t])
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
                self.op(Op::Gather(Gather { axis }), &[x, ids])
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
                self.op(Op::Gather(Gather { axis: 0 }), &[table, ids])
            }
            1 => {
                let c = self.op(Op::Cast(Cast { to: DType::F32 }), &[ids]);
                let s = self.scalar(0.25);
                self.binary(BinaryOp::Mul, c, s)
            }
            // the identity cast of a computed value
            2 => {
                let x = self.pick();
                self.op(Op::Cast(Cast { to: DType::F32 }), &[x])
            }
            // through bool
            3 => {
                let x = self.pick();
                let zero = self.scalar(0.0);
                let c = self.op(Op::Compare(CompareOp::Gt), &[x, zero]);
                self.op(Op::Cast(Cast { to: DType::F32 }), &[c])
            }
            // through i64 (truncation)
            _ => {
                let x = self.pick();
                let three = self.scalar(3.0);
                let big = self.binary(BinaryOp::Mul, x, three);
                let i = self.op(Op::Cast(Cast { to: DType::I64 }), &[big]);
                self.op(Op::Cast(Cast { to: DType::F32 }), &[i])
            }
        };
        self.keep(y);
    }

    /// Linear layers the passes must not fuse, or fuse only in part: a
    /// weight broadcast over the batch, `softmax(x x^T) x` (activation
    /// right operands), a computed bias, a `[1, n]` row that is not a bias.
    fn linear_lookalike(&mut self) {
        let Some(x) = self.pick_where(|g, v| g.shape(v).len() >= 2 && g.last(v).is_some()) else {
            return;
        };
        let k = self.last(x).expect("picked with a known last dim");
        let n = WIDTHS[self.rng.random_range(0..WIDTHS.len())];
        let rank = self.shape(x).len();
        let m = match self.rng.random_range(0..3) {
            0 if rank == 3 => {
                let w = self.param(&[1, k, n]);
                self.op(mm(false, false), &[x, w])
            }
            1 if rank == 2 => {
                let shape = self.shape(x);
                let same: Vec<NodeId> = self
                    .pool
                    .iter()
                    .copied()
                    .filter(|&p| self.shape(p) == shape)
                    .collect();
                let y = same.choose(&mut self.rng).copied().unwrap_or(x);
                let yt = self.op(Op::Permute(Permute { perm: vec![1, 0] }), &[y]);
                let scores = self.op(mm(false, false), &[x, yt]);
                // [batch, batch] has no known last dim: normalise and bring
                // it back to features.
                let p = self.op(Op::Softmax(Softmax { axis: 1 }), &[scores]);
                self.op(mm(false, false), &[p, x])
            }
            _ => {
                let w = self.param(&[k, n]);
                self.op(mm(false, false), &[x, w])
            }
        };
        let n = self.last(m).expect("a known last dim");
        let mut y = if self.rng.random_bool(0.5) {
            let p = self.param(&[n]);
            let two = self.scalar(2.0);
            let bias = self.binary(BinaryOp::Mul, p, two);
            self.binary(BinaryOp::Add, m, bias)
        } else {
            let row = self.param(&[1, n]);
            self.binary(BinaryOp::Add, m, row)
        };
        if self.rng.random_bool(0.5) {
            let act = ACTIVATIONS[self.rng.random_range(0..ACTIVATIONS.len())];
            y = self.unary(act, y);
        }
        self.keep(y);
    }

    /// What simplify, CSE and constant folding rewrite: identities
    /// (`--(0 + x * 1) / c`), duplicate subtrees, a constant subgraph.
    fn rewrite_traps(&mut self) {
        let Some(x) = self.pick_where(|g, v| g.last(v).is_some()) else {
            return;
        };
        let y = match self.rng.random_range(0..3) {
            0 => {
                let one = self.scalar(1.0);
                let zero = self.scalar(0.0);
                let a = self.binary(BinaryOp::Mul, x, one);
                let b = self.binary(BinaryOp::Add, zero, a);
                let n1 = self.unary(UnaryOp::Neg, b);
                let n2 = self.unary(UnaryOp::Neg, n1);
                let divisor = self.rng.random_range(0.5f32..4.0);
                let c = self.scalar(divisor);
                self.binary(BinaryOp::Div, n2, c)
            }
            1 => {
                let a = self.unary(UnaryOp::Sigmoid, x);
                let b = self.unary(UnaryOp::Sigmoid, x);
                let two = self.scalar(2.0);
                let two_again = self.scalar(2.0);
                let a2 = self.binary(BinaryOp::Mul, a, two);
                let b2 = self.binary(BinaryOp::Mul, two_again, b);
                self.binary(BinaryOp::Sub, a2, b2)
            }
            _ => {
                let n = self.last(x).expect("picked with a known last dim");
                let c1 = self.constant(&[n]);
                let s = self.scalar(0.5);
                let c2 = self.binary(BinaryOp::Mul, c1, s);
                let c3 = self.unary(UnaryOp::Exp, c2);
                self.binary(BinaryOp::Add, x, c3)
            }
        };
        self.keep(y);
    }

    /// log_softmax and layer_norm written out in f32 steps, for the passes
    /// to recognise (softmax written out is in `normalization`).
    fn written_norms(&mut self) {
        let Some(x) = self.pick_where(|g, v| g.last(v).is_some()) else {
            return;
        };
        let f = self.last(x).expect("picked with a known last dim");
        let axis = self.shape(x).len() - 1;
        let reduce = |op| {
            Op::Reduce(Reduce {
                op,
                axes: vec![axis],
                keepdims: true,
            })
        };
        let y = if self.rng.random_bool(0.5) || f < 4 {
            let m = self.op(reduce(ReduceOp::Max), &[x]);
            let d = self.binary(BinaryOp::Sub, x, m);
            let e = self.unary(UnaryOp::Exp, d);
            let s = self.op(reduce(ReduceOp::Sum), &[e]);
            let l = self.unary(UnaryOp::Log, s);
            self.binary(BinaryOp::Sub, d, l)
        } else {
            // Layer norm amplifies rounding by 1/sqrt(var + eps): only on
            // rows made well-spread by a fixed offset.
            let spread: Vec<f32> = (0..f)
                .map(|i| 2.0 * i as f32 / (f - 1) as f32 - 1.0)
                .collect();
            let offsets = self.b.constant(Tensor::f32(vec![f], spread));
            let x = self.binary(BinaryOp::Add, x, offsets);
            let mu = self.op(reduce(ReduceOp::Mean), &[x]);
            let d = self.binary(BinaryOp::Sub, x, mu);
            let sq = self.binary(BinaryOp::Mul, d, d);
            let var = self.op(reduce(ReduceOp::Mean), &[sq]);
            let eps = self.scalar(1e-5);
            let ve = self.binary(BinaryOp::Add, var, eps);
            let sd = self.unary(UnaryOp::Sqrt, ve);
            let n = self.binary(BinaryOp::Div, d, sd);
            let g = self.param(&[f]);
            let b = self.param(&[f]);
            let scaled = self.binary(BinaryOp::Mul, n, g);
            self.binary(BinaryOp::Add, scaled, b)
        };
        self.keep(y);
    }

    /// Layout round trips simplify removes: the last dim split and merged
    /// back, a transpose undone after an elementwise op, a permute that
    /// moves only a unit axis.
    fn layout_round_trip(&mut self) {
        let Some(x) = self.pick_where(|g, v| g.last(v).is_some() && !g.shape(v).is_empty()) else {
            return;
        };
        let shape = self.shape(x);
        let rank = shape.len();
        let f = self.last(x).expect("picked with a known last dim");
        let y = match self.rng.random_range(0..3) {
            0 if f.is_multiple_of(2) => {
                let mut split = shape[..rank - 1].to_vec();
                split.push(2.into());
                split.push((f / 2).into());
                let r = self.op(Op::Reshape(Reshape { shape: split }), &[x]);
                self.op(
                    Op::Reshape(Reshape {
                        shape: shape.clone(),
                    }),
                    &[r],
                )
            }
            1 if rank >= 2 => {
                let mut perm: Vec<usize> = (0..rank).collect();
                perm.swap(rank - 2, rank - 1);
                let t = self.op(Op::Permute(Permute { perm: perm.clone() }), &[x]);
                let u = self.unary(UnaryOp::Tanh, t);
                self.op(Op::Permute(Permute { perm }), &[u])
            }
            _ => {
                let mut unit = shape.clone();
                unit.insert(rank - 1, 1.into());
                let r = self.op(Op::Reshape(Reshape { shape: unit }), &[x]);
                let mut perm: Vec<usize> = (0..=rank).collect();
                perm.swap(rank - 1, rank);
                let p = self.op(Op::Permute(Permute { perm }), &[r]);
                self.op(
                    Op::Reshape(Reshape {
                        shape: shape.clone(),
                    }),
                    &[p],
                )
            }
        };
        self.keep(y);
    }

    /// An NCHW value with known channels, height and width: one from the
    /// pool, or a view of `s`.
    fn image(&mut self) -> NodeId {
        let found = self.pick_where(|g, v| {
            let s = g.shape(v);
            s.len() == 4 && s[1..].iter().all(|d| d.as_known().is_some())
        });
        found.unwrap_or_else(|| {
            let [c, h, w] = IMAGE_VIEWS[self.rng.random_range(0..IMAGE_VIEWS.len())];
            let s = self.s;
            self.op(
                Op::Reshape(Reshape {
                    shape: vec![Dim::symbol("batch"), c.into(), h.into(), w.into()],
                }),
                &[s],
            )
        })
    }

    /// A convolution layer as models write it and `fold-batch-norm` and
    /// `fuse-conv` rewrite it: `conv2d` with any kernel, stride, dilation,
    /// padding and groups (depthwise included), its own bias or one added
    /// per channel, a batch norm, an activation, a residual; and the
    /// lookalikes those passes must leave (a `[C]` add that broadcasts along
    /// the width, an intermediate kept as an output).
    fn conv(&mut self) {
        let x = self.image();
        let [c, h, w] = [1, 2, 3].map(|axis| self.known(x, axis).expect("known NCHW"));
        // One group, or depthwise (every channel its own group).
        let groups = if self.rng.random_bool(0.5) { 1 } else { c };
        let out_per_group = *[1usize, 2].choose(&mut self.rng).expect("non-empty");
        let out_channels = if groups == c && self.rng.random_bool(0.5) {
            c
        } else {
            groups * out_per_group
        };
        let (kh, kw) = (self.rng.random_range(1..=3), self.rng.random_range(1..=3));
        let stride = [self.rng.random_range(1..=2), self.rng.random_range(1..=2)];
        let dilation = [self.rng.random_range(1..=2), self.rng.random_range(1..=2)];
        let padding = if self.rng.random_bool(0.3) {
            Padding2d::Same
        } else {
            let mut side = || self.rng.random_range(0..=2usize);
            let (top, left, bottom, right) = (side(), side(), side(), side());
            Padding2d::Explicit {
                top,
                left,
                bottom,
                right,
            }
        };
        // Explicit padding must leave room for the dilated window.
        if let Padding2d::Explicit {
            top,
            left,
            bottom,
            right,
        } = padding
        {
            if h + top + bottom < dilation[0] * (kh - 1) + 1
                || w + left + right < dilation[1] * (kw - 1) + 1
            {
                return;
            }
        }
        let conv = Conv2d {
            window: Window2d {
                stride,
                dilation,
                padding,
                layout: DataLayout::Nchw,
            },
            groups,
        };
        // Weights scaled by 1 / sqrt(fan-in) keep the sums of order 1.
        let fan_in = (c / groups * kh * kw) as f32;
        let weights = self.param(&[out_channels, c / groups, kh, kw]);
        let scale = self.scalar(1.0 / fan_in.sqrt());
        let weights = self.binary(BinaryOp::Mul, weights, scale);
        let mut operands = vec![x, weights];
        if self.rng.random_bool(0.4) {
            operands.push(self.param(&[out_channels]));
        }
        let convolution = self.op(Op::Conv2d(conv), &operands);
        let out_shape = self.shape(convolution);
        let mut y = convolution;
        if self.rng.random_bool(0.3) {
            // Per channel ([C, 1, 1]) is a bias; [C] broadcasts along the
            // width, a lookalike, and fits only when the width is C.
            let bias = if self.rng.random_bool(0.8) {
                Some(self.param(&[out_channels, 1, 1]))
            } else {
                (out_shape[3].as_known() == Some(out_channels)).then(|| self.param(&[out_channels]))
            };
            if let Some(bias) = bias {
                y = self.binary(BinaryOp::Add, y, bias);
            }
        }
        if self.rng.random_bool(0.4) {
            let [mean, var, gain, beta] = [0; 4].map(|_| self.param(&[out_channels]));
            let var = self.positive(var);
            let eps = [1e-5, 1e-3][self.rng.random_range(0..2)];
            y = self.op(
                Op::BatchNorm(BatchNorm { eps: Float(eps) }),
                &[y, mean, var, gain, beta],
            );
        }
        if self.rng.random_bool(0.6) {
            let act = CONV_ACTIVATIONS[self.rng.random_range(0..CONV_ACTIVATIONS.len())];
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
                y = self.binary(BinaryOp::Add, y, r);
            }
        }
        if self.rng.random_bool(0.2) {
            self.keep(convolution);
        }
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
                Op::Reshape(Reshape {
                    shape: vec![Dim::symbol("batch"), 2.into(), 4.into()],
                }),
                &[x],
            );
            let which = if self.rng.random_bool(0.5) { view } else { x };
            self.b.output("view", which);
        }
        self.b.finish()
    }
}

/// The graph a seed and a recipe describe, with values for its
/// parameters; `outputs` outputs (at least one).
pub fn generate(seed: u64, recipe: &[u8], outputs: usize) -> (Graph, HashMap<String, Tensor>) {
    let mut g = Gen::new(seed);
    for &step in recipe {
        match step % STEP_KINDS {
            0 => g.linear(),
            1 => g.elementwise(),
            2 => g.normalization(),
            3 => g.reduction(),
            4 => g.layout(),
            5 => g.gather_cast(),
            6 => g.batched(),
            7 => g.fused_linear(),
            8 => g.linear_lookalike(),
            9 => g.rewrite_traps(),
            10 => g.written_norms(),
            11 => g.layout_round_trip(),
            12 => g.conv(),
            _ => g.elementwise(),
        }
    }
    g.finish(outputs)
}

/// Inputs for any generated graph: `x: f32[batch, 8]`,
/// `s: f32[batch, 3, 8]` in [-2, 2) and `ids: i64[batch, 3]`.
pub fn inputs(seed: u64, batch: usize) -> HashMap<String, Tensor> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed);
    let x = super::random_f32(&mut rng, vec![batch, 8], -2.0, 2.0);
    let s = super::random_f32(&mut rng, vec![batch, 3, 8], -2.0, 2.0);
    let ids = super::random_ids(&mut rng, vec![batch, 3], TABLE_ROWS as i64);
    HashMap::from([
        ("x".to_string(), x),
        ("s".to_string(), s),
        ("ids".to_string(), ids),
    ])
}

/// The largest finite magnitude of any f32 value the graph computes.
pub fn largest_intermediate(
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
