//! Behaviour of the modules beyond PyTorch parity: masks, the cross-attention path, pre-norm,
//! unbatched inputs, and typed errors for inputs that do not fit.

use chorus_core::{DType, Device, Tensor, UnaryOp};
use chorus_nn::{
    Conv2d, Conv2dConfig, Embedding, Flatten, LayerNorm, Linear, Module, MultiheadAttention,
    NnError, Relu, Sequential, TransformerConfig, TransformerEncoderLayer, Weights,
};

const E: usize = 8;
const HEADS: usize = 2;

fn randn(device: &Device, shape: &[usize], seed: u64, scale: f32) -> Tensor {
    let s = Tensor::full(device, &[1], scale).unwrap();
    Tensor::randn(device, shape, seed).unwrap().mul(&s).unwrap()
}

fn attention(device: &Device) -> MultiheadAttention {
    let scale = 1.0 / (E as f32).sqrt();
    MultiheadAttention::new(
        HEADS,
        randn(device, &[3 * E, E], 1, scale),
        Some(randn(device, &[3 * E], 2, 0.1)),
        Linear::new(
            randn(device, &[E, E], 3, scale),
            Some(randn(device, &[E], 4, 0.1)),
        )
        .unwrap(),
    )
    .unwrap()
}

fn values(t: &Tensor) -> Vec<f32> {
    t.to_vec::<f32>().unwrap()
}

fn assert_close(a: &[f32], b: &[f32], tol: f32) {
    assert_eq!(a.len(), b.len());
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!((x - y).abs() <= tol, "element {i}: {x} vs {y}");
    }
}

/// `[B, L]` keep-mask with the first `lens[b]` keys of sequence `b` kept.
fn keep_mask(device: &Device, lens: &[usize], l: usize) -> Tensor {
    let m: Vec<i64> = lens
        .iter()
        .flat_map(|&n| (0..l).map(move |j| i64::from(j < n)))
        .collect();
    Tensor::from_slice(device, &m, &[lens.len(), l]).unwrap()
}

#[test]
fn attend_with_one_input_matches_self_attention() {
    let device = chorus_cpu::device().unwrap();
    let attn = attention(&device);
    let x = randn(&device, &[2, 5, E], 10, 1.0);
    let mask = keep_mask(&device, &[5, 3], 5);
    for (m, causal) in [(None, false), (Some(&mask), false), (None, true)] {
        let a = attn.forward_masked(&x, m, causal).unwrap();
        let b = attn.attend(&x, &x, &x, m, causal).unwrap();
        assert_eq!(a.shape(), &[2, 5, E]);
        assert_close(&values(&a), &values(&b), 1e-5);
    }
}

#[test]
fn masked_keys_do_not_influence_kept_queries() {
    let device = chorus_cpu::device().unwrap();
    let attn = attention(&device);
    let l = 6;
    let lens = [4, 2];
    let x = randn(&device, &[2, l, E], 11, 1.0);
    // The same sequences with different values at the masked positions.
    let mut changed = values(&x);
    let noise = values(&randn(&device, &[2, l, E], 12, 3.0));
    for (b, &n) in lens.iter().enumerate() {
        for j in n..l {
            for e in 0..E {
                let i = (b * l + j) * E + e;
                changed[i] = noise[i];
            }
        }
    }
    let changed = Tensor::from_slice(&device, &changed, &[2, l, E]).unwrap();
    let mask = keep_mask(&device, &lens, l);
    let a = values(&attn.forward_masked(&x, Some(&mask), false).unwrap());
    let b = values(&attn.forward_masked(&changed, Some(&mask), false).unwrap());
    for (bi, &n) in lens.iter().enumerate() {
        let r = bi * l * E..(bi * l + n) * E;
        assert_close(&a[r.clone()], &b[r], 1e-6);
    }
    // Without the mask the kept queries do see the change.
    let a = values(&attn.forward(&x).unwrap());
    let b = values(&attn.forward(&changed).unwrap());
    assert!(a[..E] != b[..E]);
}

