//! Shape arithmetic shared by the op front-end: strides, broadcasting, dimension arguments.

use crate::error::{Error, Result};

/// Number of elements, checked.
pub(crate) fn numel(op: &'static str, shape: &[usize]) -> Result<usize> {
    // The product of the non-zero dimensions must fit too: it bounds every row-major stride,
    // which a shape with a zero dimension still has.
    shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d.max(1)))
        .ok_or(Error::SizeOverflow { what: op })?;
    Ok(shape.iter().product())
}

/// The broadcast of two shapes (NumPy/PyTorch rules: align trailing dims; 1 stretches).
pub(crate) fn broadcast(op: &'static str, a: &[usize], b: &[usize]) -> Result<Vec<usize>> {
    let n = a.len().max(b.len());
    let mut out = vec![0; n];
    for i in 0..n {
        let da = if i + a.len() >= n {
            a[i + a.len() - n]
        } else {
            1
        };
        let db = if i + b.len() >= n {
            b[i + b.len() - n]
        } else {
            1
        };
        out[i] = match (da, db) {
            (x, y) if x == y => x,
            (1, y) => y,
            (x, 1) => x,
            _ => {
                return Err(Error::ShapeMismatch {
                    op,
                    lhs: a.to_vec(),
                    rhs: b.to_vec(),
                    reason: "dimensions differ and neither is 1",
                })
            }
        };
    }
    Ok(out)
}

/// Strides that view (`shape`, `strides`) as `to` (a broadcast of it): stride 0 where stretched.
pub(crate) fn broadcast_strides(shape: &[usize], strides: &[usize], to: &[usize]) -> Vec<usize> {
    let lead = to.len() - shape.len();
    (0..to.len())
        .map(|i| {
            if i < lead || shape[i - lead] == 1 && to[i] != 1 {
                0
            } else {
                strides[i - lead]
            }
        })
        .collect()
}

/// Normalizes a possibly negative dimension index.
pub(crate) fn dim(op: &'static str, d: isize, rank: usize) -> Result<usize> {
    // A 0-d tensor takes dimension 0 or -1, as in PyTorch.
    let r = rank.max(1) as isize;
    let n = if d < 0 { d + r } else { d };
    if n < 0 || n >= r {
        return Err(Error::InvalidDim { op, dim: d, rank });
    }
    Ok(n as usize)
}

/// [`dim`] for ops that take a dimension of the shape itself (narrow, split, cat, ...): a 0-d
/// tensor has none, so dimension 0 (or -1) of it is an error here too.
pub(crate) fn axis(op: &'static str, d: isize, rank: usize) -> Result<usize> {
    if rank == 0 {
        return Err(Error::InvalidDim { op, dim: d, rank });
    }
    dim(op, d, rank)
}

/// Normalizes, sorts and checks a list of dimensions (no repeats). Empty means all.
pub(crate) fn dims(op: &'static str, ds: &[isize], rank: usize) -> Result<Vec<usize>> {
    if ds.is_empty() {
        return Ok((0..rank).collect());
    }
    let mut out = ds
        .iter()
        .map(|&d| dim(op, d, rank))
        .collect::<Result<Vec<_>>>()?;
    out.sort_unstable();
    if let Some(w) = out.windows(2).find(|w| w[0] == w[1]) {
        return Err(Error::InvalidDim {
            op,
            dim: w[0] as isize,
            rank,
        });
    }
    if rank == 0 {
        out.clear();
    }
    Ok(out)
}

/// Merges a run of dims into one `(len, stride)` if they are evenly strided.
pub(crate) fn flatten_run(shape: &[usize], strides: &[usize]) -> Option<(usize, usize)> {
    let mut len = 1;
    let mut stride = 0;
    let mut expect: Option<usize> = None;
    for (&n, &s) in shape.iter().zip(strides).rev() {
        if n == 1 {
            continue;
        }
        match expect {
            None => stride = s,
            Some(e) if e == s => {}
            Some(_) => return None,
        }
        len *= n;
        expect = Some(s * n);
    }
    Some((len, stride))
}

#[cfg(all(test, not(chorus_loom)))]
mod tests {
    use super::*;

    #[test]
    fn broadcasting() {
        assert_eq!(broadcast("t", &[2, 1, 4], &[3, 1]).unwrap(), vec![2, 3, 4]);
        assert_eq!(broadcast("t", &[], &[3]).unwrap(), vec![3]);
        assert!(broadcast("t", &[2, 3], &[4, 3]).is_err());
        assert_eq!(
            broadcast_strides(&[3, 1], &[1, 1], &[2, 3, 4]),
            vec![0, 1, 0]
        );
    }

    #[test]
    fn dims_normalize() {
        assert_eq!(dims("t", &[-1, 0], 3).unwrap(), vec![0, 2]);
        assert_eq!(dims("t", &[], 2).unwrap(), vec![0, 1]);
        assert!(dims("t", &[1, -2], 3).is_err());
        assert!(dim("t", 3, 3).is_err());
        assert_eq!(flatten_run(&[2, 3], &[3, 1]), Some((6, 1)));
        assert_eq!(flatten_run(&[2, 3], &[0, 0]), Some((6, 0)));
        assert_eq!(flatten_run(&[2, 3], &[1, 2]), None);
    }
}
