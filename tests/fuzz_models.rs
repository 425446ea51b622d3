//! A bounded differential fuzzer of valid model *text*: random `.lam`
//! programs (blocks, `for` loops, parameters with initializers, every
//! built-in family) go through the whole pipeline (parser, lowering, type
//! check, passes, JIT) and must agree with the reference interpreter run on
//! the same text.
//!
//! Each case runs the JIT with 1 and 2 threads (bitwise equal) on one ISA
//! tier; cases rotate through the tiers this CPU has so every tier sees
//! generated models without multiplying the time.
//!
//! - `LAMINA_TEST_SEED=<u64>` generates another fixed set of models;
//! - `LAMINA_FUZZ_CASES=<n>` runs more (or fewer) than the default;
//! - a failure prints the run seed, the case index and the model text (paste
//!   it into a `.lam` file and `lamina run` it with both backends).
//!
//! The generator avoids what would make the backends legitimately differ:
//! comparisons and casts read only inputs (a computed value near a threshold
//! could round across it), and products go through `tanh` so values stay of
//! order 1 and the relative tolerance means something.

mod jit_support;
#[path = "common/seeds.rs"]
mod seeds;

use std::collections::HashMap;
use std::fmt::Write as _;

use jit_support::{compare_outputs, same_bits, tier_for};
use lamina::engine::{Backend, Model, Options, Weights};
use lamina::tensor::Tensor;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Relative tolerance against the interpreter (with `jit_support::ABS_FLOOR`
/// as the absolute floor). Looser than the graph tests' 1e-5: text models
/// chain more transcendental steps (erf, exp, rsqrt, layer_norm) whose JIT
/// approximations each contribute a few ulps.
const RTOL: f64 = 1e-4;

/// Cases when `LAMINA_FUZZ_CASES` is not set: a few seconds in release.
const DEFAULT_CASES: u64 = 200;

fn case_count() -> u64 {
    match std::env::var("LAMINA_FUZZ_CASES") {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("LAMINA_FUZZ_CASES={v:?} is not a number")),
        Err(_) => DEFAULT_CASES,
    }
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum D {
    Batch,
    N(usize),
}

impl std::fmt::Display for D {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self {
            D::Batch => write!(f, "batch"),
            D::N(n) => write!(f, "{n}"),
        }
    }
}

#[derive(Clone)]
struct Value {
    name: String,
    shape: Vec<D>,
}

struct Gen {
    rng: ChaCha8Rng,
    body: String,
    values: Vec<Value>,
    fresh: usize,
    uses_dense: bool,
    uses_res: bool,
}

const WIDTHS: [usize; 5] = [1, 3, 4, 8, 12];

fn shape_text(shape: &[D]) -> String {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    format!("[{}]", dims.join(", "))
}

impl Gen {
    fn new(seed: u64) -> Gen {
        Gen {
            rng: ChaCha8Rng::seed_from_u64(seed),
            body: String::new(),
            values: vec![
                Value {
                    name: "x".into(),
                    shape: vec![D::Batch, D::N(8)],
                },
                Value {
                    name: "s".into(),
                    shape: vec![D::Batch, D::N(3), D::N(8)],
                },
            ],
            fresh: 0,
            uses_dense: false,
            uses_res: false,
        }
    }

    fn name(&mut self, prefix: &str) -> String {
        self.fresh += 1;
        format!("{prefix}{}", self.fresh)
    }

    fn pick(&mut self) -> Value {
        // Recent values more often, so chains get deep.
        let n = self.values.len();
        let i = if self.rng.random_bool(0.6) {
            n - 1 - self.rng.random_range(0..n.min(3))
        } else {
            self.rng.random_range(0..n)
        };
        self.values[i].clone()
    }

    fn last_width(v: &Value) -> Option<usize> {
        match v.shape.last() {
            Some(D::N(n)) => Some(*n),
            _ => None,
        }
    }

    fn emit(&mut self, shape: Vec<D>, expr: String) {
        let name = self.name("v");
        writeln!(self.body, "  {name} = {expr}").unwrap();
        self.values.push(Value { name, shape });
    }

    fn param(&mut self, shape: &[D]) -> String {
        let name = self.name("p");
        let seed = self.rng.random_range(0..1000);
        let init = match self.rng.random_range(0..5) {
            0 => format!("xavier(seed={seed})"),
            1 => format!("normal(mean=0.0, std=0.5, seed={seed})"),
            2 => format!("uniform(low=-1.0, high=1.0, seed={seed})"),
            3 => "ones".to_string(),
            _ => "zeros".to_string(),
        };
        writeln!(
            self.body,
            "  param {name}: f32{} = {init}",
            shape_text(shape)
        )
        .unwrap();
        name
    }

