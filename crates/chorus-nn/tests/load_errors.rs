//! Loading reports what is wrong with the weights as typed errors naming the full tensor name.

use chorus_core::Tensor;
use chorus_nn::{Linear, Mlp, NnError, TransformerEncoder, Weights};
use safetensors::tensor::TensorView;
use safetensors::Dtype;

/// A safetensors file in memory: each entry `(name, dtype, shape)` filled with zeros.
fn file(entries: &[(&str, Dtype, Vec<usize>)]) -> Vec<u8> {
    let data: Vec<Vec<u8>> = entries
        .iter()
        .map(|(_, dtype, shape)| vec![0_u8; shape.iter().product::<usize>() * dtype.bitsize() / 8])
        .collect();
    let views = entries
        .iter()
        .zip(&data)
        .map(|((name, dtype, shape), bytes)| {
            (
                name.to_string(),
                TensorView::new(*dtype, shape.clone(), bytes).unwrap(),
            )
        });
    safetensors::serialize(views, None).unwrap()
}

#[test]
fn missing_tensor_names_the_full_name() {
    let device = chorus_cpu::device().unwrap();
    let bytes = file(&[("model.w.head.weight", Dtype::F32, vec![3, 2])]);
    let weights = Weights::from_bytes(&device, &bytes).unwrap();
    let head = weights.with_prefix("model.w.").sub("head.");
    let err = Linear::load(&head, 2, 3, true).unwrap_err();
    match &err {
        NnError::MissingTensor { name } => assert_eq!(name, "model.w.head.bias"),
        other => panic!("expected MissingTensor, got {other:?}"),
    }
    assert!(err.to_string().contains("model.w.head.bias"), "{err}");
}

#[test]
fn misshaped_tensor_names_the_full_name_and_shapes() {
    let device = chorus_cpu::device().unwrap();
    let bytes = file(&[
        ("model.w.head.weight", Dtype::F32, vec![3, 2]),
        ("model.w.head.bias", Dtype::F32, vec![3]),
    ]);
    let weights = Weights::from_bytes(&device, &bytes).unwrap();
    let head = weights.with_prefix("model.w.head.");
    // The layer is configured 3 -> 2, so the weight should be [2, 3].
    let err = Linear::load(&head, 3, 2, true).unwrap_err();
    match &err {
        NnError::TensorShape {
            name,
            expected,
            got,
        } => {
            assert_eq!(name, "model.w.head.weight");
            assert_eq!(expected, &[2, 3]);
            assert_eq!(got, &[3, 2]);
        }
        other => panic!("expected TensorShape, got {other:?}"),
    }
    assert!(err.to_string().contains("model.w.head.weight"), "{err}");
    // The matching configuration loads.
    Linear::load(&head, 2, 3, true).unwrap();
}

#[test]
fn nested_modules_report_nested_names() {
    let device = chorus_cpu::device().unwrap();
    // An MLP whose second layer's bias is missing: the name carries the Sequential index.
    let bytes = file(&[
        ("mlp.0.weight", Dtype::F32, vec![8, 4]),
        ("mlp.0.bias", Dtype::F32, vec![8]),
        ("mlp.2.weight", Dtype::F32, vec![2, 8]),
    ]);
    let weights = Weights::from_bytes(&device, &bytes).unwrap();
    match Mlp::load(&weights.with_prefix("mlp."), &[4, 8, 2]).unwrap_err() {
        NnError::MissingTensor { name } => assert_eq!(name, "mlp.2.bias"),
        other => panic!("expected MissingTensor, got {other:?}"),
    }
    // A transformer encoder asked for a second layer that is not there.
    let e = 8;
    let layer0: Vec<(String, Vec<usize>)> = [
        ("self_attn.in_proj_weight", vec![3 * e, e]),
        ("self_attn.in_proj_bias", vec![3 * e]),
        ("self_attn.out_proj.weight", vec![e, e]),
        ("self_attn.out_proj.bias", vec![e]),
        ("linear1.weight", vec![16, e]),
        ("linear1.bias", vec![16]),
        ("linear2.weight", vec![e, 16]),
        ("linear2.bias", vec![e]),
        ("norm1.weight", vec![e]),
        ("norm1.bias", vec![e]),
        ("norm2.weight", vec![e]),
        ("norm2.bias", vec![e]),
    ]
    .into_iter()
    .map(|(n, s)| (format!("enc.layers.0.{n}"), s))
    .collect();
    let entries: Vec<(&str, Dtype, Vec<usize>)> = layer0
        .iter()
        .map(|(n, s)| (n.as_str(), Dtype::F32, s.clone()))
        .collect();
    let weights = Weights::from_bytes(&device, &file(&entries)).unwrap();
    let config = chorus_nn::TransformerConfig::new(e, 2).dim_feedforward(16);
    let enc = weights.with_prefix("enc.");
    TransformerEncoder::load(&enc, &config, 1, false).unwrap();
    match TransformerEncoder::load(&enc, &config, 2, false).unwrap_err() {
        NnError::MissingTensor { name } => {
            assert_eq!(name, "enc.layers.1.self_attn.in_proj_weight")
        }
        other => panic!("expected MissingTensor, got {other:?}"),
    }
    // A head count that does not divide the embedding is a configuration error.
    let bad = chorus_nn::TransformerConfig::new(e, 3).dim_feedforward(16);
    assert!(matches!(
        TransformerEncoder::load(&enc, &bad, 1, false),
        Err(NnError::InvalidConfig { .. })
    ));
}

