//! The peer: candle-transformers' `BertModel` on the same checkpoint, with
//! sentence-transformers' mean pooling and L2 normalisation in candle ops.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config, HiddenAct, PositionEmbeddingType};

use crate::inputs::Tokens;
use crate::BenchError;

/// all-MiniLM-L6-v2's config.json, spelt out (candle's own copy is private).
fn minilm_config() -> Config {
    Config {
        vocab_size: 30522,
        hidden_size: 384,
        num_hidden_layers: 6,
        num_attention_heads: 12,
        intermediate_size: 1536,
        // candle's `Gelu` is the exact erf GELU, as in the checkpoint's config.
        hidden_act: HiddenAct::Gelu,
        hidden_dropout_prob: 0.1,
        max_position_embeddings: 512,
        type_vocab_size: 2,
        initializer_range: 0.02,
        layer_norm_eps: 1e-12,
        pad_token_id: 0,
        position_embedding_type: PositionEmbeddingType::Absolute,
        use_cache: true,
        classifier_dropout: None,
        model_type: Some("bert".to_string()),
    }
}

pub struct CandleMiniLm {
    model: BertModel,
    device: Device,
}

/// A batch already in candle tensors, so the timed call converts nothing
/// (lamina is likewise handed ready tensors).
pub struct CandleBatch {
    input_ids: Tensor,
    token_type_ids: Tensor,
    attention_mask: Tensor,
}

impl CandleMiniLm {
    pub fn load(weights: &Path) -> Result<CandleMiniLm, BenchError> {
        let device = Device::Cpu;
        let bytes = std::fs::read(weights).map_err(|source| BenchError::Io {
            path: weights.to_path_buf(),
            source,
        })?;
        // The checkpoint's names have no `bert.` prefix; BertModel::load
        // looks for one and falls back to the root.
        let vb = VarBuilder::from_buffered_safetensors(bytes, DType::F32, &device)?;
        let model = BertModel::load(vb, &minilm_config())?;
        Ok(CandleMiniLm { model, device })
    }

    pub fn batch(&self, tokens: &Tokens) -> Result<CandleBatch, BenchError> {
        let shape = (tokens.texts, tokens.tokens);
        let tensor = |v: &[i64]| -> Result<Tensor, BenchError> {
            let ids: Vec<u32> = v
                .iter()
                .map(|&x| u32::try_from(x).map_err(|_| BenchError::Shape(format!("token {x}"))))
                .collect::<Result<_, _>>()?;
            Ok(Tensor::from_vec(ids, shape, &self.device)?)
        };
        Ok(CandleBatch {
            input_ids: tensor(&tokens.input_ids)?,
            token_type_ids: tensor(&tokens.token_type_ids)?,
            attention_mask: tensor(&tokens.attention_mask)?,
        })
    }

    /// `[texts, 384]` unit-length sentence embeddings, row-major.
    pub fn embed(&self, batch: &CandleBatch) -> Result<Vec<f32>, BenchError> {
        let hidden = self.model.forward(
            &batch.input_ids,
            &batch.token_type_ids,
            Some(&batch.attention_mask),
        )?; // [texts, tokens, 384]
        let mask = batch.attention_mask.to_dtype(DType::F32)?.unsqueeze(2)?; // [texts, tokens, 1]
        let summed = hidden.broadcast_mul(&mask)?.sum(1)?; // [texts, 384]
        let counts = mask.sum(1)?.clamp(1e-9f32, f32::MAX)?; // [texts, 1]
        let pooled = summed.broadcast_div(&counts)?;
        let norm = pooled
            .sqr()?
            .sum_keepdim(1)?
            .sqrt()?
            .clamp(1e-12f32, f32::MAX)?;
        let embeddings = pooled.broadcast_div(&norm)?;
        Ok(embeddings.flatten_all()?.to_vec1::<f32>()?)
    }
}
