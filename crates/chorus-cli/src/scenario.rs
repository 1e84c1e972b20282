//! Stress scenarios: the round of tensor work that each (thread, iteration) of a stress run
//! performs.
//!
//! A round is a pure function of the run's [`Params`] and its [`RoundKey`]: every random input
//! comes from a seed made by [`seed_for`] from `(seed, thread, iteration, operand)`, so the
//! round can be run again on one thread and must give bit-identical results. A round enqueues
//! its work on the calling thread's current stream and returns its result tensors without
//! waiting; the caller reads them later.
//!
//! Adding a scenario: a variant of [`Scenario`], its name in [`Scenario::name`] and
//! [`Scenario::ALL`], its work in [`Scenario::round`] and its result names in
//! [`Scenario::outputs`].

use chorus::batch::{BatchConfig, BatchError, BatchQueue, HostTensor};
use chorus::nn;
use chorus::{DType, Device, Graph, Result, Tensor};
use std::time::Duration;

/// The scenarios planned but not written yet, named in the error for an unknown name.
const PLANNED: [&str; 0] = [];

/// One kind of round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scenario {
    /// `a = randn([S, S])`, `b = randn([S, S])`, `c = a @ b`, then `c.sum_all()` (and
    /// `c.mean_all()` with `--with-mean`): the seed's stress round.
    Matmul,
    /// The seed's attention round: `q, k, v = randn([4, S/4, 64])`, `softmax(q k^T / 8) v`
    /// (batched matmul, scaled softmax, batched matmul); results: sum and max of the output.
    Attention,
    /// The seed's depthwise-separable round on `x = randn([2, 16, 16, 16])`: depthwise 3×3
    /// conv, pointwise conv to 32 channels, group norm (4 groups), relu, adaptive average
    /// pool to 1×1, linear to 10; result: the `[2, 10]` output.
    Conv,
    /// The seed's reduction round on `x = randn([8, 16, 32])`: sum over all, one and two
    /// dims, mean, max and min along a dim (values and indices), prod along a dim.
    Reduce,
    /// The MLP 512→1024→1024→512 (ReLU), one model shared by every thread, on
    /// `randn([S/64 rounded up, 512])`; result: the output.
    Mlp,
    /// Two post-norm transformer encoder layers (d = 256, 4 heads, feed-forward 1024), one
    /// model shared by every thread, on `randn([4, 32, 256])`; results: sum and max.
    Transformer,
    /// The MLP of [`Scenario::Mlp`] behind one dynamic batching queue shared by every thread:
    /// each round submits `randn([1, 512])` and waits for its rows (odd iterations as a host
    /// request: the input copied to host memory, the result copied back to the device);
    /// results: the output and where it ran (batch number, row offset, batch rows). Verified against direct calls of
    /// the model on the main thread: bit-for-bit on the same batch, and within the op
    /// tolerance on the row alone ([`Scenario::batch_reference`]).
    Batching,
}

/// Models shared by every thread of a model scenario, built once per run from seeded weights.
pub(crate) struct Models {
    model: Box<dyn nn::Module>,
    /// The queue of [`Scenario::Batching`], running the same model.
    queue: Option<BatchQueue>,
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

