//! Ops added by following docs/adding-an-op.md, end to end through the
//! engine on both backends: `sin` and `cos`, in the language reference's
//! sinusoidal position code example.

use std::collections::HashMap;

use lamina::engine::{Backend, Model, Options, Weights};
use lamina::tensor::Tensor;

/// The model of the `sin`/`cos` example in docs/language.md.
const POSITIONS: &str = "
model positions {
  input pos: f32[seq, 1]
  param freq: f32[1, 32]
  angle = pos @ freq
  output code = concat(sin(angle), cos(angle), axis=-1)
}
";

fn run(backend: Backend, pos: &Tensor, freq: &Tensor) -> Tensor {
    let model = Model::from_source("positions.lam", POSITIONS).unwrap_or_else(|e| panic!("{e}"));
    let weights = Weights::Tensors(HashMap::from([("freq".to_string(), freq.clone())]));
    let options = Options {
        backend,
        ..Options::default()
    };
    let session = model
        .compile(weights, &options)
        .unwrap_or_else(|e| panic!("{e}"));
    let mut outputs = session
        .run(&HashMap::from([("pos".to_string(), pos.clone())]))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(outputs.len(), 1);
    outputs.remove(0).1
}

#[test]
fn sin_and_cos_match_f64_on_both_backends() {
    let seq = 50;
    // Positions 0..49 and frequencies 1e-4..1: angles from 0 to about 49
    // radians, several periods.
    let pos: Vec<f32> = (0..seq).map(|p| p as f32).collect();
    let freq: Vec<f32> = (0..32)
        .map(|i| 10f32.powf(-4.0 * i as f32 / 31.0))
        .collect();
    let pos_t = Tensor::f32(vec![seq, 1], pos.clone());
    let freq_t = Tensor::f32(vec![1, 32], freq.clone());
    for backend in [Backend::Interp, Backend::Jit] {
        let out = run(backend, &pos_t, &freq_t);
        assert_eq!(out.shape(), &[seq, 64]);
        let values = out.as_f32().expect("f32 output");
        for p in 0..seq {
            for i in 0..32 {
                // A product of two f32 rounded once, as a k = 1 matmul gives it.
                let angle = f64::from(pos[p] * freq[i]);
                for (column, expected) in [(i, angle.sin()), (32 + i, angle.cos())] {
                    let got = f64::from(values[p * 64 + column]);
                    let tolerance = 1e-6 + 1e-6 * expected.abs();
                    assert!(
                        (got - expected).abs() <= tolerance,
                        "{}: position {p}, column {column}: {got} vs {expected}",
                        backend.name()
                    );
                }
            }
        }
    }
}

#[test]
fn sin_and_cos_are_builtins_with_one_tensor_argument() {
    let bad = "model m {\n  input x: f32[3]\n  output y = sin(x, x)\n}\n";
    let err = Model::from_source("bad.lam", bad).unwrap_err().to_string();
    assert!(err.contains("sin"), "{err}");
    let unknown = "model m {\n  input x: f32[3]\n  output y = sine(x)\n}\n";
    let err = Model::from_source("bad.lam", unknown)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("did you mean") && err.contains("`sin`"),
        "{err}"
    );
}

/// The `gather_elements`/`argmax` example of docs/language.md.
const PICKS: &str = "
model picks {
  input scores: f32[batch, 10]
  input labels: i64[batch, 1]
  output at_label = gather_elements(scores, labels, axis=1)
  output predicted = argmax(scores, axis=1)
  output lowest = argmin(scores, axis=-1, keepdims=true, last=true)
}
";

fn run_picks(backend: Backend, scores: &Tensor, labels: &Tensor) -> Result<Vec<Tensor>, String> {
    let model = Model::from_source("picks.lam", PICKS).map_err(|e| e.render())?;
    let options = Options {
        backend,
        ..Options::default()
    };
    let session = model
        .compile(Weights::None, &options)
        .map_err(|e| e.render())?;
    let outputs = session
        .run(&HashMap::from([
            ("scores".to_string(), scores.clone()),
            ("labels".to_string(), labels.clone()),
        ]))
        .map_err(|e| e.render())?;
    Ok(outputs.into_iter().map(|(_, t)| t).collect())
}

