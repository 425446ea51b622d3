//! Per-pass filetests, in the style of Cranelift's: each file under
//! `tests/filetests/<pass>/` names the passes it runs, holds the model, and
//! ends with the graph those passes must leave, so that every rewrite can be
//! reviewed as text in, text out:
//!
//! ```text
//! # passes: fuse-linear
//! # Why this case matters (what must, or must not, be rewritten).
//! model m {
//!   ...
//! }
//! # expect:
//! # graph m
//! #   %0 = input "x" : f32[batch, 8]
//! #   ...
//! ```
//!
//! The runner loads each model, runs exactly the listed passes with opaque
//! parameters through [`PassManager::from_spec`] (what `lamina graph MODEL
//! --passes LIST` prints), and compares the printed graph with the
//! `# expect:` block, which runs to the end of the file. A file must sit in
//! the folder of a pass it runs (`fuse_linear/` for `fuse-linear`), so the
//! folder says what the file is about.
//!
//! Each file is also run by the interpreter before and after the passes, on
//! seeded random inputs and parameters, and the outputs must agree (1e-5
//! relative, 1e-6 absolute floor): an expectation can only be blessed for a
//! rewrite that keeps what the model computes.
//!
//! `LAMINA_BLESS=1 cargo test --release --test filetests` writes what the
//! passes printed into every file whose expectation differs or is missing.
//! Review the diff before committing: the blessed text is only as right as
//! the pass.

#[path = "common/random_values.rs"]
mod random_values;
use random_values::{concrete, random_tensor};

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use lamina::interp;
use lamina::ir::printer::print;
use lamina::ir::{Bindings, Graph};
use lamina::model;
use lamina::passes::{pass_names, PassContext, PassManager};
use lamina::tensor::Tensor;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

const PASSES: &str = "# passes:";
const EXPECT: &str = "# expect:";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/filetests")
}

