//! The precision of a model's products: what `--precision` chooses.

/// The precision of a model's products' inputs. Accumulation, the residual
/// stream, layer norms, softmax and GELU are fp32 in every mode and on every
/// engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// fp32 throughout (on the GPU without TF32): the CPU's default, and the
    /// reference the others are checked against.
    Fp32,
    /// fp16 products with fp32 accumulation: the GPU's default.
    Fp16,
    /// bf16 products with fp32 accumulation.
    Bf16,
    /// int8 products with i32 accumulation (CPU only): weights quantized per
    /// output channel at load, activations per token as each product runs
    /// ([`crate::int8`]).
    Int8,
}

impl Precision {
    /// Reads `fp32`, `fp16`, `bf16` or `int8`.
    pub fn parse(name: &str) -> Result<Self, String> {
        match name {
            "fp32" => Ok(Self::Fp32),
            "fp16" => Ok(Self::Fp16),
            "bf16" => Ok(Self::Bf16),
            "int8" => Ok(Self::Int8),
            other => Err(format!(
                "unknown precision {other:?}: expected fp32, fp16, bf16 or int8"
            )),
        }
    }

    /// Its name: `fp32`, `fp16`, `bf16` or `int8`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Fp32 => "fp32",
            Self::Fp16 => "fp16",
            Self::Bf16 => "bf16",
            Self::Int8 => "int8",
        }
    }
}
