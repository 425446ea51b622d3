//! Saliency maps: the JIT-compiled gradient of a class score with respect to
//! the input equals central finite differences of that score on the
//! reference interpreter, the map is its absolute value's maximum over
//! channels, and `lamina saliency` draws it on digits (and, with the
//! checkpoint, on EfficientNet-Lite0).

#[path = "common/mod.rs"]
mod common;

use std::collections::HashMap;

use common::lamina;
use lamina::engine::saliency::SaliencyModel;
use lamina::engine::{Backend, ErrorKind, Model, Options, Weights};
use lamina::plot::heat_color;
use lamina::plot::heatmap::panel_pixel;
use lamina::tensor::Tensor;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Two channels of 3x4 pixels, a smooth (tanh) hidden layer, 5 classes; the
/// logits are also an output of their own for the finite differences.
const SMALL: &str = "model small {
  input x: f32[batch, 2, 3, 4]
  param w1: f32[24, 16] = normal(std=0.5, seed=3)
  param b1: f32[16] = uniform(low=-0.5, high=0.5, seed=4)
  param w2: f32[16, 5] = normal(std=0.7, seed=5)
  h = tanh(flatten(x) @ w1 + b1)
  logits = h @ w2
  output probs = softmax(logits, axis=-1)
  output scores = logits
}
";

fn small() -> Model {
    Model::from_source("small.lam", SMALL).unwrap()
}

fn random_input(seed: u64, batch: usize) -> Tensor {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let n = batch * 24;
    Tensor::f32(
        vec![batch, 2, 3, 4],
        (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect(),
    )
}

/// d logits[example, class] / d x by central differences on the interpreter.
fn finite_differences(x: &Tensor, example: usize, class: usize) -> Vec<f64> {
    let session = small()
        .compile(
            Weights::None,
            &Options {
                backend: Backend::Interp,
                ..Options::default()
            },
        )
        .unwrap();
    let score = |values: Vec<f32>| -> f64 {
        let inputs = HashMap::from([("x".to_string(), Tensor::f32(x.shape().to_vec(), values))]);
        let outputs = session.run(&inputs).unwrap();
        let scores = &outputs.iter().find(|(n, _)| n == "scores").unwrap().1;
        f64::from(scores.as_f32().unwrap()[example * 5 + class])
    };
    let base = x.as_f32().unwrap().to_vec();
    let eps = 1e-2f32;
    (0..base.len())
        .map(|i| {
            let mut plus = base.clone();
            plus[i] += eps;
            let mut minus = base.clone();
            minus[i] -= eps;
            (score(plus) - score(minus)) / (2.0 * f64::from(eps))
        })
        .collect()
}

fn close(got: f64, want: f64) -> bool {
    (got - want).abs() <= 2e-3 + 1e-2 * want.abs()
}

#[test]
fn gradient_and_map_match_finite_differences() {
    let saliency =
        SaliencyModel::new(&small(), Weights::None, &Options::default(), None, None).unwrap();
    assert_eq!(saliency.input(), "x");
    assert_eq!(saliency.classes(), 5);
    let x = random_input(11, 1);
    for class in [None, Some(0), Some(3)] {
        let result = saliency
            .run(HashMap::from([("x".to_string(), x.clone())]), class)
            .unwrap();
        let scores = result.scores.as_f32().unwrap();
        let predicted = (0..5).fold(0, |b, k| if scores[k] > scores[b] { k } else { b });
        assert_eq!(result.predicted, [predicted]);
        let k = class.unwrap_or(predicted);
        assert_eq!(result.classes, [k]);
        let fd = finite_differences(&x, 0, k);
        let grad = result.gradient.as_f32().unwrap();
        assert_eq!(result.gradient.shape(), [1, 2, 3, 4]);
        for (i, (&g, &d)) in grad.iter().zip(&fd).enumerate() {
            assert!(
                close(f64::from(g), d),
                "class {k}, x[{i}]: autodiff {g}, finite differences {d}"
            );
        }
        assert!(
            fd.iter().any(|d| d.abs() > 0.05),
            "a gradient worth checking"
        );
        let [map] = &result.maps(None).unwrap()[..] else {
            panic!("one example")
        };
        assert_eq!((map.channels, map.height, map.width), (2, 3, 4));
        assert_eq!((map.class, map.predicted), (k, predicted));
        for p in 0..12 {
            let want = fd[p].abs().max(fd[12 + p].abs());
            assert!(
                close(f64::from(map.map[p]), want),
                "pixel {p}: map {}, finite differences {want}",
                map.map[p]
            );
            assert_eq!(map.picture[p * 2], x.as_f32().unwrap()[p]);
            assert_eq!(map.picture[p * 2 + 1], x.as_f32().unwrap()[12 + p]);
        }
    }
}

#[test]
fn every_example_of_a_batch_gets_its_own_class() {
    let saliency =
        SaliencyModel::new(&small(), Weights::None, &Options::default(), None, None).unwrap();
    // Enough examples that their predicted classes differ.
    let x = random_input(12, 8);
    let result = saliency
        .run(HashMap::from([("x".to_string(), x.clone())]), None)
        .unwrap();
    let mut distinct = result.predicted.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert!(distinct.len() > 1, "predictions {:?}", result.predicted);
    let grad = result.gradient.as_f32().unwrap();
    for e in [0, 7] {
        let fd = finite_differences(&x, e, result.predicted[e]);
        for i in 0..24 {
            let (g, d) = (f64::from(grad[e * 24 + i]), fd[e * 24 + i]);
            assert!(
                close(g, d),
                "example {e}, x[{i}]: autodiff {g}, finite differences {d}"
            );
        }
        // The score of example e does not depend on the other examples.
        assert!(fd.iter().enumerate().all(|(i, d)| i / 24 == e || *d == 0.0));
    }
    assert_eq!(result.maps(None).unwrap().len(), 8);
}

#[test]
fn bad_requests_are_errors() {
    let model = small();
    let saliency =
        SaliencyModel::new(&model, Weights::None, &Options::default(), None, None).unwrap();
    let x = random_input(1, 1);
    let err = saliency
        .run(HashMap::from([("x".to_string(), x.clone())]), Some(5))
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("class 5 is out of range: the scores have 5 classes"),
        "{err}"
    );
    let err = saliency.run(HashMap::new(), None).unwrap_err();
    assert!(err.to_string().contains("input `x` is missing"), "{err}");
    let err = SaliencyModel::new(&model, Weights::None, &Options::default(), Some("y"), None)
        .err()
        .unwrap();
    assert!(err.to_string().contains("no f32 input `y`"), "{err}");
    let err = SaliencyModel::new(
        &model,
        Weights::None,
        &Options::default(),
        None,
        Some("nope"),
    )
    .err()
    .unwrap();
    assert!(
        err.to_string()
            .contains("no output `nope` (outputs: probs, scores)"),
        "{err}"
    );
    let ids = Model::from_source(
        "ids.lam",
        "model ids {\n  input t: i64[n]\n  param e: f32[10, 4] = zeros\n  output y = gather(e, t)\n}\n",
    )
    .unwrap();
    let err = SaliencyModel::new(&ids, Weights::None, &Options::default(), None, None)
        .err()
        .unwrap();
    assert!(matches!(err.kind(), ErrorKind::Saliency(_)), "{err}");
    assert!(err.to_string().contains("no f32 input"), "{err}");
}

