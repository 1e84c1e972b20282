//! The workloads of `chorus stress` and `chorus bench`, defined once: for each, how its inputs
//! and model are built, what one iteration (a *round*) runs, and its single-threaded
//! reference.
//!
//! A round is a pure function of the run's [`Params`] and its [`RoundKey`]: every random input
//! comes from a seed made by [`seed_for`] from `(seed, thread, iteration, operand)`, so the
//! round can be run again on one thread and must give bit-identical results (that rerun is its
//! reference; [`Workload::Batching`] has its own, [`batching::reference`]). A round enqueues
//! its work on the calling thread's current stream and returns its result tensors without
//! waiting; the caller reads them later ([`read`]).
//!
//! - `ops.rs`: the op rounds (matmul, attention, conv, reduce);
//! - `models.rs`: the shared models (the MLP, the transformer) and a forward;
//! - `batching.rs`: the MLP behind a batching queue, and its per-batch reference;
//! - `seed.rs`: the seeds.
//!
//! Adding a workload: a variant of [`Workload`], its name in [`Workload::name`] and
//! [`Workload::ALL`], its work in [`Workload::round`] and its result names in
//! [`Workload::outputs`].

pub(crate) mod batching;
mod models;
mod ops;
mod seed;

pub(crate) use models::{mlp, Models};
pub(crate) use seed::seed_for;

use chorus::{DType, Device, Graph, Result, Tensor};

/// The workloads planned but not written yet, named in the error for an unknown name.
const PLANNED: [&str; 0] = [];

/// One kind of round (`chorus stress --scenario`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Workload {
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
    /// The MLP 512→1024→1024→512 (ReLU, [`mlp`]), one model shared by every thread, on
    /// `randn([S/64 rounded up, 512])`; result: the output.
    Mlp,
    /// Two post-norm transformer encoder layers (d = 256, 4 heads, feed-forward 1024), one
    /// model shared by every thread, on `randn([4, 32, 256])`; results: sum and max.
    Transformer,
    /// The MLP of [`Workload::Mlp`] behind one dynamic batching queue shared by every thread
    /// (`batching.rs`); results: the output and where it ran (batch number, row offset, batch
    /// rows). Verified against direct calls of the model on the main thread: bit-for-bit on
    /// the same batch, and within the op tolerance on the row alone ([`batching::reference`]).
    Batching,
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
    /// The shared model of a model workload.
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

impl Workload {
    /// Every workload, in the order listed to the user.
    pub(crate) const ALL: [Workload; 7] = [
        Workload::Matmul,
        Workload::Attention,
        Workload::Conv,
        Workload::Reduce,
        Workload::Mlp,
        Workload::Transformer,
        Workload::Batching,
    ];

