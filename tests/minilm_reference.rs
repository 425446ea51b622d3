//! all-MiniLM-L6-v2 end to end: models/minilm/minilm.lam on the real
//! checkpoint, fed by the tokenizer glue, against the float64 numpy reference
//! (models/minilm/testdata/sentences_embeddings.npy, written by
//! models/minilm/reference.py; see models/minilm/README.md for the command).
//! Skips with a notice when models/minilm/fetch.sh has not been run.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use lamina::runtime::text::encode_batch;
use lamina::runtime::{bind_params_owned, read_npy, WeightFile};

fn minilm_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models/minilm")
}

/// The fetched checkpoint and tokenizer, or None (with a notice) if absent.
fn fetched() -> Option<(PathBuf, PathBuf)> {
    let cache = std::env::var_os("LAMINA_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| minilm_dir().join("cache"));
    let weights = cache.join("model.safetensors");
    let tokenizer = cache.join("tokenizer.json");
    if weights.is_file() && tokenizer.is_file() {
        Some((weights, tokenizer))
    } else {
        // CI fetches the checkpoint first (.ci/run); a skip there would hide a failure.
        assert!(
            std::env::var_os("CI").is_none(),
            "no all-MiniLM-L6-v2 in {}: .ci/run must run models/minilm/fetch.sh",
            cache.display()
        );
        eprintln!(
            "skipping: no all-MiniLM-L6-v2 in {}; run models/minilm/fetch.sh",
            cache.display()
        );
        None
    }
}

#[test]
fn minilm_interpreter_matches_the_numpy_reference() {
    let Some((weights, tokenizer)) = fetched() else {
        return;
    };
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

    let sentences: Vec<String> =
        std::fs::read_to_string(minilm_dir().join("testdata/sentences.txt"))
            .unwrap()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_string)
            .collect();
    let batch = encode_batch(&tokenizer, &sentences, 128).unwrap();
    let inputs = HashMap::from([
        ("input_ids".to_string(), batch.input_ids),
        ("attention_mask".to_string(), batch.attention_mask),
        ("token_type_ids".to_string(), batch.token_type_ids),
    ]);
    let outputs =
        lamina::interp::run(&model.graph, &params.values, &inputs, &Default::default()).unwrap();
    let (name, embedding) = &outputs[0];
    assert_eq!(name, "embedding");

    let reference = read_npy(&minilm_dir().join("testdata/sentences_embeddings.npy")).unwrap();
    assert_eq!(embedding.shape(), reference.shape());
    let ours = embedding.to_f64_vec();
    let theirs = reference.to_f64_vec();
    let max_diff = ours
        .iter()
        .zip(&theirs)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    assert!(max_diff < 1e-5, "max |lamina - reference| = {max_diff:e}");
    for row in ours.chunks(384) {
        let norm = row.iter().map(|v| v * v).sum::<f64>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "embedding norm {norm}");
    }
}