#[test]
fn causal_attention_ignores_later_positions() {
    let device = chorus_cpu::device().unwrap();
    let attn = attention(&device);
    let l = 5;
    let x = randn(&device, &[1, l, E], 13, 1.0);
    let mut changed = values(&x);
    for v in &mut changed[3 * E..] {
        *v += 1.0;
    }
    let changed = Tensor::from_slice(&device, &changed, &[1, l, E]).unwrap();
    let a = values(&attn.forward_masked(&x, None, true).unwrap());
    let b = values(&attn.forward_masked(&changed, None, true).unwrap());
    assert_close(&a[..3 * E], &b[..3 * E], 1e-6);
    assert!(a[3 * E..] != b[3 * E..]);
}

#[test]
fn unbatched_attention_matches_a_batch_of_one() {
    let device = chorus_cpu::device().unwrap();
    let attn = attention(&device);
    let x = randn(&device, &[4, E], 14, 1.0);
    let y = attn.forward(&x).unwrap();
    assert_eq!(y.shape(), &[4, E]);
    let yb = attn
        .forward(&x.reshape(&[1, 4, E as isize]).unwrap())
        .unwrap();
    assert_eq!(values(&y), values(&yb));
    let mask = Tensor::from_slice(&device, &[1_i64, 1, 0, 1], &[4]).unwrap();
    let y = attn.forward_masked(&x, Some(&mask), false).unwrap();
    assert_eq!(y.shape(), &[4, E]);
}

fn layer_weights(device: &Device, f: usize) -> Weights {
    let shapes: [(&str, Vec<usize>); 12] = [
        ("self_attn.in_proj_weight", vec![3 * E, E]),
        ("self_attn.in_proj_bias", vec![3 * E]),
        ("self_attn.out_proj.weight", vec![E, E]),
        ("self_attn.out_proj.bias", vec![E]),
        ("linear1.weight", vec![f, E]),
        ("linear1.bias", vec![f]),
        ("linear2.weight", vec![E, f]),
        ("linear2.bias", vec![E]),
        ("norm1.weight", vec![E]),
        ("norm1.bias", vec![E]),
        ("norm2.weight", vec![E]),
        ("norm2.bias", vec![E]),
    ];
    Weights::from_tensors(
        shapes
            .into_iter()
            .enumerate()
            .map(|(i, (n, s))| (n.to_string(), randn(device, &s, 100 + i as u64, 0.3))),
    )
}

#[test]
fn encoder_layer_follows_pytorch_formulas() {
    let device = chorus_cpu::device().unwrap();
    let f = 16;
    let w = layer_weights(&device, f);
    let x = randn(&device, &[2, 5, E], 20, 1.0);
    let attn = MultiheadAttention::load(&w.sub("self_attn."), E, HEADS).unwrap();
    let l1 = Linear::load(&w.sub("linear1."), E, f, true)
        .unwrap()
        .with_activation(Some(UnaryOp::Gelu));
    let l2 = Linear::load(&w.sub("linear2."), f, E, true).unwrap();
    let n1 = LayerNorm::load(&w.sub("norm1."), E, 1e-5).unwrap();
    let n2 = LayerNorm::load(&w.sub("norm2."), E, 1e-5).unwrap();
    let ff = |t: &Tensor| l2.forward(&l1.forward(t).unwrap()).unwrap();
    for norm_first in [false, true] {
        let config = TransformerConfig::new(E, HEADS)
            .dim_feedforward(f)
            .activation(UnaryOp::Gelu)
            .norm_first(norm_first);
        let layer = TransformerEncoderLayer::load(&w, &config).unwrap();
        let want = if norm_first {
            let h = x
                .add(&attn.forward(&n1.forward(&x).unwrap()).unwrap())
                .unwrap();
            h.add(&ff(&n2.forward(&h).unwrap())).unwrap()
        } else {
            let h = n1
                .forward(&x.add(&attn.forward(&x).unwrap()).unwrap())
                .unwrap();
            n2.forward(&h.add(&ff(&h)).unwrap()).unwrap()
        };
        assert_eq!(values(&layer.forward(&x).unwrap()), values(&want));
    }
}

