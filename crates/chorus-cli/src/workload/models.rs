//! The model workloads' models, built once per run from seeded weights and shared by every
//! thread: the MLP 512→1024→1024→512 (`stress --scenario mlp` and `batching`, every `bench`
//! suite) and the two-layer transformer encoder (`stress --scenario transformer`, the GPU
//! bench), and a forward's results.

use super::{batching, Workload};
use chorus::batch::BatchQueue;
use chorus::nn::{self, Module as _};
use chorus::{Device, Result, Tensor};

/// Feature sizes of the MLP.
pub(crate) const MLP_SIZES: [usize; 4] = [512, 1024, 1024, 512];

/// The MLP 512→1024→1024→512 (ReLU between layers, fused into each GEMM): layer `i`'s weight
/// is `randn(seed 100 + i)` and its bias `randn(seed 200 + i)`, both scaled by
/// `1 / sqrt(fan_in)`.
///
/// # Errors
/// A device error while building the weights.
pub(crate) fn mlp(device: &Device) -> std::result::Result<nn::Mlp, nn::NnError> {
    let layers = MLP_SIZES
        .windows(2)
        .enumerate()
        .map(|(i, w)| -> std::result::Result<nn::Linear, nn::NnError> {
            let scale = Tensor::full(device, &[1], 1.0 / (w[0] as f32).sqrt())?;
            let weight = Tensor::randn(device, &[w[1], w[0]], 100 + i as u64)?.mul(&scale)?;
            let bias = Tensor::randn(device, &[w[1]], 200 + i as u64)?.mul(&scale)?;
            nn::Linear::new(weight, Some(bias))
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    nn::Mlp::new(layers)
}

/// Two post-norm transformer encoder layers (d = 256, 4 heads, feed-forward 1024) loaded by
/// PyTorch's names from seeded weights (seeds 1001, 1002, ... in load order, each scaled by
/// `1 / sqrt(fan_in)`; norms at weight 1, bias 0).
///
/// # Errors
/// A device error while building the weights.
pub(crate) fn transformer(
    device: &Device,
) -> std::result::Result<nn::TransformerEncoder, nn::NnError> {
    let mut seed = 1000;
    let mut param = |shape: &[usize], fan_in: usize| -> Result<Tensor> {
        seed += 1;
        let scale = Tensor::full(device, &[1], 1.0 / (fan_in as f32).sqrt())?;
        Tensor::randn(device, shape, seed)?.mul(&scale)
    };
    let (d, ff) = (256, 1024);
    let mut named = Vec::new();
    for l in 0..2 {
        let p = |n: &str| format!("layers.{l}.{n}");
        named.push((p("self_attn.in_proj_weight"), param(&[3 * d, d], d)?));
        named.push((p("self_attn.in_proj_bias"), param(&[3 * d], d)?));
        named.push((p("self_attn.out_proj.weight"), param(&[d, d], d)?));
        named.push((p("self_attn.out_proj.bias"), param(&[d], d)?));
        named.push((p("linear1.weight"), param(&[ff, d], d)?));
        named.push((p("linear1.bias"), param(&[ff], d)?));
        named.push((p("linear2.weight"), param(&[d, ff], ff)?));
        named.push((p("linear2.bias"), param(&[d], ff)?));
        for norm in ["norm1", "norm2"] {
            named.push((
                p(&format!("{norm}.weight")),
                Tensor::full(device, &[d], 1.0)?,
            ));
            named.push((p(&format!("{norm}.bias")), Tensor::full(device, &[d], 0.0)?));
        }
    }
    let cfg = nn::TransformerConfig::new(d, 4).dim_feedforward(ff);
    nn::TransformerEncoder::load(&nn::Weights::from_tensors(named), &cfg, 2, false)
}

/// Models shared by every thread of a model workload.
pub(crate) struct Models {
    model: Box<dyn nn::Module>,
    /// The queue of [`Workload::Batching`], running the same model.
    pub(super) queue: Option<BatchQueue>,
}

impl std::fmt::Debug for Models {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Models")
            .field("model", &self.model.name())
            .finish()
    }
}

impl Models {
    /// The shared model.
    pub(crate) fn model(&self) -> &dyn nn::Module {
        &*self.model
    }

    /// The model `workload` runs, if it runs one.
    ///
    /// # Errors
    /// A device error while building the weights, or a batch queue that cannot start.
    pub(crate) fn build(
        device: &Device,
        workload: Workload,
    ) -> std::result::Result<Option<Models>, nn::NnError> {
        let (model, queue): (Box<dyn nn::Module>, _) = match workload {
            Workload::Mlp => (Box::new(mlp(device)?), None),
            Workload::Batching => {
                let mlp = mlp(device)?;
                let queue = batching::queue(device, mlp.clone()).map_err(|e| {
                    nn::NnError::InvalidConfig {
                        what: "batch queue",
                        reason: e.to_string(),
                    }
                })?;
                (Box::new(mlp), Some(queue))
            }
            Workload::Transformer => (Box::new(transformer(device)?), None),
            _ => return Ok(None),
        };
        Ok(Some(Models { model, queue }))
    }

    /// The model's output for `x`, its error as a runtime error (a round's error type).
    ///
    /// # Errors
    /// The model's error.
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.model.forward(x).map_err(|e| match e {
            nn::NnError::Core(e) => e,
            other => chorus::Error::InvalidShape {
                op: "model",
                shape: x.shape().to_vec(),
                reason: other.to_string(),
            },
        })
    }
}
