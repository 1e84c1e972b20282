//! Human-readable formatting of the settings shown by the subcommands.

use chorus::{Exhaustion, StreamPolicy};

/// `1536` → `1.5 KiB`, `512` → `512 B` (powers of 1024, like the `CHORUS_*` variables).
pub(crate) fn bytes(n: usize) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    // Precision loss above 2^53 bytes does not matter for one decimal.
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// `bytes(n)` followed by the exact count, e.g. `1.0 MiB (1048576 bytes)`.
pub(crate) fn bytes_exact(n: usize) -> String {
    if n < 1024 {
        bytes(n)
    } else {
        format!("{} ({n} bytes)", bytes(n))
    }
}

/// The name `CHORUS_STREAM_POLICY` uses for `p`.
pub(crate) fn policy(p: StreamPolicy) -> &'static str {
    match p {
        StreamPolicy::Shared => "shared",
        StreamPolicy::Exclusive => "exclusive",
    }
}

/// What the exclusive pool does when exhausted, in words.
pub(crate) fn exhaustion(e: Exhaustion) -> String {
    match e {
        Exhaustion::Error => "error at once".to_string(),
        Exhaustion::Wait(d) => format!("wait up to {} ms", d.as_millis()),
        Exhaustion::WaitForever => "wait forever".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_sizes() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(1 << 20), "1.0 MiB");
        assert_eq!(bytes_exact(3 << 30), "3.0 GiB (3221225472 bytes)");
    }
}
