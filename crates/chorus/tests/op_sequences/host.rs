//! The naive host reference: what each op gives, computed from its inputs' values as read
//! back from the device, in logical (row-major) order.
//!
//! Layout ops (transpose, permute, narrow, reshape, contiguous, cat, index_select), relu (NaN
//! stays NaN, as PyTorch's) and
//! the elementwise add/sub/mul are exact: one IEEE f32 operation per element (i64: wrapping)
//! gives one answer on every backend, so the device must give it too (compared as values:
//! +0 and -0 equal, NaN matches NaN). Sums, means and matmuls are compared within a bound:
//! in f64 on the host, and on the device in f32 in an order each backend chooses, so an
//! element of `n` terms `t_i` may be off by the worst case of any summation order,
//! `(n + 4) · 2⁻²⁴ · Σ|t_i|` (a mean: divided by `n`); `+ 4` covers the products' and the
//! final rounding.

use crate::lang::{broadcast, Bin, Input, Op};
use chorus::{DType, Tensor};

/// Values in row-major order.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Data {
    F32(Vec<f32>),
    I64(Vec<i64>),
}

/// A value on the host: shape and data.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Host {
    pub(crate) shape: Vec<usize>,
    pub(crate) data: Data,
}

/// What an op must give: a host value and, for inexact ops, a bound per element.
#[derive(Debug)]
pub(crate) struct Want {
    value: Host,
    bound: Option<Vec<f64>>,
}

/// The values of a fresh input (splitmix64 of its seed).
pub(crate) fn values(i: &Input) -> Data {
    let n: usize = i.shape.iter().product();
    let mut state = i.seed;
    let mut next = move || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    match (i.dtype, i.index_below) {
        (DType::I64, Some(below)) => {
            let mut v: Vec<i64> = (0..n)
                .map(|_| (next() % below.max(1) as u64) as i64)
                .collect();
            if i.out_of_range && n > 0 {
                let at = (next() % n as u64) as usize;
                v[at] = if next() % 2 == 0 {
                    below as i64
                } else {
                    -1 - (next() % 3) as i64
                };
            }
            Data::I64(v)
        }
        (DType::I64, None) => Data::I64((0..n).map(|_| (next() % 40) as i64 - 20).collect()),
        _ => Data::F32(
            (0..n)
                .map(|_| ((next() >> 11) as f64 / (1u64 << 53) as f64 * 4.0 - 2.0) as f32)
                .collect(),
        ),
    }
}

/// Zeros of `t`'s shape and dtype (a stand-in for a poisoned value, which cannot be read).
pub(crate) fn zeros(t: &Tensor) -> Host {
    let n = t.shape().iter().product();
    let data = match t.dtype() {
        DType::I64 => Data::I64(vec![0; n]),
        _ => Data::F32(vec![0.0; n]),
    };
    Host {
        shape: t.shape().to_vec(),
        data,
    }
}

/// A tensor's values.
pub(crate) fn read(t: &Tensor) -> Host {
    let data = match t.dtype() {
        DType::I64 => Data::I64(t.to_vec().expect("read back i64")),
        _ => Data::F32(t.to_vec().expect("read back f32")),
    };
    Host {
        shape: t.shape().to_vec(),
        data,
    }
}

/// Every multi-index of `shape`, in row-major order.
fn indices(shape: &[usize]) -> Vec<Vec<usize>> {
    let n: usize = shape.iter().product();
    (0..n)
        .map(|mut flat| {
            let mut idx = vec![0; shape.len()];
            for d in (0..shape.len()).rev() {
                idx[d] = flat % shape[d];
                flat /= shape[d];
            }
            idx
        })
        .collect()
}

fn flat(shape: &[usize], idx: &[usize]) -> usize {
    idx.iter().zip(shape).fold(0, |acc, (&i, &n)| acc * n + i)
}

/// Dimension `d` of a rank-`rank` tensor (a 0-d tensor takes 0 and -1, as chorus does).
fn dim(d: isize, rank: usize) -> usize {
    if d < 0 {
        (d + rank.max(1) as isize) as usize
    } else {
        d as usize
    }
}

