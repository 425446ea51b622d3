//! Training end to end: `lamina train` from fresh values on the digits
//! training split reaches at least the accuracy of the shipped
//! sklearn-trained weights (97.3%) on the held-out digits, as `lamina run`
//! measures it; runs repeat bit for bit from their seed, a resumed run
//! equals an uninterrupted one, one SGD step moves the parameters by exactly
//! the learning rate times the interpreter's gradient, and bad data is
//! reported before anything trains.

#[path = "common/mod.rs"]
mod common;

use std::collections::HashMap;

use common::lamina;
use lamina::autodiff::{append_gradients, Wrt};
use lamina::engine::train::{
    Dataset, EpochReport, Observer, Optimizer, StepReport, TrainConfig, Trainer,
};
use lamina::engine::Model;
use lamina::ir::Bindings;
use lamina::runtime::npy::read_npy;
use lamina::runtime::weights::WeightFile;
use lamina::tensor::Tensor;

const DIGITS: &str = "models/digits/digits.lam";
const TRAIN_X: &str = "models/digits/train_x.npy";
const TRAIN_Y: &str = "models/digits/train_labels.npy";
/// The shipped weights classify 438 of the 450 held-out digits.
const SHIPPED_ACCURACY: f64 = 438.0 / 450.0;

struct Quiet;
impl Observer for Quiet {
    fn step(&mut self, _: &StepReport) -> bool {
        true
    }
    fn epoch(&mut self, _: &EpochReport) {}
}

fn digits_data() -> Dataset {
    Dataset {
        x: read_npy(TRAIN_X.as_ref()).unwrap(),
        labels: read_npy(TRAIN_Y.as_ref()).unwrap(),
    }
}

fn config(epochs: usize) -> TrainConfig {
    TrainConfig {
        epochs,
        init: true,
        val_split: 0.0,
        threads: 2,
        ..TrainConfig::default()
    }
}

