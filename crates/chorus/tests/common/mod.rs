//! Shared test helpers: every test runs on every compiled-in backend.
#![allow(dead_code)]

use chorus::{BackendKind, ConfigBuilder, Device, DeviceExt};

/// Runs `f` once per compiled-in backend with a device built from `build(builder)`.
pub(crate) fn on_every_backend(build: impl Fn(ConfigBuilder) -> ConfigBuilder, f: impl Fn(Device)) {
    for &kind in BackendKind::available() {
        if !present(kind) {
            skipped_without_gpu(&format!("backend {kind:?} (no hardware on this machine)"));
            continue;
        }
        let device = build(Device::builder().backend(kind))
            .open()
            .expect("device");
        eprintln!("backend {kind:?}: {}", device.describe());
        f(device);
    }
}

/// Whether the hardware of a compiled-in backend is present (GPU tests print `SKIPPED`
/// without a GPU).
pub(crate) fn present(kind: BackendKind) -> bool {
    kind.is_present()
}

/// Says that a GPU test part was skipped for want of a GPU: a `SKIPPED` line, or, with
/// `CHORUS_REQUIRE_GPU=1` (the GPU job sets it), a panic, so that a GPU machine whose GPU
/// went missing fails instead of passing every GPU test without running it.
pub(crate) fn skipped_without_gpu(what: &str) {
    assert!(
        std::env::var("CHORUS_REQUIRE_GPU").as_deref() != Ok("1"),
        "no GPU, and CHORUS_REQUIRE_GPU=1 requires one: {what}"
    );
    eprintln!("SKIPPED: {what}");
}

/// Iterations scaled down under slow checkers (valgrind, miri) via CHORUS_TEST_SCALE.
pub(crate) fn scaled(n: usize) -> usize {
    let div: usize = std::env::var("CHORUS_TEST_SCALE_DIV")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    (n / div.max(1)).max(1)
}

/// The bits of an f32 tensor's values, for bit-for-bit comparisons.
pub(crate) fn bits(t: &chorus::Tensor) -> Vec<u32> {
    t.to_vec::<f32>()
        .unwrap()
        .iter()
        .map(|v| v.to_bits())
        .collect()
}
