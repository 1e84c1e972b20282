//! Device settings: a builder, and the same settings from environment variables.
//!
//! | variable | values | default |
//! |---|---|---|
//! | `CHORUS_STREAMS` | total streams, 2..=1024 (stream 0 is the default stream) | 32 |
//! | `CHORUS_STREAM_POLICY` | `shared` (round robin) or `exclusive` (one thread per stream) | `shared` |
//! | `CHORUS_STREAM_WAIT_MS` | exclusive pool exhausted: `0` = fail at once, `N` = wait N ms, `forever` | `0` |
//! | `CHORUS_MEMORY_LIMIT` | bytes, with an optional `K`, `M`, `G` (powers of 1024) suffix, or `none` | `none` |
//! | `CHORUS_THREAD_CACHE` | bytes of small blocks each thread may cache per device (`0` = off) | `8M` |
//!
//! An invalid value is an [`Error::Config`] naming the variable and the value.

use crate::error::{Error, Result};
use std::time::Duration;

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
        let mut b = Config::builder();
        if let Some(v) = get("CHORUS_STREAMS") {
            let n = v
                .trim()
                .parse::<usize>()
                .map_err(|_| bad("CHORUS_STREAMS", &v, STREAMS))?;
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
        b.build_named(true)
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
}

const STREAMS: &str = "expected a number of streams from 2 to 1024";
const BYTES: &str = "expected bytes, optionally with K, M or G (powers of 1024), or `none`";

fn bad(key: &'static str, value: &str, reason: &'static str) -> Error {
    Error::Config {
        key,
        value: value.to_string(),
        reason,
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

/// Builder of [`Config`].
#[derive(Debug, Clone)]
pub struct ConfigBuilder {
    cfg: Config,
}

impl ConfigBuilder {
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
        self.build_named(false)
    }

    fn build_named(self, env: bool) -> Result<Config> {
        if !(2..=1024).contains(&self.cfg.streams) {
            let key = if env { "CHORUS_STREAMS" } else { "streams" };
            return Err(bad(key, &self.cfg.streams.to_string(), STREAMS));
        }
        Ok(self.cfg)
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
        ])
        .unwrap();
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
        ] {
            match env(&[(k, v)]) {
                Err(Error::Config { key, value, .. }) => assert_eq!((key, value.as_str()), (k, v)),
                other => panic!("{k}={v}: {other:?}"),
            }
        }
    }
}
