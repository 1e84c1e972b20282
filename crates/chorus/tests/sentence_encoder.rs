//! The sentence encoder against sentence-transformers: all-MiniLM-L6-v2's embeddings of the
//! public sentences (`../shared/golden/minilm_public.json`, one of them empty, one truncated),
//! each with cosine >= 0.9999 to its reference, called directly and from 64 threads, on every
//! backend; and the threads' bits equal the direct call's.

use chorus::text::SentenceEncoder;
use chorus::Device;
use chorus_testing::{backend_tests, golden_dir, minilm_dir, TestBackend};

/// The public sentences and sentence-transformers' embeddings of them.
fn reference() -> (Vec<String>, Vec<Vec<f32>>) {
    let path = golden_dir().join("minilm_public.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (the golden folder is required)", path.display()));
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let sentences = (v["sentences"].as_array().unwrap().iter())
        .map(|s| s.as_str().unwrap().to_string())
        .collect();
    let embeddings = (v["embeddings"].as_array().unwrap().iter())
        .map(|e| {
            (e.as_array().unwrap().iter())
                .map(|x| x.as_f64().unwrap() as f32)
                .collect()
        })
        .collect();
    (sentences, embeddings)
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum();
    let norm = |v: &[f32]| v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    dot / (norm(a) * norm(b))
}

fn check(what: &str, got: &[Vec<f32>], want: &[Vec<f32>]) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let c = cosine(g, w);
        assert!(c >= 0.9999, "{what}: sentence {i}: cosine {c}");
    }
}

fn encoder(dev: &Device) -> SentenceEncoder {
    SentenceEncoder::from_dir(dev, minilm_dir()).expect("load all-MiniLM-L6-v2")
}

backend_tests!(minilm_matches_sentence_transformers);
/// All twelve sentences in one batch, and each alone.
fn minilm_matches_sentence_transformers(backend: TestBackend) {
    let dev = backend.device();
    let enc = encoder(&dev);
    let (sentences, want) = reference();
    let texts: Vec<&str> = sentences.iter().map(String::as_str).collect();
    check("one batch", &enc.encode(&texts).unwrap(), &want);
    let alone: Vec<Vec<f32>> = texts
        .iter()
        .map(|t| enc.encode(&[t]).unwrap().remove(0))
        .collect();
    check("alone", &alone, &want);
    assert!(enc.encode(&[]).unwrap().is_empty());
}

backend_tests!(minilm_from_64_threads_gives_the_bits_of_one);
/// 64 threads share one encoder with no lock, each encoding one sentence: every result has the
/// bits of the same sentence encoded on one thread, and matches the reference.
fn minilm_from_64_threads_gives_the_bits_of_one(backend: TestBackend) {
    let dev = backend.device();
    let enc = encoder(&dev);
    let (sentences, want) = reference();
    let alone: Vec<Vec<f32>> = (sentences.iter())
        .map(|s| enc.encode(&[s]).unwrap().remove(0))
        .collect();
    let got: Vec<(usize, Vec<f32>)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..64)
            .map(|t| {
                let (enc, sentences) = (&enc, &sentences);
                s.spawn(move || {
                    let i = t % sentences.len();
                    (i, enc.encode(&[&sentences[i]]).unwrap().remove(0))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (i, e) in &got {
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(e), bits(&alone[*i]), "sentence {i}");
        assert!(cosine(e, &want[*i]) >= 0.9999, "sentence {i}");
    }
}

backend_tests!(the_first_call_gives_the_bits_of_later_ones);
/// A fresh encoder's first call (weights not yet prepared for the backend) and later calls give
/// the same bits.
fn the_first_call_gives_the_bits_of_later_ones(backend: TestBackend) {
    let dev = backend.device();
    let enc = encoder(&dev);
    let (sentences, _) = reference();
    let texts: Vec<&str> = sentences.iter().take(5).map(String::as_str).collect();
    let first = enc.encode(&texts).unwrap();
    let second = enc.encode(&texts).unwrap();
    let bits = |v: &[Vec<f32>]| v.concat().iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert!(
        bits(&first) == bits(&second),
        "first and second call differ"
    );
}

backend_tests!(minilm_through_the_batch_queue_from_64_threads);
/// 64 threads each embed one public sentence through a `SentenceQueue`: requests of different
/// lengths share padded batches, and every embedding reaches the reference (cosine >= 0.9999)
/// and the direct call (cosine >= 1 - 1e-6) whatever batch it landed in.
fn minilm_through_the_batch_queue_from_64_threads(backend: TestBackend) {
    use chorus::batch::BatchConfig;
    use chorus::text::SentenceQueue;
    use std::sync::Arc;
    use std::time::Duration;
    let dev = backend.device();
    let enc = Arc::new(encoder(&dev));
    let (sentences, want) = reference();
    let direct: Vec<Vec<f32>> = (sentences.iter())
        .map(|s| enc.encode(&[s]).unwrap().remove(0))
        .collect();
    let config = BatchConfig::builder(&dev)
        .max_batch(16)
        .max_delay(Duration::from_millis(20))
        .max_batch_tokens(Some(512))
        .workers(2);
    let queue = SentenceQueue::new(Arc::clone(&enc), config).unwrap();
    let got: Vec<(usize, Vec<f32>)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..64)
            .map(|t| {
                let (queue, sentences) = (&queue, &sentences);
                s.spawn(move || {
                    let i = t % sentences.len();
                    (i, queue.embed(&sentences[i]).unwrap())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (i, e) in &got {
        // Normalised as the folder says (cosine alone cannot tell).
        let norm = e.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "sentence {i}: norm {norm}");
        let c = cosine(e, &want[*i]);
        assert!(c >= 0.9999, "sentence {i}: cosine {c} with the reference");
        let c = cosine(e, &direct[*i]);
        assert!(
            c >= 1.0 - 1e-6,
            "sentence {i}: cosine {c} with the direct call"
        );
    }
    let stats = queue.queue().stats();
    assert_eq!(stats.requests, 64);
    assert!(
        stats.batches < 64,
        "no two requests shared a batch: {stats:?}"
    );
}
