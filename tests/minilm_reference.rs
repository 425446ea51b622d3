//! all-MiniLM-L6-v2 end to end: models/minilm/minilm.lam on the real
//! checkpoint, fed by the tokenizer glue, against the float64 numpy reference
//! (models/minilm/testdata/sentences_embeddings.npy, written by
//! models/minilm/reference.py; see models/minilm/README.md for the command).
//! Ignored when models/minilm/fetch.sh has not been run (build.rs decides),
//! except under CI, where a missing checkpoint fails them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use lamina::runtime::exec::CompileOptions;
use lamina::runtime::text::encode_batch;
use lamina::runtime::{bind_params_owned, read_npy, WeightFile};

fn minilm_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models/minilm")
}

/// The fetched checkpoint and tokenizer.
fn fetched() -> (PathBuf, PathBuf) {
    let cache = std::env::var_os("LAMINA_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| minilm_dir().join("cache"));
    let weights = cache.join("model.safetensors");
    let tokenizer = cache.join("tokenizer.json");
    assert!(
        weights.is_file() && tokenizer.is_file(),
        "no all-MiniLM-L6-v2 in {}: run models/minilm/fetch.sh",
        cache.display()
    );
    (weights, tokenizer)
}

fn sentences() -> Vec<String> {
    std::fs::read_to_string(minilm_dir().join("testdata/sentences.txt"))
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect()
}

struct Loaded {
    graph: lamina::ir::Graph,
    params: HashMap<String, lamina::tensor::Tensor>,
    tokenizer: PathBuf,
}

fn load() -> Loaded {
    let (weights, tokenizer) = fetched();
    let model = lamina::model::load(&minilm_dir().join("minilm.lam")).expect("minilm.lam loads");
    let weights = WeightFile::load(&weights).unwrap();
    let params = bind_params_owned(&model.graph, Some(weights), &Default::default()).unwrap();
    assert_eq!(
        params.unused,
        [
            "embeddings.position_ids",
            "pooler.dense.bias",
            "pooler.dense.weight"
        ]
    );
    Loaded {
        graph: model.graph,
        params: params.values,
        tokenizer,
    }
}

fn encode(l: &Loaded, texts: &[String]) -> HashMap<String, lamina::tensor::Tensor> {
    let batch = encode_batch(&l.tokenizer, texts, 128).unwrap();
    HashMap::from([
        ("input_ids".to_string(), batch.input_ids),
        ("attention_mask".to_string(), batch.attention_mask),
        ("token_type_ids".to_string(), batch.token_type_ids),
    ])
}

/// The bar: per sentence cosine >= 0.99999, and max |diff| <= 1e-4.
fn assert_matches_reference(ours: &[f64], rows: std::ops::Range<usize>, what: &str) {
    let reference = read_npy(&minilm_dir().join("testdata/sentences_embeddings.npy")).unwrap();
    let theirs = &reference.to_f64_vec()[rows.start * 384..rows.end * 384];
    assert_eq!(ours.len(), theirs.len(), "{what}: shape");
    let mut max_diff: f64 = 0.0;
    for (a, b) in ours.chunks(384).zip(theirs.chunks(384)) {
        let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
        let na = a.iter().map(|v| v * v).sum::<f64>().sqrt();
        let nb = b.iter().map(|v| v * v).sum::<f64>().sqrt();
        assert!(
            dot / (na * nb) >= 0.99999,
            "{what}: cosine {}",
            dot / (na * nb)
        );
        assert!((na - 1.0).abs() < 1e-5, "{what}: embedding norm {na}");
        max_diff = a
            .iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(max_diff, f64::max);
    }
    assert!(
        max_diff <= 1e-4,
        "{what}: max |lamina - reference| = {max_diff:e}"
    );
}

#[test]
#[cfg_attr(
    lamina_skip_minilm_tests,
    ignore = "needs the MiniLM checkpoint: bash models/minilm/fetch.sh"
)]
fn minilm_interpreter_matches_the_numpy_reference() {
    let l = load();
    let texts = sentences();
    assert!(texts.len() >= 8);
    let outputs = lamina::interp::run(
        &l.graph,
        &l.params,
        &encode(&l, &texts),
        &Default::default(),
    )
    .unwrap();
    assert_eq!(outputs[0].0, "embedding");
    assert_matches_reference(&outputs[0].1.to_f64_vec(), 0..texts.len(), "interpreter");
}

#[test]
#[cfg_attr(
    lamina_skip_minilm_tests,
    ignore = "needs the MiniLM checkpoint: bash models/minilm/fetch.sh"
)]
fn minilm_jit_matches_the_numpy_reference_on_one_and_two_threads() {
    let l = load();
    let texts = sentences();
    for threads in [1, 2] {
        let (model, _) =
            lamina::compile::compile(&l.graph, &l.params, CompileOptions { threads, isa: None })
                .unwrap();
        let outputs = model.run(&encode(&l, &texts)).unwrap();
        assert_matches_reference(
            &outputs[0].1.to_f64_vec(),
            0..texts.len(),
            &format!("jit, {threads} thread(s)"),
        );
    }
}

#[test]
#[cfg_attr(
    lamina_skip_minilm_tests,
    ignore = "needs the MiniLM checkpoint: bash models/minilm/fetch.sh"
)]
fn minilm_padded_batch_gives_each_sentence_its_own_embedding() {
    let l = load();
    let texts = sentences();
    let (model, _) = lamina::compile::compile(
        &l.graph,
        &l.params,
        CompileOptions {
            threads: 1,
            isa: None,
        },
    )
    .unwrap();
    let batched = model.run(&encode(&l, &texts)).unwrap()[0].1.to_f64_vec();
    // Each sentence alone (its own length: a new plan per shape, no recompiling by hand).
    for (i, text) in texts.iter().enumerate() {
        let alone = model.run(&encode(&l, std::slice::from_ref(text))).unwrap()[0]
            .1
            .to_f64_vec();
        let row = &batched[i * 384..(i + 1) * 384];
        let diff = alone
            .iter()
            .zip(row)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        assert!(
            diff <= 1e-5,
            "sentence {i} alone vs in the padded batch: {diff:e}"
        );
        assert_matches_reference(&alone, i..i + 1, &format!("sentence {i} alone"));
    }
}

#[test]
#[cfg_attr(
    lamina_skip_minilm_tests,
    ignore = "needs the MiniLM checkpoint: bash models/minilm/fetch.sh"
)]
fn minilm_from_the_command_line() {
    let l = load();
    let texts = sentences();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("emb.npy");
    let mut args = vec![
        "run".to_string(),
        "models/minilm/minilm.lam".to_string(),
        "--tokenizer".to_string(),
        l.tokenizer.display().to_string(),
        "--output".to_string(),
        out.display().to_string(),
    ];
    for t in &texts[..3] {
        args.push("--text".into());
        args.push(t.clone());
    }
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_lamina"))
        .args(&args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let emb = read_npy(&out).unwrap();
    assert_eq!(emb.shape(), [3, 384]);
    assert_matches_reference(&emb.to_f64_vec(), 0..3, "lamina run --text");
}
