//! Every bad input a user can give the CLI gets a diagnostic, snapshotted
//! here, and exit code 1 (never a panic's 101).
//!
//! Model files with mistakes live in tests/cases/errors/ (one mistake class
//! each); run-time cases use the small files in tests/cases/runtime/.

use std::path::Path;
mod common;

use common::lamina;

/// Runs a failing command and returns its stderr after checking exit code 1.
fn user_error(args: &[&str]) -> String {
    let (code, _, stderr) = lamina(args);
    assert_eq!(
        code, 1,
        "expected a user error (exit 1) from {args:?}, stderr:\n{stderr}"
    );
    assert!(stderr.contains("error"), "no error message from {args:?}");
    stderr
}

#[test]
fn every_bad_model_file_is_reported_with_a_snapshot() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cases/errors");
    let mut cases: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "lam"))
        .collect();
    cases.sort();
    assert!(
        cases.len() >= 15,
        "expected at least 15 error cases, found {}",
        cases.len()
    );
    for case in cases {
        let name = case.file_stem().unwrap().to_string_lossy().into_owned();
        let rel = format!("tests/cases/errors/{name}.lam");
        let stderr = user_error(&["check", &rel]);
        if name != "no_model" {
            assert!(
                stderr.starts_with(&format!("{rel}:")),
                "{name}: no PATH:LINE:COL:\n{stderr}"
            );
            assert!(stderr.contains('^'), "{name}: no caret:\n{stderr}");
        }
        insta::assert_snapshot!(format!("model_{name}"), stderr);
    }
}

#[test]
fn several_independent_errors_are_reported_at_once() {
    let stderr = user_error(&["check", "tests/cases/errors/several_errors.lam"]);
    assert_eq!(stderr.matches(": error:").count(), 3, "{stderr}");
}

const TINY: &str = "tests/cases/runtime/tiny.lam";

#[test]
fn unreadable_model_file() {
    insta::assert_snapshot!(user_error(&["check", "tests/cases/does_not_exist.lam"]));
}

#[test]
fn no_weight_file_for_parameters_without_initializers() {
    insta::assert_snapshot!(user_error(&["run", TINY]));
}

#[test]
fn missing_weight_names_the_tensor_and_suggests() {
    let stderr = user_error(&[
        "run",
        TINY,
        "--weights",
        "tests/cases/runtime/missing.safetensors",
    ]);
    assert!(
        stderr.contains("fc.weight") && stderr.contains("fc.bias"),
        "both missing tensors: {stderr}"
    );
    insta::assert_snapshot!(stderr);
}

#[test]
fn misshaped_weight_names_the_tensor_and_both_shapes() {
    let stderr = user_error(&[
        "run",
        TINY,
        "--weights",
        "tests/cases/runtime/misshaped.safetensors",
    ]);
    assert!(
        stderr.contains("[4, 2]") && stderr.contains("[4, 3]"),
        "{stderr}"
    );
    insta::assert_snapshot!(stderr);
}

#[test]
fn corrupt_weight_file() {
    insta::assert_snapshot!(user_error(&[
        "run",
        TINY,
        "--weights",
        "tests/cases/runtime/not_weights.safetensors"
    ]));
}

#[test]
fn wrong_input_dtype() {
    insta::assert_snapshot!(user_error(&[
        "run",
        TINY,
        "--weights",
        "tests/cases/runtime/good.safetensors",
        "--input",
        "x=tests/cases/runtime/x_int.npy"
    ]));
}

#[test]
fn wrong_input_shape() {
    insta::assert_snapshot!(user_error(&[
        "run",
        TINY,
        "--weights",
        "tests/cases/runtime/good.safetensors",
        "--input",
        "x=tests/cases/runtime/x_wide.npy"
    ]));
}

#[test]
fn float64_input_file() {
    insta::assert_snapshot!(user_error(&[
        "run",
        TINY,
        "--weights",
        "tests/cases/runtime/good.safetensors",
        "--input",
        "x=tests/cases/runtime/x_f64.npy"
    ]));
}

#[test]
fn input_the_model_does_not_have() {
    insta::assert_snapshot!(user_error(&[
        "run",
        TINY,
        "--weights",
        "tests/cases/runtime/good.safetensors",
        "--input",
        "z=tests/cases/runtime/x.npy"
    ]));
}

#[test]
fn malformed_flags_are_user_errors() {
    let stderr = user_error(&["run", TINY, "--bind", "batch=two"]);
    assert!(stderr.contains("batch=two"), "{stderr}");
    user_error(&["frobnicate"]);
    user_error(&["run"]);
}