    fn step(&mut self) {
        let a = self.pick();
        let rank = a.shape.len();
        match self.rng.random_range(0..15) {
            0 => {
                let f = *[
                    "relu",
                    "sigmoid",
                    "tanh",
                    "gelu",
                    "gelu_tanh",
                    "abs",
                    "erf",
                    "sin",
                    "cos",
                    "relu6",
                    "hard_sigmoid",
                    "hard_swish",
                ]
                .choose(&mut self.rng)
                .unwrap();
                self.emit(a.shape.clone(), format!("{f}({})", a.name));
            }
            1 => {
                let e = match self.rng.random_range(0..5) {
                    0 => format!("exp(tanh({}))", a.name),
                    1 => format!("log(abs({}) + 1.0)", a.name),
                    2 => format!("sqrt(abs({}) + 0.5)", a.name),
                    3 => format!("rsqrt(abs({}) + 1.0)", a.name),
                    _ => format!("recip(abs({}) + 1.0)", a.name),
                };
                self.emit(a.shape.clone(), e);
            }
            2 => {
                // Two values of one shape, or a value and a broadcast
                // parameter of its last axis.
                let same: Vec<Value> = self
                    .values
                    .iter()
                    .filter(|v| v.shape == a.shape)
                    .cloned()
                    .collect();
                let b = same.choose(&mut self.rng).unwrap().clone();
                let other = if self.rng.random_bool(0.5) {
                    b.name
                } else if let Some(w) = Self::last_width(&a) {
                    self.param(&[D::N(w)])
                } else {
                    b.name
                };
                let e = match self.rng.random_range(0..6) {
                    0 => format!("{} + {other}", a.name),
                    1 => format!("{} - {other} * 0.5", a.name),
                    2 => format!("{} * tanh({other})", a.name),
                    3 => format!("maximum({}, {other})", a.name),
                    4 => format!("minimum({}, {other})", a.name),
                    _ => format!("{} / (abs({other}) + 1.0)", a.name),
                };
                self.emit(a.shape.clone(), e);
            }
            3 => {
                let Some(w) = Self::last_width(&a).filter(|_| rank >= 2) else {
                    return;
                };
                let k = *WIDTHS.choose(&mut self.rng).unwrap();
                let mut shape = a.shape.clone();
                *shape.last_mut().unwrap() = D::N(k);
                let e = match self.rng.random_range(0..3) {
                    0 => {
                        let p = self.param(&[D::N(w), D::N(k)]);
                        let b = self.param(&[D::N(k)]);
                        format!("tanh({} @ {p} + {b})", a.name)
                    }
                    1 => {
                        let p = self.param(&[D::N(k), D::N(w)]);
                        format!("tanh(matmul({}, {p}, transpose_b=true))", a.name)
                    }
                    _ => {
                        self.uses_dense = true;
                        let prefix = self.name("layer");
                        format!("dense({}, {w}, {k}) as {prefix}", a.name)
                    }
                };
                self.emit(shape, e);
            }
            4 => {
                let Some(w) = Self::last_width(&a).filter(|_| rank >= 2) else {
                    return;
                };
                self.uses_res = true;
                let n = self.rng.random_range(0..4);
                let h = self.name("h");
                let prefix = self.name("stack");
                writeln!(self.body, "  {h} = {}", a.name).unwrap();
                writeln!(self.body, "  for i in 0..{n} {{").unwrap();
                writeln!(self.body, "    {h} = res({h}, {w}) as {prefix}.{{i}}").unwrap();
                writeln!(self.body, "  }}").unwrap();
                self.values.push(Value {
                    name: h,
                    shape: a.shape.clone(),
                });
            }
            5 => {
                let f = if self.rng.random_bool(0.5) {
                    "softmax"
                } else {
                    "log_softmax"
                };
                let axis = self.rng.random_range(-(rank as i64)..rank as i64);
                self.emit(a.shape.clone(), format!("{f}({}, axis={axis})", a.name));
            }
            6 => {
                let Some(w) = Self::last_width(&a) else {
                    return;
                };
                let g = self.param(&[D::N(w)]);
                let b = self.param(&[D::N(w)]);
                self.emit(
                    a.shape.clone(),
                    format!("layer_norm({}, {g}, {b}, eps=1e-5)", a.name),
                );
            }
            7 => {
                if rank < 2 {
                    return;
                }
                let f = *["sum", "mean", "max"].choose(&mut self.rng).unwrap();
                let axis = self.rng.random_range(0..rank);
                let keep = self.rng.random_bool(0.5);
                let mut shape = a.shape.clone();
                if keep {
                    shape[axis] = D::N(1);
                } else {
                    shape.remove(axis);
                }
                let e = format!("{f}({}, axis={axis}, keepdims={keep})", a.name);
                // Sums grow with the axis; tanh keeps the scale of order 1.
                let e = if f == "sum" { format!("tanh({e})") } else { e };
                self.emit(shape, e);
            }
            8 => {
                if rank < 2 {
                    return;
                }
                let mut shape = a.shape.clone();
                shape.swap(rank - 2, rank - 1);
                self.emit(shape, format!("transpose({})", a.name));
            }
            9 => {
                if rank != 3 {
                    return;
                }
                let perms = [[0, 2, 1], [1, 0, 2], [2, 1, 0], [1, 2, 0], [2, 0, 1]];
                let p = *perms.choose(&mut self.rng).unwrap();
                let shape = p.iter().map(|&i| a.shape[i]).collect();
                self.emit(
                    shape,
                    format!("permute({}, [{}, {}, {}])", a.name, p[0], p[1], p[2]),
                );
            }
            10 => {
                // Reshape only values whose batch axis is first, keeping it.
                if a.shape.first() != Some(&D::Batch) || a.shape[1..].iter().any(|d| *d == D::Batch)
                {
                    return;
                }
                let rest: usize = a.shape[1..]
                    .iter()
                    .map(|d| match d {
                        D::N(n) => *n,
                        D::Batch => 1,
                    })
                    .product();
                let split = [2, 3, 4].into_iter().find(|f| rest % f == 0 && rest > *f);
                let (shape, dims) = match (rank, split) {
                    (2, Some(f)) => (
                        vec![D::Batch, D::N(f), D::N(rest / f)],
                        format!("[batch, {f}, -1]"),
                    ),
                    _ => (vec![D::Batch, D::N(rest)], format!("[batch, {rest}]")),
                };
                self.emit(shape, format!("reshape({}, {dims})", a.name));
            }
            11 => {
                let axes: Vec<usize> = (0..rank).filter(|&i| a.shape[i] != D::Batch).collect();
                let Some(&axis) = axes.choose(&mut self.rng) else {
                    return;
                };
                let same: Vec<Value> = self
                    .values
                    .iter()
                    .filter(|v| v.shape == a.shape)
                    .cloned()
                    .collect();
                let b = same.choose(&mut self.rng).unwrap().clone();
                let mut shape = a.shape.clone();
                let D::N(n) = shape[axis] else { unreachable!() };
                shape[axis] = D::N(2 * n);
                self.emit(
                    shape,
                    format!("concat({}, {}, axis={axis})", a.name, b.name),
                );
            }
            12 => {
                let axes: Vec<usize> = (0..rank)
                    .filter(|&i| matches!(a.shape[i], D::N(n) if n >= 2))
                    .collect();
                let Some(&axis) = axes.choose(&mut self.rng) else {
                    return;
                };
                let D::N(n) = a.shape[axis] else {
                    unreachable!()
                };
                let start = self.rng.random_range(0..n - 1);
                let end = self.rng.random_range(start + 1..=n);
                let step = self.rng.random_range(1..=2);
                let mut shape = a.shape.clone();
                shape[axis] = D::N((end - start).div_ceil(step));
                self.emit(
                    shape,
                    format!(
                        "slice({}, axis={axis}, start={start}, end={end}, step={step})",
                        a.name
                    ),
                );
            }
            13 => {
                let w = *WIDTHS.choose(&mut self.rng).unwrap();
                let table = self.param(&[D::N(5), D::N(w)]);
                let e = if self.rng.random_bool(0.5) {
                    format!("embedding(ids, {table})")
                } else {
                    format!("gather({table}, ids, axis=0)")
                };
                self.emit(vec![D::Batch, D::N(3), D::N(w)], e);
            }
            _ => {
                // Conditions on inputs only (see the module comment).
                let (src, shape) = if self.rng.random_bool(0.5) {
                    ("x", vec![D::Batch, D::N(8)])
                } else {
                    ("s", vec![D::Batch, D::N(3), D::N(8)])
                };
                let branches: Vec<Value> = self
                    .values
                    .iter()
                    .filter(|v| v.shape == shape)
                    .cloned()
                    .collect();
                let t = branches.choose(&mut self.rng).unwrap().name.clone();
                let f = branches.choose(&mut self.rng).unwrap().name.clone();
                if self.rng.random_bool(0.3) {
                    self.emit(vec![D::Batch, D::N(3)], "cast(ids, f32) * 0.25".to_string());
                    return;
                }
                let thr = self.param(&[D::N(8)]);
                let op = *["<", ">=", "!="].choose(&mut self.rng).unwrap();
                self.emit(shape, format!("where({src} {op} {thr}, {t}, {f})"));
            }
        }
    }

