//! Property tests of random op sequences through the public API, on every backend.
//!
//! A program ([`lang`]) is a few inputs and a sequence of steps over the values alive so far:
//! elementwise add/sub/mul with broadcasting (f32 and i64), matmul (1-D, 2-D and batched,
//! broadcast batch dims, transposed operands), sum/mean over dims (keepdim, negative dims),
//! transpose, permute, narrow, reshape (with an inferred size), contiguous, cat, index_select
//! (f32 and i64 sources) and relu, over shapes of rank 0–4 with sizes 0–4 and over views that
//! are not contiguous (transposed, permuted, narrowed, broadcast against a partner). About a
//! quarter of the steps are made invalid on purpose: a matmul of mismatched inner or batch
//! dims or of a 0-d or i64 operand, an add of shapes that do not broadcast, a dimension out of
//! range or repeated, a permutation of the wrong length, a narrow past the end, a reshape to
//! another size or with two inferred sizes, a cat of mismatched shapes, mixed dtypes, the mean
//! of integers, relu of integers, an index tensor that is f32 or 2-D.
//!
//! Properties, each over [`cases`] programs (256 by default, `CHORUS_PROPTEST_CASES` for more):
//! - [`steps_match_the_host_or_fail_typed`]: run op by op on one thread, every valid step
//!   gives what a naive host computation gives from the values its inputs read back as
//!   (exactly, or within a stated bound for sums, means and matmuls: see [`host`]), and every
//!   invalid step returns `Err` of the expected `chorus::Error` variant with nothing allocated
//!   or enqueued (the allocator's count of allocations does not move: an op allocates its
//!   output before it enqueues), after which the sequence goes on with the other values.
//! - [`threads_give_the_reference_bits`]: the same program on 4 threads at once, each on its
//!   own stream and all sharing the input tensors, reading back only at the end, gives on
//!   every thread the outcomes of the op-by-op run alone: the same errors and bit-identical
//!   values. The shared inputs are written on a fifth stream held back by a test gate until
//!   every thread has enqueued its program, so the cross-stream ordering of their writes is
//!   exercised, not found already done.
//! - Both: no panic, and every case finishes within [`DEADLINE`] (else the case fails as a
//!   hang; nextest's `terminate-after` is the backstop).
//!
//! Poison: a quarter of the valid `index_select` steps get an index out of range (past the
//! end, or negative), which only the device can find. The op returns a value that is
//! *poisoned*: reading it back gives `Error::Kernel`, and so does every value computed from it
//! (views, copies, sums, products, cats), on every thread, whether it was computed before the
//! failure was known (the kernels run on the zeroed rows) or after (nothing is computed). The
//! reference run knows which values are poisoned from the host data (an index out of range
//! that selects at least one element, or a poisoned operand); values it does not poison must
//! still match the host. The stream keeps working throughout.

// The crate root of an integration test looks for modules beside it, not in a folder of its name.
#[path = "op_sequences/host.rs"]
mod host;
#[path = "op_sequences/lang.rs"]
mod lang;
#[path = "op_sequences/resolve.rs"]
mod resolve;

use chorus::{DType, Device, Error, Tensor};
use chorus_testing::{backend_tests, TestBackend};
use host::Host;
use lang::{Bin, Expect, Meta, Op, Program};
use proptest::test_runner::{Config, TestCaseError, TestError, TestRunner};
use std::sync::mpsc;
use std::time::Duration;

