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
}

impl BackendKind {
    /// Every compiled-in backend.
    pub fn available() -> &'static [BackendKind] {
        &[
            #[cfg(feature = "cpu")]
            BackendKind::Cpu,
        ]
    }

    /// Parses a backend name (`cpu`; `auto` picks the best available).
    ///
    /// # Errors
    /// [`Error::Config`] for a name that is not compiled in.
    pub fn parse(name: &str) -> Result<BackendKind> {
        match name.to_ascii_lowercase().as_str() {
            #[cfg(feature = "cpu")]
            "cpu" | "auto" => Ok(BackendKind::Cpu),
            _ => Err(Error::Config {
                key: "device",
                value: name.to_string(),
                reason: "not a backend compiled into this build",
            }),
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

    /// The best device compiled in and present (CUDA once that backend is compiled in, else
    /// the CPU), with the environment's settings.
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
            kind: BackendKind::available().first().copied(),
            config: Config::builder(),
        }
    }

    /// The device with an explicit backend and configuration.
    ///
    /// # Errors
    /// The backend could not start.
    #[cfg_attr(
        not(feature = "cpu"),
        expect(
            unused_variables,
            reason = "with no backend compiled in, `kind` has no value"
        )
    )]
    pub fn new(kind: BackendKind, config: Config) -> Result<Device> {
        match kind {
            #[cfg(feature = "cpu")]
            BackendKind::Cpu => Ok(Device(chorus_cpu::device_with(config)?)),
        }
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
}

impl DeviceBuilder {
    /// Starts from the `CHORUS_*` environment variables instead of the defaults.
    ///
    /// # Errors
    /// [`Error::Config`] naming an invalid variable.
    pub fn from_env(self) -> Result<Self> {
        let c = Config::from_env()?;
        Ok(self.config(c))
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
        let config = self.config.build()?;
        let kind = self.kind.ok_or(Error::Config {
            key: "backend",
            value: String::new(),
            reason: "no backend compiled in",
        })?;
        Device::new(kind, config)
    }
}
