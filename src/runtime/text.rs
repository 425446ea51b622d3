//! Text to model inputs: sentences through a Hugging Face `tokenizer.json`
//! into the `input_ids`, `attention_mask` and `token_type_ids` tensors a
//! BERT-style model takes.
//!
//! Checkpoints often ship a tokenizer that pads every sentence to a fixed
//! length (all-MiniLM-L6-v2's pads to 128). We pad a batch only to its longest
//! sentence instead: padding tokens are masked out of attention and pooling, so
//! the embeddings are the same and short batches cost far less.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use thiserror::Error;
use tokenizers::{
    Encoding, PaddingDirection, PaddingParams, PaddingStrategy, PostProcessor, Tokenizer,
    TruncationParams,
};

use crate::tensor::Tensor;

#[derive(Debug, Error)]
pub enum TextError {
    #[error("cannot read tokenizer file {path}: {source}")]
    TokenizerRead {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("tokenizer file {path} is not a tokenizer this build can load: {source}")]
    TokenizerParse {
        path: PathBuf,
        #[source]
        source: tokenizers::Error,
    },
    #[error("cannot truncate at {max_len} tokens with tokenizer {path}: {source}")]
    Truncation {
        path: PathBuf,
        max_len: usize,
        #[source]
        source: tokenizers::Error,
    },
    #[error("text input needs a tokenizer: give its path (looked for {looked})")]
    NoTokenizer { looked: String },
    #[error("no texts to encode: the text list is empty")]
    NoTexts,
    #[error(
        "maximum sequence length {max_len} leaves no room for text: the tokenizer adds {special_tokens} special tokens"
    )]
    MaxLenTooShort {
        max_len: usize,
        special_tokens: usize,
    },
    #[error("tokenizer {path} failed to encode the texts: {source}")]
    Encode {
        path: PathBuf,
        #[source]
        source: tokenizers::Error,
    },
}

/// A tokenized batch: three i64 tensors of shape `[texts, longest]`, where
/// `longest` is the longest encoded text after truncation (special tokens
/// included). Padding is on the right with the tokenizer's pad id, mask 0.
#[derive(Clone, Debug, PartialEq)]
pub struct EncodedBatch {
    pub input_ids: Tensor,
    pub attention_mask: Tensor,
    pub token_type_ids: Tensor,
}

/// A tokenizer loaded once and set up for batch-longest padding and
/// truncation at `max_len`, for encoding many batches.
pub struct BatchTokenizer {
    path: PathBuf,
    tokenizer: Tokenizer,
}

impl BatchTokenizer {
    pub fn from_file(tokenizer_path: &Path, max_len: usize) -> Result<BatchTokenizer, TextError> {
        let path = tokenizer_path.to_path_buf();
        let json =
            std::fs::read_to_string(tokenizer_path).map_err(|source| TextError::TokenizerRead {
                path: path.clone(),
                source,
            })?;
        let mut tokenizer =
            Tokenizer::from_str(&json).map_err(|source| TextError::TokenizerParse {
                path: path.clone(),
                source,
            })?;

        // Keep the file's pad token and id; only the length strategy changes.
        let padding = match tokenizer.get_padding() {
            Some(file_padding) => PaddingParams {
                strategy: PaddingStrategy::BatchLongest,
                direction: PaddingDirection::Right,
                pad_to_multiple_of: None,
                ..file_padding.clone()
            },
            None => PaddingParams::default(),
        };
        tokenizer.with_padding(Some(padding));

        // tokenizers subtracts the special-token count from max_length
        // unchecked (a panic in debug builds), so refuse such lengths first.
        let special_tokens = tokenizer
            .get_post_processor()
            .map_or(0, |processor| processor.added_tokens(false));
        if max_len <= special_tokens {
            return Err(TextError::MaxLenTooShort {
                max_len,
                special_tokens,
            });
        }
        let truncation = match tokenizer.get_truncation() {
            Some(file_truncation) => TruncationParams {
                max_length: max_len,
                ..file_truncation.clone()
            },
            None => TruncationParams {
                max_length: max_len,
                ..TruncationParams::default()
            },
        };
        tokenizer
            .with_truncation(Some(truncation))
            .map_err(|source| TextError::Truncation {
                path: path.clone(),
                max_len,
                source,
            })?;

        Ok(BatchTokenizer { path, tokenizer })
    }