/// Cases per property: bounded in CI, more on request.
fn cases() -> u32 {
    std::env::var("CHORUS_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}

/// The most one case may take (a few milliseconds normally) before it counts as a hang.
const DEADLINE: Duration = Duration::from_secs(60);

/// Threads that run a program at once in [`threads_give_the_reference_bits`].
const THREADS: usize = 4;

/// What one op gave: its dtype, shape and value bits, or the name of its error variant.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Ok(DType, Vec<usize>, Vec<u64>),
    Err(String),
}

fn variant(e: &Error) -> String {
    match e {
        Error::ShapeMismatch { .. } => "ShapeMismatch".into(),
        Error::InvalidShape { .. } => "InvalidShape".into(),
        Error::InvalidDim { .. } => "InvalidDim".into(),
        Error::DTypeMismatch { .. } => "DTypeMismatch".into(),
        Error::UnsupportedDType { .. } => "UnsupportedDType".into(),
        Error::Kernel { .. } => "Kernel".into(),
        other => format!("another error: {other}"),
    }
}

/// What an op gave, read back: a poisoned value counts as its error.
fn outcome(r: &Result<Tensor, Error>) -> Outcome {
    let read = |t: &Tensor| -> Result<Vec<u64>, Error> {
        Ok(match t.dtype() {
            DType::I64 => t.to_vec::<i64>()?.iter().map(|&v| v as u64).collect(),
            _ => (t.to_vec::<f32>()?.iter())
                .map(|v| u64::from(v.to_bits()))
                .collect(),
        })
    };
    match r {
        Err(e) => Outcome::Err(variant(e)),
        Ok(t) => match read(t) {
            Err(e) => Outcome::Err(variant(&e)),
            Ok(bits) => Outcome::Ok(t.dtype(), t.shape().to_vec(), bits),
        },
    }
}

/// Whether `op` gives a poisoned value (module docs): a poisoned operand, or an index out of
/// range that selects at least one element.
fn poisons(op: &Op, vals: &[Tensor], hosts: &[Host], poisoned: &[bool]) -> bool {
    if operands(op).iter().any(|&i| poisoned[i]) {
        return true;
    }
    let Op::IndexSelect { x, dim, indices } = op else {
        return false;
    };
    let shape = vals[*x].shape();
    let d = dim.rem_euclid(shape.len() as isize) as usize;
    let host::Data::I64(idx) = &hosts[*indices].data else {
        return false;
    };
    let selected: usize = (shape.iter().enumerate())
        .map(|(i, &n)| if i == d { idx.len() } else { n })
        .product();
    selected > 0 && idx.iter().any(|&i| i < 0 || i as usize >= shape[d])
}

fn input(dev: &Device, i: &lang::Input) -> Result<Tensor, Error> {
    if !i.reversed {
        return match host::values(i) {
            host::Data::F32(v) => Tensor::from_slice(dev, &v, &i.shape),
            host::Data::I64(v) => Tensor::from_slice(dev, &v, &i.shape),
        };
    }
    let stored = lang::Input {
        shape: i.shape.iter().rev().copied().collect(),
        reversed: false,
        ..i.clone()
    };
    let reverse: Vec<usize> = (0..i.shape.len()).rev().collect();
    input(dev, &stored)?.permute(&reverse)
}

/// Runs one op on the live values.
fn apply(dev: &Device, vals: &[Tensor], op: &Op) -> Result<Tensor, Error> {
    let v = |i: &usize| &vals[*i];
    match op {
        Op::Input(i) => input(dev, i),
        Op::Binary(Bin::Add, a, b) => v(a).add(v(b)),
        Op::Binary(Bin::Sub, a, b) => v(a).sub(v(b)),
        Op::Binary(Bin::Mul, a, b) => v(a).mul(v(b)),
        Op::Matmul(a, b) => v(a).matmul(v(b)),
        Op::Reduce {
            x,
            dims,
            keepdim,
            mean: false,
        } => v(x).sum(dims, *keepdim),
        Op::Reduce {
            x,
            dims,
            keepdim,
            mean: true,
        } => v(x).mean(dims, *keepdim),
        Op::Transpose(x, d0, d1) => v(x).transpose(*d0, *d1),
        Op::Permute(x, perm) => v(x).permute(perm),
        Op::Narrow { x, dim, start, len } => v(x).narrow(*dim, *start, *len),
        Op::Reshape(x, to) => v(x).reshape(to),
        Op::Contiguous(x) => v(x).contiguous(),
        Op::Cat(parts, d) => Tensor::cat(&parts.iter().map(v).collect::<Vec<_>>(), *d),
        Op::IndexSelect { x, dim, indices } => v(x).index_select(*dim, v(indices)),
        Op::Relu(x) => v(x).relu(),
    }
}

fn metas(vals: &[Tensor]) -> Vec<Meta> {
    vals.iter()
        .map(|t| (t.shape().to_vec(), t.dtype()))
        .collect()
}

/// The op-by-op run on the calling thread: checks each op against the host reference or its
/// expected error as it goes, and returns every op's outcome.
fn reference_run(
    dev: &Device,
    inputs: &[Tensor],
    p: &Program,
) -> Result<Vec<Outcome>, TestCaseError> {
    let mut vals = inputs.to_vec();
    let mut hosts: Vec<Host> = vals.iter().map(host::read).collect();
    let mut poisoned = vec![false; vals.len()];
    let mut outcomes = vec![];
    for (n, step) in p.steps.iter().enumerate() {
        for (op, expect) in resolve::resolve(step, &metas(&vals)) {
            let at = format!("step {n}, {op:?} over {:?}", shapes(&vals, &op));
            let before = dev.memory_stats().allocations;
            let r = apply(dev, &vals, &op);
            let got = outcome(&r);
            match (expect, r) {
                (Expect::Err(want), Err(e)) => {
                    let allocated = dev.memory_stats().allocations - before;
                    if variant(&e) != want || allocated != 0 {
                        return Err(TestCaseError::fail(format!(
                            "{at}: expected {want}, got {e:?} ({allocated} allocations)"
                        )));
                    }
                }
                (Expect::Err(want), Ok(t)) => {
                    return Err(TestCaseError::fail(format!(
                        "{at}: expected {want}, got a value of shape {:?}",
                        t.shape()
                    )))
                }
                (Expect::Ok, Err(e)) => {
                    return Err(TestCaseError::fail(format!("{at}: unexpected {e:?}")))
                }
                (Expect::Ok, Ok(t)) if poisons(&op, &vals, &hosts, &poisoned) => {
                    if got != Outcome::Err("Kernel".into()) {
                        return Err(TestCaseError::fail(format!(
                            "{at}: expected a poisoned value, got {got:?}"
                        )));
                    }
                    // A stand-in the host reference never reads: every op over it is poisoned.
                    hosts.push(host::zeros(&t));
                    vals.push(t);
                    poisoned.push(true);
                }
                (Expect::Ok, Ok(t)) => {
                    let value = host::read(&t);
                    if let Some(want) = host::reference(&op, &hosts) {
                        host::check(&value, &want)
                            .map_err(|e| TestCaseError::fail(format!("{at}: {e}")))?;
                    }
                    vals.push(t);
                    hosts.push(value);
                    poisoned.push(false);
                }
            }
            outcomes.push(got);
        }
    }
    Ok(outcomes)
}

/// The shapes of an op's operands, for failure messages.
fn shapes(vals: &[Tensor], op: &Op) -> Vec<Vec<usize>> {
    let of = |i: &usize| vals.get(*i).map_or(vec![], |t| t.shape().to_vec());
    operands(op).iter().map(of).collect()
}

/// An op's operands, by position among the values.
fn operands(op: &Op) -> Vec<usize> {
    match op {
        Op::Input(_) => vec![],
        Op::Binary(_, a, b) | Op::Matmul(a, b) => vec![*a, *b],
        Op::IndexSelect { x, indices, .. } => vec![*x, *indices],
        Op::Cat(parts, _) => parts.clone(),
        Op::Reduce { x, .. }
        | Op::Transpose(x, ..)
        | Op::Permute(x, _)
        | Op::Narrow { x, .. }
        | Op::Reshape(x, _)
        | Op::Contiguous(x)
        | Op::Relu(x) => vec![*x],
    }
}

/// The run of one thread among several: enqueues every op, says so on `enqueued`, then reads
/// every result back.
fn concurrent_run(
    dev: &Device,
    inputs: &[Tensor],
    p: &Program,
    enqueued: mpsc::Sender<()>,
) -> Vec<Outcome> {
    let mut vals = inputs.to_vec();
    let mut results = vec![];
    for step in &p.steps {
        for (op, _) in resolve::resolve(step, &metas(&vals)) {
            let r = apply(dev, &vals, &op);
            if let Ok(t) = &r {
                vals.push(t.clone());
            }
            results.push(r);
        }
    }
    // Nobody listens any more if the test gave up waiting: nothing to do then.
    let _ = enqueued.send(());
    results.iter().map(outcome).collect()
}

/// Runs `case` on a thread of its own and fails it if it takes longer than [`DEADLINE`].
fn within_deadline(
    case: impl FnOnce() -> Result<(), TestCaseError> + Send + 'static,
) -> Result<(), TestCaseError> {
    let (tx, rx) = mpsc::channel();
    let worker = std::thread::spawn(move || {
        let _ = tx.send(case());
    });
    match rx.recv_timeout(DEADLINE) {
        Ok(r) => {
            worker.join().expect("the case's thread");
            r
        }
        Err(mpsc::RecvTimeoutError::Timeout) => Err(TestCaseError::fail(format!(
            "the case did not finish within {DEADLINE:?}: a hang"
        ))),
        // The case panicked: fail with its panic.
        Err(mpsc::RecvTimeoutError::Disconnected) => match worker.join() {
            Err(panic) => std::panic::resume_unwind(panic),
            Ok(()) => unreachable!("the case sent nothing and did not panic"),
        },
    }
}

/// Checks `property` over [`cases`] generated programs on one device of `backend`; a failure
/// panics with the smallest failing program proptest finds.
fn check(backend: TestBackend, property: fn(&Device, &Program) -> Result<(), TestCaseError>) {
    let dev = backend.device();
    // No regression file: a failure found here is written down as a plain test.
    let config = Config {
        failure_persistence: None,
        ..Config::with_cases(cases())
    };
    let mut runner = TestRunner::new(config);
    let result = runner.run(&lang::program(), |p| {
        let dev = dev.clone();
        within_deadline(move || property(&dev, &p))
    });
    if let Err(e) = result {
        let ops = match &e {
            TestError::Fail(_, p) => format!("{:#?}", trace(&dev, p)),
            TestError::Abort(_) => String::new(),
        };
        panic!("{e}\nits ops (op, expected outcome):\n{ops}");
    }
}

/// The ops `p` resolves to, in order, with the outcome each must have.
fn trace(dev: &Device, p: &Program) -> Vec<(Op, Expect)> {
    let mut vals = shared_inputs(dev, p);
    let mut ops = vec![];
    for step in &p.steps {
        for (op, expect) in resolve::resolve(step, &metas(&vals)) {
            if let Ok(t) = apply(dev, &vals, &op) {
                vals.push(t);
            }
            ops.push((op, expect));
        }
    }
    ops
}

fn shared_inputs(dev: &Device, p: &Program) -> Vec<Tensor> {
    p.inputs
        .iter()
        .map(|i| input(dev, i).expect("input"))
        .collect()
}

backend_tests!(steps_match_the_host_or_fail_typed);
/// Every valid step gives the host reference's answer and every invalid one its typed error,
/// with nothing allocated (module docs).
fn steps_match_the_host_or_fail_typed(backend: TestBackend) {
    check(backend, |dev, p| {
        reference_run(dev, &shared_inputs(dev, p), p).map(drop)
    });
}

backend_tests!(threads_give_the_reference_bits);
/// [`THREADS`] threads running one program at once, each on its own stream, all give the
/// op-by-op run's outcomes bit for bit (module docs). The shared inputs are written on another
/// stream held back by a gate until every thread has enqueued its whole program, so that the
/// threads' streams must wait for those writes (`Storage::use_on`) rather than find them done.
fn threads_give_the_reference_bits(backend: TestBackend) {
    check(backend, |dev, p| {
        let alone = reference_run(dev, &shared_inputs(dev, p), p)?;
        let writer = dev.stream(THREADS + 1).unwrap();
        let gate = writer.gate().unwrap();
        let inputs = dev.with_stream(&writer, || shared_inputs(dev, p));
        let streams: Vec<_> = (1..=THREADS).map(|i| dev.stream(i).unwrap()).collect();
        let (enqueued, all_enqueued) = mpsc::channel();
        let runs: Vec<Vec<Outcome>> = std::thread::scope(|s| {
            let handles: Vec<_> = streams
                .iter()
                .map(|stream| {
                    let enqueued = enqueued.clone();
                    let inputs = &inputs;
                    s.spawn(move || {
                        dev.with_stream(stream, || concurrent_run(dev, inputs, p, enqueued))
                    })
                })
                .collect();
            for t in 0..THREADS {
                // A thread that panicked, or one that an op blocked on the held-back stream,
                // never says so: open the gate anyway after a while.
                if all_enqueued.recv_timeout(DEADLINE / 4).is_err() {
                    eprintln!("only {t} of {THREADS} threads enqueued their program in time");
                    break;
                }
            }
            gate.open();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for (t, run) in runs.iter().enumerate() {
            if let Some(i) = (0..alone.len().max(run.len())).find(|&i| alone.get(i) != run.get(i)) {
                return Err(TestCaseError::fail(format!(
                    "thread {t}, op {i}: {:?} alone, {:?} on {THREADS} threads",
                    alone.get(i),
                    run.get(i)
                )));
            }
        }
        Ok(())
    });
}
