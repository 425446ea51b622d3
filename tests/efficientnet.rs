//! EfficientNet-Lite0 end to end: models/efficientnet_lite0/efficientnet_lite0.lam
//! on the real ImageNet checkpoint, against the independent float64 numpy
//! reference (models/efficientnet_lite0/reference.py, run here), on the
//! interpreter and the JIT: the logits of a fixed input tensor, and the
//! whole path from photo files (decode, crop, resize, normalise) to the
//! top-1 class. Ignored when fetch.sh has not been run or numpy/safetensors
//! are missing (build.rs decides), except under CI, where that fails them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use lamina::engine::{Backend, Model, Options, Session, Weights};
use lamina::runtime::{read_npy, write_npy};
use lamina::tensor::Tensor;
use rand::{Rng, SeedableRng};

/// Largest |lamina - reference| allowed on a logit (logits are O(10)).
const TOLERANCE: f64 = 1e-3;
const TABBY: usize = 281;
const TIGER_CAT: usize = 282;
const EGYPTIAN_CAT: usize = 285;
const ESPRESSO: usize = 967;

fn model_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models/efficientnet_lite0")
}

fn cache() -> PathBuf {
    let cache = match std::env::var_os("LAMINA_CACHE") {
        Some(dir) => PathBuf::from(dir).join("efficientnet_lite0"),
        None => model_dir().join("cache"),
    };
    for file in [
        "efficientnet_lite0.safetensors",
        "chelsea.png",
        "coffee.png",
    ] {
        assert!(
            cache.join(file).is_file(),
            "no {file} in {}: run bash models/efficientnet_lite0/fetch.sh",
            cache.display()
        );
    }
    cache
}

fn session(backend: Backend, threads: usize) -> Session {
    let model =
        Model::load(model_dir().join("efficientnet_lite0.lam")).unwrap_or_else(|e| panic!("{e}"));
    let options = Options {
        backend,
        threads,
        ..Options::default()
    };
    let weights = Weights::File(cache().join("efficientnet_lite0.safetensors"));
    let session = model
        .compile(weights, &options)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        session.unused_weights().is_empty(),
        "{:?}",
        session.unused_weights()
    );
    session
}

/// The model file loaded and its parameters bound from the checkpoint.
fn load_with_checkpoint() -> (lamina::model::LoadedModel, HashMap<String, Tensor>) {
    use lamina::ir::Bindings;
    use lamina::runtime::{bind_params, WeightFile};
    let loaded = lamina::model::load(&model_dir().join("efficientnet_lite0.lam"))
        .unwrap_or_else(|f| panic!("{:?}", f.diagnostics));
    let weights = WeightFile::load(&cache().join("efficientnet_lite0.safetensors")).unwrap();
    let params = bind_params(&loaded.graph, Some(&weights), &Bindings::new())
        .unwrap_or_else(|e| panic!("{e:?}"))
        .values;
    (loaded, params)
}

/// `batch` images of uniform values in [-1, 1), seeded.
fn random_images(batch: usize, seed: u64) -> Tensor {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let n = batch * 3 * 224 * 224;
    Tensor::f32(
        vec![batch, 3, 224, 224],
        (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect(),
    )
}

/// reference.py's logits (float64, rounded to f32 in the file) for `args` (`--input X` or `--image P...`).
fn reference(args: &[&str], out: &Path) -> Vec<f64> {
    let weights = cache().join("efficientnet_lite0.safetensors");
    let status = Command::new("python3")
        .arg(model_dir().join("reference.py"))
        .args(["--weights", weights.to_str().unwrap()])
        .args(args)
        .args(["--output", out.to_str().unwrap()])
        .status()
        .expect("python3 runs");
    assert!(status.success(), "reference.py failed");
    read_npy(out).unwrap().to_f64_vec()
}

fn logits(session: &Session, inputs: &HashMap<String, Tensor>) -> Tensor {
    let outputs = session.run(inputs).unwrap_or_else(|e| panic!("{e}"));
    let (name, logits) = &outputs[1];
    assert_eq!(name, "logits");
    logits.clone()
}

fn max_diff(got: &Tensor, expected: &[f64]) -> f64 {
    let got = got.to_f64_vec();
    assert_eq!(got.len(), expected.len());
    got.iter()
        .zip(expected)
        .map(|(g, e)| (g - e).abs())
        .fold(0.0, f64::max)
}

fn argmax(row: &[f64]) -> usize {
    (0..row.len()).fold(0, |best, i| if row[i] > row[best] { i } else { best })
}

#[test]
#[cfg_attr(
    lamina_skip_efficientnet_tests,
    ignore = "needs bash models/efficientnet_lite0/fetch.sh and python3 with numpy and safetensors"
)]
fn logits_match_the_numpy_reference_on_a_fixed_input() {
    // Two images of values in [-1, 1], as normalised photos are.
    let x = random_images(2, 0x1a31_7a00_5eed_0010);
    let dir = tempfile::tempdir().unwrap();
    let x_path = dir.path().join("x.npy");
    write_npy(&x_path, &x).unwrap();
    let expected = reference(
        &["--input", x_path.to_str().unwrap()],
        &dir.path().join("ref.npy"),
    );
    let inputs = HashMap::from([("image".to_string(), x)]);
    let interp = logits(&session(Backend::Interp, 1), &inputs);
    let jit1 = logits(&session(Backend::Jit, 1), &inputs);
    let jit2 = logits(&session(Backend::Jit, 2), &inputs);
    for (what, got) in [("interpreter", &interp), ("JIT", &jit1)] {
        let diff = max_diff(got, &expected);
        assert!(
            diff <= TOLERANCE,
            "{what}: max |lamina - reference| = {diff:e}"
        );
    }
    assert_eq!(jit1, jit2, "1 and 2 JIT threads differ");
}

