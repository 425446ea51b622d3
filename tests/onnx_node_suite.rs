//! The ONNX backend node tests, through `lamina import`, on both backends.
//!
//! The onnx Python package (1.22.0, the last release whose wheel ships them)
//! carries `onnx/backend/test/data/node/<test>/model.onnx` with
//! `test_data_set_*/input_*.pb` and the expected `output_*.pb`. Every test
//! whose model imports is compiled for the interpreter and for the JIT, run
//! on each data set, and compared with the expected outputs: exactly for
//! integers and booleans, within |got - want| <= 1e-4 + 1e-3 |want| for f32
//! (NaN where NaN is expected). A case passes when both backends agree with
//! ONNX.
//!
//! Cases are counted per op (the op of a single-node test, or of the test an
//! `_expanded` variant expands); `tests/onnx_node_expected.txt` holds the
//! counts measured when the importer last grew, and the test fails when an
//! op passes fewer cases than that (a regression). `LAMINA_BLESS=1` rewrites
//! the file from this run. The full table goes to
//! `target/onnx_node_report.md`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;

use lamina::engine::{Backend, Model, Options, Weights};
use lamina::onnx::{import_bytes, safetensors_bytes, tensors::read_tensor_file};
use lamina::tensor::{Tensor, TensorData};

const RTOL: f64 = 1e-3;
const ATOL: f64 = 1e-4;

fn node_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("LAMINA_ONNX_NODE_DIR") {
        return Some(PathBuf::from(dir));
    }
    let out = Command::new("python3")
        .args([
            "-c",
            "import onnx, os; print(os.path.join(os.path.dirname(onnx.__file__), 'backend', 'test', 'data', 'node'))",
        ])
        .output()
        .ok()?;
    let dir = PathBuf::from(String::from_utf8(out.stdout).ok()?.trim());
    dir.is_dir().then_some(dir)
}

fn close(got: &Tensor, want: &Tensor) -> Result<(), String> {
    if got.shape() != want.shape() {
        return Err(format!(
            "shape {:?}, expected {:?}",
            got.shape(),
            want.shape()
        ));
    }
    match (got.data(), want.data()) {
        (TensorData::F32(g), TensorData::F32(w)) => {
            for (i, (&a, &b)) in g.iter().zip(w).enumerate() {
                let (a, b) = (a as f64, b as f64);
                let ok = if b.is_nan() {
                    a.is_nan()
                } else if b.is_infinite() {
                    a == b
                } else {
                    (a - b).abs() <= ATOL + RTOL * b.abs()
                };
                if !ok {
                    return Err(format!("element {i}: {a}, expected {b}"));
                }
            }
            Ok(())
        }
        (g, w) if g == w => Ok(()),
        (g, w) if g.dtype() != w.dtype() => {
            Err(format!("dtype {:?}, expected {:?}", g.dtype(), w.dtype()))
        }
        _ => Err("integer or boolean values differ".into()),
    }
}

struct Case {
    inputs: Vec<Tensor>,
    outputs: Vec<Tensor>,
}

fn data_sets(test: &Path) -> usize {
    std::fs::read_dir(test).map_or(0, |d| {
        d.filter_map(|e| e.ok())
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with("test_data_set_")
            })
            .count()
    })
}

fn read_cases(test: &Path) -> Result<Vec<Case>, String> {
    let mut sets: Vec<PathBuf> = std::fs::read_dir(test)
        .map_err(|e| e.to_string())?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_dir()
                && p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("test_data_set_"))
        })
        .collect();
    sets.sort();
    let read_all = |dir: &Path, prefix: &str| -> Result<Vec<Tensor>, String> {
        let mut out = Vec::new();
        for i in 0.. {
            let p = dir.join(format!("{prefix}_{i}.pb"));
            if !p.exists() {
                break;
            }
            let bytes = std::fs::read(&p).map_err(|e| e.to_string())?;
            out.push(read_tensor_file(&bytes).map_err(|e| format!("{}: {e}", p.display()))?);
        }
        Ok(out)
    };
    sets.iter()
        .map(|s| {
            Ok(Case {
                inputs: read_all(s, "input")?,
                outputs: read_all(s, "output")?,
            })
        })
        .collect()
}

