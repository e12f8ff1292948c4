//! The model as candle-transformers defines it: `BertModel` on padded,
//! attention-masked batches, on the CPU. It is the reference the fast engines
//! are tested against, and the "candle as-is" baseline in `photon
//! microbenchmark embed`.

use candle_core::{D, DType, Device, IndexOp, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::BertModel;

use crate::error::Result;
use crate::model_dir::{ModelDir, Pooling};

/// candle-transformers' BERT with sentence-transformers pooling.
pub struct CandleBert {
    model: BertModel,
    device: Device,
    pad_token: u32,
    hidden: usize,
}

impl CandleBert {
    /// Loads the weights onto `device`.
    pub fn load(model: &ModelDir, device: &Device) -> Result<Self> {
        let tensors = candle_core::safetensors::load(&model.weights, device)?;
        let vb = VarBuilder::from_tensors(tensors, DType::F32, device);
        Ok(Self {
            model: BertModel::load(vb, &model.config)?,
            device: device.clone(),
            pad_token: model.config.pad_token_id as u32,
            hidden: model.config.hidden_size,
        })
    }

    /// The device the model runs on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Embeds a batch of token sequences, padded to the longest; returns
    /// `batch.len() × hidden` pooled values (not normalised).
    pub fn forward_padded(&self, batch: &[&[u32]], pooling: Pooling) -> Result<Vec<f32>> {
        let rows = batch.len();
        let width = batch.iter().map(|s| s.len()).max().unwrap_or(0).max(1);
        let mut ids = vec![self.pad_token; rows * width];
        let mut mask = vec![0u32; rows * width];
        for (r, seq) in batch.iter().enumerate() {
            ids[r * width..][..seq.len()].copy_from_slice(seq);
            mask[r * width..][..seq.len()].fill(1);
        }
        let ids = Tensor::from_vec(ids, (rows, width), &self.device)?;
        let mask = Tensor::from_vec(mask, (rows, width), &self.device)?;
        let types = ids.zeros_like()?;
        let tokens = self.model.forward(&ids, &types, Some(&mask))?; // [rows, width, hidden]
        let mask = mask.to_dtype(DType::F32)?.unsqueeze(2)?; // [rows, width, 1]
        let pooled = match pooling {
            Pooling::Mean => {
                let sums = tokens.broadcast_mul(&mask)?.sum(1)?;
                sums.broadcast_div(&mask.sum(1)?.clamp(1e-9, f32::MAX)?)?
            }
            Pooling::Cls => tokens.i((.., 0))?,
            Pooling::Max => {
                // Padded positions get a huge negative so they never win.
                let penalty = ((mask - 1.0)? * 1e9)?;
                tokens.broadcast_add(&penalty)?.max(D::Minus2)?
            }
        };
        debug_assert_eq!(pooled.dims(), &[rows, self.hidden]);
        Ok(pooled.flatten_all()?.to_vec1::<f32>()?)
    }
}
