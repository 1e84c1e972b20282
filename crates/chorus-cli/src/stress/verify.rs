//! The verification phase of `chorus stress` (not timed): every kept result is read back and
//! compared bit-for-bit with its workload's single-threaded reference, run on the main thread.

use super::report::progress_bar;
use super::threads::ThreadRun;
use crate::workload::{self, Params, RoundKey, Workload};
use chorus::Device;
use std::collections::BTreeMap;

/// The outcome of the verification phase.
#[derive(Debug, Default)]
pub(super) struct Verification {
    /// Rounds whose every value matched the single-threaded run.
    pub(super) verified: u64,
    /// Results that could not be read back, or rounds that could not be recomputed.
    pub(super) errors: Vec<String>,
    /// Values that differ from the single-threaded run.
    pub(super) mismatches: Vec<String>,
}

/// Reads every kept result and compares it with the same round run again on this thread.
pub(super) fn rounds(
    device: &Device,
    workload: Workload,
    params: &Params<'_>,
    runs: &[ThreadRun],
    kept: u64,
) -> Verification {
    let names = workload.outputs(params);
    let bar = progress_bar(kept, "verify");
    let mut v = Verification::default();
    for (key, results) in runs.iter().flat_map(|r| r.results.iter()) {
        let at = format!("thread {}, iteration {}", key.thread, key.iter);
        let got = match results
            .iter()
            .map(workload::read)
            .collect::<chorus::Result<Vec<_>>>()
        {
            Ok(got) => got,
            Err(e) => {
                v.errors.push(format!("{at}: reading the result: {e}"));
                bar.inc(1);
                continue;
            }
        };
        let want = workload.round(device, params, *key).and_then(|ts| {
            ts.iter()
                .map(workload::read)
                .collect::<chorus::Result<Vec<_>>>()
        });
        match want {
            Ok(want) => {
                let before = v.mismatches.len();
                compare(&at, names, &got, &want, &mut v.mismatches);
                if v.mismatches.len() == before {
                    v.verified += 1;
                }
            }
            Err(e) => v
                .errors
                .push(format!("{at}: recomputing on the main thread: {e}")),
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    v
}

/// Verification of [`Workload::Batching`]: the rounds are regrouped by the batch they ran in
/// (their `batch` result: batch number, row offset, rows of the batch), and each batch is
/// recomputed on the main thread by a direct call of the model on the concatenation of its
/// rounds' inputs, which must give the same bits; each round's output must also be within the
/// op tolerance (rtol = atol = 1e-4, as the golden MLP cases) of a direct call on its input
/// alone, since a different batch may round differently.
pub(super) fn batches(
    device: &Device,
    params: &Params<'_>,
    runs: &[ThreadRun],
    kept: u64,
) -> Verification {
    /// One round's output and where it ran.
    struct Placed {
        offset: i64,
        rows: i64,
        key: RoundKey,
        output: Vec<f32>,
    }
    let bar = progress_bar(kept, "verify");
    let mut v = Verification::default();
    let at = |key: &RoundKey| format!("thread {}, iteration {}", key.thread, key.iter);
    let mut batches: BTreeMap<i64, Vec<Placed>> = BTreeMap::new();
    for (key, results) in runs.iter().flat_map(|r| r.results.iter()) {
        let read = match results.as_slice() {
            [y, place] => y
                .to_vec::<f32>()
                .and_then(|y| Ok((y, place.to_vec::<i64>()?))),
            _ => {
                v.errors
                    .push(format!("{}: {} results, want 2", at(key), results.len()));
                bar.inc(1);
                continue;
            }
        };
        match read {
            Ok((output, place)) if place.len() == 3 => {
                batches.entry(place[0]).or_default().push(Placed {
                    offset: place[1],
                    rows: place[2],
                    key: *key,
                    output,
                });
            }
            Ok(_) => v
                .errors
                .push(format!("{}: malformed batch result", at(key))),
            Err(e) => v
                .errors
                .push(format!("{}: reading the result: {e}", at(key))),
        }
    }
    for (batch, mut members) in batches {
        members.sort_by_key(|m| m.offset);
        let rows = members[0].rows;
        let contiguous = members
            .iter()
            .enumerate()
            .all(|(i, m)| m.offset == i as i64 && m.rows == rows);
        if !contiguous || members.len() as i64 != rows {
            v.errors.push(format!(
                "batch {batch}: rows do not add up ({} rounds for {rows} rows)",
                members.len()
            ));
            bar.inc(members.len() as u64);
            continue;
        }
        let keys: Vec<RoundKey> = members.iter().map(|m| m.key).collect();
        match workload::batching::reference(device, params, &keys) {
            Ok((whole, alone)) => {
                let width = whole.len() / members.len().max(1);
                for (i, m) in members.iter().enumerate() {
                    let here = format!("{} (batch {batch}, row {i})", at(&m.key));
                    let before = v.mismatches.len();
                    let want = whole[i * width..(i + 1) * width].to_vec();
                    compare(
                        &here,
                        &["output"],
                        std::slice::from_ref(&m.output),
                        &[want],
                        &mut v.mismatches,
                    );
                    if beyond_op_tolerance(&m.output, &alone[i]) {
                        v.mismatches.push(format!(
                            "{here}: differs from a direct batch-1 call beyond the op tolerance"
                        ));
                    }
                    if v.mismatches.len() == before {
                        v.verified += 1;
                    }
                }
            }
            Err(e) => v.errors.push(format!(
                "batch {batch}: recomputing on the main thread: {e}"
            )),
        }
        bar.inc(members.len() as u64);
    }
    bar.finish_and_clear();
    v
}

/// Compares the values of one round bit-for-bit, adding one message per differing value (or
/// per differing length).
fn compare(at: &str, names: &[&str], got: &[Vec<f32>], want: &[Vec<f32>], out: &mut Vec<String>) {
    if got.len() != want.len() {
        out.push(format!("{at}: {} results, want {}", got.len(), want.len()));
        return;
    }
    for (k, (g, w)) in got.iter().zip(want).enumerate() {
        let name = names.get(k).copied().unwrap_or("result");
        if g.len() != w.len() {
            out.push(format!(
                "{at}, {name}: {} values, want {}",
                g.len(),
                w.len()
            ));
            continue;
        }
        let scalar = w.len() == 1;
        for (j, (&g, &w)) in g.iter().zip(w).enumerate() {
            if g.to_bits() != w.to_bits() {
                let index = if scalar {
                    String::new()
                } else {
                    format!("[{j}]")
                };
                out.push(format!(
                    "{at}, {name}{index}: got {g:e} ({:#010x}), want {w:e} ({:#010x})",
                    g.to_bits(),
                    w.to_bits()
                ));
            }
        }
    }
}

/// Whether `got` differs from `want` beyond the op tolerance (`1e-4 + 1e-4 |want|`), in length,
/// or by a NaN on either side (a difference that is NaN compares false with any bound).
fn beyond_op_tolerance(got: &[f32], want: &[f32]) -> bool {
    got.len() != want.len()
        || got.iter().zip(want).any(|(g, w)| {
            let d = (g - w).abs();
            d.is_nan() || d > 1e-4 + 1e-4 * w.abs()
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nan_is_beyond_the_op_tolerance() {
        assert!(!beyond_op_tolerance(&[1.0, 2.0], &[1.0, 2.0001]));
        assert!(beyond_op_tolerance(&[1.0, 2.0], &[1.0, 2.01]));
        assert!(beyond_op_tolerance(&[f32::NAN, 2.0], &[1.0, 2.0]));
        assert!(beyond_op_tolerance(&[1.0, 2.0], &[1.0, f32::NAN]));
        assert!(beyond_op_tolerance(&[1.0], &[1.0, 2.0]));
    }

    #[test]
    fn compare_is_bitwise() {
        let mut out = Vec::new();
        compare("t", &["sum"], &[vec![1.0]], &[vec![1.0]], &mut out);
        compare(
            "t",
            &["sum"],
            &[vec![f32::NAN]],
            &[vec![f32::NAN]],
            &mut out,
        );
        assert!(out.is_empty(), "{out:?}");
        compare("t", &["sum"], &[vec![-0.0]], &[vec![0.0]], &mut out);
        assert_eq!(
            out,
            ["t, sum: got -0e0 (0x80000000), want 0e0 (0x00000000)"]
        );
        out.clear();
        compare(
            "t",
            &["sum", "mean"],
            &[vec![1.0], vec![2.0, 3.0]],
            &[vec![1.0], vec![2.0, 3.5]],
            &mut out,
        );
        assert_eq!(out.len(), 1);
        assert!(out[0].starts_with("t, mean[1]: got 3e0"), "{out:?}");
        out.clear();
        compare(
            "t",
            &["sum"],
            &[vec![1.0]],
            &[vec![1.0], vec![2.0]],
            &mut out,
        );
        assert_eq!(out, ["t: 1 results, want 2"]);
    }
}
