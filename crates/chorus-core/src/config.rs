//! Device settings: a builder, and the same settings from environment variables.
//!
//! | variable | values | default |
//! |---|---|---|
//! | `CHORUS_STREAMS` | total streams, 2..=1024 (stream 0 is the default stream) | 32 |
//! | `CHORUS_STREAM_POLICY` | `shared` (round robin) or `exclusive` (one thread per stream) | `shared` |
//! | `CHORUS_STREAM_WAIT_MS` | exclusive pool exhausted: `0` = fail at once, `N` = wait N ms, `forever` | `0` |
//! | `CHORUS_MEMORY_LIMIT` | bytes, with an optional `K`, `M`, `G` (powers of 1024) suffix, or `none` | `none` |
//! | `CHORUS_THREAD_CACHE` | bytes of small blocks each thread may cache per device (`0` = off) | `8M` |
//! | `CHORUS_CUDA_TF32` | `1`/`true` or `0`/`false`: f32 GEMMs may use TF32 (CUDA; others ignore the value, but an invalid one is an error on every backend) | `0` |
//! | `CHORUS_CUDA_LAZY_BLAS` | `1`/`true` or `0`/`false`: cuBLAS handles made on first use (CUDA; others ignore the value, but an invalid one is an error on every backend) | `0` |
//!
//! An invalid value is an [`Error::Config`] naming the variable and the value.
//!
//! # Which backend
//! A `Config` also names the backend a device runs on ([`Config::backend`], `auto` by default)
//! and the device's ordinal. This crate knows no backend (dependencies point one way: core ←
//! backends ← facade), so it cannot open one itself: [`ConfigBuilder::open`] calls an
//! [`Opener`], a function that the facade crate `chorus` installs when it hands out a builder
//! (`chorus::Device::builder()`) and that maps the name onto a backend compiled into the build.
//! A builder from [`Config::builder`] has no opener; it builds a `Config` for a backend
//! crate's own constructor (`chorus_cpu::device_with`, `chorus_cuda::device_with`).

use crate::device::Device;
use crate::error::{Error, Result};
use std::time::Duration;

/// Opens a device from a [`Config`]: maps [`Config::backend`] onto a backend and starts it.
/// The facade crate `chorus` installs its opener on the builders it hands out
/// ([`ConfigBuilder::opener`]); [`ConfigBuilder::open`] calls it.
pub type Opener = fn(Config) -> Result<Device>;

/// The backend name that picks the best backend compiled in and present.
pub const AUTO_BACKEND: &str = "auto";

/// How threads are bound to pooled streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamPolicy {
    /// Streams 1..n are handed out round robin; several threads may share one (CUDA-style).
    Shared,
    /// Each thread takes a stream of its own from a lock-free free list and gives it back when
    /// it exits, after the stream's work is complete.
    Exclusive,
}

/// What an exclusive pool does when every pooled stream is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exhaustion {
    /// Fail at once with `Error::StreamsExhausted`.
    Error,
    /// Wait up to this long for a thread to give a stream back, then fail.
    Wait(Duration),
    /// Wait until a stream is given back.
    WaitForever,
}

/// Settings of one device. Build with [`Config::builder`] or read with [`Config::from_env`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub(crate) streams: usize,
    pub(crate) policy: StreamPolicy,
    pub(crate) exhaustion: Exhaustion,
    pub(crate) memory_limit: Option<usize>,
    pub(crate) thread_cache_bytes: usize,
    pub(crate) shutdown_timeout: Duration,
    pub(crate) backend: String,
    pub(crate) ordinal: u32,
    pub(crate) allow_tf32: bool,
    pub(crate) lazy_blas: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            streams: 32,
            policy: StreamPolicy::Shared,
            exhaustion: Exhaustion::Error,
            memory_limit: None,
            thread_cache_bytes: 8 << 20,
            shutdown_timeout: Duration::from_secs(30),
            backend: AUTO_BACKEND.to_string(),
            ordinal: 0,
            allow_tf32: false,
            lazy_blas: false,
        }
    }
}

