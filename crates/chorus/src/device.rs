//! Device constructors over the compiled-in backends.

use chorus_core::{Config, ConfigBuilder, Error, Exhaustion, Result, StreamPolicy};
use std::time::Duration;

/// The backends compiled into this build (cargo features `cpu`, and later `cuda`, `wgpu`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BackendKind {
    /// Worker threads on the host (`chorus-cpu`).
    #[cfg(feature = "cpu")]
    Cpu,
    /// An NVIDIA GPU through the CUDA driver, cuBLAS and NVRTC (`chorus-cuda`).
    #[cfg(feature = "cuda")]
    Cuda,
}

impl BackendKind {
    /// Every compiled-in backend (whether or not its hardware is present).
    pub fn available() -> &'static [BackendKind] {
        &[
            #[cfg(feature = "cuda")]
            BackendKind::Cuda,
            #[cfg(feature = "cpu")]
            BackendKind::Cpu,
        ]
    }

    /// The best compiled-in backend whose hardware is present: CUDA when compiled in and a GPU
    /// is there, else the CPU.
    pub fn best() -> Option<BackendKind> {
        #[cfg(feature = "cuda")]
        if chorus_cuda::is_available() {
            return Some(BackendKind::Cuda);
        }
        #[cfg(feature = "cpu")]
        return Some(BackendKind::Cpu);
        #[allow(unreachable_code)]
        BackendKind::available().first().copied()
    }

    /// The lowercase name (`cpu`, `cuda`).
    pub fn name(self) -> &'static str {
        match self {
            #[cfg(feature = "cpu")]
            BackendKind::Cpu => "cpu",
            #[cfg(feature = "cuda")]
            BackendKind::Cuda => "cuda",
        }
    }

    /// Parses a backend name (`cpu`, `cuda`; `auto` picks [`BackendKind::best`]).
    ///
    /// # Errors
    /// [`Error::Config`] for a name that is not compiled in.
    pub fn parse(name: &str) -> Result<BackendKind> {
        let not_compiled = || Error::Config {
            key: "device",
            value: name.to_string(),
            reason: "not a backend compiled into this build",
        };
        match name.trim().to_ascii_lowercase().as_str() {
            #[cfg(feature = "cpu")]
            "cpu" => Ok(BackendKind::Cpu),
            #[cfg(feature = "cuda")]
            "cuda" => Ok(BackendKind::Cuda),
            "auto" => BackendKind::best().ok_or_else(not_compiled),
            _ => Err(not_compiled()),
        }
    }
}

/// A handle to one device: [`chorus_core::Device`] plus constructors. Dereferences to it, so
/// every method of [`chorus_core::Device`] is available and `&Device` can be passed where a
/// `&chorus_core::Device` is expected.
#[derive(Clone, Debug)]
pub struct Device(chorus_core::Device);

impl Device {
    /// The CPU device, with the settings of the `CHORUS_*` environment variables.
    ///
    /// # Errors
    /// [`Error::Config`] naming an invalid environment variable.
    #[cfg(feature = "cpu")]
    pub fn cpu() -> Result<Device> {
        Device::builder().from_env()?.build()
    }

    /// CUDA device `ordinal`, with the settings of the `CHORUS_*` environment variables
    /// (including `CHORUS_CUDA_TF32` and `CHORUS_CUDA_LAZY_BLAS`).
    ///
    /// # Errors
    /// [`Error::Unavailable`] without a CUDA driver or with no such device;
    /// [`Error::Config`] naming an invalid environment variable.
    #[cfg(feature = "cuda")]
    pub fn cuda(ordinal: u32) -> Result<Device> {
        Device::builder()
            .from_env()?
            .backend(BackendKind::Cuda)
            .ordinal(ordinal)
            .build()
    }

    /// The best device compiled in and present (CUDA device 0 when the `cuda` feature is on
    /// and a GPU is there, else the CPU), with the environment's settings.
    ///
    /// # Errors
    /// As [`Device::cpu`].
    pub fn auto() -> Result<Device> {
        Device::builder().from_env()?.build()
    }

    /// A builder (defaults, environment not read unless [`DeviceBuilder::from_env`]).
    ///
    /// # Examples
    /// ```
    /// use chorus::{Device, StreamPolicy};
    /// let device = Device::builder().streams(8).policy(StreamPolicy::Exclusive).build()?;
    /// assert_eq!(device.config().streams(), 8);
    /// # Ok::<(), chorus::Error>(())
    /// ```
    pub fn builder() -> DeviceBuilder {
        DeviceBuilder {
            kind: BackendKind::best(),
            config: Config::builder(),
            ordinal: 0,
            #[cfg(feature = "cuda")]
            cuda: chorus_cuda::CudaOptions::default(),
        }
    }

    /// The device with an explicit backend and configuration.
    ///
    /// # Errors
    /// The backend could not start.
    ///
    /// CUDA uses device 0 and the options of `CHORUS_CUDA_TF32` and `CHORUS_CUDA_LAZY_BLAS`;
    /// [`Device::builder`] chooses others.
    pub fn new(kind: BackendKind, config: Config) -> Result<Device> {
        Device::builder()
            .config(config)
            .backend(kind)
            .build_without_env()
    }

