//! Where the model, checkpoint, tokenizer and test sentences live, and the
//! tokenized batches both engines are fed (the same token ids for both).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use lamina::runtime::text::{BatchTokenizer, EncodedBatch};
use lamina::tensor::{Tensor, TensorData};

use crate::BenchError;

/// The longest input lamina's CLI and tests tokenize to.
const MAX_TOKENS: usize = 128;

/// Files of the all-MiniLM-L6-v2 setup in the lamina checkout.
#[derive(Clone, Debug)]
pub struct Files {
    pub lam: PathBuf,
    pub weights: PathBuf,
    pub tokenizer: PathBuf,
    pub sentences: PathBuf,
    pub reference_embeddings: PathBuf,
}

impl Files {
    /// `cache` overrides `LAMINA_CACHE`, which overrides models/minilm/cache.
    pub fn locate(cache: Option<&Path>) -> Result<Files, BenchError> {
        let minilm = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/minilm");
        let cache = cache
            .map(Path::to_path_buf)
            .or_else(|| std::env::var_os("LAMINA_CACHE").map(PathBuf::from))
            .unwrap_or_else(|| minilm.join("cache"));
        let files = Files {
            lam: minilm.join("minilm.lam"),
            weights: cache.join("model.safetensors"),
            tokenizer: cache.join("tokenizer.json"),
            sentences: minilm.join("testdata/sentences.txt"),
            reference_embeddings: minilm.join("testdata/sentences_embeddings.npy"),
        };
        for path in [
            &files.lam,
            &files.weights,
            &files.tokenizer,
            &files.sentences,
        ] {
            if !path.is_file() {
                return Err(BenchError::MissingFile(path.clone()));
            }
        }
        Ok(files)
    }

    pub fn sentences(&self) -> Result<Vec<String>, BenchError> {
        let text = std::fs::read_to_string(&self.sentences).map_err(|source| BenchError::Io {
            path: self.sentences.clone(),
            source,
        })?;
        Ok(text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_string)
            .collect())
    }
}

/// Which sentences one measurement embeds.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
pub enum Workload {
    /// Sentence 0 alone ("Hello world.").
    One,
    /// Sentence 10 alone (the longest of the twelve).
    OneLong,
    /// All 12 sentences, padded to the longest.
    Twelve,
}

impl Workload {
    pub const ALL: [Workload; 3] = [Workload::One, Workload::OneLong, Workload::Twelve];

    pub fn pick(self, sentences: &[String]) -> Result<Vec<String>, BenchError> {
        let need = |i: usize| {
            sentences
                .get(i)
                .cloned()
                .ok_or(BenchError::TooFewSentences(sentences.len()))
        };
        Ok(match self {
            Workload::One => vec![need(0)?],
            Workload::OneLong => vec![need(10)?],
            Workload::Twelve => {
                need(11)?;
                sentences[..12].to_vec()
            }
        })
    }

    pub fn label(self) -> &'static str {
        match self {
            Workload::One => "1 short sentence",
            Workload::OneLong => "1 long sentence",
            Workload::Twelve => "12 sentences",
        }
    }
}

/// One tokenized batch, row-major `[texts, tokens]`.
#[derive(Clone, Debug)]
pub struct Tokens {
    pub texts: usize,
    pub tokens: usize,
    pub input_ids: Vec<i64>,
    pub attention_mask: Vec<i64>,
    pub token_type_ids: Vec<i64>,
}

impl Tokens {
    pub fn encode(tokenizer: &Path, texts: &[String]) -> Result<Tokens, BenchError> {
        let EncodedBatch {
            input_ids,
            attention_mask,
            token_type_ids,
        } = BatchTokenizer::from_file(tokenizer, MAX_TOKENS)?.encode(texts)?;
        let (rows, cols) = match input_ids.shape() {
            [rows, cols] => (*rows, *cols),
            other => return Err(BenchError::Shape(format!("input_ids {other:?}"))),
        };
        Ok(Tokens {
            texts: rows,
            tokens: cols,
            input_ids: int_values(input_ids)?,
            attention_mask: int_values(attention_mask)?,
            token_type_ids: int_values(token_type_ids)?,
        })
    }

    /// lamina's named inputs.
    pub fn lamina_inputs(&self) -> HashMap<String, Tensor> {
        let shape = vec![self.texts, self.tokens];
        HashMap::from([
            (
                "input_ids".to_string(),
                Tensor::i64(shape.clone(), self.input_ids.clone()),
            ),
            (
                "attention_mask".to_string(),
                Tensor::i64(shape.clone(), self.attention_mask.clone()),
            ),
            (
                "token_type_ids".to_string(),
                Tensor::i64(shape, self.token_type_ids.clone()),
            ),
        ])
    }
}

fn int_values(t: Tensor) -> Result<Vec<i64>, BenchError> {
    match t.into_data() {
        TensorData::I64(v) => Ok(v),
        TensorData::I32(v) => Ok(v.into_iter().map(i64::from).collect()),
        TensorData::F32(_) | TensorData::Bool(_) => {
            Err(BenchError::Shape("token ids are not integers".into()))
        }
    }
}
