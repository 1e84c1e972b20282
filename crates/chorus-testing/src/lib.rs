//! Test support for the chorus crates (a dev-dependency only; `publish = false`).
//!
//! - [`backend_tests!`]: one `#[test]` per compiled-in backend, named after it
//!   (`backend_tests!(golden)` makes `golden_cpu` and, with CUDA compiled in, `golden_cuda`),
//!   so that a failure says which backend failed. The test function takes a [`TestBackend`],
//!   which opens devices of that backend.
//! - GPU presence: a backend whose hardware is absent (CUDA without a GPU) prints `SKIPPED`
//!   and passes, unless `CHORUS_REQUIRE_GPU=1` ([`skipped_without_gpu`]); `gpu()` (feature
//!   `cuda`) for tests that only run on CUDA.
//! - The PyTorch golden files ([`golden_dir`], [`golden_files`], [`Golden`]): a missing
//!   folder fails the test unless `CHORUS_GOLDEN_OPTIONAL=1`.
//! - Small helpers: [`bits`], [`scaled`].
//!
//! Which backends are compiled in is the facade's decision (its cargo features, unified over
//! the build): [`backend_tests!`] asks `chorus` through its hidden `__if_cpu!`/`__if_cuda!`
//! macros, because a `#[cfg(feature = "cuda")]` in a macro's expansion would test the features
//! of the crate that calls it. This crate's own `cuda` feature turns the facade's on.

mod golden;
mod models;

pub use golden::{golden_dir, golden_files, Golden};
pub use models::minilm_dir;

use chorus::{BackendKind, ConfigBuilder, Device, DeviceExt, Tensor};

/// What [`backend_tests!`]'s expansion names; not for direct use.
#[doc(hidden)]
pub mod __private {
    pub use chorus;
    pub use paste;
}

/// One test per compiled-in backend for each function named: `backend_tests!(a, b)` defines
/// `a_cpu`, `a_cuda`, `b_cpu`, `b_cuda` (a backend's tests exist only when it is compiled
/// into `chorus`), each calling the function with a [`TestBackend`] through [`run`] (which
/// skips a backend whose hardware is absent, or fails under `CHORUS_REQUIRE_GPU=1`).
///
/// ```
/// use chorus_testing::{backend_tests, TestBackend};
///
/// backend_tests!(sums_on_the_device);
/// fn sums_on_the_device(backend: TestBackend) {
///     let device = backend.device();
///     let x = chorus::Tensor::from_slice(&device, &[1.0_f32, 2.0], &[2]).unwrap();
///     assert_eq!(x.sum_all().unwrap().item::<f32>().unwrap(), 3.0);
/// }
/// # fn main() {}
/// ```
#[macro_export]
macro_rules! backend_tests {
    ($($name:ident),+ $(,)?) => {
        $(
            $crate::__private::chorus::__if_cpu! {
                $crate::__private::paste::paste! {
                    #[test]
                    fn [<$name _cpu>]() {
                        $crate::run($crate::__private::chorus::BackendKind::Cpu, $name);
                    }
                }
            }
            $crate::__private::chorus::__if_cuda! {
                $crate::__private::paste::paste! {
                    #[test]
                    fn [<$name _cuda>]() {
                        $crate::run($crate::__private::chorus::BackendKind::Cuda, $name);
                    }
                }
            }
        )+
    };
}

/// A compiled-in backend whose hardware is present, as [`backend_tests!`] hands it to a test:
/// opens devices of that backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TestBackend {
    kind: BackendKind,
}

impl TestBackend {
    /// The backend.
    pub fn kind(self) -> BackendKind {
        self.kind
    }

    /// The facade's builder with this backend chosen (defaults; the environment is not read).
    pub fn builder(self) -> ConfigBuilder {
        Device::builder().backend(self.kind)
    }

    /// A device of this backend built from `build(self.builder())`.
    ///
    /// # Panics
    /// If the device cannot start.
    pub fn open(self, build: impl FnOnce(ConfigBuilder) -> ConfigBuilder) -> Device {
        let device = build(self.builder()).open().expect("device");
        eprintln!("backend {}: {}", self.kind, device.describe());
        device
    }

    /// A device of this backend with the default settings.
    ///
    /// # Panics
    /// If the device cannot start.
    pub fn device(self) -> Device {
        self.open(|b| b)
    }

    /// Calls `f` with a device built from `build(self.builder())`.
    ///
    /// # Panics
    /// If the device cannot start.
    pub fn with_device(
        self,
        build: impl FnOnce(ConfigBuilder) -> ConfigBuilder,
        f: impl FnOnce(Device),
    ) {
        f(self.open(build));
    }
}

/// Runs `test` on backend `kind` if its hardware is present; otherwise says so
/// ([`skipped_without_gpu`]: a `SKIPPED` line, or a panic under `CHORUS_REQUIRE_GPU=1`).
/// What [`backend_tests!`]'s tests call.
pub fn run(kind: BackendKind, test: impl FnOnce(TestBackend)) {
    if !kind.is_present() {
        skipped_without_gpu(&format!("backend {kind} (no hardware on this machine)"));
        return;
    }
    test(TestBackend { kind });
}

/// Says that a GPU test (or part of one) was skipped for want of a GPU: a `SKIPPED` line, or,
/// with `CHORUS_REQUIRE_GPU=1` (the GPU job sets it), a panic, so that a GPU machine whose GPU
/// went missing fails instead of passing every GPU test without running it.
///
/// # Panics
/// Under `CHORUS_REQUIRE_GPU=1`.
pub fn skipped_without_gpu(what: &str) {
    assert!(
        std::env::var("CHORUS_REQUIRE_GPU").as_deref() != Ok("1"),
        "no GPU, and CHORUS_REQUIRE_GPU=1 requires one: {what}"
    );
    eprintln!("SKIPPED: {what}");
}

/// CUDA device 0 (with the environment's settings), or `None` with a `SKIPPED` line without a
/// GPU (a panic under `CHORUS_REQUIRE_GPU=1`): for tests that only mean something on CUDA.
///
/// # Panics
/// Under `CHORUS_REQUIRE_GPU=1` without a GPU; if the GPU that is there cannot start.
#[cfg(feature = "cuda")]
pub fn gpu() -> Option<Device> {
    if !BackendKind::Cuda.is_present() {
        skipped_without_gpu("no CUDA device on this machine");
        return None;
    }
    Some(Device::cuda(0).expect("cuda device 0"))
}

/// Iterations scaled down under slow checkers (compute-sanitizer, valgrind): `n` divided by
/// `CHORUS_TEST_SCALE_DIV` (default 1), at least 1.
pub fn scaled(n: usize) -> usize {
    let div: usize = std::env::var("CHORUS_TEST_SCALE_DIV")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    (n / div.max(1)).max(1)
}

/// The bits of an f32 tensor's values, for bit-for-bit comparisons.
///
/// # Panics
/// If the tensor cannot be read as f32.
pub fn bits(t: &Tensor) -> Vec<u32> {
    t.to_vec::<f32>()
        .unwrap()
        .into_iter()
        .map(f32::to_bits)
        .collect()
}
