//! One training step (forward, backward, SGD update) of two networks, timed
//! in one run on three engines: lamina (`lamina train`: the step
//! JIT-compiled as one program), candle 0.11 (autograd `backward` and
//! `candle_nn::optim::SGD`) and numpy (hand-written backprop on OpenBLAS,
//! `numpy_step.py`). lamina and numpy run as processes, so this crate
//! depends on neither.
//!
//! The networks: `models/bench/mlp.lam` (784-512-512-10, ReLU; the loss is
//! cross-entropy on its logits) and `encoder_train.lam` (the encoder block
//! of `models/bench/encoder.lam` with cross-entropy on the mean over the
//! sequence). Same shapes, same loss, plain SGD (lr 0.01) everywhere.
//!
//! Timing: CPU time, 1 thread (lamina `--threads 1`; candle
//! `RAYON_NUM_THREADS=1`, `CANDLE_NUM_THREADS=1`; numpy
//! `OPENBLAS_NUM_THREADS=1`). candle and numpy: warm-up steps, then the
//! median of `--steps` steps. lamina: the CPU time of a `lamina train`
//! process on `3 + steps` batches minus that of one on 3 batches, over
//! `steps` (its per-step mean; loading, compiling and saving cancel).
//! `--rounds` rounds interleave the engines; the table shows the median of
//! the rounds.
//!
//!     cargo run --release -- [--steps 30] [--rounds 3] [--nets mlp,encoder] [--lamina PATH]

use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::{DType, Device, Module, Tensor, Var, D};
use candle_nn::optim::{Optimizer, SGD};

const LR: f64 = 0.01;
const WARMUP: usize = 3;

/// CPU time of the whole process, seconds.
fn cpu_seconds() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given.
    let status = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    assert_eq!(status, 0, "clock_gettime(CLOCK_PROCESS_CPUTIME_ID)");
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[derive(Clone, Copy, PartialEq)]
enum Net {
    Mlp,
    Encoder,
}

impl Net {
    fn name(self) -> &'static str {
        match self {
            Net::Mlp => "mlp",
            Net::Encoder => "encoder",
        }
    }
    fn batch(self) -> usize {
        match self {
            Net::Mlp => 64,
            Net::Encoder => 1,
        }
    }
    fn row(self) -> Vec<usize> {
        match self {
            Net::Mlp => vec![784],
            Net::Encoder => vec![128, 256],
        }
    }
    fn classes(self) -> usize {
        match self {
            Net::Mlp => 10,
            Net::Encoder => 256,
        }
    }
}