    /// The model `scenario` runs, if it runs one.
    ///
    /// # Errors
    /// A device error while building the weights.
    pub(crate) fn build(
        device: &Device,
        scenario: Scenario,
    ) -> std::result::Result<Option<Models>, nn::NnError> {
        let mut seed = 1000;
        let mut param = |shape: &[usize], fan_in: usize| -> Result<Tensor> {
            seed += 1;
            let scale = Tensor::full(device, &[1], 1.0 / (fan_in as f32).sqrt())?;
            Tensor::randn(device, shape, seed)?.mul(&scale)
        };
        let model: Box<dyn nn::Module> = match scenario {
            Scenario::Mlp | Scenario::Batching => {
                let sizes = [512, 1024, 1024, 512];
                let mut named = Vec::new();
                for (i, w) in sizes.windows(2).enumerate() {
                    named.push((format!("{}.weight", 2 * i), param(&[w[1], w[0]], w[0])?));
                    named.push((format!("{}.bias", 2 * i), param(&[w[1]], w[0])?));
                }
                let mlp = nn::Mlp::load(&nn::Weights::from_tensors(named), &sizes)?;
                if scenario == Scenario::Batching {
                    let queue = batch_queue(device, mlp.clone()).map_err(|e| {
                        nn::NnError::InvalidConfig {
                            what: "batch queue",
                            reason: e.to_string(),
                        }
                    })?;
                    return Ok(Some(Models {
                        model: Box::new(mlp),
                        queue: Some(queue),
                    }));
                }
                Box::new(mlp)
            }
            Scenario::Transformer => {
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
                Box::new(nn::TransformerEncoder::load(
                    &nn::Weights::from_tensors(named),
                    &cfg,
                    2,
                    false,
                )?)
            }
            _ => return Ok(None),
        };
        Ok(Some(Models { model, queue: None }))
    }
}

/// The queue of [`Scenario::Batching`]: batches of up to 32 rows, 0.5 ms delay, 2 workers,
/// room for every thread's request.
fn batch_queue(device: &Device, mlp: nn::Mlp) -> std::result::Result<BatchQueue, BatchError> {
    let config = BatchConfig::builder(device)
        .max_batch(32)
        .max_delay(Duration::from_micros(500))
        .workers(2)
        .max_queue(65_536)
        .input_shape(Some(vec![512]))
        .build()?;
    BatchQueue::new(mlp, config)
}

/// A batch queue's error as a runtime error (the round's error type).
fn batch_error(e: BatchError) -> chorus::Error {
    match e {
        BatchError::Device { source, .. } => source,
        BatchError::Model { source, .. } => nn_error(&source),
        other => model_error(other.to_string()),
    }
}

/// A model's error as a runtime error.
fn nn_error(e: &nn::NnError) -> chorus::Error {
    match e {
        nn::NnError::Core(e) => e.clone(),
        other => model_error(other.to_string()),
    }
}

fn model_error(reason: String) -> chorus::Error {
    chorus::Error::InvalidShape {
        op: "batch queue",
        shape: vec![1, 512],
        reason,
    }
}

/// Settings shared by every round of a run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Params<'m> {
    /// Side of the square operands.
    pub(crate) size: usize,
    /// Base seed of every random input.
    pub(crate) seed: u64,
    /// Whether the round also computes the mean.
    pub(crate) with_mean: bool,
    /// The shared model of a model scenario.
    pub(crate) models: Option<&'m Models>,
}

/// Which round: the thread and iteration it belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RoundKey {
    /// Thread index, from 0.
    pub(crate) thread: u64,
    /// Iteration index within the thread, from 0.
    pub(crate) iter: u64,
}

impl Scenario {
    /// Every scenario, in the order listed to the user.
    pub(crate) const ALL: [Scenario; 7] = [
        Scenario::Matmul,
        Scenario::Attention,
        Scenario::Conv,
        Scenario::Reduce,
        Scenario::Mlp,
        Scenario::Transformer,
        Scenario::Batching,
    ];