/// A value of `shape` whose element at `o` is element `src(o)` (row-major) of `h`.
fn gather(h: &Host, shape: Vec<usize>, src: impl Fn(&[usize]) -> usize) -> Host {
    let at: Vec<usize> = indices(&shape).iter().map(|o| src(o)).collect();
    let data = match &h.data {
        Data::F32(v) => Data::F32(at.iter().map(|&i| v[i]).collect()),
        Data::I64(v) => Data::I64(at.iter().map(|&i| v[i]).collect()),
    };
    Host { shape, data }
}

fn exact(value: Host) -> Want {
    Want { value, bound: None }
}

fn f32s(h: &Host) -> &[f32] {
    match &h.data {
        Data::F32(v) => v,
        Data::I64(_) => panic!("an f32 value expected"),
    }
}

/// Multi-index `o` of a broadcast result read from an operand of shape `s`.
fn unbroadcast(s: &[usize], o: &[usize]) -> usize {
    let off = o.len() - s.len();
    let idx: Vec<usize> = (0..s.len())
        .map(|i| if s[i] == 1 { 0 } else { o[i + off] })
        .collect();
    flat(s, &idx)
}

/// What `op` gives on the values `vals` (`None` for a fresh input: nothing to compare).
pub(crate) fn reference(op: &Op, vals: &[Host]) -> Option<Want> {
    Some(match op {
        Op::Input(_) => return None,
        Op::Contiguous(x) => exact(vals[*x].clone()),
        Op::Permute(x, perm) => exact(permute(&vals[*x], perm)),
        Op::Transpose(x, d0, d1) => {
            let h = &vals[*x];
            let r = h.shape.len();
            let mut perm: Vec<usize> = (0..r).collect();
            if r > 0 {
                perm.swap(dim(*d0, r), dim(*d1, r));
            }
            exact(permute(h, &perm))
        }
        Op::Narrow {
            x,
            dim: d,
            start,
            len,
        } => {
            let h = &vals[*x];
            let d = dim(*d, h.shape.len());
            let mut shape = h.shape.clone();
            shape[d] = *len;
            exact(gather(h, shape, |o| {
                let mut i = o.to_vec();
                i[d] += start;
                flat(&h.shape, &i)
            }))
        }
        Op::Reshape(x, to) => {
            let h = &vals[*x];
            let len: usize = h.shape.iter().product();
            let known: usize = to
                .iter()
                .filter(|&&d| d >= 0)
                .map(|&d| d as usize)
                .product();
            let shape = to
                .iter()
                .map(|&d| if d < 0 { len / known } else { d as usize })
                .collect();
            exact(Host {
                shape,
                data: h.data.clone(),
            })
        }
        Op::Cat(parts, d) => {
            let first = &vals[parts[0]];
            let d = dim(*d, first.shape.len());
            let mut shape = first.shape.clone();
            shape[d] = parts.iter().map(|&p| vals[p].shape[d]).sum();
            // Concatenate by gathering from the parts laid end to end.
            let mut offsets = vec![];
            let mut all = first.clone();
            all.data = match &first.data {
                Data::F32(_) => Data::F32(vec![]),
                Data::I64(_) => Data::I64(vec![]),
            };
            for &p in parts {
                offsets.push(match &all.data {
                    Data::F32(v) => v.len(),
                    Data::I64(v) => v.len(),
                });
                match (&mut all.data, &vals[p].data) {
                    (Data::F32(a), Data::F32(b)) => a.extend(b),
                    (Data::I64(a), Data::I64(b)) => a.extend(b),
                    _ => panic!("cat of mixed dtypes resolved as valid"),
                }
            }
            exact(gather(&all, shape, |o| {
                let mut i = o.to_vec();
                for (k, &p) in parts.iter().enumerate() {
                    let s = &vals[p].shape;
                    if i[d] < s[d] {
                        return offsets[k] + flat(s, &i);
                    }
                    i[d] -= s[d];
                }
                unreachable!("index past the concatenation")
            }))
        }
        Op::IndexSelect { x, dim: d, indices } => {
            let h = &vals[*x];
            let d = dim(*d, h.shape.len());
            let Data::I64(idx) = &vals[*indices].data else {
                panic!("i64 indices expected")
            };
            let mut shape = h.shape.clone();
            shape[d] = idx.len();
            exact(gather(h, shape, |o| {
                let mut i = o.to_vec();
                i[d] = idx[o[d]] as usize;
                flat(&h.shape, &i)
            }))
        }
        Op::Relu(x) => {
            let h = &vals[*x];
            exact(Host {
                shape: h.shape.clone(),
                data: Data::F32(
                    f32s(h)
                        .iter()
                        .map(|&v| if v > 0.0 || v.is_nan() { v } else { 0.0 })
                        .collect(),
                ),
            })
        }
        Op::Binary(op, a, b) => exact(binary(*op, &vals[*a], &vals[*b])),
        Op::Reduce {
            x,
            dims,
            keepdim,
            mean,
        } => reduce(&vals[*x], dims, *keepdim, *mean),
        Op::Matmul(a, b) => matmul(&vals[*a], &vals[*b]),
    })
}