#[test]
fn inputs_that_do_not_fit_are_typed_errors() {
    let device = chorus_cpu::device().unwrap();
    let x = randn(&device, &[2, 3], 30, 1.0);
    let invalid = |r: chorus_nn::Result<Tensor>| match r {
        Err(NnError::InvalidInput { .. }) => {}
        other => panic!("expected InvalidInput, got {other:?}"),
    };
    invalid(LayerNorm::new(4, None, None, 1e-5).unwrap().forward(&x));
    invalid(attention(&device).forward(&x));
    let mask_f32 = randn(&device, &[2, 5], 31, 1.0);
    invalid(attention(&device).forward_masked(
        &randn(&device, &[2, 5, E], 32, 1.0),
        Some(&mask_f32),
        false,
    ));
    let conv = Conv2d::new(
        randn(&device, &[4, 2, 1, 1], 33, 1.0),
        None,
        Conv2dConfig::new(2, 4, [1, 1]).bias(false),
    )
    .unwrap();
    invalid(conv.forward(&randn(&device, &[1, 3, 4, 4], 34, 1.0)));
    invalid(Embedding::new(x.clone()).unwrap().forward(&x));
    invalid(Flatten::default().forward(&randn(&device, &[3], 35, 1.0)));
    assert!(matches!(
        Sequential::new().forward(&x),
        Err(NnError::InvalidConfig { .. })
    ));
    // Op-level errors come through as `Core`.
    let linear = Linear::new(randn(&device, &[4, 5], 36, 1.0), None).unwrap();
    assert!(matches!(linear.forward(&x), Err(NnError::Core(_))));
}

#[test]
fn constructors_check_their_tensors() {
    let device = chorus_cpu::device().unwrap();
    let w = randn(&device, &[4, 3], 40, 1.0);
    match Linear::new(w.clone(), Some(randn(&device, &[3], 41, 1.0))) {
        Err(NnError::TensorShape { name, .. }) => assert_eq!(name, "bias"),
        other => panic!("expected TensorShape, got {other:?}"),
    }
    let ids = Tensor::zeros(&device, &[4, 3], DType::I64).unwrap();
    assert!(matches!(
        Linear::new(ids, None),
        Err(NnError::TensorDType { .. })
    ));
    assert!(matches!(
        MultiheadAttention::new(3, randn(&device, &[12, 4], 42, 1.0), None, {
            Linear::new(randn(&device, &[4, 4], 43, 1.0), None).unwrap()
        }),
        Err(NnError::InvalidConfig { .. })
    ));
    assert!(matches!(
        Conv2d::new(w, None, Conv2dConfig::new(3, 4, [1, 1])),
        Err(NnError::TensorShape { .. }) | Err(NnError::InvalidConfig { .. })
    ));
}

#[test]
fn sequential_runs_layers_in_order_and_names_them() {
    let device = chorus_cpu::device().unwrap();
    let w = Tensor::from_slice(&device, &[1.0_f32, -1.0], &[2, 1]).unwrap();
    let model = Sequential::new()
        .push(Linear::new(w, None).unwrap())
        .push(Relu)
        .push(Flatten::new(0));
    let x = Tensor::from_slice(&device, &[2.0_f32, -3.0], &[2, 1]).unwrap();
    assert_eq!(
        values(&model.forward(&x).unwrap()),
        vec![2.0, 0.0, 0.0, 3.0]
    );
    let debug = format!("{model:?}");
    assert!(
        debug.contains("Linear") && debug.contains("Relu") && debug.contains("Flatten"),
        "{debug}"
    );
}