impl Config {
    /// A builder starting from the defaults (environment variables are not read).
    ///
    /// # Examples
    /// ```
    /// use chorus_core::{Config, StreamPolicy};
    /// let cfg = Config::builder().streams(8).policy(StreamPolicy::Exclusive).build().unwrap();
    /// assert_eq!(cfg.streams(), 8);
    /// ```
    pub fn builder() -> ConfigBuilder {
        ConfigBuilder {
            cfg: Config::default(),
            opener: None,
        }
    }

    /// The defaults overridden by the `CHORUS_*` environment variables (module docs).
    ///
    /// # Errors
    /// [`Error::Config`] naming the first invalid variable.
    pub fn from_env() -> Result<Config> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// Like [`Config::from_env`] with a custom variable lookup.
    ///
    /// # Errors
    /// [`Error::Config`] naming the first invalid variable.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Config> {
        Config::builder().lookup(get)?.build()
    }

    /// Total number of streams (stream 0 is the default stream).
    pub fn streams(&self) -> usize {
        self.streams
    }
    /// Binding policy.
    pub fn policy(&self) -> StreamPolicy {
        self.policy
    }
    /// Exhaustion policy of the exclusive pool.
    pub fn exhaustion(&self) -> Exhaustion {
        self.exhaustion
    }
    /// Memory limit in bytes, if any.
    pub fn memory_limit(&self) -> Option<usize> {
        self.memory_limit
    }
    /// Bytes of small blocks each thread may cache per device (and each stream may keep of its
    /// blocks freed on other threads).
    pub fn thread_cache_bytes(&self) -> usize {
        self.thread_cache_bytes
    }
    /// How long shutdown waits for in-flight work before reporting it and going on.
    pub fn shutdown_timeout(&self) -> Duration {
        self.shutdown_timeout
    }
    /// The backend to open, by name: [`AUTO_BACKEND`] (`auto`, the default) or a backend's
    /// lowercase name (`cpu`, `cuda`). Which names are valid depends on the backends compiled
    /// into the build; the [`Opener`] checks it.
    pub fn backend(&self) -> &str {
        &self.backend
    }
    /// The device ordinal, for backends with several devices (CUDA); default 0. Backends with
    /// one device (the CPU) ignore it.
    pub fn ordinal(&self) -> u32 {
        self.ordinal
    }
    /// Whether f32 GEMMs may use TF32 tensor cores (faster, about 10 mantissa bits in the
    /// products). Off by default, as in PyTorch. Read by the CUDA backend; backends without
    /// TF32 ignore it.
    pub fn allow_tf32(&self) -> bool {
        self.allow_tf32
    }
    /// Whether a stream's cuBLAS handle (and its 8 MiB workspace) is created on the stream's
    /// first GEMM instead of when the device starts. Off by default: a handle's creation takes
    /// milliseconds and synchronizes the device (up to ~0.16 s for the last of 64 streams whose
    /// first GEMMs come at once, measured on the H100), which belongs to start-up, not to the
    /// first requests. On saves `streams × 8 MiB` of device memory for streams that never
    /// multiply. Read by the CUDA backend; other backends ignore it.
    pub fn lazy_blas(&self) -> bool {
        self.lazy_blas
    }
}

const STREAMS: &str = "expected a number of streams from 2 to 1024";
const STREAM_RANGE: std::ops::RangeInclusive<usize> = 2..=1024;
const BYTES: &str = "expected bytes, optionally with K, M or G (powers of 1024), or `none`";

fn bad(key: &'static str, value: &str, reason: &'static str) -> Error {
    Error::Config {
        key,
        value: value.to_string(),
        reason,
    }
}

/// The value `v` of the boolean variable `key` (`1`/`true`/`yes`/`on` or
/// `0`/`false`/`no`/`off`/empty).
fn flag(key: &'static str, v: &str) -> Result<bool> {
    match v.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" | "" => Ok(false),
        _ => Err(bad(key, v, "expected 1/true or 0/false")),
    }
}

