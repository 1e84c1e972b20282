//! Opening devices on the compiled-in backends: [`BackendKind`], the opener installed on
//! [`DeviceExt::builder`]'s builders, and the constructors of [`DeviceExt`].
//!
//! There is one device type, core's [`Device`]. Core cannot name a backend (dependencies point
//! one way: core ← backends ← facade), so it cannot open one: its [`ConfigBuilder`] carries
//! the backend's name ([`Config::backend`]) and an [`Opener`] function pointer, and
//! [`ConfigBuilder::open`] calls it. This module is where the facade supplies that function
//! ([`open`]), and where the names meet the backends compiled into the build.

use chorus_core::{Config, ConfigBuilder, Device, Error, Opener, Result, AUTO_BACKEND};

/// The backends compiled into this build (cargo features `cpu`, default, and `cuda`).
///
/// A closed enum, one variant per backend feature: code that matches on it covers every
/// backend of the build, and a variant exists only when its backend is compiled in. It lives
/// in the facade, not in `chorus-core`, because only the facade knows which backends are
/// compiled in (core has no backend features and names no backend). Core's [`Config`] carries
/// the choice as a name ([`Config::backend`]): a `BackendKind` is one (it is `AsRef<str>`), so
/// `Device::builder().backend(BackendKind::Cpu)` and `.backend("cpu")` are the same.
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

    /// Whether the hardware of this backend is present on this machine (a GPU for CUDA; the
    /// CPU always is).
    pub fn is_present(self) -> bool {
        match self {
            #[cfg(feature = "cpu")]
            BackendKind::Cpu => true,
            #[cfg(feature = "cuda")]
            BackendKind::Cuda => chorus_cuda::is_available(),
        }
    }

    /// The lowercase name (`cpu`, `cuda`), as [`Config::backend`] takes it.
    pub fn name(self) -> &'static str {
        match self {
            #[cfg(feature = "cpu")]
            BackendKind::Cpu => "cpu",
            #[cfg(feature = "cuda")]
            BackendKind::Cuda => "cuda",
        }
    }

    /// Parses a backend name (`cpu`, `cuda`; `auto` picks [`BackendKind::best`]), ignoring case
    /// and surrounding blanks.
    ///
    /// # Errors
    /// [`Error::Config`] (key `backend`) for a name that is not compiled in.
    ///
    /// # Examples
    /// ```
    /// use chorus::BackendKind;
    /// assert_eq!(BackendKind::parse(" CPU ")?, BackendKind::Cpu);
    /// assert!(BackendKind::parse("tpu").is_err());
    /// # Ok::<(), chorus::Error>(())
    /// ```
    pub fn parse(name: &str) -> Result<BackendKind> {
        let not_compiled = || Error::Config {
            key: "backend",
            value: name.to_string(),
            reason: "not a backend compiled into this build",
        };
        match name.trim().to_ascii_lowercase().as_str() {
            #[cfg(feature = "cpu")]
            "cpu" => Ok(BackendKind::Cpu),
            #[cfg(feature = "cuda")]
            "cuda" => Ok(BackendKind::Cuda),
            AUTO_BACKEND => BackendKind::best().ok_or_else(not_compiled),
            _ => Err(not_compiled()),
        }
    }
}

impl AsRef<str> for BackendKind {
    fn as_ref(&self) -> &str {
        self.name()
    }
}

impl std::fmt::Display for BackendKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The facade's [`Opener`]: starts the backend that [`Config::backend`] names (`auto`: the
/// [best](BackendKind::best) one) with `config`. Installed on every builder that
/// [`DeviceExt::builder`] hands out.
///
/// # Errors
/// [`Error::Config`] for a backend name not compiled in; what the backend says when it cannot
/// start ([`Error::Unavailable`] without a CUDA driver or with no such GPU).
pub fn open(config: Config) -> Result<Device> {
    match BackendKind::parse(config.backend())? {
        #[cfg(feature = "cpu")]
        BackendKind::Cpu => chorus_cpu::device_with(config),
        #[cfg(feature = "cuda")]
        BackendKind::Cuda => chorus_cuda::device_with(config),
    }
}

/// The facade's constructors of core's [`Device`]: `Device::cpu()`, `Device::cuda(i)`,
/// `Device::auto()`, `Device::builder()`. In [`prelude`](crate::prelude).
///
/// Sealed: implemented for [`Device`] only.
///
/// # Examples
/// ```
/// use chorus::{Device, DeviceExt, StreamPolicy};
/// let cpu = Device::cpu()?;
/// let configured = Device::builder()
///     .streams(8)
///     .policy(StreamPolicy::Exclusive)
///     .open()?;
/// assert_eq!(configured.config().streams(), 8);
/// assert_eq!(cpu.id().backend, "cpu");
/// # Ok::<(), chorus::Error>(())
/// ```
pub trait DeviceExt: sealed::Sealed {
    /// The CPU device, with the settings of the `CHORUS_*` environment variables.
    ///
    /// # Errors
    /// [`Error::Config`] naming an invalid environment variable.
    #[cfg(feature = "cpu")]
    fn cpu() -> Result<Device>;

    /// CUDA device `ordinal`, with the settings of the `CHORUS_*` environment variables
    /// (including `CHORUS_CUDA_TF32` and `CHORUS_CUDA_LAZY_BLAS`).
    ///
    /// # Errors
    /// [`Error::Unavailable`] without a CUDA driver or with no such device;
    /// [`Error::Config`] naming an invalid environment variable.
    #[cfg(feature = "cuda")]
    fn cuda(ordinal: u32) -> Result<Device>;

    /// The best device compiled in and present (CUDA device 0 when the `cuda` feature is on
    /// and a GPU is there, else the CPU), with the environment's settings.
    ///
    /// # Errors
    /// As [`DeviceExt::cpu`]; [`Error::Config`] when no backend is compiled in.
    fn auto() -> Result<Device>;

    /// Core's config builder with the facade's [`open`] installed: every runtime setting, the
    /// backend ([`ConfigBuilder::backend`], `auto` by default), the ordinal and the backend
    /// options; [`ConfigBuilder::open`] starts the device. Defaults; the environment is read
    /// only on [`ConfigBuilder::from_env`].
    ///
    /// # Examples
    /// ```
    /// use chorus::{BackendKind, Device, DeviceExt, StreamPolicy};
    /// let device = Device::builder()
    ///     .backend(BackendKind::Cpu)
    ///     .streams(8)
    ///     .policy(StreamPolicy::Exclusive)
    ///     .open()?;
    /// assert_eq!(device.config().streams(), 8);
    /// # Ok::<(), chorus::Error>(())
    /// ```
    fn builder() -> ConfigBuilder;
}

impl DeviceExt for Device {
    #[cfg(feature = "cpu")]
    fn cpu() -> Result<Device> {
        Device::builder()
            .from_env()?
            .backend(BackendKind::Cpu)
            .open()
    }

    #[cfg(feature = "cuda")]
    fn cuda(ordinal: u32) -> Result<Device> {
        Device::builder()
            .from_env()?
            .backend(BackendKind::Cuda)
            .ordinal(ordinal)
            .open()
    }

    fn auto() -> Result<Device> {
        Device::builder().from_env()?.open()
    }

    fn builder() -> ConfigBuilder {
        Config::builder().opener(open as Opener)
    }
}

mod sealed {
    /// Keeps [`DeviceExt`](super::DeviceExt) implemented for core's `Device` only, so that
    /// constructors can be added to it.
    pub trait Sealed {}
    impl Sealed for chorus_core::Device {}
}