#[test]
fn an_op_without_a_gradient_rule_is_located() {
    // A slice that keeps a symbolic part of an axis has no derivative rule.
    let model = Model::from_source(
        "nograd.lam",
        "model nograd {\n  input x: f32[n, 4]\n  input k: f32[m, 4]\n  param w: f32[4, 3] = xavier(seed=1)\n  output y = slice(x, axis=0, end=m) @ w + k @ w\n}\n",
    )
    .unwrap();
    let err = SaliencyModel::new(&model, Weights::None, &Options::default(), None, None)
        .err()
        .unwrap();
    assert!(
        err.to_string().contains("several f32 inputs (x, k)"),
        "{err}"
    );
    let err = SaliencyModel::new(&model, Weights::None, &Options::default(), Some("x"), None)
        .err()
        .unwrap();
    assert!(matches!(err.kind(), ErrorKind::Grad(_)), "{err}");
    assert!(
        err.to_string()
            .starts_with("nograd.lam:5:14: error: slice: no gradient rule"),
        "{err}"
    );
}

#[test]
fn cli_draws_the_digit_map() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("map.png");
    let (code, stdout, stderr) = lamina(&[
        "saliency",
        "models/digits/digits.lam",
        "--input",
        "models/digits/x.npy",
        "--index",
        "3",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("over 8x8 (1 channel)"), "{stdout}");
    // The same map from the library, to check the drawn pixels against.
    let model = Model::load("models/digits/digits.lam").unwrap();
    let saliency = SaliencyModel::new(
        &model,
        Weights::Conventional,
        &Options::default(),
        None,
        None,
    )
    .unwrap();
    let x = lamina::runtime::npy::read_npy("models/digits/x.npy".as_ref()).unwrap();
    let row = Tensor::f32(vec![1, 64], x.as_f32().unwrap()[3 * 64..4 * 64].to_vec());
    let result = saliency
        .run(HashMap::from([("x".to_string(), row)]), None)
        .unwrap();
    let labels = lamina::runtime::npy::read_npy("models/digits/labels.npy".as_ref()).unwrap();
    assert_eq!(
        result.predicted[0] as f64,
        labels.to_f64_vec()[3],
        "digit 3 is classified right"
    );
    assert!(
        stdout.contains(&format!("class {}", result.predicted[0])),
        "{stdout}"
    );
    let [map] = &result.maps(None).unwrap()[..] else {
        panic!("one map")
    };
    let image = image::open(&out).unwrap().to_rgb8();
    let (x0, y0) = panel_pixel(0, 0, 0, 8, 8);
    let (x_end, y_end) = panel_pixel(2, 7, 7, 8, 8);
    assert!(image.width() > x_end && image.height() > y_end);
    assert!(x0 > 0 && y0 > 0);
    let max = map.map.iter().copied().fold(0.0f32, f32::max);
    assert!(max > 0.0);
    for y in 0..8 {
        for x in 0..8 {
            let (px, py) = panel_pixel(1, y, x, 8, 8);
            assert_eq!(
                image.get_pixel(px + 1, py + 1).0,
                heat_color(map.map[y * 8 + x] / max),
                "heat panel pixel ({y}, {x})"
            );
        }
    }
}

#[test]
fn cli_reports_bad_flags_together() {
    let (code, _, stderr) = lamina(&[
        "saliency",
        "models/digits/digits.lam",
        "--input",
        "models/digits/x.npy",
        "--index",
        "450",
        "--threads",
        "0",
    ]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("--index 450 is out of range: the file has 450 examples"),
        "{stderr}"
    );
    assert!(stderr.contains("--threads"), "{stderr}");
    let (code, _, stderr) = lamina(&[
        "saliency",
        "models/digits/digits.lam",
        "--input",
        "models/digits/x.npy",
        "--class",
        "10",
    ]);
    assert_eq!(code, 1);
    assert!(stderr.contains("class 10 is out of range"), "{stderr}");
}
