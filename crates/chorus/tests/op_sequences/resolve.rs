//! Resolution of generated steps into concrete ops against the shapes and dtypes of the
//! values alive at that point (see [`crate::lang`]).

use crate::lang::{broadcast, Bin, Expect, Input, Kind, Meta, Op, Step};
use chorus::DType;

/// The choices of one step, drawn from its seed (splitmix64).
struct Knobs(u64);

impl Knobs {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// `0..n` (0 when `n` is 0).
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
    fn coin(&mut self) -> bool {
        self.next() & 1 == 1
    }
    /// A size for a new dimension: 2–4 mostly, now and then 1 or 0 (as `shape_strategy`).
    fn size(&mut self) -> usize {
        match self.below(10) {
            0 => 0,
            1 | 2 => 1,
            _ => 2 + self.below(3),
        }
    }
    /// A rank for a new value: 2 or 3 mostly, 0–4 (as `shape_strategy`).
    fn rank(&mut self) -> usize {
        [0, 1, 1, 2, 2, 2, 3, 3, 3, 4][self.below(10)]
    }
    fn shuffle<T>(&mut self, xs: &mut [T]) {
        for i in (1..xs.len()).rev() {
            xs.swap(i, self.below(i + 1));
        }
    }
    /// Dimension `d` of a rank-`rank` tensor, counted from the front or (negative) the end.
    fn signed(&mut self, d: usize, rank: usize) -> isize {
        if self.coin() {
            d as isize - rank.max(1) as isize
        } else {
            d as isize
        }
    }
    /// A dimension out of range for rank `rank`, from either end.
    fn bad_dim(&mut self, rank: usize) -> isize {
        let past = (rank.max(1) + self.below(2)) as isize;
        if self.coin() {
            past
        } else {
            -past - 1
        }
    }
}

fn other(dtype: DType) -> DType {
    if dtype == DType::F32 {
        DType::I64
    } else {
        DType::F32
    }
}

/// Builds a resolved step: fresh inputs get the next positions.
struct Out {
    next: usize,
    ops: Vec<(Op, Expect)>,
    knobs: Knobs,
}

impl Out {
    fn input(&mut self, dtype: DType, shape: Vec<usize>) -> usize {
        let seed = self.knobs.next();
        let reversed = self.knobs.coin();
        self.push_ok(Op::Input(Input {
            dtype,
            shape,
            seed,
            index_below: None,
            out_of_range: false,
            reversed,
        }))
    }
    fn indices(&mut self, shape: Vec<usize>, below: usize) -> usize {
        self.some_indices(shape, below, false)
    }
    /// Indices of which one is out of range (`below`, or negative).
    fn bad_indices(&mut self, shape: Vec<usize>, below: usize) -> usize {
        self.some_indices(shape, below, true)
    }
    fn some_indices(&mut self, shape: Vec<usize>, below: usize, out_of_range: bool) -> usize {
        let seed = self.knobs.next();
        self.push_ok(Op::Input(Input {
            dtype: DType::I64,
            shape,
            seed,
            index_below: Some(below),
            out_of_range,
            reversed: false,
        }))
    }
    fn push_ok(&mut self, op: Op) -> usize {
        self.ops.push((op, Expect::Ok));
        self.next += 1;
        self.next - 1
    }
    fn done(mut self, op: Op, expect: Expect) -> Vec<(Op, Expect)> {
        self.ops.push((op, expect));
        self.ops
    }
}