#[test]
#[cfg_attr(
    lamina_skip_efficientnet_tests,
    ignore = "needs bash models/efficientnet_lite0/fetch.sh and python3 with numpy and safetensors"
)]
fn photos_are_classified_as_the_reference_classifies_them() {
    let photos = [cache().join("chelsea.png"), cache().join("coffee.png")];
    let dir = tempfile::tempdir().unwrap();
    let expected = reference(
        &[
            "--image",
            photos[0].to_str().unwrap(),
            "--image",
            photos[1].to_str().unwrap(),
        ],
        &dir.path().join("ref.npy"),
    );
    // The reference's own top-1: a cat, and espresso.
    assert!([TABBY, TIGER_CAT, EGYPTIAN_CAT].contains(&argmax(&expected[..1000])));
    assert_eq!(argmax(&expected[1000..]), ESPRESSO);
    for backend in [Backend::Interp, Backend::Jit] {
        let session = session(backend, 2);
        let inputs = session
            .image_inputs(&photos)
            .unwrap_or_else(|e| panic!("{e}"));
        let got = logits(&session, &inputs);
        // Preprocessing included: the same crop, resize and normalisation as the reference.
        let diff = max_diff(&got, &expected);
        assert!(
            diff <= TOLERANCE,
            "{backend:?}: max |lamina - reference| = {diff:e}"
        );
        let got = got.to_f64_vec();
        assert_eq!(
            argmax(&got[..1000]),
            argmax(&expected[..1000]),
            "{backend:?}: chelsea.png"
        );
        assert_eq!(argmax(&got[1000..]), ESPRESSO, "{backend:?}: coffee.png");
    }
}

#[test]
#[cfg_attr(
    lamina_skip_efficientnet_tests,
    ignore = "needs bash models/efficientnet_lite0/fetch.sh and python3 with numpy and safetensors"
)]
/// One image's activations (5.7 MiB) outgrow a core's L2 cache, so a batch
/// runs sample by sample (runtime/exec/samples.rs), one image per thread,
/// and the first blocks' expansions run banded with their depthwise
/// convolutions (runtime/exec/banded.rs): the same bits as the whole batch
/// at once node by node, on 1 and 2 threads, with a batch of 3 (two images
/// together, then one on both threads).
fn a_batch_runs_image_by_image_and_banded_with_the_same_bits() {
    use lamina::ir::Bindings;
    use lamina::runtime::exec::{Banding, CompileOptions, SampleSplit};

    let (loaded, params) = load_with_checkpoint();
    let x = random_images(3, 0x1a31_7a00_5eed_0022);
    let inputs = HashMap::from([("image".to_string(), x)]);
    let ordered = [&inputs["image"]];
    for threads in [1, 2] {
        let compile = |split, banding| {
            let (mut model, _) = lamina::compile::compile(
                &loaded.graph,
                &params,
                CompileOptions { threads, isa: None },
            )
            .unwrap_or_else(|e| panic!("{e}"));
            model.set_sample_split(split);
            model.set_banding(banding);
            model
        };
        let expected = compile(SampleSplit::Never, Banding::Never)
            .run(&inputs)
            .unwrap();
        for (split, banding) in [
            (SampleSplit::Auto, Banding::Never),
            (SampleSplit::Never, Banding::Auto),
            (SampleSplit::Auto, Banding::Auto),
        ] {
            let what = format!("{threads} thread(s), {split:?}, {banding:?}");
            let model = compile(split, banding);
            assert!(model.keeps_samples_apart());
            let info = model.prepare(&ordered, &Bindings::new()).unwrap();
            assert_eq!(
                info.by_sample,
                split == SampleSplit::Auto,
                "{what}: {info:?}"
            );
            let banded = info
                .step_kernels
                .iter()
                .filter(|&&k| k == "banded_conv_depthwise")
                .count();
            // The stem and the expansions of the 112x112 and 56x56 blocks.
            assert_eq!(banded > 0, banding == Banding::Auto, "{what}: {info:?}");
            let got = model.run(&inputs).unwrap();
            for ((name, a), (_, b)) in got.iter().zip(&expected) {
                let (a, b) = (a.as_f32().unwrap(), b.as_f32().unwrap());
                let differ = a
                    .iter()
                    .zip(b)
                    .filter(|(x, y)| x.to_bits() != y.to_bits())
                    .count();
                assert_eq!(differ, 0, "{what}, output {name}: {differ} values differ");
            }
        }
    }
}