/// Seeded examples and labels: `rows` of them.
fn data(net: Net, rows: usize) -> (Vec<f32>, Vec<u32>) {
    let row: usize = net.row().iter().product();
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let x = (0..rows * row)
        .map(|_| (next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0)
        .collect();
    let y = (0..rows)
        .map(|_| (next() % net.classes() as u64) as u32)
        .collect();
    (x, y)
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A little-endian .npy file (`descr` '<f4' or '<i8').
fn write_npy(path: &Path, descr: &str, shape: &[usize], bytes: &[u8]) {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape = if dims.len() == 1 {
        format!("({},)", dims[0])
    } else {
        format!("({})", dims.join(", "))
    };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend((header.len() as u16).to_le_bytes());
    out.extend(header.as_bytes());
    out.extend(bytes);
    std::fs::write(path, out).expect("write .npy");
}

/// CPU time (user + system) of the children waited for so far, seconds.
fn children_cpu_seconds() -> f64 {
    // SAFETY: getrusage fills the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let status = unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) };
    assert_eq!(status, 0, "getrusage");
    let t = |v: libc::timeval| v.tv_sec as f64 + v.tv_usec as f64 * 1e-6;
    t(usage.ru_utime) + t(usage.ru_stime)
}

/// lamina: `lamina train` (1 thread, plain SGD, one epoch) in its own
/// process, on `WARMUP` batches and on `WARMUP + steps` batches; the
/// difference of the two processes' CPU times over `steps` is one step
/// (loading, compiling and writing the weights cancel out). ms.
fn lamina_step(lamina: &Path, net: Net, steps: usize, dir: &Path) -> f64 {
    let model = match net {
        Net::Mlp => repo().join("models/bench/mlp.lam"),
        Net::Encoder => Path::new(env!("CARGO_MANIFEST_DIR")).join("encoder_train.lam"),
    };
    let run = |batches: usize| -> f64 {
        let rows = net.batch() * batches;
        let (x, y) = data(net, rows);
        let mut shape = vec![rows];
        shape.extend(net.row());
        let xs = dir.join(format!("{}_{batches}_x.npy", net.name()));
        let ys = dir.join(format!("{}_{batches}_y.npy", net.name()));
        write_npy(
            &xs,
            "<f4",
            &shape,
            &x.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>(),
        );
        let labels: Vec<u8> = y.iter().flat_map(|&v| i64::from(v).to_le_bytes()).collect();
        write_npy(&ys, "<i8", &[rows], &labels);
        let before = children_cpu_seconds();
        let out = Command::new(lamina)
            .arg("train")
            .arg(&model)
            .args(["--init", "--data"])
            .arg(&xs)
            .arg("--labels")
            .arg(&ys)
            .args(["--epochs", "1", "--batch", &net.batch().to_string()])
            .args([
                "--optimizer",
                "sgd",
                "--lr",
                &LR.to_string(),
                "--val-split",
                "0",
            ])
            .args(["--threads", "1", "--quiet", "--out"])
            .arg(dir.join("weights.safetensors"))
            .output()
            .expect("lamina runs");
        assert!(
            out.status.success(),
            "lamina train: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        children_cpu_seconds() - before
    };
    let short = run(WARMUP);
    let long = run(WARMUP + steps);
    (long - short) / steps as f64 * 1e3
}

/// candle's parameters, initialised like lamina's initializers in kind
/// (the values do not matter for the time).
fn var(shape: &[usize], scale: f64, dev: &Device) -> Var {
    Var::randn(0f32, scale as f32, shape, dev).expect("randn")
}

fn linear(x: &Tensor, w: &Var, b: &Var) -> candle_core::Result<Tensor> {
    x.matmul(w.as_tensor())?.broadcast_add(b.as_tensor())
}

fn layer_norm(x: &Tensor, gain: &Var, bias: &Var) -> candle_core::Result<Tensor> {
    let mean = x.mean_keepdim(D::Minus1)?;
    let centred = x.broadcast_sub(&mean)?;
    let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
    let normed = centred.broadcast_div(&(var + 1e-5)?.sqrt()?)?;
    normed
        .broadcast_mul(gain.as_tensor())?
        .broadcast_add(bias.as_tensor())
}

struct CandleNet {
    net: Net,
    vars: Vec<Var>,
}

impl CandleNet {
    fn new(net: Net, dev: &Device) -> CandleNet {
        let vars = match net {
            Net::Mlp => vec![
                var(&[784, 512], 0.05, dev),
                var(&[512], 0.01, dev),
                var(&[512, 512], 0.06, dev),
                var(&[512], 0.01, dev),
                var(&[512, 10], 0.06, dev),
                var(&[10], 0.01, dev),
            ],
            Net::Encoder => {
                let mut v = Vec::new();
                for _ in 0..4 {
                    v.push(var(&[256, 256], 0.06, dev));
                    v.push(var(&[256], 0.01, dev));
                }
                v.push(Var::ones(256, DType::F32, dev).unwrap());
                v.push(Var::zeros(256, DType::F32, dev).unwrap());
                v.push(var(&[256, 1024], 0.04, dev));
                v.push(var(&[1024], 0.01, dev));
                v.push(var(&[1024, 256], 0.04, dev));
                v.push(var(&[256], 0.01, dev));
                v.push(Var::ones(256, DType::F32, dev).unwrap());
                v.push(Var::zeros(256, DType::F32, dev).unwrap());
                v
            }
        };
        CandleNet { net, vars }
    }

    fn logits(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let v = &self.vars;
        match self.net {
            Net::Mlp => {
                let h1 = linear(x, &v[0], &v[1])?.relu()?;
                let h2 = linear(&h1, &v[2], &v[3])?.relu()?;
                linear(&h2, &v[4], &v[5])
            }
            Net::Encoder => {
                let (b, s, d) = x.dims3()?;
                let x2 = x.reshape((b * s, d))?;
                let heads = |t: Tensor| -> candle_core::Result<Tensor> {
                    t.reshape((b, s, 4, 64))?.transpose(1, 2)?.contiguous()
                };
                let q = heads(linear(&x2, &v[0], &v[1])?)?;
                let k = heads(linear(&x2, &v[2], &v[3])?)?;
                let vv = heads(linear(&x2, &v[4], &v[5])?)?;
                let scores = (q.matmul(&k.t()?.contiguous()?)? * 0.125)?;
                let probs = candle_nn::ops::softmax(&scores, D::Minus1)?;
                let context = probs
                    .matmul(&vv)?
                    .transpose(1, 2)?
                    .contiguous()?
                    .reshape((b * s, d))?;
                let attended = linear(&context, &v[6], &v[7])?;
                let h = layer_norm(&(attended + &x2)?, &v[8], &v[9])?;
                let inner = linear(&h, &v[10], &v[11])?.gelu_erf()?;
                let out = linear(&inner, &v[12], &v[13])?;
                let y = layer_norm(&(out + h)?, &v[14], &v[15])?;
                y.reshape((b, s, d))?.mean(1)
            }
        }
    }
}

impl Module for CandleNet {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.logits(x)
    }
}

/// candle: the median CPU time of a step (batch upload, forward, loss,
/// backward, SGD update), ms.
fn candle_step(net: Net, steps: usize) -> f64 {
    let dev = Device::Cpu;
    let model = CandleNet::new(net, &dev);
    let mut sgd = SGD::new(model.vars.clone(), LR).expect("sgd");
    let rows = net.batch() * (WARMUP + steps);
    let (x, y) = data(net, rows);
    let row: usize = net.row().iter().product();
    let mut times = Vec::new();
    for s in 0..WARMUP + steps {
        let start = cpu_seconds();
        let range = s * net.batch()..(s + 1) * net.batch();
        let mut shape = vec![net.batch()];
        shape.extend(net.row());
        let xs = Tensor::from_slice(&x[range.start * row..range.end * row], shape, &dev).unwrap();
        let ys = Tensor::from_slice(&y[range.clone()], net.batch(), &dev).unwrap();
        let logits = model.forward(&xs).expect("forward");
        let loss = candle_nn::loss::cross_entropy(&logits, &ys).expect("loss");
        sgd.backward_step(&loss).expect("backward");
        let _ = loss.to_scalar::<f32>().expect("loss value");
        if s >= WARMUP {
            times.push((cpu_seconds() - start) * 1e3);
        }
    }
    median(times)
}

/// numpy: `numpy_step.py` in its own process, 1 OpenBLAS thread.
fn numpy_step(net: Net, steps: usize) -> Option<f64> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("numpy_step.py");
    let out = Command::new("python3")
        .arg(&script)
        .args([net.name(), &net.batch().to_string(), &steps.to_string()])
        .env("OPENBLAS_NUM_THREADS", "1")
        .env("OMP_NUM_THREADS", "1")
        .output()
        .ok()?;
    if !out.status.success() {
        eprintln!("numpy: {}", String::from_utf8_lossy(&out.stderr));
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let at = text.find("\"median_ms\": ")? + "\"median_ms\": ".len();
    text[at..].split([',', '}']).next()?.trim().parse().ok()
}

fn main() {
    // Before candle starts any thread.
    std::env::set_var("RAYON_NUM_THREADS", "1");
    std::env::set_var("CANDLE_NUM_THREADS", "1");
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |name: &str, default: &str| -> String {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1).cloned())
            .unwrap_or_else(|| default.to_string())
    };
    let steps: usize = flag("--steps", "30").parse().expect("--steps N");
    let rounds: usize = flag("--rounds", "3").parse().expect("--rounds N");
    let lamina = PathBuf::from(flag(
        "--lamina",
        &repo().join("target/release/lamina").to_string_lossy(),
    ));
    let dir = std::env::temp_dir().join(format!("train_peer_{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    let nets: Vec<Net> = flag("--nets", "mlp,encoder")
        .split(',')
        .map(|n| match n {
            "mlp" => Net::Mlp,
            "encoder" => Net::Encoder,
            other => panic!("unknown net {other} (mlp, encoder)"),
        })
        .collect();
    println!(
        "candle threads: {}, steps per measurement: {steps}, rounds: {rounds}",
        candle_core::utils::get_num_threads()
    );
    let mut results: Vec<(Net, Vec<f64>, Vec<f64>, Vec<f64>)> = nets
        .iter()
        .map(|&n| (n, Vec::new(), Vec::new(), Vec::new()))
        .collect();
    for round in 0..rounds {
        for (net, l, c, n) in &mut results {
            // Rotate the order each round.
            for k in 0..3 {
                match (k + round) % 3 {
                    0 => l.push(lamina_step(&lamina, *net, steps, &dir)),
                    1 => c.push(candle_step(*net, steps)),
                    _ => {
                        if let Some(t) = numpy_step(*net, steps) {
                            n.push(t)
                        }
                    }
                }
            }
            eprintln!(
                "round {round} {}: lamina {:.2} candle {:.2} numpy {:.2} ms",
                net.name(),
                l.last().unwrap(),
                c.last().unwrap(),
                n.last().copied().unwrap_or(f64::NAN)
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    println!();
    println!(
        "| network | batch | lamina ms | candle ms | numpy ms | candle / lamina | numpy / lamina |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (net, l, c, n) in results {
        let (l, c) = (median(l), median(c));
        let n = if n.is_empty() { f64::NAN } else { median(n) };
        println!(
            "| {} | {} | {l:.2} | {c:.2} | {n:.2} | {:.2} | {:.2} |",
            match net {
                Net::Mlp => "MLP 784-512-512-10",
                Net::Encoder => "encoder block (seq 128, d 256)",
            },
            net.batch(),
            c / l,
            n / l
        );
    }
}