/// Parses `123`, `64K`, `512M`, `2G`, `2GiB`, `2gb` (all powers of 1024).
pub(crate) fn parse_bytes(s: &str) -> Option<usize> {
    let t = s.trim().to_ascii_lowercase();
    let t = t.trim_end_matches("ib").trim_end_matches('b');
    let (num, mul) = match t.chars().last()? {
        'k' => (&t[..t.len() - 1], 1usize << 10),
        'm' => (&t[..t.len() - 1], 1 << 20),
        'g' => (&t[..t.len() - 1], 1 << 30),
        _ => (t, 1),
    };
    num.trim().parse::<usize>().ok()?.checked_mul(mul)
}

/// Builder of [`Config`], and of a device when it has an [`Opener`] ([`ConfigBuilder::open`]).
///
/// # Examples
/// ```
/// use chorus_core::{Config, StreamPolicy};
/// let device = Config::builder()
///     .streams(8)
///     .policy(StreamPolicy::Exclusive)
///     .opener(chorus_cpu::device_with)
///     .open()?;
/// assert_eq!(device.config().streams(), 8);
/// # Ok::<(), chorus_core::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct ConfigBuilder {
    cfg: Config,
    /// Set by the facade (or whoever hands the builder out); `None` from [`Config::builder`].
    opener: Option<Opener>,
}

impl ConfigBuilder {
    /// Applies the `CHORUS_*` environment variables that are set (module docs) over this
    /// builder's settings; the others keep their values.
    ///
    /// # Errors
    /// [`Error::Config`] naming the first invalid variable.
    pub fn from_env(self) -> Result<Self> {
        self.lookup(|k| std::env::var(k).ok())
    }

    /// Like [`ConfigBuilder::from_env`] with a custom variable lookup.
    ///
    /// # Errors
    /// [`Error::Config`] naming the first invalid variable.
    pub fn lookup(self, get: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let mut b = self;
        if let Some(v) = get("CHORUS_STREAMS") {
            let n = v
                .trim()
                .parse::<usize>()
                .ok()
                .filter(|n| STREAM_RANGE.contains(n))
                .ok_or_else(|| bad("CHORUS_STREAMS", &v, STREAMS))?;
            b = b.streams(n);
        }
        if let Some(v) = get("CHORUS_STREAM_POLICY") {
            b = b.policy(match v.trim().to_ascii_lowercase().as_str() {
                "shared" => StreamPolicy::Shared,
                "exclusive" => StreamPolicy::Exclusive,
                _ => {
                    return Err(bad(
                        "CHORUS_STREAM_POLICY",
                        &v,
                        "expected `shared` or `exclusive`",
                    ))
                }
            });
        }
        if let Some(v) = get("CHORUS_STREAM_WAIT_MS") {
            let t = v.trim().to_ascii_lowercase();
            b = b.exhaustion(match t.as_str() {
                "forever" => Exhaustion::WaitForever,
                "0" | "error" => Exhaustion::Error,
                _ => Exhaustion::Wait(Duration::from_millis(t.parse::<u64>().map_err(|_| {
                    bad(
                        "CHORUS_STREAM_WAIT_MS",
                        &v,
                        "expected milliseconds, `0` or `forever`",
                    )
                })?)),
            });
        }
        if let Some(v) = get("CHORUS_MEMORY_LIMIT") {
            let limit = if v.trim().eq_ignore_ascii_case("none") {
                None
            } else {
                Some(parse_bytes(&v).ok_or_else(|| bad("CHORUS_MEMORY_LIMIT", &v, BYTES))?)
            };
            b = b.memory_limit(limit);
        }
        if let Some(v) = get("CHORUS_THREAD_CACHE") {
            b = b.thread_cache_bytes(
                parse_bytes(&v).ok_or_else(|| bad("CHORUS_THREAD_CACHE", &v, BYTES))?,
            );
        }
        if let Some(v) = get("CHORUS_CUDA_TF32") {
            b = b.allow_tf32(flag("CHORUS_CUDA_TF32", &v)?);
        }
        if let Some(v) = get("CHORUS_CUDA_LAZY_BLAS") {
            b = b.lazy_blas(flag("CHORUS_CUDA_LAZY_BLAS", &v)?);
        }
        Ok(b)
    }