fn permute(h: &Host, perm: &[usize]) -> Host {
    let shape = perm.iter().map(|&p| h.shape[p]).collect();
    gather(h, shape, |o| {
        let mut i = vec![0; perm.len()];
        for (k, &p) in perm.iter().enumerate() {
            i[p] = o[k];
        }
        flat(&h.shape, &i)
    })
}

fn binary(op: Bin, a: &Host, b: &Host) -> Host {
    let shape = broadcast(&a.shape, &b.shape).expect("broadcastable operands");
    let at: Vec<(usize, usize)> = indices(&shape)
        .iter()
        .map(|o| (unbroadcast(&a.shape, o), unbroadcast(&b.shape, o)))
        .collect();
    let data = match (&a.data, &b.data) {
        (Data::F32(x), Data::F32(y)) => Data::F32(
            at.iter()
                .map(|&(i, j)| match op {
                    Bin::Add => x[i] + y[j],
                    Bin::Sub => x[i] - y[j],
                    Bin::Mul => x[i] * y[j],
                })
                .collect(),
        ),
        (Data::I64(x), Data::I64(y)) => Data::I64(
            at.iter()
                .map(|&(i, j)| match op {
                    Bin::Add => x[i].wrapping_add(y[j]),
                    Bin::Sub => x[i].wrapping_sub(y[j]),
                    Bin::Mul => x[i].wrapping_mul(y[j]),
                })
                .collect(),
        ),
        _ => panic!("mixed dtypes resolved as valid"),
    };
    Host { shape, data }
}

/// One unit in the last place of f32 at 1 (2⁻²³), halved: f32's unit roundoff.
const U: f64 = 1.0 / (1u64 << 24) as f64;

fn reduce(h: &Host, dims: &[isize], keepdim: bool, mean: bool) -> Want {
    let r = h.shape.len();
    let ds: Vec<usize> = if dims.is_empty() {
        (0..r).collect()
    } else {
        dims.iter().map(|&d| dim(d, r)).collect()
    };
    let kept: Vec<usize> = (0..r).filter(|d| !ds.contains(d)).collect();
    let out: Vec<usize> = kept.iter().map(|&d| h.shape[d]).collect();
    let shape = if keepdim {
        (0..r)
            .map(|d| if ds.contains(&d) { 1 } else { h.shape[d] })
            .collect()
    } else {
        out.clone()
    };
    // The input elements that go into each output element.
    let mut groups: Vec<Vec<usize>> = vec![vec![]; out.iter().product()];
    for i in indices(&h.shape) {
        let o: Vec<usize> = kept.iter().map(|&d| i[d]).collect();
        groups[flat(&out, &o)].push(flat(&h.shape, &i));
    }
    match &h.data {
        Data::I64(v) => exact(Host {
            shape,
            data: Data::I64(
                groups
                    .iter()
                    .map(|g| g.iter().fold(0i64, |a, &i| a.wrapping_add(v[i])))
                    .collect(),
            ),
        }),
        Data::F32(v) => {
            let (mut vals, mut bound) = (vec![], vec![]);
            for g in &groups {
                let n = g.len() as f64;
                let sum: f64 = g.iter().map(|&i| f64::from(v[i])).sum();
                let abs: f64 = g.iter().map(|&i| f64::from(v[i]).abs()).sum();
                let (value, b) = if mean {
                    (sum / n, (n + 4.0) * U * abs / n)
                } else {
                    (sum, (n + 4.0) * U * abs)
                };
                vals.push(value as f32);
                bound.push(b);
            }
            Want {
                value: Host {
                    shape,
                    data: Data::F32(vals),
                },
                bound: Some(bound),
            }
        }
    }
}

