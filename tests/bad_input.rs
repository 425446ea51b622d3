//! Bad input that once gave a wrong answer, a panic, an abort or a hang now
//! gets a located error and exit code 1 (docs/bad-input.md lists the classes).

mod common;

use common::lamina;

/// Runs a failing command and returns its stderr after checking exit code 1.
fn user_error(args: &[&str]) -> String {
    let (code, stdout, stderr) = lamina(args);
    assert_eq!(
        code, 1,
        "expected a user error (exit 1) from {args:?}, stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stderr.contains("error"), "no error message from {args:?}");
    stderr
}

const DIR: &str = "tests/cases/bad_input";

fn case(name: &str) -> String {
    format!("{DIR}/{name}")
}

/// Both backends must refuse the same input with the same words.
fn on_both_backends(args: &[&str]) -> String {
    let jit = user_error(&[args, &["--backend", "jit"]].concat());
    let interp = user_error(&[args, &["--backend", "interp"]].concat());
    assert_eq!(jit, interp, "the backends disagree");
    jit
}

#[test]
fn a_parameter_whose_element_count_overflows_is_refused_by_info_and_run() {
    // Before: `info` said 0 values and `run` printed y == x with exit 0.
    let model = "tests/cases/errors/too_large_param.lam";
    let info = user_error(&["info", model]);
    assert!(info.contains("too large"), "{info}");
    let run = user_error(&["run", model, "--input", &format!("x={}", case("x_4.npy"))]);
    assert_eq!(info, run);
}

#[test]
fn a_symbol_product_that_overflows_does_not_accept_an_empty_input() {
    // Before: a*b wrapped to 0 and a (0, 4) input was accepted.
    let stderr = on_both_backends(&[
        "run",
        &case("symbol_product.lam"),
        "--bind",
        "a=4294967296",
        "--bind",
        "b=4294967296",
        "--input",
        &format!("x={}", case("x_0x4.npy")),
    ]);
    insta::assert_snapshot!(stderr);
}

#[test]
fn a_slice_end_bound_past_its_axis_is_an_error_on_both_backends() {
    // Before: the interpreter refused it; the JIT panicked in a copy kernel.
    let stderr = on_both_backends(&[
        "run",
        &case("slice_past_end.lam"),
        "--input",
        &format!("x={}", case("x_2x10.npy")),
        "--input",
        &format!("t={}", case("t_12.npy")),
    ]);
    assert!(stderr.starts_with(&format!("{}:4:14:", case("slice_past_end.lam"))));
    insta::assert_snapshot!(stderr);
}

#[test]
fn a_bound_symbol_that_makes_a_parameter_too_large_is_refused() {
    // Before: "capacity overflow" panic (exit 101).
    let stderr = on_both_backends(&[
        "run",
        &case("huge_seeded_param.lam"),
        "--bind",
        "n=4611686018427387904",
        "--input",
        &format!("x={}", case("x_4.npy")),
    ]);
    insta::assert_snapshot!(stderr);
}

#[test]
fn a_file_with_cr_only_line_ends_reads_as_lines() {
    // Before: one long comment line, "defines no model".
    let (code, stdout, stderr) = lamina(&["check", &case("cr_only.lam")]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("1 input(s)"), "{stdout}");
}

#[test]
fn a_model_file_that_is_not_utf8_is_located_at_the_first_bad_byte() {
    let stderr = user_error(&["check", &case("not_utf8.lam")]);
    assert!(stderr.starts_with(&format!("{}:3:8:", case("not_utf8.lam"))));
    insta::assert_snapshot!(stderr);
}

#[test]
fn an_unused_tensor_of_an_unsupported_dtype_does_not_block_loading() {
    let (code, stdout, stderr) = lamina(&[
        "run",
        &case("uses_w.lam"),
        "--weights",
        &case("extra_f64.safetensors"),
        "--input",
        &format!("x={}", case("x_4.npy")),
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("[1.000000, 2.000000, 3.000000, 4.000000]"),
        "{stdout}"
    );
    assert!(stderr.contains("not used by the model: step"), "{stderr}");
}

#[test]
fn every_unreadable_weight_the_model_binds_is_reported_at_once() {
    let stderr = user_error(&[
        "run",
        &case("uses_two_bad.lam"),
        "--weights",
        &case("two_bad.safetensors"),
        "--input",
        &format!("x={}", case("x_4.npy")),
    ]);
    assert_eq!(stderr.matches(": error:").count(), 2, "{stderr}");
    insta::assert_snapshot!(stderr);
}

#[test]
fn parameters_over_the_memory_budget_are_refused_before_allocation() {
    // Before: `--bind n=2^40` aborted with "memory allocation failed" (134).
    let stderr = user_error(&[
        "run",
        &case("huge_seeded_param.lam"),
        "--bind",
        "n=1099511627776",
        "--input",
        &format!("x={}", case("x_4.npy")),
    ]);
    assert!(
        stderr.contains("needs 4.0 TiB of memory, more than the memory budget"),
        "{stderr}"
    );
    assert!(
        stderr.contains("parameter `w` f32[1099511627776]"),
        "{stderr}"
    );
    let stderr = on_both_backends(&[
        "run",
        &case("big_init.lam"),
        "--input",
        &format!("x={}", case("x_4.npy")),
        "--max-memory",
        "1M",
    ]);
    insta::assert_snapshot!(stderr);
}

#[test]
fn intermediate_values_over_the_memory_budget_are_refused_on_both_backends() {
    let args = [
        "run",
        &case("big_intermediates.lam"),
        "--input",
        &format!("x={}", case("x_64x64.npy")),
    ];
    for backend in ["jit", "interp"] {
        let small = [&args[..], &["--max-memory", "20K", "--backend", backend]].concat();
        let stderr = user_error(&small);
        assert!(
            stderr.contains("running the model needs")
                && stderr.contains("more than the memory budget of 20.0 KiB (--max-memory)")
                && stderr.contains("matmul result f32[64, 64] (16.0 KiB)"),
            "{backend}: {stderr}"
        );
        let enough = [&args[..], &["--max-memory", "1M", "--backend", backend]].concat();
        let (code, _, stderr) = lamina(&enough);
        assert_eq!(code, 0, "{backend}: {stderr}");
    }
    let stderr = user_error(&[&args[..], &["--max-memory", "12Q"]].concat());
    assert!(stderr.contains("`12Q` is not a size"), "{stderr}");
}

#[test]
fn bench_checks_generated_inputs_and_runs_against_the_budget() {
    let stderr = user_error(&[
        "bench",
        &case("huge_input.lam"),
        "--bind",
        "n=1099511627776",
        "--runs",
        "1",
        "--min-time",
        "0",
    ]);
    assert!(
        stderr.contains("generating the inputs needs 4.0 TiB of memory"),
        "{stderr}"
    );
    for backend in ["jit", "interp"] {
        let stderr = user_error(&[
            "bench",
            &case("big_intermediates.lam"),
            "--max-memory",
            "20K",
            "--runs",
            "1",
            "--min-time",
            "0",
            "--backend",
            backend,
        ]);
        assert!(stderr.contains("running the model needs"), "{stderr}");
    }
}

#[test]
fn file_headers_claiming_4_gib_are_checked_against_the_file_not_allocated() {
    // Each file is 100-odd bytes; the error comes from comparing the header
    // with the file's length (a 4 GiB allocation would take seconds or abort).
    let npy = user_error(&[
        "run",
        &case("huge_input.lam"),
        "--input",
        &format!("x={}", case("claims_4gib.npy")),
    ]);
    assert!(
        npy.contains("announces 4294967296 data bytes, the file holds 16"),
        "{npy}"
    );
    let st = user_error(&[
        "run",
        &case("uses_w.lam"),
        "--input",
        &format!("x={}", case("x_4.npy")),
        "--weights",
        &case("claims_4gib.safetensors"),
    ]);
    assert!(st.contains("not a valid safetensors file"), "{st}");
}

#[test]
fn an_array_numpy_cannot_describe_is_not_written() {
    // Before: a reshape to heads=2^63 over an empty axis wrote such a file.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("o.npy");
    let empty_but_huge = lamina::tensor::Tensor::f32(vec![0, 1 << 63], vec![]);
    let err = lamina::runtime::write_npy(&path, &empty_but_huge).unwrap_err();
    assert!(err.to_string().contains("larger than numpy"), "{err}");
    assert!(!path.exists());
    let fine = lamina::tensor::Tensor::f32(vec![0, 4], vec![]);
    lamina::runtime::write_npy(&path, &fine).unwrap();
    assert_eq!(lamina::runtime::read_npy(&path).unwrap(), fine);
}
