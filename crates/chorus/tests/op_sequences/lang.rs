//! The op language: generated steps and the concrete ops they resolve to.
//!
//! A [`Step`] is a family ([`Kind`]), the operand it starts from (an [`Index`] into the
//! values that fit), whether to make it invalid, and a seed for its other choices (dims,
//! partners, sizes). [`crate::resolve::resolve`] turns it into one or more [`Op`]s, each with
//! the outcome it must have ([`Expect`]): fresh inputs a step needs (an `index_select`'s
//! indices, a matmul's right-hand side of the right inner size) come first, then the op
//! itself. Resolution reads only shapes and dtypes, never values, so every interpreter
//! resolves a program the same way without waiting for the device.

use chorus::DType;
use proptest::prelude::*;
use proptest::sample::Index;

/// Elementwise binary ops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Bin {
    Add,
    Sub,
    Mul,
}

/// A fresh tensor made from host data: f32 in `[-2, 2)`, i64 in `-20..20`, or, for indices,
/// i64 in `0..index_below` (but for one, when `out_of_range`); when `reversed`, stored with its dims in reverse order and seen
/// through a permuted view (so not contiguous).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Input {
    pub(crate) dtype: DType,
    pub(crate) shape: Vec<usize>,
    pub(crate) seed: u64,
    pub(crate) index_below: Option<usize>,
    /// For indices: one of them is out of range (`index_below` itself, or negative).
    pub(crate) out_of_range: bool,
    pub(crate) reversed: bool,
}

/// One op over the live values, named by position; a success appends its result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Op {
    Input(Input),
    Binary(Bin, usize, usize),
    Matmul(usize, usize),
    Reduce {
        x: usize,
        dims: Vec<isize>,
        keepdim: bool,
        mean: bool,
    },
    Transpose(usize, isize, isize),
    Permute(usize, Vec<usize>),
    Narrow {
        x: usize,
        dim: isize,
        start: usize,
        len: usize,
    },
    Reshape(usize, Vec<isize>),
    Contiguous(usize),
    Cat(Vec<usize>, isize),
    IndexSelect {
        x: usize,
        dim: isize,
        indices: usize,
    },
    Relu(usize),
}

/// What an op must give: a value, or an error of this `chorus::Error` variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Expect {
    Ok,
    Err(&'static str),
}

/// The family a generated step draws from.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Kind {
    Input,
    Binary,
    Matmul,
    Reduce,
    Transpose,
    Permute,
    Narrow,
    Reshape,
    Contiguous,
    Cat,
    IndexSelect,
    Relu,
}

/// A generated step (see the module docs).
#[derive(Debug, Clone)]
pub(crate) struct Step {
    pub(crate) kind: Kind,
    pub(crate) operand: Index,
    pub(crate) invalid: bool,
    pub(crate) knobs: u64,
}

/// A program: its inputs (made once, shared by every thread that runs it) and its steps.
#[derive(Debug, Clone)]
pub(crate) struct Program {
    pub(crate) inputs: Vec<Input>,
    pub(crate) steps: Vec<Step>,
}

/// Shape and dtype of a live value: all that resolution reads.
pub(crate) type Meta = (Vec<usize>, DType);

/// Shapes of rank 0–4 (2 and 3 mostly) with sizes 0–4 (2–4 mostly).
fn shape_strategy() -> impl Strategy<Value = Vec<usize>> {
    let rank =
        prop_oneof![1 => Just(0usize), 2 => Just(1), 3 => Just(2), 3 => Just(3), 1 => Just(4)];
    let size = prop_oneof![1 => Just(0usize), 2 => Just(1), 7 => 2usize..5];
    rank.prop_flat_map(move |r| prop::collection::vec(size.clone(), r))
}

fn input_strategy() -> impl Strategy<Value = Input> {
    let dtype = prop_oneof![3 => Just(DType::F32), 1 => Just(DType::I64)];
    (dtype, shape_strategy(), any::<u64>(), any::<bool>()).prop_map(
        |(dtype, shape, seed, reversed)| Input {
            dtype,
            shape,
            seed,
            index_below: None,
            out_of_range: false,
            reversed,
        },
    )
}

fn step_strategy() -> impl Strategy<Value = Step> {
    let kind = prop_oneof![
        1 => Just(Kind::Input),
        3 => Just(Kind::Binary),
        2 => Just(Kind::Matmul),
        2 => Just(Kind::Reduce),
        2 => Just(Kind::Transpose),
        1 => Just(Kind::Permute),
        2 => Just(Kind::Narrow),
        1 => Just(Kind::Reshape),
        1 => Just(Kind::Contiguous),
        1 => Just(Kind::Cat),
        1 => Just(Kind::IndexSelect),
        1 => Just(Kind::Relu),
    ];
    (
        kind,
        any::<Index>(),
        prop::bool::weighted(0.25),
        any::<u64>(),
    )
        .prop_map(|(kind, operand, invalid, knobs)| Step {
            kind,
            operand,
            invalid,
            knobs,
        })
}

/// Programs of 1–3 inputs (the first f32) and 1–15 steps.
pub(crate) fn program() -> impl Strategy<Value = Program> {
    (
        (shape_strategy(), any::<u64>(), any::<bool>()),
        prop::collection::vec(input_strategy(), 0..3),
        prop::collection::vec(step_strategy(), 1..16),
    )
        .prop_map(|((shape, seed, reversed), mut inputs, steps)| {
            let first = Input {
                dtype: DType::F32,
                shape,
                seed,
                index_below: None,
                out_of_range: false,
                reversed,
            };
            inputs.insert(0, first);
            Program { inputs, steps }
        })
}

/// The shape two shapes broadcast to, if they do.
pub(crate) fn broadcast(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
    let r = a.len().max(b.len());
    (0..r)
        .map(|i| {
            let x = if i + a.len() >= r {
                a[i + a.len() - r]
            } else {
                1
            };
            let y = if i + b.len() >= r {
                b[i + b.len() - r]
            } else {
                1
            };
            match (x, y) {
                _ if x == y => Some(x),
                (1, _) => Some(y),
                (_, 1) => Some(x),
                _ => None,
            }
        })
        .collect()
}