#[test]
#[cfg_attr(
    lamina_skip_efficientnet_tests,
    ignore = "needs bash models/efficientnet_lite0/fetch.sh and python3 with numpy and safetensors"
)]
fn the_cli_prints_the_top_classes_by_name() {
    let cache = cache();
    let model = model_dir().join("efficientnet_lite0.lam");
    let weights = cache.join("efficientnet_lite0.safetensors");
    let out = Command::new(env!("CARGO_BIN_EXE_lamina"))
        .args([
            "run",
            model.to_str().unwrap(),
            "--weights",
            weights.to_str().unwrap(),
        ])
        .args([
            "--image",
            cache.join("coffee.png").to_str().unwrap(),
            "--top",
            "3",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{stdout}");
    assert!(lines[0].ends_with("coffee.png:"), "{stdout}");
    assert!(lines[1].trim_end().ends_with("967  espresso"), "{stdout}");
    let p: f64 = lines[1].split_whitespace().next().unwrap().parse().unwrap();
    assert!(p > 0.5 && p <= 1.0, "{stdout}");
}

/// The passes on the real model with its weights bound, as `run` and
/// `bench` compile it: every batch norm folds into its convolution (its
/// scaled weights computed once, at compile time), every convolution
/// followed by ReLU6 or a residual add becomes one `fused_conv2d`, and the
/// interpreter on the optimised graph computes the unoptimised graph's
/// logits (and the numpy reference's, within the model's tolerance).
#[test]
#[cfg_attr(
    lamina_skip_efficientnet_tests,
    ignore = "needs bash models/efficientnet_lite0/fetch.sh and python3 with numpy and safetensors"
)]
fn the_passes_fold_every_batch_norm_and_keep_the_logits() {
    use lamina::interp;
    use lamina::ir::{Bindings, Op};
    use lamina::passes::{PassContext, PassManager};

    let (loaded, params) = load_with_checkpoint();
    let mut optimised = loaded.graph.clone();
    let report = PassManager::all()
        .run(&mut optimised, &PassContext::with_params(&params), None)
        .unwrap();
    let count = |graph: &lamina::ir::Graph, name: &str| {
        graph
            .node_ids()
            .filter(|&id| graph.node(id).op.name() == name)
            .count()
    };
    // 49 batch norms before, none after; 49 convolutions: the 33 followed
    // by ReLU6 and the 9 projections with a residual add fuse.
    assert_eq!(count(&loaded.graph, "batch_norm"), 49);
    assert_eq!(count(&optimised, "batch_norm"), 0, "{report}");
    assert_eq!(count(&optimised, "fused_conv2d"), 33 + 9, "{report}");
    assert_eq!(count(&optimised, "conv2d"), 49 - 33 - 9, "{report}");
    let is_param_arithmetic = |id| {
        let node = optimised.node(id);
        node.op.is_elementwise()
            && optimised
                .inputs(id)
                .iter()
                .all(|&i| matches!(optimised.node(i).op, Op::Param(_) | Op::Constant(_)))
    };
    assert!(
        !optimised.node_ids().any(is_param_arithmetic),
        "parameter arithmetic left for run time:\n{}",
        lamina::ir::printer::print(&optimised)
    );

    let x = random_images(1, 0x1a31_7a00_5eed_0011);
    let dir = tempfile::tempdir().unwrap();
    let x_path = dir.path().join("x.npy");
    write_npy(&x_path, &x).unwrap();
    let expected = reference(
        &["--input", x_path.to_str().unwrap()],
        &dir.path().join("ref.npy"),
    );
    let inputs = HashMap::from([("image".to_string(), x)]);
    let run = |graph| {
        let outputs = interp::run(graph, &params, &inputs, &Bindings::new()).unwrap();
        outputs[1].1.clone()
    };
    let before = run(&loaded.graph);
    let after = run(&optimised);
    let drift = max_diff(&after, &before.to_f64_vec());
    let diff = max_diff(&after, &expected);
    eprintln!("after the passes: max logit drift {drift:e}, max |optimised - reference| {diff:e}");
    assert!(drift <= 1e-4, "the passes moved a logit by {drift:e}");
    assert!(diff <= TOLERANCE, "max |optimised - reference| = {diff:e}");
}