    /// The name used by `--scenario`.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Scenario::Matmul => "matmul",
            Scenario::Attention => "attention",
            Scenario::Conv => "conv",
            Scenario::Reduce => "reduce",
            Scenario::Mlp => "mlp",
            Scenario::Transformer => "transformer",
            Scenario::Batching => "batching",
        }
    }

    /// clap value parser of `--scenario`.
    pub(crate) fn parse(name: &str) -> std::result::Result<Scenario, String> {
        let wanted = name.trim().to_ascii_lowercase();
        if let Some(s) = Scenario::ALL.into_iter().find(|s| s.name() == wanted) {
            return Ok(s);
        }
        let known: Vec<&str> = Scenario::ALL.iter().map(|s| s.name()).collect();
        let planned = if PLANNED.contains(&wanted.as_str()) {
            " (not written yet)"
        } else {
            ""
        };
        let planned_list = if PLANNED.is_empty() {
            String::new()
        } else {
            format!(" (planned: {})", PLANNED.join(", "))
        };
        Err(format!(
            "unknown scenario `{name}`{planned}; known scenarios: {}{planned_list}",
            known.join(", "),
        ))
    }

    /// Names of the results [`Scenario::round`] returns, in order.
    pub(crate) fn outputs(self, p: &Params<'_>) -> &'static [&'static str] {
        match self {
            Scenario::Matmul if p.with_mean => &["sum", "mean"],
            Scenario::Matmul => &["sum"],
            Scenario::Attention => &["sum", "max"],
            Scenario::Conv => &["logits"],
            Scenario::Mlp => &["output"],
            Scenario::Transformer => &["sum", "max"],
            Scenario::Batching => &["output", "batch"],
            Scenario::Reduce => &[
                "sum",
                "sum_dim1",
                "sum_dims02",
                "mean_dim2",
                "max_dim1",
                "argmax_dim1",
                "min_dim2",
                "argmin_dim2",
                "prod_dim2",
            ],
        }
    }

    /// Enqueues round `key` on the calling thread's current stream of `device` and returns its
    /// results (one per [`Scenario::outputs`] name), without waiting for them.
    ///
    /// # Errors
    /// The first op that fails (allocation, shape, a device error of the stream).
    pub(crate) fn round(
        self,
        device: &Device,
        p: &Params<'_>,
        key: RoundKey,
    ) -> Result<Vec<Tensor>> {
        match self {
            Scenario::Matmul => {
                let shape = [p.size, p.size];
                let a = Tensor::randn(device, &shape, seed_for(p.seed, key, 0))?;
                let b = Tensor::randn(device, &shape, seed_for(p.seed, key, 1))?;
                let c = a.matmul(&b)?;
                let mut out = vec![c.sum_all()?];
                if p.with_mean {
                    out.push(c.mean_all()?);
                }
                Ok(out)
            }
            Scenario::Attention => {
                let shape = [4, (p.size / 4).max(1), 64];
                let q = Tensor::randn(device, &shape, seed_for(p.seed, key, 0))?;
                let k = Tensor::randn(device, &shape, seed_for(p.seed, key, 1))?;
                let v = Tensor::randn(device, &shape, seed_for(p.seed, key, 2))?;
                let scores = q.matmul(&k.transpose(-2, -1)?)?;
                let out = scores.scaled_softmax(-1, 0.125)?.matmul(&v)?;
                Ok(vec![out.sum_all()?, out.max_all()?])
            }
            Scenario::Conv => {
                let r =
                    |shape: &[usize], op| Tensor::randn(device, shape, seed_for(p.seed, key, op));
                let x = r(&[2, 16, 16, 16], 0)?;
                let dw = r(&[16, 1, 3, 3], 1)?;
                let pw = r(&[32, 16, 1, 1], 2)?;
                let fc = r(&[10, 32], 3)?;
                let h = x.conv2d(&dw, None, [1, 1], [1, 1], 16)?;
                let h = h.conv2d(&pw, None, [1, 1], [0, 0], 1)?;
                let h = h.group_norm(4, None, None, 1e-5)?.relu()?;
                let h = h.adaptive_avg_pool2d([1, 1])?.reshape(&[2, 32])?;
                Ok(vec![h.linear(&fc, None)?])
            }
            Scenario::Reduce => {
                let x = Tensor::randn(device, &[8, 16, 32], seed_for(p.seed, key, 0))?;
                let (max_v, max_i) = x.max_dim(1, false)?;
                let (min_v, min_i) = x.min_dim(2, false)?;
                // Factors near 1 keep the product of 32 of them finite.
                let near_one = x
                    .mul(&Tensor::full(device, &[1], 0.05)?)?
                    .add(&Tensor::full(device, &[1], 1.0)?)?;
                Ok(vec![
                    x.sum_all()?,
                    x.sum(&[1], false)?,
                    x.sum(&[0, 2], true)?,
                    x.mean(&[2], false)?,
                    max_v,
                    max_i,
                    min_v,
                    min_i,
                    near_one.prod(&[2], false)?,
                ])
            }
            Scenario::Batching => {
                let queue = p
                    .models
                    .and_then(|m| m.queue.as_ref())
                    .expect("the batching scenario runs with its queue built");
                let x = Tensor::randn(device, &[1, 512], seed_for(p.seed, key, 0))?;
                let (y, info) = if key.iter % 2 == 1 {
                    let (y, info) = queue
                        .submit(HostTensor::from_tensor(&x)?)
                        .and_then(|t| t.wait_with_info())
                        .map_err(batch_error)?;
                    (y.to_device(device)?, info)
                } else {
                    queue
                        .submit(x)
                        .and_then(|t| t.wait_with_info())
                        .map_err(batch_error)?
                };
                let at = [info.batch as i64, info.offset as i64, info.rows as i64];
                Ok(vec![y, Tensor::from_slice(device, &at, &[3])?])
            }
            Scenario::Mlp | Scenario::Transformer => {
                let model = p
                    .models
                    .expect("model scenarios run with their model built");
                let x = Tensor::randn(device, &self.model_input(p), seed_for(p.seed, key, 0))?;
                self.model_outputs(model, &x)
            }
        }
    }

    /// Whether the scenario is a model's forward (which `chorus stress --graph` can capture).
    pub(crate) fn is_model(self) -> bool {
        matches!(self, Scenario::Mlp | Scenario::Transformer)
    }

    /// The input shape of a model scenario's forward.
    fn model_input(self, p: &Params<'_>) -> Vec<usize> {
        if self == Scenario::Mlp {
            vec![p.size.div_ceil(64), 512]
        } else {
            vec![4, 32, 256]
        }
    }

    /// A model scenario's results for input `x`: the output (MLP), or its sum and max.
    fn model_outputs(self, models: &Models, x: &Tensor) -> Result<Vec<Tensor>> {
        let y = models.model.forward(x).map_err(|e| match e {
            nn::NnError::Core(e) => e,
            other => chorus::Error::InvalidShape {
                op: "model",
                shape: x.shape().to_vec(),
                reason: other.to_string(),
            },
        })?;
        if self == Scenario::Mlp {
            Ok(vec![y])
        } else {
            Ok(vec![y.sum_all()?, y.max_all()?])
        }
    }

    /// A graph of a model scenario's forward and results ([`Scenario::round`] without its
    /// input), captured on the calling thread's stream.
    ///
    /// # Errors
    /// A capture or model error.
    pub(crate) fn capture(self, device: &Device, p: &Params<'_>) -> Result<Graph> {
        let models = p
            .models
            .expect("model scenarios run with their model built");
        let shape = self.model_input(p);
        Graph::capture(device, &[(&shape, DType::F32)], |x| {
            self.model_outputs(models, &x[0])
        })
    }

    /// [`Scenario::round`] of a model scenario with the forward run through `graph` (from
    /// [`Scenario::capture`]): the same input, the same results, bit for bit.
    ///
    /// # Errors
    /// As [`Scenario::round`].
    pub(crate) fn graph_round(
        self,
        device: &Device,
        p: &Params<'_>,
        key: RoundKey,
        graph: &Graph,
    ) -> Result<Vec<Tensor>> {
        let x = Tensor::randn(device, &self.model_input(p), seed_for(p.seed, key, 0))?;
        graph.run(&[&x])
    }
}