/// The ops of `step` over the live values `vals` (empty when no value fits the step).
pub(crate) fn resolve(step: &Step, vals: &[Meta]) -> Vec<(Op, Expect)> {
    let mut o = Out {
        next: vals.len(),
        ops: Vec::new(),
        knobs: Knobs(step.knobs),
    };
    // Half the time the latest value that fits, so that views and results feed the next
    // steps; else any.
    let latest = o.knobs.coin();
    let choose = |fits: &dyn Fn(&Meta) -> bool| -> Option<usize> {
        let fit: Vec<usize> = (0..vals.len()).filter(|&i| fits(&vals[i])).collect();
        match fit.last() {
            Some(&last) if latest => Some(last),
            _ => (!fit.is_empty()).then(|| fit[step.operand.index(fit.len())]),
        }
    };
    let bad = step.invalid;
    let f32_ = |m: &Meta| m.1 == DType::F32;
    let any = |_: &Meta| true;
    let ranked = |m: &Meta| !m.0.is_empty();
    let f32_ranked = |m: &Meta| m.1 == DType::F32 && !m.0.is_empty();
    match step.kind {
        Kind::Input => {
            let dtype = if o.knobs.below(4) == 0 {
                DType::I64
            } else {
                DType::F32
            };
            let rank = o.knobs.rank();
            let shape = (0..rank).map(|_| o.knobs.size()).collect();
            o.input(dtype, shape);
            o.ops
        }
        Kind::Binary => {
            let op = [Bin::Add, Bin::Sub, Bin::Mul][o.knobs.below(3)];
            let Some(a) = choose(&any) else { return vec![] };
            let (shape, dtype) = vals[a].clone();
            let swap = o.knobs.coin();
            let pair = |x, y| if swap { (y, x) } else { (x, y) };
            if bad {
                let wide: Vec<usize> = (0..shape.len()).filter(|&d| shape[d] != 1).collect();
                if !wide.is_empty() && o.knobs.coin() {
                    let mut s = shape.clone();
                    let d = wide[o.knobs.below(wide.len())];
                    s[d] = if s[d] == 0 { 2 } else { s[d] + 1 };
                    let b = o.input(dtype, s);
                    let (x, y) = pair(a, b);
                    return o.done(Op::Binary(op, x, y), Expect::Err("ShapeMismatch"));
                }
                let b = o.input(other(dtype), shape);
                let (x, y) = pair(a, b);
                return o.done(Op::Binary(op, x, y), Expect::Err("DTypeMismatch"));
            }
            let partners: Vec<usize> = (0..vals.len())
                .filter(|&i| vals[i].1 == dtype && broadcast(&vals[i].0, &shape).is_some())
                .collect();
            let pick = o.knobs.below(partners.len() + 1);
            let b = match partners.get(pick) {
                Some(&b) => b,
                None => {
                    // A fresh partner: leading dims dropped or added, some dims set to 1.
                    let drop = o.knobs.below(shape.len() + 1);
                    let mut s: Vec<usize> = shape[drop..]
                        .iter()
                        .map(|&n| if o.knobs.below(3) == 0 { 1 } else { n })
                        .collect();
                    if drop == 0 && o.knobs.below(3) == 0 {
                        s.insert(0, 1 + o.knobs.below(3));
                    }
                    o.input(dtype, s)
                }
            };
            let (x, y) = pair(a, b);
            o.done(Op::Binary(op, x, y), Expect::Ok)
        }
        Kind::Matmul => {
            let Some(a) = choose(&f32_ranked) else {
                return vec![];
            };
            let shape = vals[a].0.clone();
            let r = shape.len();
            let k = shape[r - 1];
            let batch: Vec<usize> = shape[..r.saturating_sub(2)].to_vec();
            let n = o.knobs.size();
            if bad {
                let (rhs, dtype, err) = match o.knobs.below(4) {
                    0 => (vec![k + 1, n], DType::F32, "ShapeMismatch"),
                    1 => (vec![k, n], DType::I64, "DTypeMismatch"),
                    2 => (vec![], DType::F32, "ShapeMismatch"),
                    _ => match batch.iter().position(|&s| s != 1) {
                        // A batch dim that does not broadcast.
                        Some(d) => {
                            let mut s = batch.clone();
                            s[d] = if s[d] == 0 { 2 } else { s[d] + 1 };
                            s.extend([k, n]);
                            (s, DType::F32, "ShapeMismatch")
                        }
                        None => (vec![k + 2], DType::F32, "ShapeMismatch"),
                    },
                };
                let b = o.input(dtype, rhs);
                return o.done(Op::Matmul(a, b), Expect::Err(err));
            }
            let inner = |s: &[usize]| match s.len() {
                0 => None,
                1 => Some(s[0]),
                r => Some(s[r - 2]),
            };
            let partners: Vec<usize> = (0..vals.len())
                .filter(|&i| {
                    let s = &vals[i].0;
                    vals[i].1 == DType::F32
                        && inner(s) == Some(k)
                        && broadcast(&s[..s.len().saturating_sub(2)], &batch).is_some()
                })
                .collect();
            let pick = o.knobs.below(partners.len() + 1);
            let b = match partners.get(pick) {
                Some(&b) => b,
                None => match o.knobs.below(4) {
                    0 => o.input(DType::F32, vec![k]),
                    form => {
                        let mut s: Vec<usize> = if form == 1 {
                            vec![]
                        } else {
                            batch
                                .iter()
                                .map(|&d| if o.knobs.coin() { 1 } else { d })
                                .collect()
                        };
                        if o.knobs.coin() {
                            // Stored as [.., n, k] and read through a transposed view.
                            s.extend([n, k]);
                            let t = o.input(DType::F32, s);
                            o.push_ok(Op::Transpose(t, -1, -2))
                        } else {
                            s.extend([k, n]);
                            o.input(DType::F32, s)
                        }
                    }
                },
            };
            o.done(Op::Matmul(a, b), Expect::Ok)
        }
        Kind::Reduce => {
            let mean = o.knobs.coin();
            let keepdim = o.knobs.coin();
            let variant = if bad { o.knobs.below(3) } else { 3 };
            if variant == 2 {
                // The mean of integers.
                let Some(x) = choose(&|m: &Meta| m.1 == DType::I64) else {
                    return vec![];
                };
                let op = Op::Reduce {
                    x,
                    dims: vec![],
                    keepdim,
                    mean: true,
                };
                return o.done(op, Expect::Err("UnsupportedDType"));
            }
            let Some(x) = (if mean { choose(&f32_) } else { choose(&any) }) else {
                return vec![];
            };
            let r = vals[x].0.len();
            let mut dims: Vec<isize> = if r == 0 {
                [vec![], vec![0], vec![-1]][o.knobs.below(3)].clone()
            } else {
                let mut ds: Vec<isize> = Vec::new();
                for d in 0..r {
                    if o.knobs.coin() {
                        ds.push(o.knobs.signed(d, r));
                    }
                }
                o.knobs.shuffle(&mut ds);
                ds
            };
            let expect = match variant {
                0 => {
                    let d = o.knobs.bad_dim(r);
                    dims.insert(o.knobs.below(dims.len() + 1), d);
                    Expect::Err("InvalidDim")
                }
                1 => {
                    let d = o.knobs.below(r.max(1));
                    dims = vec![d as isize, d as isize - r.max(1) as isize];
                    Expect::Err("InvalidDim")
                }
                _ => Expect::Ok,
            };
            let op = Op::Reduce {
                x,
                dims,
                keepdim,
                mean,
            };
            o.done(op, expect)
        }
        Kind::Transpose => {
            let Some(x) = choose(&any) else { return vec![] };
            let r = vals[x].0.len();
            let d0 = o.knobs.below(r.max(1));
            // Two different dims when there are two.
            let d1 = (d0 + 1 + o.knobs.below(r.max(2) - 1)) % r.max(1);
            let mut d1 = o.knobs.signed(d1, r);
            let mut expect = Expect::Ok;
            if bad {
                d1 = o.knobs.bad_dim(r);
                expect = Expect::Err("InvalidDim");
            }
            let d0 = o.knobs.signed(d0, r);
            let (d0, d1) = if o.knobs.coin() { (d1, d0) } else { (d0, d1) };
            o.done(Op::Transpose(x, d0, d1), expect)
        }
        Kind::Permute => {
            let Some(x) = choose(&any) else { return vec![] };
            let r = vals[x].0.len();
            let mut perm: Vec<usize> = (0..r).collect();
            let mut expect = Expect::Ok;
            if bad {
                if r >= 2 && o.knobs.coin() {
                    perm[1] = perm[0];
                    expect = Expect::Err("InvalidDim");
                } else {
                    perm.push(r);
                    expect = Expect::Err("InvalidShape");
                }
            }
            o.knobs.shuffle(&mut perm);
            o.done(Op::Permute(x, perm), expect)
        }
        Kind::Narrow => {
            let Some(x) = choose(&ranked) else {
                return vec![];
            };
            let shape = &vals[x].0;
            let r = shape.len();
            let d = o.knobs.below(r);
            let size = shape[d];
            let start = o.knobs.below(size + 1);
            let mut len = o.knobs.below(size - start + 1);
            let mut dim = o.knobs.signed(d, r);
            let mut expect = Expect::Ok;
            if bad {
                if o.knobs.coin() {
                    len = size - start + 1 + o.knobs.below(2);
                    expect = Expect::Err("InvalidShape");
                } else {
                    dim = o.knobs.bad_dim(r);
                    expect = Expect::Err("InvalidDim");
                }
            }
            let op = Op::Narrow { x, dim, start, len };
            o.done(op, expect)
        }
        Kind::Reshape => {
            let Some(x) = choose(&any) else { return vec![] };
            let shape = &vals[x].0;
            let r = shape.len();
            let len: usize = shape.iter().product();
            let mut to: Vec<isize> = shape.iter().map(|&n| n as isize).collect();
            let expect = if bad {
                if o.knobs.coin() {
                    to = vec![len as isize + 1];
                } else {
                    to = vec![-1, -1];
                }
                Expect::Err("InvalidShape")
            } else {
                match o.knobs.below(4) {
                    0 => to = vec![-1],
                    1 if r >= 2 => {
                        let d = o.knobs.below(r - 1);
                        let merged = to[d] * to[d + 1];
                        to.splice(d..d + 2, [merged]);
                    }
                    2 => to.insert(o.knobs.below(r + 1), 1),
                    _ => {}
                }
                // One size inferred, when that is unambiguous.
                let known: isize = to.iter().product();
                if !to.is_empty() && known > 0 && to != [-1] && o.knobs.coin() {
                    let d = o.knobs.below(to.len());
                    to[d] = -1;
                }
                Expect::Ok
            };
            o.done(Op::Reshape(x, to), expect)
        }
        Kind::Contiguous => {
            let Some(x) = choose(&any) else { return vec![] };
            o.done(Op::Contiguous(x), Expect::Ok)
        }
        Kind::Cat => {
            let Some(a) = choose(&ranked) else {
                return vec![];
            };
            let (shape, dtype) = vals[a].clone();
            let r = shape.len();
            let d = o.knobs.below(r);
            let mut dim = o.knobs.signed(d, r);
            let mut parts = vec![a];
            let mut expect = Expect::Ok;
            if bad {
                match o.knobs.below(3) {
                    0 => {
                        let mut s = shape.clone();
                        if r >= 2 {
                            let e = (d + 1 + o.knobs.below(r - 1)) % r;
                            s[e] += 1;
                        } else {
                            s.push(1);
                        }
                        parts.push(o.input(dtype, s));
                        expect = Expect::Err("ShapeMismatch");
                    }
                    1 => {
                        parts.push(o.input(other(dtype), shape.clone()));
                        expect = Expect::Err("DTypeMismatch");
                    }
                    _ => {
                        parts.push(a);
                        dim = o.knobs.bad_dim(r);
                        expect = Expect::Err("InvalidDim");
                    }
                }
            } else {
                let fits = |m: &Meta| {
                    m.1 == dtype && m.0.len() == r && (0..r).all(|i| i == d || m.0[i] == shape[i])
                };
                let partners: Vec<usize> = (0..vals.len()).filter(|&i| fits(&vals[i])).collect();
                for _ in 0..1 + o.knobs.below(2) {
                    let pick = o.knobs.below(partners.len() + 1);
                    let p = match partners.get(pick) {
                        Some(&p) => p,
                        None => {
                            let mut s = shape.clone();
                            s[d] = o.knobs.below(4);
                            o.input(dtype, s)
                        }
                    };
                    parts.push(p);
                }
            }
            o.knobs.shuffle(&mut parts);
            o.done(Op::Cat(parts, dim), expect)
        }
        Kind::IndexSelect => {
            let Some(x) = choose(&ranked) else {
                return vec![];
            };
            let shape = &vals[x].0;
            let r = shape.len();
            let d = o.knobs.below(r);
            let n = shape[d];
            let count = if n == 0 { 0 } else { o.knobs.below(5) };
            let mut dim = o.knobs.signed(d, r);
            // An index out of range is no invalid step: the op returns a poisoned value (a
            // device-side failure; the crate docs), so it is made in valid steps, a quarter of
            // them, with at least one index (even into an empty dimension).
            let (indices, expect) = if !bad && o.knobs.below(4) == 0 {
                (o.bad_indices(vec![count.max(1)], n), Expect::Ok)
            } else if !bad {
                (o.indices(vec![count], n.max(1)), Expect::Ok)
            } else {
                match o.knobs.below(3) {
                    0 => (
                        o.input(DType::F32, vec![count]),
                        Expect::Err("DTypeMismatch"),
                    ),
                    1 => (
                        o.indices(vec![1, count], n.max(1)),
                        Expect::Err("InvalidShape"),
                    ),
                    _ => {
                        dim = o.knobs.bad_dim(r);
                        (o.indices(vec![count], n.max(1)), Expect::Err("InvalidDim"))
                    }
                }
            };
            o.done(Op::IndexSelect { x, dim, indices }, expect)
        }
        Kind::Relu => {
            let want = if bad { DType::I64 } else { DType::F32 };
            let Some(x) = choose(&|m: &Meta| m.1 == want) else {
                return vec![];
            };
            let expect = if bad {
                Expect::Err("DTypeMismatch")
            } else {
                Expect::Ok
            };
            o.done(Op::Relu(x), expect)
        }
    }
}