#[test]
fn unsupported_dtype_and_wrong_dtype_are_typed() {
    let device = chorus_cpu::device().unwrap();
    let bytes = file(&[
        ("half", Dtype::F16, vec![4]),
        ("ids", Dtype::I64, vec![4]),
        ("w", Dtype::F32, vec![4]),
    ]);
    let weights = Weights::from_bytes(&device, &bytes).unwrap();
    assert_eq!(weights.names(), vec!["half", "ids", "w"]);
    match weights.get("half", &[4]).unwrap_err() {
        NnError::TensorDType { name, got, .. } => {
            assert_eq!(name, "half");
            assert_eq!(got, "F16");
        }
        other => panic!("expected TensorDType, got {other:?}"),
    }
    assert!(matches!(
        weights.get_any("half"),
        Err(NnError::TensorDType { .. })
    ));
    // i64 loads as i64 and is refused where f32 is needed.
    let ids = weights.get_i64("ids", &[4]).unwrap();
    assert_eq!(ids.to_vec::<i64>().unwrap(), vec![0; 4]);
    assert!(matches!(
        weights.get("ids", &[4]),
        Err(NnError::TensorDType { .. })
    ));
    assert!(matches!(
        weights.get_i64("w", &[4]),
        Err(NnError::TensorDType { .. })
    ));
    // Optional tensors: absent is None, present but wrong is an error.
    assert!(weights.get_optional("nothing", &[4]).unwrap().is_none());
    assert!(weights.get_optional("w", &[4]).unwrap().is_some());
    assert!(matches!(
        weights.get_optional("w", &[5]),
        Err(NnError::TensorShape { .. })
    ));
}

#[test]
fn bad_files_are_typed() {
    let device = chorus_cpu::device().unwrap();
    assert!(matches!(
        Weights::from_bytes(&device, b"not a safetensors file"),
        Err(NnError::Safetensors { .. })
    ));
    let missing = chorus_testing::golden_dir().join("does-not-exist.safetensors");
    match Weights::from_file(&device, &missing).unwrap_err() {
        NnError::Io { path, .. } => assert_eq!(path, missing),
        other => panic!("expected Io, got {other:?}"),
    }
}

#[test]
fn values_round_trip_through_the_file() {
    let device = chorus_cpu::device().unwrap();
    let values: Vec<f32> = (0..6).map(|i| i as f32 * 0.5 - 1.0).collect();
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let file = safetensors::serialize(
        [(
            "x",
            TensorView::new(Dtype::F32, vec![2, 3], &bytes).unwrap(),
        )],
        None,
    )
    .unwrap();
    let weights = Weights::from_bytes(&device, &file).unwrap();
    let x: Tensor = weights.get("x", &[2, 3]).unwrap();
    assert_eq!(x.to_vec::<f32>().unwrap(), values);
}

#[test]
fn a_header_whose_offsets_overflow_is_a_typed_error() {
    // Eight u8 tensors of 2^61 - 1 elements each, their offsets contiguous up to 2^64 - 8: every
    // size the header states is consistent, but the file's end (header + data) overflows.
    let device = chorus_cpu::device().unwrap();
    let n: u64 = (1 << 61) - 1;
    let entries: Vec<String> = (0..8u64)
        .map(|i| {
            format!(
                "\"t{i}\":{{\"dtype\":\"U8\",\"shape\":[{n}],\"data_offsets\":[{},{}]}}",
                i * n,
                (i + 1) * n
            )
        })
        .collect();
    let header = format!("{{{}}}", entries.join(","));
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    match Weights::from_bytes(&device, &bytes) {
        Err(NnError::Safetensors { .. }) => {}
        other => panic!("expected a safetensors error, got {other:?}"),
    }
}