/// Runs one test on one backend; `Ok(passed cases)`.
fn run_backend(
    imported: &lamina::onnx::Imported,
    weights: &[u8],
    cases: &[Case],
    backend: Backend,
) -> Result<usize, String> {
    let model =
        Model::from_source("imported.lam", imported.source.clone()).map_err(|e| e.render())?;
    let w = if imported.weights.is_empty() {
        Weights::None
    } else {
        Weights::Bytes {
            name: "imported.safetensors".into(),
            bytes: weights.to_vec(),
        }
    };
    let options = Options {
        backend,
        threads: 1,
        ..Options::default()
    };
    let session = model.compile(w, &options).map_err(|e| e.render())?;
    let mut passed = 0;
    for case in cases {
        if case.inputs.len() != imported.inputs.len() {
            return Err(format!(
                "{} input files for {} model inputs",
                case.inputs.len(),
                imported.inputs.len()
            ));
        }
        let inputs: HashMap<String, Tensor> = imported
            .inputs
            .iter()
            .zip(&case.inputs)
            .map(|((_, lam), t)| (lam.clone(), t.clone()))
            .collect();
        let outs = session.run(&inputs).map_err(|e| e.render())?;
        if outs.len() != case.outputs.len() {
            return Err(format!(
                "{} outputs, expected {}",
                outs.len(),
                case.outputs.len()
            ));
        }
        for ((name, got), want) in outs.iter().zip(&case.outputs) {
            close(got, want).map_err(|e| format!("output `{name}`: {e}"))?;
        }
        passed += 1;
    }
    Ok(passed)
}

/// The graph's inputs that are not initializers, in order.
fn onnx_inputs(bytes: &[u8]) -> Vec<String> {
    let m = <lamina::onnx::proto::ModelProto as prost::Message>::decode(bytes).unwrap();
    let g = m.graph.unwrap_or_default();
    let inits: Vec<String> = g
        .initializer
        .iter()
        .filter_map(|t| t.name.clone())
        .collect();
    g.input
        .iter()
        .filter_map(|v| v.name.clone())
        .filter(|n| !inits.contains(n))
        .collect()
}

/// The inputs of a case that can be attributes (integers, scalars such as
/// `Range`'s bounds, and `Resize`'s scales), by name.
fn integer_inputs(bytes: &[u8], case: &Case) -> HashMap<String, Tensor> {
    let m = <lamina::onnx::proto::ModelProto as prost::Message>::decode(bytes).unwrap();
    let g = m.graph.unwrap_or_default();
    let resize_operands: Vec<&String> = g
        .node
        .iter()
        .filter(|n| n.op_type.as_deref() == Some("Resize"))
        .flat_map(|n| n.input.iter().skip(1))
        .collect();
    onnx_inputs(bytes)
        .into_iter()
        .zip(&case.inputs)
        .filter(|(n, t)| {
            t.dtype().is_integer() || t.shape().is_empty() || resize_operands.contains(&n)
        })
        .map(|(n, t)| (n, t.clone()))
        .collect()
}

/// The op a test is counted under.
fn op_key(test: &str, single_ops: &HashMap<String, String>) -> String {
    if let Some(op) = single_ops.get(test) {
        return op.clone();
    }
    if let Some(pos) = test.find("_expanded") {
        if let Some(op) = single_ops.get(&test[..pos]) {
            return op.clone();
        }
    }
    "(composite)".into()
}

fn expected_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/onnx_node_expected.txt")
}

fn read_expected() -> BTreeMap<String, usize> {
    let text = std::fs::read_to_string(expected_path()).unwrap_or_default();
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let mut parts = l.split_whitespace();
            Some((parts.next()?.to_string(), parts.next()?.parse().ok()?))
        })
        .collect()
}