/// PyTorch's matmul: 1-D operands promoted, batch dimensions broadcast.
fn matmul(a: &Host, b: &Host) -> Want {
    let (ra, rb) = (a.shape.len(), b.shape.len());
    let sa = if ra == 1 {
        vec![1, a.shape[0]]
    } else {
        a.shape.clone()
    };
    let sb = if rb == 1 {
        vec![b.shape[0], 1]
    } else {
        b.shape.clone()
    };
    let (m, k) = (sa[sa.len() - 2], sa[sa.len() - 1]);
    let n = sb[sb.len() - 1];
    let (ba, bb) = (&sa[..sa.len() - 2], &sb[..sb.len() - 2]);
    let batch = broadcast(ba, bb).expect("broadcast batch dims");
    let (x, y) = (f32s(a), f32s(b));
    let (mut vals, mut bound) = (vec![], vec![]);
    for bi in indices(&batch) {
        let (oa, ob) = (unbroadcast(ba, &bi), unbroadcast(bb, &bi));
        for i in 0..m {
            for j in 0..n {
                let terms: Vec<f64> = (0..k)
                    .map(|p| {
                        f64::from(x[(oa * m + i) * k + p]) * f64::from(y[(ob * k + p) * n + j])
                    })
                    .collect();
                let abs: f64 = terms.iter().map(|t| t.abs()).sum();
                vals.push(terms.iter().sum::<f64>() as f32);
                bound.push((k as f64 + 4.0) * U * abs);
            }
        }
    }
    let mut shape = batch;
    if ra > 1 {
        shape.push(m);
    }
    if rb > 1 {
        shape.push(n);
    }
    Want {
        value: Host {
            shape,
            data: Data::F32(vals),
        },
        bound: Some(bound),
    }
}

/// Whether `got` is what `want` says, or what differs.
pub(crate) fn check(got: &Host, want: &Want) -> Result<(), String> {
    if got.shape != want.value.shape {
        return Err(format!(
            "shape {:?}, expected {:?}",
            got.shape, want.value.shape
        ));
    }
    match (&got.data, &want.value.data) {
        (Data::I64(g), Data::I64(w)) => match g.iter().zip(w).position(|(g, w)| g != w) {
            Some(i) => Err(format!("element {i}: {} vs {}", g[i], w[i])),
            None => Ok(()),
        },
        (Data::F32(g), Data::F32(w)) => {
            for (i, (&g, &w)) in g.iter().zip(w).enumerate() {
                let ok = match &want.bound {
                    _ if g.is_nan() || w.is_nan() => g.is_nan() && w.is_nan(),
                    None => g == w,
                    Some(_) if !w.is_finite() => g == w,
                    Some(b) => (f64::from(g) - f64::from(w)).abs() <= b[i] + f64::from(w).abs() * U,
                };
                if !ok {
                    return Err(format!(
                        "element {i}: {g:e} vs {w:e} (bound {:?})",
                        want.bound.as_ref().map(|b| b[i])
                    ));
                }
            }
            Ok(())
        }
        _ => Err("dtype differs from the reference".to_string()),
    }
}
