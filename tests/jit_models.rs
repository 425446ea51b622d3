//! Every model in `models/` (the folder is walked, so a new model is
//! covered by adding it) compiled by `lamina::compile::compile` and run by
//! the JIT executor, against the interpreter on the unoptimised graph:
//! within 1e-5 relative, or 1e-4 when the model reduces over more than 256
//! terms (f32 accumulation in the kernels vs f64 in the interpreter). With
//! 1 and 2 threads, which must agree bit for bit; the second call of a
//! shape reuses the plan and must give the same bits as the first; a new
//! batch size gets its own plan.
//!
//! Parameters come from the model's weight file (for MiniLM the fetched
//! checkpoint) and declared initializers. MiniLM has its own test, ignored
//! when its checkpoint has not been fetched (build.rs decides), except under
//! CI, where a missing checkpoint fails it.

mod jit_support;

use lamina::ir::ops::{Gather, LayerNorm, LogSoftmax, MatMul, Reduce, Softmax};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use jit_support::{compare_outputs, compile_all_passes_on, compile_plain_on, same_bits, Outputs};
use lamina::codegen::Isa;
use lamina::interp;
use lamina::ir::bind::symbols;
use lamina::ir::{Bindings, DType, Graph, NodeId, Op};
use lamina::runtime::{bind_params, WeightFile};
use lamina::tensor::{Tensor, TensorData};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

fn lam_files(dir: &Path, found: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            // `cache` holds fetched checkpoints (and their Python packages).
            if path.file_name().is_some_and(|n| n != "cache") {
                lam_files(&path, found);
            }
        } else if path.extension().is_some_and(|e| e == "lam") {
            found.push(path);
        }
    }
}

fn model_files() -> Vec<PathBuf> {
    let mut files = Vec::new();
    lam_files(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("models"),
        &mut files,
    );
    files.sort();
    files
}

/// Sizes for symbols no weight fixes: small, different per symbol so that
/// mixed-up dims show, and a second batch size for a second plan.
fn symbol_size(symbol: &str, batch: usize) -> usize {
    match symbol {
        // `m` is the rows of models/bench/sgemm.lam: its batch.
        "batch" | "m" => batch,
        "seq" => 7,
        _ => 2 + symbol.len() % 3,
    }
}

/// The smallest table axis an integer input indexes through a gather
/// (looking through reshapes), if any.
fn gather_bound(graph: &Graph, input: NodeId) -> Option<usize> {
    let mut bound: Option<usize> = None;
    let mut frontier = vec![input];
    while let Some(id) = frontier.pop() {
        for user in graph.users(id) {
            match &graph.node(user).op {
                Op::Reshape(_) => frontier.push(user),
                Op::Gather(Gather { axis }) if graph.inputs(user)[1] == id => {
                    let table = graph.inputs(user)[0];
                    if let Some(size) = graph.node(table).ty.shape[*axis].as_known() {
                        bound = Some(bound.map_or(size, |b| b.min(size)));
                    }
                }
                _ => {}
            }
        }
    }
    bound
}