    /// The name used by `--scenario`.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Workload::Matmul => "matmul",
            Workload::Attention => "attention",
            Workload::Conv => "conv",
            Workload::Reduce => "reduce",
            Workload::Mlp => "mlp",
            Workload::Transformer => "transformer",
            Workload::Batching => "batching",
        }
    }

    /// clap value parser of `--scenario`.
    pub(crate) fn parse(name: &str) -> std::result::Result<Workload, String> {
        let wanted = name.trim().to_ascii_lowercase();
        if let Some(s) = Workload::ALL.into_iter().find(|s| s.name() == wanted) {
            return Ok(s);
        }
        let known: Vec<&str> = Workload::ALL.iter().map(|s| s.name()).collect();
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

    /// Names of the results [`Workload::round`] returns, in order.
    pub(crate) fn outputs(self, p: &Params<'_>) -> &'static [&'static str] {
        match self {
            Workload::Matmul if p.with_mean => &["sum", "mean"],
            Workload::Matmul => &["sum"],
            Workload::Attention => &["sum", "max"],
            Workload::Conv => &["logits"],
            Workload::Mlp => &["output"],
            Workload::Transformer => &["sum", "max"],
            Workload::Batching => &["output", "batch"],
            Workload::Reduce => &[
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
    /// results (one per [`Workload::outputs`] name), without waiting for them.
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
            Workload::Matmul => ops::matmul(device, p, key),
            Workload::Attention => ops::attention(device, p, key),
            Workload::Conv => ops::conv(device, p, key),
            Workload::Reduce => ops::reduce(device, p, key),
            Workload::Batching => batching::round(device, p, key),
            Workload::Mlp | Workload::Transformer => {
                let x = Tensor::randn(device, &self.model_input(p), seed_for(p.seed, key, 0))?;
                self.model_outputs(models(p), &x)
            }
        }
    }

    /// Whether the workload is a model's forward (which `chorus stress --graph` can capture).
    pub(crate) fn is_model(self) -> bool {
        matches!(self, Workload::Mlp | Workload::Transformer)
    }

    /// The input shape of a model workload's forward.
    fn model_input(self, p: &Params<'_>) -> Vec<usize> {
        if self == Workload::Mlp {
            vec![p.size.div_ceil(64), 512]
        } else {
            vec![4, 32, 256]
        }
    }

    /// A model workload's results for input `x`: the output (MLP), or its sum and max.
    fn model_outputs(self, models: &Models, x: &Tensor) -> Result<Vec<Tensor>> {
        let y = models.forward(x)?;
        if self == Workload::Mlp {
            Ok(vec![y])
        } else {
            Ok(vec![y.sum_all()?, y.max_all()?])
        }
    }

    /// A graph of a model workload's forward and results ([`Workload::round`] without its
    /// input), captured on the calling thread's stream.
    ///
    /// # Errors
    /// A capture or model error.
    pub(crate) fn capture(self, device: &Device, p: &Params<'_>) -> Result<Graph> {
        let models = models(p);
        let shape = self.model_input(p);
        Graph::capture(device, &[(&shape, DType::F32)], |x| {
            self.model_outputs(models, &x[0])
        })
    }

    /// [`Workload::round`] of a model workload with the forward run through `graph` (from
    /// [`Workload::capture`]): the same input, the same results, bit for bit.
    ///
    /// # Errors
    /// As [`Workload::round`].
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

/// The shared model of a model workload's run.
fn models<'m>(p: &Params<'m>) -> &'m Models {
    p.models
        .expect("model scenarios run with their model built")
}

/// Reads a result back as f32 values (i64 indices converted exactly for the small values they
/// hold), waiting for the work that produces it.
///
/// # Errors
/// A device error.
pub(crate) fn read(t: &Tensor) -> Result<Vec<f32>> {
    match t.dtype() {
        DType::I64 => Ok(t.to_vec::<i64>()?.into_iter().map(|v| v as f32).collect()),
        _ => t.to_vec::<f32>(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chorus::DeviceExt;

    #[test]
    fn names_round_trip() {
        for s in Workload::ALL {
            assert_eq!(Workload::parse(s.name()), Ok(s));
        }
        assert_eq!(Workload::parse(" MatMul "), Ok(Workload::Matmul));
        let e = Workload::parse("nope").unwrap_err();
        assert!(
            e.contains(
                "known scenarios: matmul, attention, conv, reduce, mlp, transformer, batching"
            ),
            "{e}"
        );
        assert_eq!(Workload::parse("batching"), Ok(Workload::Batching));
    }

    #[test]
    fn matmul_round_is_reproducible() {
        let device = Device::builder().streams(4).open().unwrap();
        let p = Params {
            size: 8,
            seed: 3,
            with_mean: true,
            models: None,
        };
        let key = RoundKey { thread: 2, iter: 9 };
        let first: Vec<Vec<f32>> = Workload::Matmul
            .round(&device, &p, key)
            .unwrap()
            .iter()
            .map(|t| read(t).unwrap())
            .collect();
        let again: Vec<Vec<f32>> = Workload::Matmul
            .round(&device, &p, key)
            .unwrap()
            .iter()
            .map(|t| read(t).unwrap())
            .collect();
        assert_eq!(first.len(), Workload::Matmul.outputs(&p).len());
        let bits = |v: &[Vec<f32>]| v.iter().flatten().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&first), bits(&again));
        // mean = sum / 64 for an 8×8 product.
        assert!((first[1][0] * 64.0 - first[0][0]).abs() <= 1e-3 * first[0][0].abs().max(1.0));
    }
}