/// The same network as an exporter writes it (benches/peers/efficientnet_onnx.py:
/// Conv with explicit pads, separate BatchNormalization, Clip(0, 6), Gemm),
/// through `lamina import`: the importer's batch norms and clips must become
/// `batch_norm` and `relu6`, so the passes fold and fuse them as they do in
/// the hand-written model, and the logits must match the numpy reference.
#[test]
#[cfg_attr(
    any(lamina_skip_efficientnet_tests, lamina_skip_onnx_tests),
    ignore = "needs bash models/efficientnet_lite0/fetch.sh and python3 with numpy, safetensors and onnx"
)]
fn the_onnx_export_imports_folds_and_matches_the_reference() {
    let dir = tempfile::tempdir().unwrap();
    let onnx = dir.path().join("efficientnet_lite0.onnx");
    let script = format!(
        "import sys; sys.path.insert(0, {peers:?})\n\
         import onnx, efficientnet_onnx as e\n\
         onnx.save(e.build(e.load_weights({weights:?})), {onnx:?})\n",
        peers = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("benches/peers")
            .display()
            .to_string(),
        weights = cache()
            .join("efficientnet_lite0.safetensors")
            .display()
            .to_string(),
        onnx = onnx.display().to_string(),
    );
    let built = Command::new("python3")
        .arg("-c")
        .arg(script)
        .output()
        .expect("python3 runs");
    assert!(
        built.status.success(),
        "building the ONNX file: {}",
        String::from_utf8_lossy(&built.stderr)
    );
    let lam = dir.path().join("imported.lam");
    let import = Command::new(env!("CARGO_BIN_EXE_lamina"))
        .arg("import")
        .arg(&onnx)
        .arg("-o")
        .arg(&lam)
        .output()
        .unwrap();
    assert!(
        import.status.success(),
        "{}",
        String::from_utf8_lossy(&import.stderr)
    );
    let text = std::fs::read_to_string(&lam).unwrap();
    assert_eq!(text.matches("= batch_norm(").count(), 49, "{text}");
    assert!(
        !text.contains("minimum("),
        "Clip(0, 6) left as min/max:\n{text}"
    );

    let loaded = lamina::model::load(&lam).unwrap_or_else(|f| panic!("{:?}", f.diagnostics));
    let weight_file = dir.path().join("imported.safetensors");
    let params = lamina::runtime::bind_params(
        &loaded.graph,
        Some(&lamina::runtime::WeightFile::load(&weight_file).unwrap()),
        &lamina::ir::Bindings::new(),
    )
    .unwrap_or_else(|e| panic!("{e:?}"))
    .values;
    let mut optimised = loaded.graph.clone();
    let report = lamina::passes::PassManager::all()
        .run(
            &mut optimised,
            &lamina::passes::PassContext::with_params(&params),
            None,
        )
        .unwrap();
    let count = |name: &str| {
        optimised
            .node_ids()
            .filter(|&id| optimised.node(id).op.name() == name)
            .count()
    };
    // As in the hand-written model: every batch norm folded, the convolutions
    // followed by ReLU6 or a residual add fused.
    assert_eq!(count("batch_norm"), 0, "{report}");
    assert_eq!(count("fused_conv2d"), 33 + 9, "{report}");

    let model = Model::load(&lam).unwrap_or_else(|e| panic!("{e}"));
    let weights = Weights::File(weight_file);
    let x = random_images(2, 0x1a31_7a00_5eed_0011);
    let x_path = dir.path().join("x.npy");
    write_npy(&x_path, &x).unwrap();
    let expected = reference(
        &["--input", x_path.to_str().unwrap()],
        &dir.path().join("ref.npy"),
    );
    let session = model
        .compile(
            weights,
            &Options {
                backend: Backend::Jit,
                threads: 2,
                ..Options::default()
            },
        )
        .unwrap_or_else(|e| panic!("{e}"));
    let got = logits(&session, &HashMap::from([("image".to_string(), x)]));
    let diff = max_diff(&got, &expected);
    assert!(diff <= TOLERANCE, "max |imported - reference| = {diff:e}");
}
