//! The rounds of the op workloads (matmul, attention, conv, reduce): random inputs from the
//! round's seeds, a few ops, the results returned without waiting.
//!
//! Each function enqueues its work on the calling thread's current stream; run again with the
//! same [`Params`] and [`RoundKey`] it gives the same bits, which is its single-threaded
//! reference.

use super::{seed_for, Params, RoundKey};
use chorus::{Device, Result, Tensor};

/// `a = randn([S, S])`, `b = randn([S, S])`, `c = a @ b`; results: `c.sum_all()`, and
/// `c.mean_all()` with `--with-mean`.
pub(super) fn matmul(device: &Device, p: &Params<'_>, key: RoundKey) -> Result<Vec<Tensor>> {
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

/// `q, k, v = randn([4, S/4, 64])`, `softmax(q k^T / 8) v`; results: sum and max.
pub(super) fn attention(device: &Device, p: &Params<'_>, key: RoundKey) -> Result<Vec<Tensor>> {
    let shape = [4, (p.size / 4).max(1), 64];
    let q = Tensor::randn(device, &shape, seed_for(p.seed, key, 0))?;
    let k = Tensor::randn(device, &shape, seed_for(p.seed, key, 1))?;
    let v = Tensor::randn(device, &shape, seed_for(p.seed, key, 2))?;
    let scores = q.matmul(&k.transpose(-2, -1)?)?;
    let out = scores.scaled_softmax(-1, 0.125)?.matmul(&v)?;
    Ok(vec![out.sum_all()?, out.max_all()?])
}

/// Depthwise 3×3 conv, pointwise conv to 32 channels, group norm, relu, pool, linear to 10 on
/// `randn([2, 16, 16, 16])`; result: the `[2, 10]` output.
pub(super) fn conv(device: &Device, p: &Params<'_>, key: RoundKey) -> Result<Vec<Tensor>> {
    let r = |shape: &[usize], op| Tensor::randn(device, shape, seed_for(p.seed, key, op));
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

/// Reductions of `randn([8, 16, 32])`: sum over all, one and two dims, mean, max and min
/// along a dim (values and indices), prod along a dim.
pub(super) fn reduce(device: &Device, p: &Params<'_>, key: RoundKey) -> Result<Vec<Tensor>> {
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