    /// Takes every setting of `config` (the opener stays).
    pub fn config(mut self, config: Config) -> Self {
        self.cfg = config;
        self
    }
    /// The backend to open, by name: `auto` (the default) or a backend's name (`cpu`,
    /// `cuda`); the facade's `BackendKind` is one too. See [`Config::backend`].
    pub fn backend(mut self, name: impl AsRef<str>) -> Self {
        self.cfg.backend = name.as_ref().trim().to_ascii_lowercase();
        self
    }
    /// Device ordinal for backends with several devices (CUDA); default 0.
    pub fn ordinal(mut self, ordinal: u32) -> Self {
        self.cfg.ordinal = ordinal;
        self
    }
    /// Let f32 GEMMs use TF32 tensor cores (CUDA; off by default, as in PyTorch). See
    /// [`Config::allow_tf32`].
    pub fn allow_tf32(mut self, allow: bool) -> Self {
        self.cfg.allow_tf32 = allow;
        self
    }
    /// Create each stream's cuBLAS handle on its first GEMM rather than with the device (CUDA;
    /// off by default). See [`Config::lazy_blas`].
    pub fn lazy_blas(mut self, lazy: bool) -> Self {
        self.cfg.lazy_blas = lazy;
        self
    }
    /// Installs the function [`ConfigBuilder::open`] starts the device with (the facade's
    /// `Device::builder()` installs its own; a backend crate's `device_with` is one too).
    pub fn opener(mut self, opener: Opener) -> Self {
        self.opener = Some(opener);
        self
    }
    /// Total number of streams, 2..=1024 (stream 0 is the default stream).
    pub fn streams(mut self, n: usize) -> Self {
        self.cfg.streams = n;
        self
    }
    /// Binding policy.
    pub fn policy(mut self, p: StreamPolicy) -> Self {
        self.cfg.policy = p;
        self
    }
    /// Exhaustion policy of the exclusive pool.
    pub fn exhaustion(mut self, e: Exhaustion) -> Self {
        self.cfg.exhaustion = e;
        self
    }
    /// Memory limit in bytes (`None`: only the device's own size limits).
    pub fn memory_limit(mut self, limit: Option<usize>) -> Self {
        self.cfg.memory_limit = limit;
        self
    }
    /// Bytes of small blocks (1 MiB or less) each thread may cache per device (0 turns the
    /// caches off; default 8 MiB, which holds a small transformer's whole forward: with 1 MiB its
    /// allocations went to the shared pool's lock, and at 64 threads on the H100 it ran at half
    /// its 16-thread throughput). The same bound applies to each stream's *returns*: the small
    /// blocks of that stream freed on a thread that could not cache them (a tensor made on one
    /// thread and dropped on another), kept for the stream's next allocations. Memory running
    /// out, and `Device::empty_cache`, empty every thread's cache and every stream's returns.
    pub fn thread_cache_bytes(mut self, bytes: usize) -> Self {
        self.cfg.thread_cache_bytes = bytes;
        self
    }
    /// How long shutdown waits for in-flight work.
    pub fn shutdown_timeout(mut self, t: Duration) -> Self {
        self.cfg.shutdown_timeout = t;
        self
    }

    /// Checks and returns the configuration.
    ///
    /// # Errors
    /// [`Error::Config`] when the number of streams is out of range.
    pub fn build(self) -> Result<Config> {
        if !STREAM_RANGE.contains(&self.cfg.streams) {
            return Err(bad("streams", &self.cfg.streams.to_string(), STREAMS));
        }
        Ok(self.cfg)
    }

    /// Checks the configuration and starts the device it names, through the builder's
    /// [`Opener`].
    ///
    /// # Errors
    /// [`Error::Config`] for invalid settings, a backend name the opener does not know, or a
    /// builder without an opener (one from [`Config::builder`]: the facade's
    /// `chorus::Device::builder()` has one); what the backend says when it cannot start
    /// ([`Error::Unavailable`]).
    pub fn open(self) -> Result<Device> {
        let opener = self.opener;
        let config = self.build()?;
        match opener {
            Some(open) => open(config),
            None => Err(Error::Config {
                key: "backend",
                value: config.backend,
                reason: "this builder has no opener: take it from the facade's \
                         `chorus::Device::builder()`, or set one with `ConfigBuilder::opener`",
            }),
        }
    }
}