#[test]
fn help_exits_zero_and_explains_each_subcommand() {
    for sub in ["check", "info", "graph", "run"] {
        let (code, stdout, _) = lamina(&[sub, "--help"]);
        assert_eq!(code, 0);
        assert!(stdout.contains("Usage: lamina"), "{sub} --help:\n{stdout}");
    }
}

#[test]
fn bind_of_a_symbol_the_model_lacks_suggests_the_closest() {
    let stderr = user_error(&[
        "run",
        TINY,
        "--weights",
        "tests/cases/runtime/good.safetensors",
        "--bind",
        "bacth=2",
    ]);
    assert!(
        stderr.contains("`bacth`") && stderr.contains("did you mean `batch`?"),
        "{stderr}"
    );
    insta::assert_snapshot!(stderr);
}

#[test]
fn every_independent_flag_error_is_reported_at_once() {
    let stderr = user_error(&[
        "run",
        TINY,
        "--weights",
        "tests/cases/runtime/good.safetensors",
        "--threads",
        "0",
        "--bind",
        "batch=4",
        "--bind",
        "batch=3",
        "--input",
        "x=tests/cases/runtime/x.npy",
        "--input",
        "x=tests/cases/runtime/x_wide.npy",
    ]);
    assert_eq!(stderr.matches("error:").count(), 3, "{stderr}");
    assert!(stderr.contains("--threads"), "{stderr}");
    assert!(stderr.contains("bound twice, to 4 and to 3"), "{stderr}");
    assert!(stderr.contains("--input x: given 2 times"), "{stderr}");
    insta::assert_snapshot!(stderr);
}

#[test]
fn flag_errors_are_reported_with_the_errors_of_a_model_that_does_not_load() {
    let stderr = user_error(&["run", "tests/cases/does_not_exist.lam", "--threads", "0"]);
    assert!(stderr.contains("--threads"), "{stderr}");
    assert!(stderr.contains("cannot read the model file"), "{stderr}");
}

#[test]
fn the_same_bind_twice_with_one_value_is_accepted() {
    let (code, stdout, stderr) = lamina(&[
        "run",
        TINY,
        "--weights",
        "tests/cases/runtime/good.safetensors",
        "--bind",
        "batch=2",
        "--bind",
        "batch=2",
        "--threads",
        "1",
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("y: f32[2, 3]"), "{stdout}");
}

#[test]
fn run_time_errors_point_at_the_failing_node() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("lookup.lam");
    std::fs::write(
        &model,
        "model lookup {\n  input ids: i64[n]\n  param table: f32[4, 2] = ones\n  output rows = gather(table, ids, axis=0)\n}\n",
    )
    .unwrap();
    lamina::runtime::write_npy(
        &dir.path().join("ids.npy"),
        &lamina::tensor::Tensor::i64(vec![2], vec![1, 9]),
    )
    .unwrap();
    let model = model.to_string_lossy().into_owned();
    for backend in ["jit", "interp"] {
        let stderr = user_error(&["run", &model, "--backend", backend]);
        assert!(
            stderr.starts_with(&format!("{model}:4:")) && stderr.contains("gather: id 9"),
            "{backend}: {stderr}"
        );
        assert!(
            stderr.contains("gather(table, ids, axis=0)"),
            "{backend}: {stderr}"
        );
    }
}

#[test]
fn bench_reports_every_bad_flag_at_once() {
    let stderr = user_error(&[
        "bench",
        "models/bench/mlp.lam",
        "--threads",
        "0",
        "--min-time=-1",
        "--profile",
        "--backend",
        "interp",
    ]);
    assert_eq!(stderr.matches("error:").count(), 3, "{stderr}");
    assert!(stderr.contains("--threads"), "{stderr}");
}

#[test]
fn an_input_given_by_file_and_by_text_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("ids.lam");
    std::fs::write(
        &model,
        "model ids {\n  input input_ids: i64[b, s]\n  output y = cast(input_ids, f32)\n}\n",
    )
    .unwrap();
    // An empty tokenizer file: the flag clash must be reported before it is read.
    let tokenizer = dir.path().join("tokenizer.json");
    std::fs::write(&tokenizer, "{}").unwrap();
    let model = model.to_string_lossy().into_owned();
    let stderr = user_error(&[
        "run",
        &model,
        "--text",
        "hello",
        "--input",
        "input_ids=ids.npy",
    ]);
    assert!(
        stderr.contains("--input input_ids=ids.npy: --text fills `input_ids`"),
        "{stderr}"
    );
}