    fn model(mut self, steps: usize) -> String {
        for _ in 0..steps {
            self.step();
        }
        let mut text = String::new();
        if self.uses_dense {
            text.push_str(
                "block dense(x, in: int, out: int) {\n  param w: f32[in, out] = xavier(seed=4)\n  \
                 param b: f32[out] = uniform(low=-0.5, high=0.5, seed=5)\n  \
                 return gelu_tanh(x @ w + b)\n}\n\n",
            );
        }
        if self.uses_res {
            text.push_str(
                "block res(x, n: int) {\n  param w: f32[n, n] = normal(mean=0.0, std=0.3, seed=2)\n  \
                 return tanh(x @ w) + x * 0.5\n}\n\n",
            );
        }
        text.push_str("model fuzz {\n");
        text.push_str(
            "  input x: f32[batch, 8]\n  input s: f32[batch, 3, 8]\n  input ids: i64[batch, 3]\n",
        );
        text.push_str(&self.body);
        let last = self.values.len() - 1;
        let mut outs = vec![last];
        for _ in 0..self.rng.random_range(0..3) {
            let i = self.rng.random_range(0..self.values.len());
            if !outs.contains(&i) {
                outs.push(i);
            }
        }
        for (k, i) in outs.into_iter().enumerate() {
            writeln!(text, "  output out{k} = {}", self.values[i].name).unwrap();
        }
        text.push_str("}\n");
        text
    }
}