/// The `.lam` files one folder below `tests/filetests` (the models at its
/// top are whole-model snapshot tests, `tests/passes_models.rs`).
fn filetest_files() -> Vec<PathBuf> {
    let mut files = Vec::new();
    for dir in std::fs::read_dir(root())
        .expect("tests/filetests exists")
        .flatten()
    {
        if !dir.path().is_dir() {
            continue;
        }
        for entry in std::fs::read_dir(dir.path()).expect("readable").flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "lam") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

struct FileTest {
    passes: String,
    /// Where the `# expect:` line starts (the file's end without one).
    expect_at: usize,
    expected: Option<Vec<String>>,
}

fn parse(text: &str) -> Result<FileTest, String> {
    let mut passes = None;
    let mut offset = 0;
    let mut expect_at = None;
    for line in text.split_inclusive('\n') {
        let trimmed = line.trim_end();
        if passes.is_none() {
            if let Some(list) = trimmed.strip_prefix(PASSES) {
                passes = Some(list.trim().to_string());
            }
        }
        if trimmed == EXPECT {
            expect_at = Some(offset);
            break;
        }
        offset += line.len();
    }
    let passes = passes.ok_or(format!("no `{PASSES} NAME[,NAME]` header line"))?;
    let Some(expect_at) = expect_at else {
        return Ok(FileTest {
            passes,
            expect_at: text.len(),
            expected: None,
        });
    };
    let mut expected = Vec::new();
    for line in text[expect_at..].lines().skip(1) {
        // Anything but a comment after `# expect:` would be model text the
        // bless rewrite deletes.
        let shown = line
            .strip_prefix("# ")
            .or_else(|| line.strip_prefix('#'))
            .ok_or(format!(
                "`{line}` after `{EXPECT}`: the expected block must end the file, every line `# `"
            ))?;
        expected.push(shown.trim_end().to_string());
    }
    Ok(FileTest {
        passes,
        expect_at,
        expected: Some(expected),
    })
}

/// `expected` and `actual` as a line diff (`-` expected only, `+` actual
/// only), by longest common subsequence: graphs here are a few dozen lines.
fn diff(expected: &[String], actual: &[String]) -> String {
    let (n, m) = (expected.len(), actual.len());
    let mut common = vec![vec![0usize; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            common[i][j] = if expected[i] == actual[j] {
                common[i + 1][j + 1] + 1
            } else {
                common[i + 1][j].max(common[i][j + 1])
            };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, String::new());
    while i < n || j < m {
        if i < n && j < m && expected[i] == actual[j] {
            let _ = writeln!(out, "   {}", expected[i]);
            i += 1;
            j += 1;
        } else if i < n && (j == m || common[i + 1][j] >= common[i][j + 1]) {
            let _ = writeln!(out, " - {}", expected[i]);
            i += 1;
        } else {
            let _ = writeln!(out, " + {}", actual[j]);
            j += 1;
        }
    }
    out
}

/// Random values for every parameter, initializer or not: with opaque
/// parameters a pass may not depend on their values, so any will do, and
/// `zeros` or `ones` would hide a dropped bias or scale.
fn random_run(graph: &Graph) -> (HashMap<String, Tensor>, HashMap<String, Tensor>, Bindings) {
    let mut rng = ChaCha8Rng::seed_from_u64(0x0f11_e7e5);
    let mut bindings = Bindings::new();
    let mut params = HashMap::new();
    for (name, id) in graph.params() {
        let node = graph.node(id);
        let shape = concrete(&node.ty.shape, &mut bindings);
        params.insert(name, random_tensor(&mut rng, node.ty.dtype, shape));
    }
    let mut inputs = HashMap::new();
    for &id in &graph.inputs {
        let node = graph.node(id);
        let shape = concrete(&node.ty.shape, &mut bindings);
        inputs.insert(
            graph.input_name(id).to_string(),
            random_tensor(&mut rng, node.ty.dtype, shape),
        );
    }
    (params, inputs, bindings)
}

fn close(x: f64, y: f64) -> bool {
    (x.is_nan() && y.is_nan()) || x == y || (x - y).abs() <= (1e-5 * x.abs().max(y.abs())).max(1e-6)
}

/// The outputs of `before` and `after` on the same random values, or what
/// differs.
fn same_results(before: &Graph, after: &Graph) -> Result<(), String> {
    let (params, inputs, bindings) = random_run(before);
    let a = interp::run(before, &params, &inputs, &bindings)
        .map_err(|e| format!("the model does not run: {e}"))?;
    let b = interp::run(after, &params, &inputs, &bindings)
        .map_err(|e| format!("the graph after the passes does not run: {e}"))?;
    for ((name, x), (_, y)) in a.iter().zip(&b) {
        if x.shape() != y.shape() || x.dtype() != y.dtype() {
            return Err(format!(
                "output {name} was {:?} {:?}, is {:?} {:?} after the passes",
                x.dtype(),
                x.shape(),
                y.dtype(),
                y.shape()
            ));
        }
        for (i, (u, v)) in x.to_f64_vec().into_iter().zip(y.to_f64_vec()).enumerate() {
            if !close(u, v) {
                return Err(format!(
                    "output {name} element {i}: {u} before the passes, {v} after"
                ));
            }
        }
    }
    Ok(())
}

/// Checks one file; `Ok(Some(text))` is the file rewritten to bless it.
fn check(path: &Path, bless: bool) -> Result<Option<String>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let test = parse(&text)?;
    let folder = path
        .parent()
        .and_then(|p| p.file_name())
        .map(|f| f.to_string_lossy().replace('_', "-"))
        .unwrap_or_default();
    if !test.passes.split(',').any(|p| p.trim() == folder) {
        return Err(format!(
            "it sits in the folder of `{folder}` but runs `{}`",
            test.passes
        ));
    }
    let graph = model::load_source(path, text.clone())
        .map_err(|f| format!("the model does not load: {:?}", f.diagnostics))?
        .graph;
    let mut after = graph.clone();
    PassManager::from_spec(&test.passes)
        .and_then(|m| m.run(&mut after, &PassContext::default(), None))
        .map_err(|e| format!("passes `{}`: {e}", test.passes))?;
    same_results(&graph, &after)?;
    let actual: Vec<String> = print(&after)
        .lines()
        .map(|l| l.trim_end().to_string())
        .collect();
    if test.expected.as_ref() == Some(&actual) {
        return Ok(None);
    }
    if bless {
        let mut blessed = text[..test.expect_at].to_string();
        if !blessed.ends_with('\n') {
            blessed.push('\n');
        }
        blessed.push_str(EXPECT);
        blessed.push('\n');
        for line in &actual {
            blessed.push_str(format!("# {line}").trim_end());
            blessed.push('\n');
        }
        return Ok(Some(blessed));
    }
    Err(match &test.expected {
        None => format!(
            "no `{EXPECT}` block; the passes print\n{}",
            actual.join("\n")
        ),
        Some(expected) => format!(
            "the graph after `{}` differs (- expected, + actual):\n{}",
            test.passes,
            diff(expected, &actual)
        ),
    })
}

#[test]
fn every_filetest_prints_its_expected_graph_and_computes_the_same() {
    let bless = std::env::var_os("LAMINA_BLESS").is_some_and(|v| v == "1");
    let files = filetest_files();
    assert!(!files.is_empty(), "no filetests under {}", root().display());
    let mut failures = Vec::new();
    for path in &files {
        let shown = path
            .strip_prefix(env!("CARGO_MANIFEST_DIR"))
            .unwrap_or(path);
        match check(path, bless) {
            Ok(None) => {}
            Ok(Some(blessed)) => {
                std::fs::write(path, blessed).expect("the filetest is writable");
                eprintln!("blessed {}", shown.display());
            }
            Err(message) => failures.push(format!("{}: {message}", shown.display())),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} filetests failed (LAMINA_BLESS=1 rewrites expectations):\n\n{}",
        failures.len(),
        files.len(),
        failures.join("\n\n")
    );
}

#[test]
fn the_runner_reports_a_changed_line_as_a_diff() {
    let lines = |s: &str| s.lines().map(String::from).collect::<Vec<_>>();
    let shown = diff(&lines("a\nb\nc"), &lines("a\nx\nc"));
    assert_eq!(shown, "   a\n - b\n + x\n   c\n");
    let test = parse("# passes: dce\nmodel m {}\n# expect:\n# graph m\n#\n").unwrap();
    assert_eq!(test.passes, "dce");
    assert_eq!(
        test.expected,
        Some(vec!["graph m".to_string(), String::new()])
    );
    assert!(parse("model m {}\n# expect:\n# graph m\n").is_err());
    assert!(parse("# passes: dce\n# expect:\nmodel m {}\n").is_err());
}

/// Every pass has its folder, with room for a rewrite and a guard at least.
#[test]
fn every_pass_has_filetests() {
    let files = filetest_files();
    for pass in pass_names() {
        let folder = root().join(pass.replace('-', "_"));
        let count = files.iter().filter(|f| f.parent() == Some(&folder)).count();
        assert!(
            count >= 2,
            "{} has {count} filetest(s); each pass needs a rewrite and a guard",
            folder.display()
        );
    }
}

/// The numeric check is what keeps a bless honest: a graph that computes
/// something else must fail it, however it prints.
#[test]
fn the_runner_catches_a_rewrite_that_changes_results() {
    let load = |body: &str| {
        let text = format!("model m {{\n  input x: f32[batch, 4]\n  output y = {body}\n}}\n");
        model::load_source(Path::new("m.lam"), text).unwrap().graph
    };
    assert!(same_results(&load("relu(x)"), &load("relu(x) * 1.0")).is_ok());
    let err = same_results(&load("relu(x)"), &load("relu(x) * 1.001")).unwrap_err();
    assert!(err.contains("output y element"), "{err}");
}