#[test]
fn gather_elements_and_argmax_pick_per_row_on_both_backends() {
    let batch = 7;
    // Row r holds (c * 7 + r * 3) mod 10 for column c, with a repeated
    // minimum 0.5 in columns 2 and 8 of every row: a tie argmin with
    // `last=true` must resolve to 8.
    let mut scores = Vec::new();
    for r in 0..batch {
        for c in 0..10 {
            let v = if c == 2 || c == 8 {
                -0.5
            } else {
                ((c * 7 + r * 3) % 10) as f32
            };
            scores.push(v);
        }
    }
    let labels: Vec<i64> = (0..batch as i64)
        .map(|r| if r % 2 == 0 { r } else { -r })
        .collect();
    let scores_t = Tensor::f32(vec![batch, 10], scores.clone());
    let labels_t = Tensor::i64(vec![batch, 1], labels.clone());
    for backend in [Backend::Interp, Backend::Jit] {
        let out = run_picks(backend, &scores_t, &labels_t).unwrap_or_else(|e| panic!("{e}"));
        let at_label = out[0].as_f32().expect("f32");
        for r in 0..batch {
            let column = labels[r].rem_euclid(10) as usize;
            assert_eq!(
                at_label[r],
                scores[r * 10 + column],
                "{}: row {r}",
                backend.name()
            );
        }
        let argmax = match out[1].data() {
            lamina::tensor::TensorData::I64(v) => v.clone(),
            other => panic!("argmax gave {:?}", other.dtype()),
        };
        for r in 0..batch {
            let row = &scores[r * 10..r * 10 + 10];
            let best = (0..10).fold(0, |b, c| if row[c] > row[b] { c } else { b });
            assert_eq!(argmax[r], best as i64, "{}: row {r}", backend.name());
        }
        assert_eq!(out[2].shape(), &[batch, 1]);
        assert_eq!(
            out[2].data(),
            &lamina::tensor::TensorData::I64(vec![8; batch]),
            "{}",
            backend.name()
        );
    }
}

#[test]
fn gather_elements_rejects_an_id_out_of_range_and_a_wrong_rank() {
    let scores = Tensor::f32(vec![1, 10], vec![0.0; 10]);
    let labels = Tensor::i64(vec![1, 1], vec![10]);
    for backend in [Backend::Interp, Backend::Jit] {
        let err = run_picks(backend, &scores, &labels).unwrap_err();
        assert!(
            err.contains("picks.lam:5:") && err.contains("id 10") && err.contains("out of range"),
            "{}: {err}",
            backend.name()
        );
    }
    let bad = "model m {\n  input x: f32[3, 4]\n  input i: i64[3]\n  output y = gather_elements(x, i, axis=1)\n}\n";
    let err = Model::from_source("bad.lam", bad).unwrap_err().render();
    assert!(err.contains("bad.lam:4:") && err.contains("rank"), "{err}");
}

/// `topk`, `cumsum` and `scatter_elements` together: the three best scores
/// per row, the running sum of each row, and each row's best score moved to
/// column 0 with the others kept.
const RANKS: &str = "
model ranks {
  input scores: f32[batch, 6]
  best = topk(scores, k=3, axis=1)
  output best_scores = gather_elements(scores, best, axis=1)
  output running = cumsum(scores, axis=1, exclusive=true)
  top = slice(best, axis=1, start=0, end=1)
  zeros = slice(cast(best, f32) * 0.0, axis=1, start=0, end=1)
  output cleared = scatter_elements(scores, top, zeros, axis=1)
}
";

#[test]
fn topk_cumsum_and_scatter_elements_agree_with_a_plain_loop_on_both_backends() {
    let batch = 5;
    let scores: Vec<f32> = (0..batch * 6)
        .map(|i| ((i * 37 + 11) % 17) as f32 - 8.0)
        .collect();
    let scores_t = Tensor::f32(vec![batch, 6], scores.clone());
    for backend in [Backend::Interp, Backend::Jit] {
        let model = Model::from_source("ranks.lam", RANKS).unwrap_or_else(|e| panic!("{e}"));
        let options = Options {
            backend,
            ..Options::default()
        };
        let session = model
            .compile(Weights::None, &options)
            .unwrap_or_else(|e| panic!("{e}"));
        let out = session
            .run(&HashMap::from([("scores".to_string(), scores_t.clone())]))
            .unwrap_or_else(|e| panic!("{e}"));
        let (best, running, cleared) = (
            out[0].1.as_f32().unwrap(),
            out[1].1.as_f32().unwrap(),
            out[2].1.as_f32().unwrap(),
        );
        for r in 0..batch {
            let row = &scores[r * 6..r * 6 + 6];
            let mut sorted = row.to_vec();
            sorted.sort_by(|a, b| b.partial_cmp(a).unwrap());
            assert_eq!(
                &best[r * 3..r * 3 + 3],
                &sorted[..3],
                "{}: row {r}",
                backend.name()
            );
            let mut acc = 0.0;
            for c in 0..6 {
                assert_eq!(running[r * 6 + c], acc, "{}: row {r}", backend.name());
                acc += row[c];
            }
            let top = (0..6).fold(0, |b, c| if row[c] > row[b] { c } else { b });
            for c in 0..6 {
                let want = if c == top { 0.0 } else { row[c] };
                assert_eq!(cleared[r * 6 + c], want, "{}: row {r}", backend.name());
            }
        }
    }
}

#[test]
fn topk_asking_for_more_than_the_axis_has_is_a_located_error() {
    let bad = "model m {\n  input x: f32[2, 4]\n  output y = topk(x, k=5)\n}\n";
    let err = Model::from_source("bad.lam", bad).unwrap_err().render();
    assert!(err.contains("bad.lam:3:") && err.contains("k = 5"), "{err}");
}