/// Random inputs: f32 in [-1, 1); integer inputs that feed a gather are
/// valid ids for every table they index; other integer inputs are masks,
/// each row a run of ones (at least one) then zeros, like padding.
fn inputs_for(graph: &Graph, bindings: &Bindings, rng: &mut ChaCha8Rng) -> HashMap<String, Tensor> {
    let mut inputs = HashMap::new();
    for &id in &graph.inputs {
        let node = graph.node(id);
        let shape: Vec<usize> = node
            .ty
            .shape
            .iter()
            .map(|d| {
                d.substitute(bindings)
                    .and_then(|d| d.as_known())
                    .expect("input symbols bound")
            })
            .collect();
        let n: usize = shape.iter().product();
        let row = shape.last().copied().unwrap_or(1).max(1);
        let ints: Vec<i64> = match gather_bound(graph, id) {
            Some(bound) => (0..n).map(|_| rng.random_range(0..bound as i64)).collect(),
            None => {
                let mut v = vec![0i64; n];
                for chunk in v.chunks_mut(row) {
                    let ones = rng.random_range(1..=chunk.len());
                    chunk[..ones].fill(1);
                }
                v
            }
        };
        let data = match node.ty.dtype {
            DType::F32 => TensorData::F32((0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()),
            DType::I64 => TensorData::I64(ints),
            DType::I32 => TensorData::I32(ints.iter().map(|&v| v as i32).collect()),
            DType::Bool => TensorData::Bool(ints.iter().map(|&v| v != 0).collect()),
        };
        inputs.insert(graph.input_name(id).to_string(), Tensor::new(shape, data));
    }
    inputs
}

/// The most terms any one output element of the concrete graph sums.
fn longest_reduction(graph: &Graph, bindings: &Bindings) -> usize {
    let size = |id: NodeId, axis: usize| {
        graph.node(id).ty.shape[axis]
            .substitute(bindings)
            .and_then(|d| d.as_known())
            .unwrap_or(0)
    };
    graph
        .node_ids()
        .map(|id| {
            let ins = graph.inputs(id);
            match &graph.node(id).op {
                Op::MatMul(MatMul { transpose_a, .. }) => {
                    let rank = graph.node(ins[0]).ty.rank();
                    size(ins[0], if *transpose_a { rank - 2 } else { rank - 1 })
                }
                Op::FusedLinear(_) => size(ins[0], graph.node(ins[0]).ty.rank() - 1),
                Op::Reduce(Reduce { axes, .. }) => axes.iter().map(|&a| size(ins[0], a)).product(),
                Op::Softmax(Softmax { axis })
                | Op::LogSoftmax(LogSoftmax { axis })
                | Op::LayerNorm(LayerNorm { axis, .. }) => size(ins[0], *axis),
                _ => 0,
            }
        })
        .max()
        .unwrap_or(0)
}

struct Model {
    path: PathBuf,
    graph: Graph,
    params: HashMap<String, Tensor>,
    /// Symbols the weights fixed.
    weight_bindings: Bindings,
}

/// The model with its parameter values.
fn load(path: &Path) -> Model {
    let loaded = lamina::model::load(path)
        .unwrap_or_else(|f| panic!("{} does not load: {:?}", path.display(), f.diagnostics));
    let weights = match &loaded.weights {
        None => None,
        Some((file, _)) => {
            let full = path.parent().expect("a model has a folder").join(file);
            assert!(
                full.is_file(),
                "{}: weight file {} is missing (MiniLM's: bash models/minilm/fetch.sh)",
                path.display(),
                full.display()
            );
            Some(WeightFile::load(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display())))
        }
    };
    // Symbols the inputs fix get test sizes; the weights may fix others.
    let mut bindings = Bindings::new();
    for symbol in symbols(&loaded.graph) {
        bindings.insert(symbol.clone(), symbol_size(&symbol, 2));
    }
    let learned = bind_params(&loaded.graph, weights.as_ref(), &Bindings::new());
    let mut weight_bindings = learned.map(|b| b.bindings).unwrap_or_default();
    // Symbols only parameters use (sgemm's `n`) are fixed once, at load.
    let input_symbols: Vec<String> = loaded
        .graph
        .inputs
        .iter()
        .flat_map(|&id| {
            loaded
                .graph
                .node(id)
                .ty
                .shape
                .iter()
                .flat_map(|d| d.symbols().to_vec())
        })
        .collect();
    for (symbol, size) in &bindings {
        if !input_symbols.contains(symbol) {
            weight_bindings.entry(symbol.clone()).or_insert(*size);
        }
    }
    bindings.extend(weight_bindings.clone());
    let params = bind_params(&loaded.graph, weights.as_ref(), &bindings)
        .unwrap_or_else(|e| panic!("{}: parameters do not bind: {e:?}", path.display()))
        .values;
    Model {
        path: path.to_path_buf(),
        graph: loaded.graph,
        params,
        weight_bindings,
    }
}

fn bindings_for(model: &Model, batch: usize) -> Bindings {
    let mut b = Bindings::new();
    for symbol in symbols(&model.graph) {
        b.insert(symbol.clone(), symbol_size(&symbol, batch));
    }
    b.extend(model.weight_bindings.clone());
    b
}

fn run_jit(
    model: &lamina::runtime::exec::CompiledModel,
    inputs: &HashMap<String, Tensor>,
) -> Outputs {
    model
        .run(inputs)
        .unwrap_or_else(|e| panic!("jit run fails: {e}"))
}