impl Scenario {
    /// The direct single-threaded reference of [`Scenario::Batching`] for the rounds `keys`,
    /// which ran together in one batch, in row order: the model called directly on the
    /// concatenation of their inputs (bit-identical to the batch by construction), and on each
    /// input alone (equal within the op tolerance), as `(batch output, [row outputs])`.
    ///
    /// # Errors
    /// An op or model error.
    pub(crate) fn batch_reference(
        device: &Device,
        p: &Params<'_>,
        keys: &[RoundKey],
    ) -> Result<(Vec<f32>, Vec<Vec<f32>>)> {
        let model = &p
            .models
            .expect("the batching scenario runs with its model built")
            .model;
        let run = |x: &Tensor| {
            model
                .forward(x)
                .map_err(|e| nn_error(&e))
                .and_then(|y| y.to_vec::<f32>())
        };
        let inputs = keys
            .iter()
            .map(|&k| Tensor::randn(device, &[1, 512], seed_for(p.seed, k, 0)))
            .collect::<Result<Vec<_>>>()?;
        let batch = run(&Tensor::cat(&inputs.iter().collect::<Vec<_>>(), 0)?)?;
        let alone = inputs.iter().map(run).collect::<Result<Vec<_>>>()?;
        Ok((batch, alone))
    }
}