    pub fn encode(&self, texts: &[String]) -> Result<EncodedBatch, TextError> {
        if texts.is_empty() {
            return Err(TextError::NoTexts);
        }
        let inputs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let encodings = self
            .tokenizer
            .encode_batch(inputs, true)
            .map_err(|source| TextError::Encode {
                path: self.path.clone(),
                source,
            })?;
        Ok(batch_tensors(&encodings))
    }
}

/// Tokenizes `texts` with the tokenizer at `tokenizer_path`, truncating each
/// to `max_len` tokens and padding the batch to its longest text.
pub fn encode_batch(
    tokenizer_path: &Path,
    texts: &[String],
    max_len: usize,
) -> Result<EncodedBatch, TextError> {
    if texts.is_empty() {
        return Err(TextError::NoTexts);
    }
    BatchTokenizer::from_file(tokenizer_path, max_len)?.encode(texts)
}

fn batch_tensors(encodings: &[Encoding]) -> EncodedBatch {
    // Batch-longest padding makes every encoding the same length.
    let rows = encodings.len();
    let cols = encodings.first().map_or(0, Encoding::len);
    let flatten = |field: fn(&Encoding) -> &[u32]| -> Tensor {
        let data: Vec<i64> = encodings
            .iter()
            .flat_map(|e| field(e).iter().map(|&v| i64::from(v)))
            .collect();
        Tensor::i64(vec![rows, cols], data)
    };
    EncodedBatch {
        input_ids: flatten(Encoding::get_ids),
        attention_mask: flatten(Encoding::get_attention_mask),
        token_type_ids: flatten(Encoding::get_type_ids),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A WordPiece tokenizer small enough to reason about by hand, set up like
    /// the MiniLM one: lowercasing BERT normaliser, [CLS] .. [SEP] template,
    /// fixed padding to 16 and truncation at 12 in the file.
    const TINY_TOKENIZER: &str = r###"{
      "version": "1.0",
      "truncation": {"max_length": 12, "strategy": "LongestFirst", "stride": 0},
      "padding": {"strategy": {"Fixed": 16}, "direction": "Right", "pad_to_multiple_of": null,
                  "pad_id": 0, "pad_type_id": 0, "pad_token": "[PAD]"},
      "added_tokens": [
        {"id": 0, "special": true, "content": "[PAD]", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false},
        {"id": 1, "special": true, "content": "[UNK]", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false},
        {"id": 2, "special": true, "content": "[CLS]", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false},
        {"id": 3, "special": true, "content": "[SEP]", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false}
      ],
      "normalizer": {"type": "BertNormalizer", "clean_text": true, "handle_chinese_chars": true,
                     "strip_accents": null, "lowercase": true},
      "pre_tokenizer": {"type": "BertPreTokenizer"},
      "post_processor": {"type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                   {"SpecialToken": {"id": "[SEP]", "type_id": 0}}],
        "pair": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                 {"SpecialToken": {"id": "[SEP]", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}},
                 {"SpecialToken": {"id": "[SEP]", "type_id": 1}}],
        "special_tokens": {"[CLS]": {"id": "[CLS]", "ids": [2], "tokens": ["[CLS]"]},
                           "[SEP]": {"id": "[SEP]", "ids": [3], "tokens": ["[SEP]"]}}},
      "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": true},
      "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
                "max_input_chars_per_word": 100,
                "vocab": {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "hello": 4, "world": 5,
                          "the": 6, "cat": 7, "##s": 8, "!": 9}}
    }"###;

    fn tiny_tokenizer_file() -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().expect("temp file");
        file.write_all(TINY_TOKENIZER.as_bytes()).expect("write");
        file
    }

    fn texts(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    fn ids(tensor: &Tensor) -> Vec<i64> {
        tensor.to_f64_vec().into_iter().map(|v| v as i64).collect()
    }

    #[test]
    fn pads_to_the_longest_text_not_the_files_fixed_length() {
        let file = tiny_tokenizer_file();
        let batch = encode_batch(file.path(), &texts(&["Hello world!", "the cats"]), 128).unwrap();
        assert_eq!(batch.input_ids.shape(), &[2, 5]);
        assert_eq!(batch.input_ids.dtype(), crate::ir::DType::I64);
        // [CLS] hello world ! [SEP] / [CLS] the cat ##s [SEP]
        assert_eq!(ids(&batch.input_ids), vec![2, 4, 5, 9, 3, 2, 6, 7, 8, 3]);
        assert_eq!(ids(&batch.attention_mask), vec![1; 10]);
        assert_eq!(ids(&batch.token_type_ids), vec![0; 10]);

        let batch = encode_batch(file.path(), &texts(&["cat", "hello the world"]), 128).unwrap();
        assert_eq!(batch.input_ids.shape(), &[2, 5]);
        assert_eq!(ids(&batch.input_ids), vec![2, 7, 3, 0, 0, 2, 4, 6, 5, 3]);
        assert_eq!(
            ids(&batch.attention_mask),
            vec![1, 1, 1, 0, 0, 1, 1, 1, 1, 1]
        );
    }

    #[test]
    fn truncates_at_max_len_keeping_the_special_tokens() {
        let file = tiny_tokenizer_file();
        let long = "hello world ".repeat(20);
        let batch = encode_batch(file.path(), &texts(&[&long, "cat"]), 6).unwrap();
        assert_eq!(batch.input_ids.shape(), &[2, 6]);
        assert_eq!(
            ids(&batch.input_ids),
            vec![2, 4, 5, 4, 5, 3, 2, 7, 3, 0, 0, 0]
        );
        // A max_len above the file's own truncation (12) wins over it.
        let batch = encode_batch(file.path(), &texts(&[&long]), 30).unwrap();
        assert_eq!(batch.input_ids.shape(), &[1, 30]);
    }

    #[test]
    fn unknown_words_become_unk_and_empty_text_is_just_the_specials() {
        let file = tiny_tokenizer_file();
        let batch = encode_batch(file.path(), &texts(&["", "zebra"]), 128).unwrap();
        assert_eq!(ids(&batch.input_ids), vec![2, 3, 0, 2, 1, 3]);
        assert_eq!(ids(&batch.attention_mask), vec![1, 1, 0, 1, 1, 1]);
    }

    #[test]
    fn a_loaded_tokenizer_encodes_many_batches() {
        let file = tiny_tokenizer_file();
        let tokenizer = BatchTokenizer::from_file(file.path(), 128).unwrap();
        let first = tokenizer.encode(&texts(&["cat"])).unwrap();
        let second = tokenizer.encode(&texts(&["hello world", "cat"])).unwrap();
        assert_eq!(first.input_ids.shape(), &[1, 3]);
        assert_eq!(second.input_ids.shape(), &[2, 4]);
    }

    #[test]
    fn missing_tokenizer_file_is_a_read_error_naming_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("no-such-tokenizer.json");
        let err = encode_batch(&path, &texts(&["hi"]), 128).unwrap_err();
        assert!(matches!(err, TextError::TokenizerRead { .. }), "{err:?}");
        assert!(err.to_string().contains("no-such-tokenizer.json"), "{err}");
    }

    #[test]
    fn malformed_tokenizer_file_is_a_parse_error_naming_the_path() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(b"{\"version\": \"1.0\", \"model\": 42}")
            .unwrap();
        let err = encode_batch(file.path(), &texts(&["hi"]), 128).unwrap_err();
        assert!(matches!(err, TextError::TokenizerParse { .. }), "{err:?}");
        let shown = file.path().display().to_string();
        assert!(err.to_string().contains(&shown), "{err}");
    }

    #[test]
    fn empty_text_list_is_rejected() {
        let file = tiny_tokenizer_file();
        let err = encode_batch(file.path(), &[], 128).unwrap_err();
        assert!(matches!(err, TextError::NoTexts), "{err:?}");
    }

    #[test]
    fn max_len_without_room_for_text_is_an_error_not_a_panic() {
        let file = tiny_tokenizer_file();
        for max_len in [0, 1, 2] {
            let err = encode_batch(file.path(), &texts(&["hello world"]), max_len).unwrap_err();
            assert!(
                matches!(
                    err,
                    TextError::MaxLenTooShort {
                        special_tokens: 2,
                        ..
                    }
                ),
                "{max_len}: {err:?}"
            );
        }
        let batch = encode_batch(file.path(), &texts(&["hello world"]), 3).unwrap();
        assert_eq!(ids(&batch.input_ids), vec![2, 4, 3]);
    }

    // The real all-MiniLM-L6-v2 tokenizer, from models/minilm/fetch.sh.

    fn minilm_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("models/minilm")
    }

    /// The fetched tokenizer. Tests that call this are ignored when it is
    /// missing (build.rs), except under CI, where they fail here.
    fn minilm_tokenizer() -> PathBuf {
        let cache = std::env::var_os("LAMINA_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|| minilm_dir().join("cache"));
        let path = cache.join("tokenizer.json");
        assert!(
            path.is_file(),
            "{} not found: run models/minilm/fetch.sh",
            path.display()
        );
        path
    }

    fn load_npy_i64(name: &str) -> (Vec<usize>, Vec<i64>) {
        let path = minilm_dir().join("testdata").join(name);
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let npy = npyz::NpyFile::new(&bytes[..]).unwrap();
        let shape = npy.shape().iter().map(|&d| d as usize).collect();
        (shape, npy.into_vec::<i64>().unwrap())
    }

    #[test]
    #[cfg_attr(
        lamina_skip_minilm_tests,
        ignore = "needs the MiniLM checkpoint: bash models/minilm/fetch.sh"
    )]
    fn minilm_tokenizer_matches_the_python_tokenizers_package() {
        let tokenizer = minilm_tokenizer();
        // The expected arrays were written by models/minilm/reference.py
        // (Python `tokenizers` package) from testdata/sentences.txt; see the
        // README for the command.
        let sentences =
            std::fs::read_to_string(minilm_dir().join("testdata/sentences.txt")).unwrap();
        let sentences: Vec<String> = sentences
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_string)
            .collect();
        let batch = encode_batch(&tokenizer, &sentences, 128).unwrap();
        for (tensor, file) in [
            (&batch.input_ids, "sentences_input_ids.npy"),
            (&batch.attention_mask, "sentences_attention_mask.npy"),
            (&batch.token_type_ids, "sentences_token_type_ids.npy"),
        ] {
            let (shape, expected) = load_npy_i64(file);
            assert_eq!(tensor.shape(), &shape[..], "{file}");
            assert_eq!(ids(tensor), expected, "{file}");
        }
    }

    #[test]
    #[cfg_attr(
        lamina_skip_minilm_tests,
        ignore = "needs the MiniLM checkpoint: bash models/minilm/fetch.sh"
    )]
    fn minilm_tokenizer_truncates_long_text_at_128() {
        let tokenizer = minilm_tokenizer();
        let long = "The quick brown fox jumps over the lazy dog. ".repeat(30);
        let batch = encode_batch(&tokenizer, &texts(&[&long, "Hi"]), 128).unwrap();
        assert_eq!(batch.input_ids.shape(), &[2, 128]);
        let row = ids(&batch.input_ids);
        assert_eq!((row[0], row[127]), (101, 102), "[CLS] first, [SEP] last");
        assert_eq!(&row[128..132], &[101, 7632, 102, 0]);
    }
}