#[test]
fn digits_trained_from_scratch_reach_the_shipped_accuracy() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("digits.safetensors");
    let out = out.to_str().unwrap();
    let (code, _, stderr) = lamina(&[
        "train",
        DIGITS,
        "--init",
        "--data",
        TRAIN_X,
        "--labels",
        TRAIN_Y,
        "--epochs",
        "60",
        "--lr",
        "5e-3",
        "--schedule",
        "cosine",
        "--weight-decay",
        "1e-4",
        "--val-split",
        "0",
        "--seed",
        "0",
        "--out",
        out,
        "--quiet",
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("epoch  60: train loss"), "{stderr}");
    let log = std::fs::read_to_string(dir.path().join("digits.csv")).unwrap();
    assert_eq!(log.lines().count(), 61, "{log}");
    assert!(dir.path().join("digits.ckpt.safetensors").exists());
    let (code, stdout, stderr) = lamina(&["run", DIGITS, "--weights", out]);
    assert_eq!(code, 0, "{stderr}");
    let accuracy: f64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("accuracy: "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no accuracy in {stdout}"));
    assert!(
        accuracy >= SHIPPED_ACCURACY - 1e-4,
        "held-out accuracy {accuracy} is below the shipped weights' {SHIPPED_ACCURACY:.4}"
    );
}

/// The convolutional digits model (`models/digits_cnn`, conv2d, max_pool2d,
/// flatten) trained from fresh values through the CLI: at least 98% of the
/// held-out digits (its committed weights, trained by the same command, get
/// 444 of 450).
#[test]
fn digits_cnn_trained_from_scratch_reaches_98_percent() {
    const CNN: &str = "models/digits_cnn/digits_cnn.lam";
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("cnn.safetensors");
    let out = out.to_str().unwrap();
    let (code, _, stderr) = lamina(&[
        "train",
        CNN,
        "--init",
        "--data",
        TRAIN_X,
        "--labels",
        TRAIN_Y,
        "--epochs",
        "30",
        "--lr",
        "1e-2",
        "--schedule",
        "cosine",
        "--weight-decay",
        "1e-4",
        "--val-split",
        "0",
        "--seed",
        "0",
        "--out",
        out,
        "--quiet",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let (code, stdout, stderr) = lamina(&[
        "run",
        CNN,
        "--weights",
        out,
        "--input",
        "x=models/digits/x.npy",
        "--labels",
        "models/digits/labels.npy",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let accuracy: f64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("accuracy: "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no accuracy in {stdout}"));
    assert!(
        accuracy >= 0.98,
        "held-out accuracy {accuracy} is below 98%"
    );
}

fn train_bytes(epochs: usize, resume_after: Option<usize>, optimizer: Optimizer) -> Vec<u8> {
    let model = Model::load(DIGITS).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (ckpt, out) = (
        dir.path().join("c.safetensors"),
        dir.path().join("w.safetensors"),
    );
    let cfg = TrainConfig {
        optimizer,
        ..config(epochs)
    };
    let data = digits_data();
    let mut trainer = match resume_after {
        Some(first) => {
            let mut t = Trainer::new(
                &model,
                TrainConfig {
                    epochs: first,
                    ..cfg.clone()
                },
                None,
                None,
            )
            .unwrap();
            t.fit(&data, None, &mut Quiet).unwrap();
            t.save_checkpoint(&ckpt).unwrap();
            let resumed = TrainConfig { init: false, ..cfg };
            Trainer::new(&model, resumed, None, Some(&ckpt)).unwrap()
        }
        None => Trainer::new(&model, cfg, None, None).unwrap(),
    };
    trainer.fit(&data, None, &mut Quiet).unwrap();
    trainer.save_weights(&out).unwrap();
    std::fs::read(&out).unwrap()
}

#[test]
fn runs_repeat_from_their_seed_and_resume_exactly() {
    for optimizer in [
        Optimizer::adam(),
        Optimizer::Sgd {
            momentum: 0.9,
            nesterov: true,
        },
    ] {
        let straight = train_bytes(3, None, optimizer);
        assert_eq!(
            straight,
            train_bytes(3, None, optimizer),
            "{optimizer:?}: same seed, same bits"
        );
        assert_eq!(
            straight,
            train_bytes(3, Some(1), optimizer),
            "{optimizer:?}: resumed after epoch 1"
        );
    }
}

/// One full-batch SGD step: p1 = p0 - lr * dloss/dp0, with the gradient
/// from the interpreter on the model's own graph.
#[test]
fn one_sgd_step_follows_the_interpreters_gradient() {
    let model = Model::load(DIGITS).unwrap();
    let data = digits_data();
    let n = 64;
    let rows = |t: &Tensor, width: usize| -> Vec<f32> {
        t.to_f64_vec()[..n * width]
            .iter()
            .map(|&v| v as f32)
            .collect()
    };
    let small = Dataset {
        x: Tensor::f32(vec![n, 64], rows(&data.x, 64)),
        labels: Tensor::i64(
            vec![n],
            data.labels.to_f64_vec()[..n]
                .iter()
                .map(|&v| v as i64)
                .collect(),
        ),
    };
    let lr = 0.5f32;
    let cfg = TrainConfig {
        batch: n,
        lr,
        optimizer: Optimizer::Sgd {
            momentum: 0.0,
            nesterov: false,
        },
        ..config(1)
    };
    let mut trainer = Trainer::new(&model, cfg, None, None).unwrap();
    let before: HashMap<String, Tensor> = trainer
        .params()
        .into_iter()
        .map(|(n, t)| (n, t.clone()))
        .collect();
    trainer.fit(&small, None, &mut Quiet).unwrap();

    // The reference: the model with cross_entropy attached, differentiated
    // and run on the interpreter.
    let mut graph = model.graph().clone();
    let probs = graph.outputs[0].1;
    let logits = graph.inputs(probs)[0];
    let labels = graph.add_node(
        lamina::ir::Op::Input(lamina::ir::ops::Input {
            name: "labels".into(),
        }),
        &[],
        lamina::ir::builder::parse_type("i64[batch]").unwrap(),
        None,
    );
    graph.inputs.push(labels);
    let loss = lamina::ir::losses::cross_entropy(&mut graph, logits, labels, None).unwrap();
    graph.outputs.push(("loss".into(), loss));
    let grads = append_gradients(&mut graph, "loss", &Wrt::Params).unwrap();
    let inputs = HashMap::from([
        ("x".to_string(), small.x.clone()),
        ("labels".to_string(), small.labels.clone()),
    ]);
    let out = lamina::interp::run(&graph, &before, &inputs, &Bindings::new()).unwrap();
    for grad in grads {
        let g = out
            .iter()
            .find(|(n, _)| *n == grad.output)
            .unwrap()
            .1
            .to_f64_vec();
        let p0 = before[&grad.name].to_f64_vec();
        let p1 = trainer
            .params()
            .into_iter()
            .find(|(n, _)| *n == grad.name)
            .unwrap()
            .1
            .to_f64_vec();
        for i in 0..g.len() {
            let expected = p0[i] - f64::from(lr) * g[i];
            assert!(
                (p1[i] - expected).abs() <= 1e-5 + 1e-4 * expected.abs(),
                "{}[{i}]: {} after the step, {expected} expected",
                grad.name,
                p1[i]
            );
        }
    }
}

#[test]
fn every_optimizer_lowers_the_loss() {
    let model = Model::load(DIGITS).unwrap();
    let data = digits_data();
    for (optimizer, lr) in [
        (
            Optimizer::Sgd {
                momentum: 0.0,
                nesterov: false,
            },
            0.1,
        ),
        (
            Optimizer::Sgd {
                momentum: 0.9,
                nesterov: false,
            },
            0.05,
        ),
        (Optimizer::adam(), 3e-3),
        (
            Optimizer::AdamW {
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
            },
            3e-3,
        ),
    ] {
        let cfg = TrainConfig {
            optimizer,
            lr,
            weight_decay: 1e-4,
            clip_norm: Some(5.0),
            ..config(3)
        };
        let mut trainer = Trainer::new(&model, cfg, None, None).unwrap();
        let (start, _) = trainer.evaluate(&data).unwrap();
        let (reports, stopped) = trainer.fit(&data, None, &mut Quiet).unwrap();
        let (end, accuracy) = trainer.evaluate(&data).unwrap();
        assert!(!stopped && reports.len() == 3);
        assert!(end < 0.5 * start, "{optimizer:?}: loss {start} -> {end}");
        assert!(
            accuracy.unwrap() > 0.8,
            "{optimizer:?}: accuracy {accuracy:?}"
        );
    }
}

#[test]
fn an_observer_stops_training_and_the_weights_are_saved() {
    struct StopAt(usize);
    impl Observer for StopAt {
        fn step(&mut self, r: &StepReport) -> bool {
            r.step < self.0
        }
        fn epoch(&mut self, _: &EpochReport) {}
    }
    let model = Model::load(DIGITS).unwrap();
    let mut trainer = Trainer::new(&model, config(5), None, None).unwrap();
    let (reports, stopped) = trainer.fit(&digits_data(), None, &mut StopAt(3)).unwrap();
    assert!(stopped && reports.is_empty());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.safetensors");
    trainer.save_weights(&path).unwrap();
    let saved = WeightFile::load(&path).unwrap();
    assert_eq!(saved.get("fc1.weight").unwrap().shape(), [64, 32]);
    // Nothing but the file itself is left in the folder (the temporary was renamed).
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[test]
fn bad_data_and_flags_are_reported_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let labels = dir.path().join("labels.npy");
    let mut bad: Vec<i64> = vec![0; 1347];
    bad[5] = 12;
    let npy = dir.path().join("bad.npy");
    lamina::runtime::npy::write_npy(&npy, &Tensor::i64(vec![1347], bad)).unwrap();
    std::fs::copy(&npy, &labels).unwrap();
    let (code, _, stderr) = lamina(&[
        "train",
        DIGITS,
        "--init",
        "--data",
        TRAIN_X,
        "--labels",
        labels.to_str().unwrap(),
        "--epochs",
        "1",
        "--quiet",
        "--out",
        dir.path().join("w.safetensors").to_str().unwrap(),
    ]);
    assert_eq!(code, 1);
    assert!(
        stderr
            .contains("label 12 (example 5) is not a class id of the model's 10 classes (0 to 9)"),
        "{stderr}"
    );
    let (code, _, stderr) = lamina(&[
        "train", DIGITS, "--init", "--data", TRAIN_Y, "--labels", TRAIN_Y, "--lr=-1", "--batch",
        "0",
    ]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("--batch must be at least 1")
            && stderr.contains("--lr must be a positive number"),
        "{stderr}"
    );
    let (code, _, stderr) = lamina(&[
        "train",
        DIGITS,
        "--init",
        "--data",
        "nope.npy",
        "--labels",
        "nope2.npy",
    ]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("--data nope.npy") && stderr.contains("--labels nope2.npy"),
        "{stderr}"
    );
}
