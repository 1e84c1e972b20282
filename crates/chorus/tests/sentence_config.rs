//! The sentence encoder on a tiny random BERT built inside the test (all-MiniLM-L6-v2's
//! tokenizer, random weights of a few kilobytes): each pooling mode, with and without
//! normalisation, against the same steps on the host; truncation; and every configuration
//! error, each naming its file and key.

use chorus::nn::BertConfig;
use chorus::text::{Pooling, SentenceConfig, SentenceEncoder, TextError};
use chorus::{Device, DeviceExt, Tensor};
use chorus_testing::minilm_dir;
use serde_json::json;
use std::path::{Path, PathBuf};

const VOCAB: usize = 30522;
const H: usize = 8;
const MAX_SEQ: usize = 16;

/// A fresh folder under the system's temporary folder.
fn folder(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("chorus-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("1_Pooling")).unwrap();
    dir
}

fn write(path: &Path, v: &serde_json::Value) {
    std::fs::write(path, serde_json::to_string_pretty(v).unwrap()).unwrap();
}

/// Deterministic numbers in [-0.5, 0.5).
fn numbers(n: usize, seed: u64) -> Vec<f32> {
    let mut z = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            z ^= z << 13;
            z ^= z >> 7;
            z ^= z << 17;
            (z >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect()
}

/// Writes a tiny BERT sentence-transformers folder: 2 layers, hidden 8, 2 heads, `pooling`,
/// optionally a Normalize module.
fn tiny(name: &str, pooling: &str, normalize: bool) -> PathBuf {
    let dir = folder(name);
    std::fs::copy(
        minilm_dir().join("tokenizer.json"),
        dir.join("tokenizer.json"),
    )
    .unwrap();
    write(
        &dir.join("config.json"),
        &json!({
            "architectures": ["BertModel"], "model_type": "bert", "hidden_act": "gelu",
            "hidden_size": H, "num_hidden_layers": 2, "num_attention_heads": 2,
            "intermediate_size": 16, "layer_norm_eps": 1e-12, "vocab_size": VOCAB,
            "max_position_embeddings": 32, "type_vocab_size": 2
        }),
    );
    let mut modules = vec![
        json!({"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"}),
        json!({"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}),
    ];
    if normalize {
        modules.push(json!({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}));
    }
    write(&dir.join("modules.json"), &json!(modules));
    write(
        &dir.join("sentence_bert_config.json"),
        &json!({"max_seq_length": MAX_SEQ, "do_lower_case": false}),
    );
    let mut p = json!({"word_embedding_dimension": H, "pooling_mode_cls_token": false,
        "pooling_mode_mean_tokens": false, "pooling_mode_max_tokens": false});
    p[pooling] = json!(true);
    write(&dir.join("1_Pooling/config.json"), &p);
    // Weights: HF names, random values; layer norms near identity.
    let mut tensors: Vec<(String, Vec<usize>)> = vec![
        ("embeddings.word_embeddings.weight".into(), vec![VOCAB, H]),
        ("embeddings.position_embeddings.weight".into(), vec![32, H]),
        ("embeddings.token_type_embeddings.weight".into(), vec![2, H]),
        ("embeddings.LayerNorm.weight".into(), vec![H]),
        ("embeddings.LayerNorm.bias".into(), vec![H]),
    ];
    for i in 0..2 {
        let l = |s: &str| format!("encoder.layer.{i}.{s}");
        for p in ["query", "key", "value"] {
            tensors.push((l(&format!("attention.self.{p}.weight")), vec![H, H]));
            tensors.push((l(&format!("attention.self.{p}.bias")), vec![H]));
        }
        tensors.push((l("attention.output.dense.weight"), vec![H, H]));
        tensors.push((l("attention.output.dense.bias"), vec![H]));
        tensors.push((l("attention.output.LayerNorm.weight"), vec![H]));
        tensors.push((l("attention.output.LayerNorm.bias"), vec![H]));
        tensors.push((l("intermediate.dense.weight"), vec![16, H]));
        tensors.push((l("intermediate.dense.bias"), vec![16]));
        tensors.push((l("output.dense.weight"), vec![H, 16]));
        tensors.push((l("output.dense.bias"), vec![H]));
        tensors.push((l("output.LayerNorm.weight"), vec![H]));
        tensors.push((l("output.LayerNorm.bias"), vec![H]));
    }
    let data: Vec<(String, Vec<usize>, Vec<u8>)> = (tensors.into_iter().enumerate())
        .map(|(k, (name, shape))| {
            let n = shape.iter().product();
            let mut v = numbers(n, k as u64 + 1);
            if name.ends_with("LayerNorm.weight") {
                v.iter_mut().for_each(|x| *x += 1.0);
            }
            let bytes = v.iter().flat_map(|x| x.to_le_bytes()).collect();
            (name, shape, bytes)
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = (data.iter())
        .map(|(name, shape, bytes)| {
            let view =
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), bytes)
                    .unwrap();
            (name.clone(), view)
        })
        .collect();
    let bytes = safetensors::serialize(views, None).unwrap();
    std::fs::write(dir.join("model.safetensors"), bytes).unwrap();
    dir
}

/// The encoder's steps on the host from the model's hidden states: pooling as `mode`, then
/// normalisation.
fn on_host(enc: &SentenceEncoder, texts: &[&str]) -> Vec<Vec<f32>> {
    let batch = enc.tokenizer().encode(texts).unwrap();
    let (b, l) = (texts.len(), batch.width);
    let t = |v: &[i64]| Tensor::from_slice(enc.device(), v, &[b, l]).unwrap();
    let h = enc
        .model()
        .forward_inputs(&t(&batch.ids), &t(&batch.mask), Some(&t(&batch.types)))
        .unwrap()
        .to_vec::<f32>()
        .unwrap();
    (0..b)
        .map(|i| {
            let row = |j: usize| &h[(i * l + j) * H..][..H];
            let n = batch.lengths[i];
            let pooled: Vec<f32> = match enc.config().pooling {
                Pooling::Cls => row(0).to_vec(),
                Pooling::Mean => (0..H)
                    .map(|k| (0..n).map(|j| row(j)[k]).sum::<f32>() / n as f32)
                    .collect(),
                Pooling::Max => (0..H)
                    .map(|k| (0..n).map(|j| row(j)[k]).fold(f32::NEG_INFINITY, f32::max))
                    .collect(),
                other => panic!("{other:?}"),
            };
            if !enc.config().normalize {
                return pooled;
            }
            let norm = pooled.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
            pooled.iter().map(|x| x / norm).collect()
        })
        .collect()
}

fn device() -> Device {
    Device::cpu().unwrap()
}

#[test]
fn each_pooling_mode_matches_the_host() {
    let texts = [
        "a short one",
        "",
        "a somewhat longer sentence, with punctuation!",
    ];
    for (mode, pooling) in [
        ("pooling_mode_cls_token", Pooling::Cls),
        ("pooling_mode_mean_tokens", Pooling::Mean),
        ("pooling_mode_max_tokens", Pooling::Max),
    ] {
        for normalize in [false, true] {
            let dir = tiny(&format!("tiny-{mode}-{normalize}"), mode, normalize);
            let enc = SentenceEncoder::from_dir(&device(), &dir).unwrap();
            assert_eq!(enc.config().pooling, pooling);
            assert_eq!(enc.config().normalize, normalize);
            assert_eq!(enc.dim(), H);
            let got = enc.encode(&texts).unwrap();
            let want = on_host(&enc, &texts);
            for (g, w) in got.iter().zip(&want) {
                for (a, b) in g.iter().zip(w) {
                    assert!(
                        (a - b).abs() <= 1e-5 * (1.0 + b.abs()),
                        "{mode} {normalize}: {g:?} vs {w:?}"
                    );
                }
            }
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }
}

#[test]
fn long_input_is_truncated_to_max_seq_length() {
    let dir = tiny("tiny-long", "pooling_mode_mean_tokens", true);
    let enc = SentenceEncoder::from_dir(&device(), &dir).unwrap();
    let long = "word ".repeat(100);
    assert_eq!(enc.tokenizer().count(&long).unwrap(), MAX_SEQ);
    let cut = "word ".repeat(MAX_SEQ - 2);
    // The first MAX_SEQ - 2 words and the special tokens: the same tokens, the same embedding.
    assert_eq!(enc.encode(&[&long]).unwrap(), enc.encode(&[&cut]).unwrap());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `f` applied to a copy of the tiny folder, then its load error.
fn broken(name: &str, f: impl FnOnce(&Path)) -> TextError {
    let dir = tiny(name, "pooling_mode_mean_tokens", true);
    f(&dir);
    let e = SentenceEncoder::from_dir(&device(), &dir).unwrap_err();
    std::fs::remove_dir_all(&dir).unwrap();
    e
}

fn edit(path: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    f(&mut v);
    write(path, &v);
}

#[test]
fn configuration_errors_name_the_file_and_the_key() {
    let msg = |e: TextError| e.to_string();
    let e = broken("no-modules", |d| {
        std::fs::remove_file(d.join("modules.json")).unwrap()
    });
    assert!(
        matches!(&e, TextError::Io { path, .. } if path.ends_with("modules.json")),
        "{e}"
    );
    let e = broken("no-hidden", |d| {
        edit(&d.join("config.json"), |v| {
            v.as_object_mut().unwrap().remove("hidden_size");
        })
    });
    assert!(
        matches!(&e, TextError::Config { path, .. } if path.ends_with("config.json"))
            && msg(e).contains("\"hidden_size\" is missing")
    );
    let e = broken("bad-heads", |d| {
        edit(&d.join("config.json"), |v| {
            v["num_attention_heads"] = json!("two")
        })
    });
    assert!(msg(e).contains("\"num_attention_heads\" must be a positive integer"));
    let e = broken("roberta", |d| {
        edit(&d.join("config.json"), |v| {
            v["model_type"] = json!("roberta")
        })
    });
    assert!(
        matches!(&e, TextError::Unsupported { what, .. } if what.contains("roberta")),
        "{e}"
    );
    let e = broken("act", |d| {
        edit(&d.join("config.json"), |v| v["hidden_act"] = json!("swish"))
    });
    assert!(
        matches!(&e, TextError::Unsupported { what, .. } if what.contains("swish")),
        "{e}"
    );
    let e = broken("two-modes", |d| {
        edit(&d.join("1_Pooling/config.json"), |v| {
            v["pooling_mode_cls_token"] = json!(true)
        })
    });
    assert!(
        matches!(&e, TextError::Unsupported { what, .. } if what.contains("several pooling modes")),
        "{e}"
    );
    let e = broken("sqrt-len", |d| {
        edit(&d.join("1_Pooling/config.json"), |v| {
            v["pooling_mode_mean_tokens"] = json!(false);
            v["pooling_mode_mean_sqrt_len_tokens"] = json!(true);
        })
    });
    assert!(
        matches!(&e, TextError::Unsupported { what, .. } if what.contains("mean_sqrt_len")),
        "{e}"
    );
    let e = broken("no-mode", |d| {
        edit(&d.join("1_Pooling/config.json"), |v| {
            v["pooling_mode_mean_tokens"] = json!(false)
        })
    });
    assert!(msg(e).contains("no pooling mode is set"));
    let e = broken("dense", |d| {
        edit(&d.join("modules.json"), |v| {
            v.as_array_mut().unwrap().push(json!({"idx": 3, "name": "3", "path": "3_Dense", "type": "sentence_transformers.models.Dense"}))
        })
    });
    assert!(
        matches!(&e, TextError::Unsupported { what, .. } if what.contains("Dense")),
        "{e}"
    );
    let e = broken("json", |d| {
        std::fs::write(d.join("config.json"), "{ not json").unwrap()
    });
    assert!(
        matches!(&e, TextError::Config { path, what } if path.ends_with("config.json") && what.contains("not valid JSON")),
        "{e}"
    );
    let e = broken("seq", |d| {
        edit(&d.join("sentence_bert_config.json"), |v| {
            v["max_seq_length"] = json!(1000)
        })
    });
    assert!(msg(e).contains("max_seq_length 1000 exceeds the model's 32 positions"));
    let e = broken("tokenizer", |d| {
        std::fs::write(d.join("tokenizer.json"), "{}").unwrap()
    });
    assert!(
        matches!(&e, TextError::Tokenizer(m) if m.contains("tokenizer.json")),
        "{e}"
    );
    let e = broken("weights", |d| {
        std::fs::remove_file(d.join("model.safetensors")).unwrap()
    });
    assert!(msg(e).contains("model.safetensors"));
    // A weight of the wrong shape names the tensor.
    let e = broken("shape", |d| {
        edit(&d.join("config.json"), |v| {
            v["intermediate_size"] = json!(12)
        })
    });
    assert!(msg(e).contains("intermediate.dense.weight"), "{}", "shape");
    // The folder itself is fine.
    let dir = tiny("fine", "pooling_mode_mean_tokens", true);
    let cfg = SentenceConfig::from_dir(&dir).unwrap();
    let mut want = BertConfig::new(VOCAB, H, 2, 2, 16);
    want.max_position_embeddings = 32;
    assert_eq!((cfg.bert, cfg.max_seq_length), (want, MAX_SEQ));
    std::fs::remove_dir_all(&dir).unwrap();
}
