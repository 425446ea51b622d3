//! `lamina run`, `check`, `info` and `graph` on real models, as a user runs them.

mod common;

use common::lamina;

#[test]
fn digits_main_job_prints_classes_and_accuracy() {
    let (code, stdout, stderr) = lamina(&["run", "models/digits/digits.lam"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("predicted: [2 0 4 9"), "{stdout}");
    // train.py measured 438/450 with numpy on the same files.
    assert!(
        stdout.contains("accuracy: 0.9733 (438/450 correct"),
        "{stdout}"
    );
}

#[test]
fn run_writes_outputs_that_match_numpy() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("y.npy");
    let (code, _, stderr) = lamina(&[
        "run",
        "tests/cases/runtime/tiny.lam",
        "--weights",
        "tests/cases/runtime/good.safetensors",
        "--output",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stderr}");
    let got = lamina::runtime::read_npy(&out).unwrap();
    let want =
        lamina::runtime::read_npy(std::path::Path::new("tests/cases/runtime/expected_y.npy"))
            .unwrap();
    assert_eq!(got.shape(), want.shape());
    for (g, w) in got.to_f64_vec().iter().zip(want.to_f64_vec()) {
        assert!((g - w).abs() <= 1e-5 * w.abs().max(1.0), "{g} vs {w}");
    }
}

#[test]
fn output_dir_writes_one_file_per_output() {
    let dir = tempfile::tempdir().unwrap();
    let (code, _, stderr) = lamina(&[
        "run",
        "models/digits/digits.lam",
        "--output-dir",
        dir.path().to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stderr}");
    let probs = lamina::runtime::read_npy(&dir.path().join("probs.npy")).unwrap();
    assert_eq!(probs.shape(), [450, 10]);
}

#[test]
fn info_json_follows_the_contract() {
    let (code, stdout, _) = lamina(&["info", "models/digits/digits.lam", "--json"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["inputs"][0]["name"], "x");
    assert_eq!(v["inputs"][0]["dtype"], "f32");
    assert_eq!(v["inputs"][0]["shape"], serde_json::json!(["batch", 64]));
    assert_eq!(v["params"].as_array().unwrap().len(), 4);
    assert_eq!(v["outputs"][0]["shape"], serde_json::json!(["batch", 10]));
}

#[test]
fn check_accepts_every_shipped_model() {
    let mut models = Vec::new();
    for entry in walk("models") {
        if entry.extension().is_some_and(|e| e == "lam") {
            models.push(entry);
        }
    }
    assert!(models.len() >= 3, "{models:?}");
    for m in models {
        let (code, stdout, stderr) = lamina(&["check", m.to_str().unwrap()]);
        assert_eq!(code, 0, "{}: {stderr}", m.display());
        assert!(stdout.contains(": ok:"));
    }
}

#[test]
fn graph_prints_text_and_dot() {
    let (code, text, _) = lamina(&["graph", "models/digits/digits.lam"]);
    assert_eq!(code, 0);
    insta::assert_snapshot!("digits_graph", text);
    let (code, dot, _) = lamina(&["graph", "models/digits/digits.lam", "--format", "dot"]);
    assert_eq!(code, 0);
    assert!(dot.starts_with("digraph \"digits\" {") && dot.trim_end().ends_with('}'));
    // One edge per operand (10 in digits) and one to the output.
    assert_eq!(dot.matches(" -> ").count(), 11, "{dot}");
    assert!(dot.contains("-> out_probs;"));
}

fn walk(dir: &str) -> Vec<std::path::PathBuf> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    let mut out = Vec::new();
    let mut stack = vec![root];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                if p.file_name().is_some_and(|n| n != "cache") {
                    stack.push(p);
                }
            } else {
                out.push(p);
            }
        }
    }
    out
}
