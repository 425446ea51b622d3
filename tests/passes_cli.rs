//! `lamina graph --passes/--stats/--max-steps` end to end.

use std::path::Path;
use std::process::{Command, Output};

fn lamina(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lamina"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("lamina runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).expect("utf-8")
}

const DIGITS: &str = "models/digits/digits.lam";

#[test]
fn passes_all_prints_the_fused_graph_and_stats_go_to_stderr() {
    assert!(Path::new(env!("CARGO_MANIFEST_DIR")).join(DIGITS).exists());
    let plain = lamina(&["graph", DIGITS, "--passes", "all"]);
    assert!(plain.status.success(), "{}", text(&plain.stderr));
    let stdout = text(&plain.stdout);
    assert!(stdout.starts_with("graph digits\n"), "{stdout}");
    assert_eq!(stdout.matches("fused_linear").count(), 2, "{stdout}");
    assert!(stdout.contains("activation=relu"), "{stdout}");
    assert!(!stdout.contains("matmul("), "{stdout}");

    let with_stats = lamina(&["graph", DIGITS, "--passes", "all", "--stats"]);
    assert!(with_stats.status.success());
    assert_eq!(
        text(&with_stats.stdout),
        stdout,
        "--stats leaves stdout alone"
    );
    let stats = text(&with_stats.stderr);
    assert!(stats.contains("nodes: 11 -> 8"), "{stats}");
    assert!(stats.contains("fuse-linear"), "{stats}");
}

#[test]
fn a_pass_list_runs_only_those_passes() {
    let out = lamina(&["graph", DIGITS, "--passes", "dce,fuse-elementwise"]);
    assert!(out.status.success());
    let stdout = text(&out.stdout);
    assert!(stdout.contains("matmul("), "{stdout}");
    assert!(stdout.contains("fused_elementwise"), "{stdout}");
    assert!(!stdout.contains("fused_linear"), "{stdout}");
}

#[test]
fn max_steps_stops_early_and_names_the_last_step() {
    let out = lamina(&["graph", DIGITS, "--max-steps", "1", "--stats"]);
    assert!(out.status.success());
    assert_eq!(text(&out.stdout).matches("fused_linear").count(), 1);
    let stats = text(&out.stderr);
    assert!(stats.contains("stopped at the step limit"), "{stats}");
    assert!(
        stats.contains(
            "last step: #1 fuse-linear: matmul+bias+relu at models/digits/digits.lam:12:"
        ),
        "{stats}"
    );
    let none = lamina(&["graph", DIGITS, "--max-steps", "0"]);
    assert_eq!(
        text(&none.stdout),
        text(&lamina(&["graph", DIGITS]).stdout),
        "zero steps change nothing"
    );
}

#[test]
fn unknown_passes_are_user_errors() {
    let out = lamina(&["graph", DIGITS, "--passes", "dce,fold-everything"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("unknown pass `fold-everything`"),
        "{stderr}"
    );
    assert!(
        stderr.contains("fuse-linear"),
        "the message lists the passes: {stderr}"
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn dot_output_works_after_passes() {
    let out = lamina(&["graph", DIGITS, "--passes", "all", "--format", "dot"]);
    assert!(out.status.success());
    let stdout = text(&out.stdout);
    assert!(stdout.starts_with("digraph"), "{stdout}");
    assert!(stdout.contains("fused_linear"), "{stdout}");
}

#[test]
fn the_help_lists_every_pass() {
    let out = lamina(&["graph", "--help"]);
    let help = text(&out.stdout);
    for name in lamina::passes::pass_names() {
        assert!(
            help.contains(name),
            "`lamina graph --help` does not mention {name}:\n{help}"
        );
    }
}