#[cfg(all(test, not(chorus_loom)))]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Result<Config> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(move |k| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()))
    }

    #[test]
    fn defaults() {
        let c = env(&[]).unwrap();
        assert_eq!(c, Config::default());
        assert_eq!((c.streams(), c.policy()), (32, StreamPolicy::Shared));
    }

    #[test]
    fn every_variable() {
        let c = env(&[
            ("CHORUS_STREAMS", "8"),
            ("CHORUS_STREAM_POLICY", "Exclusive"),
            ("CHORUS_STREAM_WAIT_MS", "250"),
            ("CHORUS_MEMORY_LIMIT", "64M"),
            ("CHORUS_THREAD_CACHE", "0"),
            ("CHORUS_CUDA_TF32", "1"),
            ("CHORUS_CUDA_LAZY_BLAS", "true"),
        ])
        .unwrap();
        assert!(c.allow_tf32() && c.lazy_blas());
        assert_eq!(c.streams(), 8);
        assert_eq!(c.policy(), StreamPolicy::Exclusive);
        assert_eq!(c.exhaustion(), Exhaustion::Wait(Duration::from_millis(250)));
        assert_eq!(c.memory_limit(), Some(64 << 20));
        assert_eq!(c.thread_cache_bytes(), 0);
        assert_eq!(
            env(&[("CHORUS_STREAM_WAIT_MS", "forever")])
                .unwrap()
                .exhaustion(),
            Exhaustion::WaitForever
        );
        assert_eq!(
            env(&[("CHORUS_MEMORY_LIMIT", "2GiB")])
                .unwrap()
                .memory_limit(),
            Some(2 << 30)
        );
    }

    #[test]
    fn invalid_values_name_the_variable() {
        for (k, v) in [
            ("CHORUS_STREAMS", "many"),
            ("CHORUS_STREAMS", "1"),
            ("CHORUS_STREAM_POLICY", "lifo"),
            ("CHORUS_STREAM_WAIT_MS", "-3"),
            ("CHORUS_MEMORY_LIMIT", "12X"),
            ("CHORUS_CUDA_TF32", "maybe"),
            ("CHORUS_CUDA_LAZY_BLAS", "2"),
        ] {
            match env(&[(k, v)]) {
                Err(Error::Config { key, value, .. }) => assert_eq!((key, value.as_str()), (k, v)),
                other => panic!("{k}={v}: {other:?}"),
            }
        }
    }

    #[test]
    fn builder_sets_the_backend_and_its_options() {
        let c = Config::builder()
            .backend(" CUDA ")
            .ordinal(1)
            .allow_tf32(true)
            .lazy_blas(true)
            .build()
            .unwrap();
        assert_eq!((c.backend(), c.ordinal()), ("cuda", 1));
        assert!(c.allow_tf32() && c.lazy_blas());
        assert_eq!(Config::default().backend(), AUTO_BACKEND);
        // The environment applies over the builder's settings, leaving the others alone.
        let b = Config::builder().streams(6).backend("cpu");
        let c = b.lookup(|k| (k == "CHORUS_CUDA_TF32").then(|| "on".to_string()));
        let c = c.unwrap().build().unwrap();
        assert_eq!((c.streams(), c.backend(), c.allow_tf32()), (6, "cpu", true));
    }

    #[test]
    fn open_without_an_opener_is_a_config_error() {
        match Config::builder().backend("cpu").open() {
            Err(Error::Config { key, value, .. }) => {
                assert_eq!((key, value.as_str()), ("backend", "cpu"))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn boolean_variables_parse_or_name_the_variable() {
        for (v, want) in [
            ("1", true),
            (" TRUE ", true),
            ("on", true),
            ("0", false),
            ("", false),
        ] {
            assert_eq!(flag("CHORUS_CUDA_LAZY_BLAS", v).unwrap(), want, "{v:?}");
        }
        match flag("CHORUS_CUDA_LAZY_BLAS", "banana") {
            Err(Error::Config { key, value, .. }) => {
                assert_eq!((key, value.as_str()), ("CHORUS_CUDA_LAZY_BLAS", "banana"));
            }
            other => panic!("{other:?}"),
        }
    }
}
