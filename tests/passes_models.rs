//! Every model in `models/` and every file test in `tests/filetests/`
//! (model source in, optimised graph out): a snapshot of the graph before
//! and after all passes, and a differential check that the interpreter
//! gives the same outputs on both, with parameters opaque and with their
//! values bound. The folders are globbed, so a new model is covered by
//! adding its file. The digits classifier must keep its accuracy.

mod passes_support;

#[path = "common/random_values.rs"]
mod random_values;
use lamina::ir::ops::{FusedLinear, Param};
use random_values::{concrete, random_tensor};

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use lamina::interp;
use lamina::ir::bind::unify;
use lamina::ir::printer::print;
use lamina::ir::{Bindings, Graph, Op};
use lamina::model;
use lamina::passes::{PassContext, PassManager};
use lamina::runtime::{materialize, read_npy, WeightFile};
use lamina::tensor::{Tensor, TensorData};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

fn lam_files(dir: &Path, found: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            lam_files(&path, found);
        } else if path.extension().is_some_and(|e| e == "lam") {
            found.push(path);
        }
    }
}

fn all_model_files() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    lam_files(&root.join("models"), &mut files);
    lam_files(&root.join("tests/filetests"), &mut files);
    // The per-pass folders below carry their own expected graphs and are
    // run by `tests/filetests.rs`; here only the whole models at the top.
    let filetests = root.join("tests/filetests");
    files.retain(|f| !f.starts_with(&filetests) || f.parent() == Some(filetests.as_path()));
    files.sort();
    files
}

/// `models/digits/digits.lam` -> `models__digits__digits`.
fn snapshot_name(path: &Path) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let relative = path.strip_prefix(root).unwrap_or(path).with_extension("");
    relative
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join("__")
}

/// Parameter values: the model's weight file where it has the tensor,
/// else the declared seeded initializer, else seeded random values.
fn parameters(
    graph: &Graph,
    weights: Option<&WeightFile>,
    bindings: &mut Bindings,
    rng: &mut ChaCha8Rng,
) -> HashMap<String, Tensor> {
    let mut values = HashMap::new();
    for (name, id) in graph.params() {
        let node = graph.node(id);
        if let Some(t) = weights.and_then(|w| w.get(&name)) {
            unify(&node.ty.shape, t.shape(), bindings).expect("weights fit the model");
            values.insert(name, t.clone());
            continue;
        }
        let shape = concrete(&node.ty.shape, bindings);
        let value = match &node.op {
            Op::Param(Param {
                init: Some(init), ..
            }) => materialize(init, &name, &shape),
            _ => random_tensor(rng, node.ty.dtype, shape),
        };
        values.insert(name, value);
    }
    values
}

struct Loaded {
    graph: Graph,
    params: HashMap<String, Tensor>,
    inputs: HashMap<String, Tensor>,
    bindings: Bindings,
}

fn load(path: &Path) -> Loaded {
    let loaded = model::load(path)
        .unwrap_or_else(|f| panic!("{} does not load: {:?}", path.display(), f.diagnostics));
    let graph = loaded.graph;
    // A weight file not fetched yet (MiniLM's checkpoint is downloaded by a
    // script) is replaced by seeded random values: the passes must keep the
    // outputs for any values.
    let weights = loaded.weights.and_then(|(file, _)| {
        let full = path.parent().expect("a model file has a folder").join(file);
        full.exists()
            .then(|| WeightFile::load(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display())))
    });
    let mut rng = ChaCha8Rng::seed_from_u64(0x001a_314a);
    let mut bindings = Bindings::new();
    let params = parameters(&graph, weights.as_ref(), &mut bindings, &mut rng);
    let inputs = graph
        .inputs
        .iter()
        .map(|&id| {
            let node = graph.node(id);
            let shape = concrete(&node.ty.shape, &mut bindings);
            (
                graph.input_name(id).to_string(),
                random_tensor(&mut rng, node.ty.dtype, shape),
            )
        })
        .collect();
    Loaded {
        graph,
        params,
        inputs,
        bindings,
    }
}

fn assert_close(what: &str, a: &Tensor, b: &Tensor) {
    assert_eq!(a.shape(), b.shape(), "{what}: shape changed");
    assert_eq!(a.dtype(), b.dtype(), "{what}: dtype changed");
    for (i, (x, y)) in a.to_f64_vec().into_iter().zip(b.to_f64_vec()).enumerate() {
        let same = (x.is_nan() && y.is_nan())
            || x == y
            || (x - y).abs() <= 1e-5 * x.abs().max(y.abs()).max(1.0);
        assert!(same, "{what} element {i}: {x} before, {y} after");
    }
}