/// Reads a result back as f32 values (i64 indices converted exactly for the small values they
/// hold), waiting for the work that produces it.
///
/// # Errors
/// A device error.
pub(crate) fn read(t: &Tensor) -> Result<Vec<f32>> {
    match t.dtype() {
        chorus::DType::I64 => Ok(t.to_vec::<i64>()?.into_iter().map(|v| v as f32).collect()),
        _ => t.to_vec::<f32>(),
    }
}

/// The seed of input `operand` of round `key`: depends on nothing else, so any thread can
/// recompute any round.
pub(crate) fn seed_for(seed: u64, key: RoundKey, operand: u64) -> u64 {
    let mut h = splitmix64(seed);
    h = splitmix64(h ^ key.thread);
    h = splitmix64(h ^ key.iter);
    splitmix64(h ^ operand)
}

/// The splitmix64 finalizer over `z + golden gamma`: a bijection with good avalanche.
fn splitmix64(z: u64) -> u64 {
    let mut z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for s in Scenario::ALL {
            assert_eq!(Scenario::parse(s.name()), Ok(s));
        }
        assert_eq!(Scenario::parse(" MatMul "), Ok(Scenario::Matmul));
        let e = Scenario::parse("nope").unwrap_err();
        assert!(
            e.contains(
                "known scenarios: matmul, attention, conv, reduce, mlp, transformer, batching"
            ),
            "{e}"
        );
        assert_eq!(Scenario::parse("batching"), Ok(Scenario::Batching));
    }

    #[test]
    fn seeds_differ_per_thread_iteration_and_operand() {
        let k = |thread, iter| RoundKey { thread, iter };
        let seeds = [
            seed_for(0, k(0, 0), 0),
            seed_for(0, k(0, 0), 1),
            seed_for(0, k(1, 0), 0),
            seed_for(0, k(0, 1), 0),
            seed_for(1, k(0, 0), 0),
        ];
        for (i, a) in seeds.iter().enumerate() {
            for b in &seeds[i + 1..] {
                assert_ne!(a, b);
            }
        }
        assert_eq!(seed_for(7, k(3, 5), 1), seed_for(7, k(3, 5), 1));
    }

    #[test]
    fn matmul_round_is_reproducible() {
        let device = Device::builder().streams(4).build().unwrap();
        let p = Params {
            size: 8,
            seed: 3,
            with_mean: true,
            models: None,
        };
        let key = RoundKey { thread: 2, iter: 9 };
        let first: Vec<Vec<f32>> = Scenario::Matmul
            .round(&device, &p, key)
            .unwrap()
            .iter()
            .map(|t| read(t).unwrap())
            .collect();
        let again: Vec<Vec<f32>> = Scenario::Matmul
            .round(&device, &p, key)
            .unwrap()
            .iter()
            .map(|t| read(t).unwrap())
            .collect();
        assert_eq!(first.len(), Scenario::Matmul.outputs(&p).len());
        let bits = |v: &[Vec<f32>]| v.iter().flatten().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&first), bits(&again));
        // mean = sum / 64 for an 8×8 product.
        assert!((first[1][0] * 64.0 - first[0][0]).abs() <= 1e-3 * first[0][0].abs().max(1.0));
    }
}