fn inputs(rng: &mut ChaCha8Rng) -> HashMap<String, Tensor> {
    let batch = rng.random_range(1..=4);
    let mut f = |n: usize| (0..n).map(|_| rng.random_range(-2.0f32..2.0)).collect();
    let x = Tensor::f32(vec![batch, 8], f(batch * 8));
    let s = Tensor::f32(vec![batch, 3, 8], f(batch * 24));
    // Negative ids count from the end of the table (5 rows).
    let ids = (0..batch * 3).map(|_| rng.random_range(-5i64..5)).collect();
    HashMap::from([
        ("x".to_string(), x),
        ("s".to_string(), s),
        ("ids".to_string(), Tensor::i64(vec![batch, 3], ids)),
    ])
}

fn run_case(case_seed: u64, tier_key: u64) -> Result<(), String> {
    let mut rng = ChaCha8Rng::seed_from_u64(case_seed ^ 0x9e37_79b9_7f4a_7c15);
    let steps = rng.random_range(1..=12);
    let text = Gen::new(case_seed).model(steps);
    let feed = inputs(&mut rng);
    let isa = tier_for(tier_key);
    let fail = |what: String| format!("{what}\non the {isa} tier, model:\n{text}");
    let run = |backend: Backend, threads: usize| {
        let model = Model::from_source("fuzz.lam", text.clone())
            .map_err(|e| fail(format!("a generated model does not load: {e}")))?;
        let options = Options {
            backend,
            threads,
            isa: Some(isa),
            ..Options::default()
        };
        let session = model
            .compile(Weights::None, &options)
            .map_err(|e| fail(format!("{} compile fails: {e}", backend.name())))?;
        session
            .run(&feed)
            .map_err(|e| fail(format!("{} run fails: {e}", backend.name())))
    };
    let reference = run(Backend::Interp, 1)?;
    let one = run(Backend::Jit, 1)?;
    let two = run(Backend::Jit, 2)?;
    compare_outputs("jit, 1 thread", &one, &reference, RTOL).map_err(&fail)?;
    same_bits("jit, 1 vs 2 threads", &one, &two).map_err(&fail)?;
    Ok(())
}

#[test]
fn generated_models_agree_with_the_interpreter() {
    let seed = seeds::run_seed();
    let cases = case_count();
    for case in 0..cases {
        let case_seed = seed.wrapping_add(case.wrapping_mul(0x2545_f491_4f6c_dd1d));
        if let Err(e) = run_case(case_seed, case) {
            panic!(
                "case {case} of {cases}: {e}\n(run seed {seed}: repeat with \
                 LAMINA_TEST_SEED={seed} LAMINA_FUZZ_CASES={})",
                case + 1
            );
        }
    }
}

/// The generator itself: a model text that every case must load is only
/// a test of something if the generator reaches the constructs it claims.
#[test]
fn the_generator_reaches_every_construct() {
    let seed = seeds::run_seed();
    let mut all = String::new();
    for case in 0..case_count().max(50) {
        let mut rng = ChaCha8Rng::seed_from_u64(case);
        let steps = rng.random_range(1..=12);
        all.push_str(&Gen::new(seed.wrapping_add(case)).model(steps));
    }
    for construct in [
        "block dense",
        "block res",
        "for i in",
        "@",
        "transpose_b=true",
        "softmax(",
        "log_softmax(",
        "layer_norm(",
        "sum(",
        "mean(",
        "max(",
        "transpose(",
        "permute(",
        "reshape(",
        "concat(",
        "slice(",
        "embedding(",
        "gather(",
        "where(",
        "cast(",
        "gelu(",
        "erf(",
        "rsqrt(",
    ] {
        assert!(
            all.contains(construct),
            "no generated model uses `{construct}`"
        );
    }
}