fn optimized(graph: &Graph, cx: &PassContext<'_>) -> Graph {
    let mut g = graph.clone();
    PassManager::all()
        .run(&mut g, cx, None)
        .unwrap_or_else(|e| panic!("{}: {e}", graph.name));
    g
}

#[test]
fn every_model_snapshot_before_and_after_all_passes() {
    let files = all_model_files();
    assert!(
        files.len() >= 2,
        "expected models and file tests, found {files:?}"
    );
    for path in files {
        let graph = model::load(&path)
            .unwrap_or_else(|f| panic!("{} does not load: {:?}", path.display(), f.diagnostics))
            .graph;
        let mut after = graph.clone();
        let report = PassManager::all()
            .run(&mut after, &PassContext::default(), None)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(report.reached_fixpoint, "{}: {report}", path.display());
        let text = format!(
            "{}\n--- passes: all ---\n{}\n{report}",
            print(&graph),
            print(&after)
        );
        insta::assert_snapshot!(snapshot_name(&path), text);
    }
}

#[test]
fn every_model_computes_the_same_after_all_passes() {
    for path in all_model_files() {
        let m = load(&path);
        let before = interp::run(&m.graph, &m.params, &m.inputs, &m.bindings)
            .unwrap_or_else(|e| panic!("{}: the model does not run: {e}", path.display()));
        for (label, cx) in [
            ("opaque params", PassContext::default()),
            ("bound params", PassContext::with_params(&m.params)),
        ] {
            let g = optimized(&m.graph, &cx);
            let after = interp::run(&g, &m.params, &m.inputs, &m.bindings).unwrap_or_else(|e| {
                panic!(
                    "{} ({label}): the optimised model does not run: {e}\n{}",
                    path.display(),
                    print(&g)
                )
            });
            assert_eq!(before.len(), after.len());
            for ((name, a), (name_after, b)) in before.iter().zip(&after) {
                assert_eq!(name, name_after);
                assert_close(&format!("{} ({label}) output {name}", path.display()), a, b);
            }
        }
    }
}

/// Every layer of an MLP is one fused linear node with its activation.
#[test]
fn the_digits_mlp_is_two_fused_layers() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/digits/digits.lam");
    let g = optimized(&model::load(&path).unwrap().graph, &PassContext::default());
    let layers: Vec<String> = g
        .topo_order()
        .into_iter()
        .filter_map(|id| match &g.node(id).op {
            Op::FusedLinear(FusedLinear { epilogue, .. }) => {
                Some(format!("{:?}/{:?}", epilogue.bias, epilogue.activation))
            }
            _ => None,
        })
        .collect();
    assert_eq!(layers, vec!["true/Some(Relu)", "true/None"]);
    assert_eq!(
        g.node_ids()
            .filter(|&id| matches!(g.node(id).op, Op::MatMul(_)))
            .count(),
        0
    );
}

fn accuracy(probs: &Tensor, labels: &[i64]) -> f64 {
    let classes = probs.shape()[1];
    let p = probs.as_f32().expect("f32 probabilities");
    let correct = labels
        .iter()
        .enumerate()
        .filter(|(row, &label)| {
            let scores = &p[row * classes..(row + 1) * classes];
            let best = (0..classes)
                .max_by(|&a, &b| scores[a].total_cmp(&scores[b]))
                .unwrap();
            best as i64 == label
        })
        .count();
    correct as f64 / labels.len() as f64
}

#[test]
fn the_digits_model_keeps_its_accuracy_after_all_passes() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/digits");
    let graph = model::load(&dir.join("digits.lam")).unwrap().graph;
    let weights = WeightFile::load(dir.join("digits.safetensors")).unwrap();
    let params: HashMap<String, Tensor> = weights.tensors.clone().into_iter().collect();
    let x = read_npy(&dir.join("x.npy")).unwrap();
    let labels = match read_npy(&dir.join("labels.npy")).unwrap().into_data() {
        TensorData::I64(v) => v,
        other => panic!("labels are i64, got {:?}", other.dtype()),
    };
    let inputs = HashMap::from([("x".to_string(), x)]);
    let run = |g: &Graph| {
        let out = interp::run(g, &params, &inputs, &Bindings::new()).expect("digits runs");
        accuracy(&out[0].1, &labels)
    };
    let reference = run(&graph);
    assert!(reference > 0.97, "the trained model scores {reference}");
    for cx in [PassContext::default(), PassContext::with_params(&params)] {
        assert_eq!(run(&optimized(&graph, &cx)), reference);
    }
}