/// Everything the brief asks of one model, on every kernel tier the CPU
/// runs (one interpreter reference per batch); returns the failures.
fn check_model(model: &Model) -> Vec<String> {
    let mut failures = Vec::new();
    let name = model.path.display().to_string();
    let mut rng = jit_support::rng(0x3a1f_0001);
    struct Tier {
        isa: Isa,
        optimised: Vec<lamina::runtime::exec::CompiledModel>,
        unoptimised: lamina::runtime::exec::CompiledModel,
    }
    let tiers: Vec<Tier> = jit_support::tiers()
        .into_iter()
        .map(|isa| Tier {
            isa,
            optimised: [1, 2]
                .map(|threads| {
                    compile_all_passes_on(&model.graph, &model.params, threads, Some(isa))
                })
                .into(),
            unoptimised: compile_plain_on(&model.graph, &model.params, 1, Some(isa)),
        })
        .collect();
    for (round, batch) in [2usize, 3].into_iter().enumerate() {
        let bindings = bindings_for(model, batch);
        let rtol = if longest_reduction(&model.graph, &bindings) > 256 {
            1e-4
        } else {
            1e-5
        };
        let inputs = inputs_for(&model.graph, &bindings, &mut rng);
        let reference = interp::run(&model.graph, &model.params, &inputs, &model.weight_bindings)
            .unwrap_or_else(|e| panic!("{name}: the interpreter fails: {e}"));
        for tier in &tiers {
            let isa = tier.isa;
            let mut by_threads = Vec::new();
            for (compiled, threads) in tier.optimised.iter().zip([1, 2]) {
                assert_eq!(compiled.isa(), isa);
                let what = format!("{name} [{isa}] batch {batch}, {threads} thread(s)");
                let first = run_jit(compiled, &inputs);
                match compare_outputs(&what, &first, &reference, rtol) {
                    Ok(worst) => {
                        eprintln!("{what}: worst relative error {worst:.2e} (bound {rtol:e})")
                    }
                    Err(e) => failures.push(e),
                }
                let again = run_jit(compiled, &inputs);
                if let Err(e) = same_bits(&format!("{what}, second call"), &first, &again) {
                    failures.push(e);
                }
                // Kernels depend on expressions and strides, not on sizes,
                // except for the GEMM row kernels M calls for: the first batch
                // size gets a set with its own, a second size needing others
                // one with every row count, which every later size shares.
                // A batch run sample by sample (large activations) plans
                // batch 1 too, so it may reach the second set at once.
                let samples = usize::from(compiled.keeps_samples_apart());
                if compiled.kernel_library_count() > (round + 1 + samples).min(2) {
                    failures.push(format!(
                        "{what}: {} kernel libraries for {} batch sizes",
                        compiled.kernel_library_count(),
                        round + 1
                    ));
                }
                // A batch run sample by sample adds its batch-1 plan once.
                let plans = compiled.plan_count();
                if plans < round + 1 || plans > round + 1 + samples {
                    failures.push(format!(
                        "{what}: {} plans after {} batch sizes (each size once, reused after)",
                        compiled.plan_count(),
                        round + 1
                    ));
                }
                by_threads.push(first);
            }
            if let Err(e) = same_bits(
                &format!("{name} [{isa}] batch {batch}: 1 vs 2 threads"),
                &by_threads[0],
                &by_threads[1],
            ) {
                failures.push(e);
            }
            let plain = run_jit(&tier.unoptimised, &inputs);
            let what = format!("{name} [{isa}] batch {batch} without passes");
            match compare_outputs(&what, &plain, &reference, rtol) {
                Ok(worst) => {
                    eprintln!("{what}: worst relative error {worst:.2e} (bound {rtol:e})")
                }
                Err(e) => failures.push(e),
            }
        }
    }
    failures
}

#[test]
fn every_model_matches_the_interpreter() {
    let files = model_files();
    assert!(
        files.len() >= 4,
        "expected the example models, found {files:?}"
    );
    let mut failures = Vec::new();
    // MiniLM needs a fetched checkpoint; it has its own test below.
    let minilm = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/minilm");
    // EfficientNet-Lite0 too: checked here wherever fetch.sh has run (always
    // under CI, where build.rs never sets the skip cfg).
    let efficientnet = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/efficientnet_lite0");
    let skip_efficientnet = cfg!(lamina_skip_efficientnet_tests);
    let checked = |p: &&std::path::PathBuf| {
        !p.starts_with(&minilm) && !(skip_efficientnet && p.starts_with(&efficientnet))
    };
    for path in files.iter().filter(checked) {
        failures.extend(check_model(&load(path)));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
#[cfg_attr(
    lamina_skip_minilm_tests,
    ignore = "needs the MiniLM checkpoint: bash models/minilm/fetch.sh"
)]
fn minilm_matches_the_interpreter() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/minilm/minilm.lam");
    let failures = check_model(&load(&path));
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
