//! Element types.

/// Element type of a tensor. f32 and i64 are supported on every backend; f16 and bf16 are
/// reserved for backends with fast paths and are rejected with a typed error elsewhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DType {
    /// 32-bit IEEE float.
    F32,
    /// 16-bit IEEE float (reserved for GPU fast paths).
    F16,
    /// bfloat16 (reserved for GPU fast paths).
    BF16,
    /// 64-bit signed integer (indices).
    I64,
}

impl DType {
    /// Bytes per element.
    pub const fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
            DType::I64 => 8,
        }
    }

    /// Lower-case name as PyTorch prints it (`f32`, `i64`, ...).
    pub const fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::I64 => "i64",
        }
    }

    /// Whether the type is a floating-point type.
    pub const fn is_float(self) -> bool {
        !matches!(self, DType::I64)
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for i64 {}
}

/// A Rust type that can be the element of a tensor (`f32`, `i64`).
pub trait Element: sealed::Sealed + Copy + Send + Sync + std::fmt::Debug + 'static {
    /// The matching [`DType`].
    const DTYPE: DType;
    /// Little-endian bytes of a slice of elements.
    fn to_bytes(values: &[Self]) -> Vec<u8>;
    /// Elements from little-endian bytes (`bytes.len()` is a multiple of the element size).
    fn from_bytes(bytes: &[u8]) -> Vec<Self>;
}

macro_rules! element {
    ($t:ty, $d:expr) => {
        impl Element for $t {
            const DTYPE: DType = $d;
            fn to_bytes(values: &[Self]) -> Vec<u8> {
                if cfg!(target_endian = "little") {
                    // SAFETY: `$t` is a primitive number without padding, so its slice is
                    // `size_of_val(values)` initialized bytes at the same address, which is
                    // valid for reads while `values` is borrowed; on a little-endian target
                    // they are the little-endian encoding.
                    unsafe {
                        std::slice::from_raw_parts(
                            values.as_ptr().cast::<u8>(),
                            std::mem::size_of_val(values),
                        )
                    }
                    .to_vec()
                } else {
                    values.iter().flat_map(|v| v.to_le_bytes()).collect()
                }
            }
            fn from_bytes(bytes: &[u8]) -> Vec<Self> {
                const SIZE: usize = std::mem::size_of::<$t>();
                let n = bytes.len() / SIZE;
                if cfg!(target_endian = "little") {
                    let mut out = Vec::<$t>::with_capacity(n);
                    // SAFETY: `out` has room for `n` elements, `n * SIZE` bytes, which `bytes`
                    // holds (a separate allocation, so no overlap); every bit pattern is a
                    // valid `$t`, and on a little-endian target the bytes are its encoding, so
                    // after the copy the first `n` elements are initialized.
                    unsafe {
                        std::ptr::copy_nonoverlapping(
                            bytes.as_ptr(),
                            out.as_mut_ptr().cast::<u8>(),
                            n * SIZE,
                        );
                        out.set_len(n);
                    }
                    out
                } else {
                    bytes
                        .chunks_exact(SIZE)
                        .map(|c| <$t>::from_le_bytes(c.try_into().expect("chunk of element size")))
                        .collect()
                }
            }
        }
    };
}

element!(f32, DType::F32);
element!(i64, DType::I64);
