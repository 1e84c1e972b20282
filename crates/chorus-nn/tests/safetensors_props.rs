//! Property tests of safetensors loading: any file chorus's writer can describe loads with
//! every tensor bit for bit, and random or mutated bytes give a typed error or a correct load,
//! never a panic. `CHORUS_PROPTEST_CASES` asks for more cases than CI's default.

use chorus_core::{DType, Device};
use chorus_nn::{NnError, Weights};
use proptest::prelude::*;
use safetensors::tensor::TensorView;
use safetensors::Dtype;

/// Cases per property: bounded in CI, more on request.
fn cases() -> u32 {
    std::env::var("CHORUS_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64)
}

fn device() -> Device {
    chorus_cpu::device().expect("cpu device")
}

/// One tensor of a generated file: name, safetensors dtype, shape and little-endian bytes.
#[derive(Debug, Clone)]
struct Stored {
    name: String,
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

fn stored() -> impl Strategy<Value = Stored> {
    let dtype = prop_oneof![Just(Dtype::F32), Just(Dtype::I64), Just(Dtype::BF16)];
    (
        "[a-z]{1,6}(\\.[a-z0-9]{1,4}){0,3}",
        dtype,
        prop::collection::vec(0usize..5, 0..4),
    )
        .prop_flat_map(|(name, dtype, shape)| {
            let len: usize = shape.iter().product::<usize>() * dtype.bitsize() / 8;
            prop::collection::vec(any::<u8>(), len).prop_map(move |bytes| Stored {
                name: name.clone(),
                dtype,
                shape: shape.clone(),
                bytes,
            })
        })
}

/// A file of distinct names.
fn file() -> impl Strategy<Value = Vec<Stored>> {
    prop::collection::vec(stored(), 0..6).prop_map(|mut ts| {
        ts.sort_by(|a, b| a.name.cmp(&b.name));
        ts.dedup_by(|a, b| a.name == b.name);
        ts
    })
}

fn serialize(ts: &[Stored]) -> Vec<u8> {
    let views: Vec<(String, TensorView<'_>)> = ts
        .iter()
        .map(|t| {
            let view = TensorView::new(t.dtype, t.shape.clone(), &t.bytes).expect("sized view");
            (t.name.clone(), view)
        })
        .collect();
    safetensors::serialize(views, None).expect("serialize")
}

/// Every tensor of a successful load is readable; returns nothing, panics never.
fn read_all(w: &Weights) {
    for name in w.names() {
        match w.get_any(&name) {
            Ok(t) => match t.dtype() {
                DType::I64 => drop(t.to_vec::<i64>().expect("read back")),
                _ => drop(t.to_vec::<f32>().expect("read back")),
            },
            Err(NnError::TensorDType { .. }) => {}
            Err(e) => panic!("{name}: unexpected error {e}"),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    /// A valid file loads with every f32 and i64 tensor bit for bit, and other dtypes are
    /// listed but refused with a typed error naming the tensor.
    #[test]
    fn valid_files_load_bit_for_bit(ts in file()) {
        let dev = device();
        let w = Weights::from_bytes(&dev, &serialize(&ts)).expect("a valid file loads");
        let mut names = w.names();
        names.sort();
        prop_assert_eq!(names, ts.iter().map(|t| t.name.clone()).collect::<Vec<_>>());
        for t in &ts {
            match t.dtype {
                Dtype::F32 => {
                    let got = w.get(&t.name, &t.shape).expect("f32 tensor");
                    let bits: Vec<u8> = got
                        .to_vec::<f32>()
                        .unwrap()
                        .iter()
                        .flat_map(|v| v.to_le_bytes())
                        .collect();
                    prop_assert_eq!(&bits, &t.bytes);
                }
                Dtype::I64 => {
                    let got = w.get_i64(&t.name, &t.shape).expect("i64 tensor");
                    let bytes: Vec<u8> = got
                        .to_vec::<i64>()
                        .unwrap()
                        .iter()
                        .flat_map(|v| v.to_le_bytes())
                        .collect();
                    prop_assert_eq!(&bytes, &t.bytes);
                }
                _ => match w.get_any(&t.name) {
                    Err(NnError::TensorDType { name, .. }) => prop_assert_eq!(name, t.name.clone()),
                    other => prop_assert!(false, "{}: {:?}", t.name, other.map(|t| t.shape().to_vec())),
                },
            }
        }
    }

    /// A valid file with bytes flipped, cut off, appended or overwritten: a typed error or a
    /// load whose every tensor reads back; never a panic.
    #[test]
    fn mutated_files_fail_typed_or_load(
        ts in file(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..4), 1..6),
    ) {
        let mut bytes = serialize(&ts);
        for (at, value, kind) in edits {
            if bytes.is_empty() {
                bytes.push(value);
                continue;
            }
            let i = at.index(bytes.len());
            match kind {
                0 => bytes[i] ^= value.max(1),
                1 => bytes.truncate(i),
                2 => bytes.insert(i, value),
                _ => bytes[i] = value,
            }
        }
        match Weights::from_bytes(&device(), &bytes) {
            Ok(w) => read_all(&w),
            Err(NnError::Safetensors { .. }) => {}
            Err(e) => prop_assert!(false, "not a safetensors error: {e}"),
        }
    }

    /// Arbitrary bytes, including a plausible 8-byte header length: a typed error or a load.
    #[test]
    fn random_bytes_fail_typed_or_load(
        header_len in prop_oneof![any::<u64>(), 0u64..64],
        rest in prop::collection::vec(any::<u8>(), 0..96),
    ) {
        let mut bytes = header_len.to_le_bytes().to_vec();
        bytes.extend(rest);
        match Weights::from_bytes(&device(), &bytes) {
            Ok(w) => read_all(&w),
            Err(NnError::Safetensors { .. }) => {}
            Err(e) => prop_assert!(false, "not a safetensors error: {e}"),
        }
    }

    /// A well-formed header whose dtype, shape and data offsets are arbitrary (huge, reversed,
    /// past the data, overflowing when added up): a typed error or a load, never a panic.
    #[test]
    fn arbitrary_headers_fail_typed_or_load(
        dtype in prop_oneof![Just("F32"), Just("I64"), Just("BF16"), Just("U8"), Just("X")],
        shape in prop::collection::vec(prop_oneof![0u64..4, any::<u64>()], 0..3),
        offsets in (
            prop_oneof![0u64..64, any::<u64>(), Just(u64::MAX)],
            prop_oneof![0u64..64, any::<u64>(), Just(u64::MAX)],
        ),
        data in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        let header = format!(
            r#"{{"t":{{"dtype":"{dtype}","shape":{shape:?},"data_offsets":[{},{}]}}}}"#,
            offsets.0, offsets.1
        );
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend(header.as_bytes());
        bytes.extend(data);
        match Weights::from_bytes(&device(), &bytes) {
            Ok(w) => read_all(&w),
            Err(NnError::Safetensors { .. }) => {}
            Err(e) => prop_assert!(false, "not a safetensors error: {e}"),
        }
    }

    /// A header that is self-consistent (its one tensor's bytes match its shape and offsets)
    /// but states more data than any file can hold, up to a data end that overflows 64 bits
    /// once the header is added: a typed error, never a panic.
    #[test]
    fn self_consistent_huge_headers_are_typed_errors(
        elements in prop_oneof![(u64::MAX / 4 - 64)..=(u64::MAX / 4), 1u64 << 40..1u64 << 61],
        data in prop::collection::vec(any::<u8>(), 0..16),
    ) {
        let header = format!(
            r#"{{"t":{{"dtype":"F32","shape":[{elements}],"data_offsets":[0,{}]}}}}"#,
            elements * 4
        );
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend(header.as_bytes());
        bytes.extend(data);
        match Weights::from_bytes(&device(), &bytes) {
            Err(NnError::Safetensors { .. }) => {}
            other => prop_assert!(false, "{:?}", other.map(|w| w.names())),
        }
    }
}
