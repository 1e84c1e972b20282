//! On-disk cache of compiled kernel programs, so that a new process skips NVRTC (about 2.5 s
//! on the H100 machine for the kernels of `kernels/*.cu`, `module::SOURCE`).
//!
//! A cubin is stored as `kernels-<key>.cubin` in `CHORUS_CACHE_DIR`, else
//! `$XDG_CACHE_HOME/chorus`, else `~/.cache/chorus`; the key hashes the kernel source, the
//! target architecture and the NVRTC version, so any change compiles afresh. The file holds a
//! hash of its own contents first: a truncated or corrupted file is ignored (and rewritten).
//! Writes go to a temporary file renamed into place, so concurrent processes never read half
//! a file. `CHORUS_CUDA_KERNEL_CACHE=0` turns the cache off. Every failure of the cache is
//! silent: the program is then compiled, as without a cache.

use std::path::PathBuf;

/// FNV-1a, 64 bits.
fn fnv(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &b in *part {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn dir() -> Option<PathBuf> {
    if std::env::var("CHORUS_CUDA_KERNEL_CACHE").is_ok_and(|v| v.trim() == "0") {
        return None;
    }
    if let Some(d) = std::env::var_os("CHORUS_CACHE_DIR") {
        return Some(PathBuf::from(d));
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return Some(PathBuf::from(d).join("chorus"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache").join("chorus"))
}

fn path(source: &str, arch: &str, nvrtc: (i32, i32)) -> Option<PathBuf> {
    let version = format!("{}.{}", nvrtc.0, nvrtc.1);
    let key = fnv(&[source.as_bytes(), arch.as_bytes(), version.as_bytes()]);
    Some(dir()?.join(format!("kernels-{key:016x}.cubin")))
}

/// The cached cubin for this source, architecture and NVRTC version, if a valid one is there.
pub(crate) fn load(source: &str, arch: &str, nvrtc: (i32, i32)) -> Option<Vec<u8>> {
    let bytes = std::fs::read(path(source, arch, nvrtc)?).ok()?;
    let (head, body) = bytes.split_at_checked(8)?;
    let stored = u64::from_le_bytes(head.try_into().ok()?);
    (stored == fnv(&[body]) && !body.is_empty()).then(|| body.to_vec())
}

/// Stores `cubin` (best effort).
pub(crate) fn store(source: &str, arch: &str, nvrtc: (i32, i32), cubin: &[u8]) {
    let Some(path) = path(source, arch, nvrtc) else {
        return;
    };
    let Some(parent) = path.parent() else { return };
    if std::fs::create_dir_all(parent).is_err() {
        return;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut data = fnv(&[cubin]).to_le_bytes().to_vec();
    data.extend_from_slice(cubin);
    if std::fs::write(&tmp, &data).is_ok() && std::fs::rename(&tmp, &path).is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_corruption() {
        let dir = std::env::temp_dir().join(format!("chorus-kc-{}", std::process::id()));
        // No other test of this binary reads the cache variables.
        std::env::set_var("CHORUS_CACHE_DIR", &dir);
        assert_eq!(load("src", "sm_90", (13, 0)), None);
        store("src", "sm_90", (13, 0), b"cubin bytes");
        assert_eq!(
            load("src", "sm_90", (13, 0)).as_deref(),
            Some(&b"cubin bytes"[..])
        );
        // Another source, architecture or compiler misses.
        assert_eq!(load("src2", "sm_90", (13, 0)), None);
        assert_eq!(load("src", "sm_80", (13, 0)), None);
        assert_eq!(load("src", "sm_90", (13, 1)), None);
        // A corrupted file is ignored.
        let p = path("src", "sm_90", (13, 0)).unwrap();
        let mut bytes = std::fs::read(&p).unwrap();
        *bytes.last_mut().unwrap() ^= 1;
        std::fs::write(&p, bytes).unwrap();
        assert_eq!(load("src", "sm_90", (13, 0)), None);
        std::env::remove_var("CHORUS_CACHE_DIR");
        let _ = std::fs::remove_dir_all(dir);
    }
}