    /// The core handle.
    pub fn inner(&self) -> &chorus_core::Device {
        &self.0
    }
}

impl std::ops::Deref for Device {
    type Target = chorus_core::Device;
    fn deref(&self) -> &chorus_core::Device {
        &self.0
    }
}

impl From<Device> for chorus_core::Device {
    fn from(d: Device) -> Self {
        d.0
    }
}

/// Builder of a [`Device`]: backend and every runtime setting.
#[derive(Debug, Clone)]
pub struct DeviceBuilder {
    kind: Option<BackendKind>,
    config: ConfigBuilder,
    ordinal: u32,
    #[cfg(feature = "cuda")]
    cuda: chorus_cuda::CudaOptions,
}

impl DeviceBuilder {
    /// Starts from the `CHORUS_*` environment variables instead of the defaults.
    ///
    /// # Errors
    /// [`Error::Config`] naming an invalid variable.
    pub fn from_env(self) -> Result<Self> {
        let c = Config::from_env()?;
        #[cfg(feature = "cuda")]
        let this = DeviceBuilder {
            cuda: chorus_cuda::CudaOptions::from_env()?,
            ..self
        };
        #[cfg(not(feature = "cuda"))]
        let this = self;
        Ok(this.config(c))
    }
    /// Takes every setting from `c`.
    pub fn config(mut self, c: Config) -> Self {
        self.config = Config::builder()
            .streams(c.streams())
            .policy(c.policy())
            .exhaustion(c.exhaustion())
            .memory_limit(c.memory_limit())
            .thread_cache_bytes(c.thread_cache_bytes())
            .shutdown_timeout(c.shutdown_timeout());
        self
    }
    /// Backend to use.
    pub fn backend(mut self, kind: BackendKind) -> Self {
        self.kind = Some(kind);
        self
    }
    /// Device ordinal for backends with several devices (CUDA); default 0.
    pub fn ordinal(mut self, ordinal: u32) -> Self {
        self.ordinal = ordinal;
        self
    }
    /// Let f32 GEMMs on CUDA use TF32 tensor cores (off by default, as in PyTorch).
    #[cfg(feature = "cuda")]
    pub fn allow_tf32(mut self, allow: bool) -> Self {
        self.cuda = self.cuda.allow_tf32(allow);
        self
    }
    /// On CUDA, create each stream's cuBLAS handle on its first GEMM rather than with the
    /// device (`chorus_cuda::CudaOptions::lazy_blas`; off by default).
    #[cfg(feature = "cuda")]
    pub fn lazy_blas(mut self, lazy: bool) -> Self {
        self.cuda = self.cuda.lazy_blas(lazy);
        self
    }
    /// Total number of streams (stream 0 is the default stream), 2..=1024.
    pub fn streams(mut self, n: usize) -> Self {
        self.config = self.config.streams(n);
        self
    }
    /// Stream binding policy.
    pub fn policy(mut self, p: StreamPolicy) -> Self {
        self.config = self.config.policy(p);
        self
    }
    /// What the exclusive policy does when every stream is taken.
    pub fn exhaustion(mut self, e: Exhaustion) -> Self {
        self.config = self.config.exhaustion(e);
        self
    }
    /// Memory limit in bytes.
    pub fn memory_limit(mut self, limit: Option<usize>) -> Self {
        self.config = self.config.memory_limit(limit);
        self
    }
    /// Bytes of small blocks each thread may cache (0 turns the caches off).
    pub fn thread_cache_bytes(mut self, bytes: usize) -> Self {
        self.config = self.config.thread_cache_bytes(bytes);
        self
    }
    /// How long shutdown waits for in-flight work.
    pub fn shutdown_timeout(mut self, t: Duration) -> Self {
        self.config = self.config.shutdown_timeout(t);
        self
    }
    /// Starts the device.
    ///
    /// # Errors
    /// [`Error::Config`] for invalid settings or when no backend is compiled in; backend start
    /// failures.
    pub fn build(self) -> Result<Device> {
        self.build_without_env()
    }

    #[cfg_attr(
        not(any(feature = "cpu", feature = "cuda")),
        expect(
            unused_variables,
            reason = "with no backend compiled in, `kind` has no value to use `config` with"
        )
    )]
    fn build_without_env(self) -> Result<Device> {
        let config = self.config.build()?;
        let kind = self.kind.ok_or(Error::Config {
            key: "backend",
            value: String::new(),
            reason: "no backend compiled in",
        })?;
        match kind {
            #[cfg(feature = "cpu")]
            BackendKind::Cpu => Ok(Device(chorus_cpu::device_with(config)?)),
            #[cfg(feature = "cuda")]
            BackendKind::Cuda => Ok(Device(chorus_cuda::device_with(
                self.ordinal,
                config,
                self.cuda,
            )?)),
        }
    }
}