#[test]
#[cfg_attr(
    lamina_skip_onnx_tests,
    ignore = "needs the onnx Python package with its node tests: pip install onnx==1.22.0"
)]
fn onnx_node_suite() {
    let dir = node_dir().expect(
        "the ONNX node tests were not found: pip install onnx==1.22.0 (or set LAMINA_ONNX_NODE_DIR)",
    );
    let mut tests: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("node test folder")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("model.onnx").is_file())
        .collect();
    tests.sort();
    assert!(
        tests.len() > 1000,
        "only {} node tests in {}",
        tests.len(),
        dir.display()
    );

    // Single-node tests name the op their `_expanded` variants count under.
    let mut single_ops = HashMap::new();
    let mut models = Vec::new();
    for t in &tests {
        let name = t.file_name().unwrap().to_string_lossy().into_owned();
        let bytes = std::fs::read(t.join("model.onnx")).unwrap();
        if let Ok(m) = <lamina::onnx::proto::ModelProto as prost::Message>::decode(&bytes[..]) {
            let g = m.graph.unwrap_or_default();
            if g.node.len() == 1 {
                single_ops.insert(name.clone(), g.node[0].op_type.clone().unwrap_or_default());
            }
        }
        models.push((name, bytes));
    }

    // op -> (cases, imported cases, passed on both backends)
    let mut per_op: BTreeMap<String, (usize, usize, usize)> = BTreeMap::new();
    let mut failures = Vec::new();
    let mut not_imported = Vec::new();
    let mut fixed_inputs = 0;
    for ((name, bytes), path) in models.iter().zip(&tests) {
        let key = op_key(name, &single_ops);
        let entry = per_op.entry(key.clone()).or_default();
        entry.0 += data_sets(path);
        let none = HashMap::new();
        let imported = match import_bytes(bytes, name, "model.onnx", "model.safetensors", &none) {
            Ok(imported) => Some(imported),
            Err(e)
                if !e
                    .to_string()
                    .contains("must be known when the model is imported") =>
            {
                not_imported.push(format!("{name} ({key}): {}", e.0[0]));
                continue;
            }
            Err(_) => None,
        };
        let cases = match read_cases(path) {
            Ok(cases) => cases,
            Err(e) => {
                failures.push(format!("{name} ({key}): test data: {e}"));
                continue;
            }
        };
        let imported = match imported {
            Some(imported) => imported,
            None => {
                // Integer inputs used as attributes (shapes, axes, starts):
                // fixed at import from the one data set, as `--fix` does.
                let [case] = &cases[..] else {
                    not_imported.push(format!(
                        "{name} ({key}): attribute inputs vary between data sets"
                    ));
                    continue;
                };
                let fixed = integer_inputs(bytes, case);
                match import_bytes(bytes, name, "model.onnx", "model.safetensors", &fixed) {
                    Ok(imported) => {
                        fixed_inputs += cases.len();
                        imported
                    }
                    Err(e) => {
                        not_imported.push(format!("{name} ({key}): {}", e.0[0]));
                        continue;
                    }
                }
            }
        };
        let cases: Vec<Case> = cases
            .into_iter()
            .map(|c| Case {
                inputs: c
                    .inputs
                    .into_iter()
                    .zip(&onnx_inputs(bytes))
                    .filter(|(_, n)| imported.inputs.iter().any(|(o, _)| o == *n))
                    .map(|(t, _)| t)
                    .collect(),
                outputs: c.outputs,
            })
            .collect();
        entry.1 += cases.len();
        let weights = safetensors_bytes(&imported.weights).unwrap();
        let interp = run_backend(&imported, &weights, &cases, Backend::Interp);
        let jit = run_backend(&imported, &weights, &cases, Backend::Jit);
        match (interp, jit) {
            (Ok(a), Ok(b)) => entry.2 += a.min(b),
            (i, j) => failures.push(format!(
                "{name} ({key}): interp {}; jit {}",
                i.map_or_else(
                    |e| e.lines().next().unwrap_or("").to_string(),
                    |_| "ok".into()
                ),
                j.map_or_else(
                    |e| e.lines().next().unwrap_or("").to_string(),
                    |_| "ok".into()
                )
            )),
        }
    }

    let total: usize = per_op.values().map(|v| v.2).sum();
    let imported: usize = per_op.values().map(|v| v.1).sum();
    let cases: usize = per_op.values().map(|v| v.0).sum();
    let mut report = format!(
        "# ONNX node tests through `lamina import`\n\n{total} of {cases} cases pass on both backends ({imported} import; {fixed_inputs} of those with integer or scalar attribute inputs fixed at import, as `--fix` does).\n\n| op | cases | imported | pass |\n|---|---:|---:|---:|\n"
    );
    for (op, (c, i, p)) in &per_op {
        if *i > 0 {
            report.push_str(&format!("| {op} | {c} | {i} | {p} |\n"));
        }
    }
    report.push_str("\n## Imported but failing\n\n");
    for f in &failures {
        report.push_str(&format!("- {f}\n"));
    }
    report.push_str("\n## Not imported (the first reason)\n\n");
    for f in &not_imported {
        report.push_str(&format!("- {f}\n"));
    }
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/onnx_node_report.md");
    let _ = std::fs::write(&out, &report);
    eprintln!(
        "{total} of {cases} node test cases pass on both backends; table in {}",
        out.display()
    );

    if std::env::var_os("LAMINA_BLESS").is_some() {
        let mut text = String::from(
            "# Node test cases each ONNX op passes on both backends (tests/onnx_node_suite.rs).\n# Measured with onnx 1.22.0; LAMINA_BLESS=1 rewrites this file.\n",
        );
        for (op, (_, _, p)) in &per_op {
            if *p > 0 {
                text.push_str(&format!("{op} {p}\n"));
            }
        }
        std::fs::write(expected_path(), text).unwrap();
        return;
    }
    let expected = read_expected();
    assert!(
        !expected.is_empty(),
        "{} is missing or empty",
        expected_path().display()
    );
    let mut regressions = Vec::new();
    for (op, min) in &expected {
        let got = per_op.get(op).map_or(0, |v| v.2);
        if got < *min {
            regressions.push(format!("{op}: {got} passing, expected at least {min}"));
        }
    }
    assert!(
        regressions.is_empty(),
        "node test regressions:\n{}\nfailures:\n{}",
        regressions.join("\n"),
        failures.join("\n")
    );
}
