//! Addresses and strided views: how a descriptor names memory.

/// An address in a device's memory. Its meaning belongs to the backend: a host address on the
/// CPU backend, a `CUdeviceptr` on CUDA, a (segment, offset) pair on wgpu.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DevicePtr(pub u64);

impl DevicePtr {
    /// The address `bytes` further on.
    ///
    /// # Panics
    /// On address overflow, which the allocator rules out for every block it hands out.
    pub fn byte_add(self, bytes: usize) -> DevicePtr {
        DevicePtr(
            self.0
                .checked_add(bytes as u64)
                .expect("device address overflow"),
        )
    }
}

/// A strided view of `shape` elements starting at `ptr`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct View {
    /// First element.
    pub ptr: DevicePtr,
    /// Extent of each dimension.
    pub shape: Vec<usize>,
    /// Step between neighbours along each dimension, in elements (0 = broadcast).
    pub strides: Vec<usize>,
}

impl View {
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// Whether the view has no element.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the view is row-major contiguous.
    pub fn is_contiguous(&self) -> bool {
        let mut expect = 1;
        for (&n, &s) in self.shape.iter().zip(&self.strides).rev() {
            if n != 1 && s != expect {
                return false;
            }
            expect *= n;
        }
        true
    }
}

/// Row-major contiguous strides of `shape` (in elements).
pub fn row_major_strides(shape: &[usize]) -> Vec<usize> {
    let mut strides = vec![1; shape.len()];
    for d in (1..shape.len()).rev() {
        strides[d - 1] = strides[d] * shape[d];
    }
    strides
}

/// `shape` with the strides of `N` operands over it simplified, for backends walking views:
/// size-1 dimensions are dropped and neighbours that step as one in every operand (outer
/// stride = inner stride × inner extent) are merged. Row-major element order and every
/// element's offsets are unchanged; a contiguous operand ends up as one dimension of stride 1.
///
/// # Panics
/// When a stride list's length differs from the shape's.
pub fn coalesce<const N: usize>(
    shape: &[usize],
    strides: [&[usize]; N],
) -> (Vec<usize>, [Vec<usize>; N]) {
    for s in &strides {
        assert_eq!(
            s.len(),
            shape.len(),
            "strides {s:?} do not match shape {shape:?}"
        );
    }
    let mut out_shape: Vec<usize> = Vec::with_capacity(shape.len());
    let mut out: [Vec<usize>; N] = std::array::from_fn(|_| Vec::with_capacity(shape.len()));
    for (d, &n) in shape.iter().enumerate() {
        if n == 1 {
            continue;
        }
        let mergeable = !out_shape.is_empty()
            && strides
                .iter()
                .zip(&out)
                .all(|(s, merged)| s[d].checked_mul(n) == merged.last().copied());
        if mergeable {
            *out_shape.last_mut().expect("non-empty") *= n;
        } else {
            out_shape.push(n);
        }
        for (s, merged) in strides.iter().zip(&mut out) {
            match merged.last_mut() {
                Some(last) if mergeable => *last = s[d],
                _ => merged.push(s[d]),
            }
        }
    }
    (out_shape, out)
}
