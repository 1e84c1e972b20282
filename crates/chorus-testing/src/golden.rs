//! The PyTorch golden files: `public.json` (the cases) and `public.safetensors` (their
//! tensors), in `../shared/golden/` beside the workspace or in `CHORUS_GOLDEN_DIR`.
//!
//! A parity suite that passes without its references proves nothing: a missing or unreadable
//! file fails the test, naming it, unless `CHORUS_GOLDEN_OPTIONAL=1` (then a `SKIPPED` line).

use chorus::nn::Weights;
use chorus::{Device, Tensor};
use std::path::PathBuf;

/// The golden files.
const FILES: [&str; 2] = ["public.json", "public.safetensors"];

/// The golden folder: `CHORUS_GOLDEN_DIR` (test binaries copied to another machine, such as
/// the GPU machine), else `../shared/golden/` beside the workspace. Not checked.
pub fn golden_dir() -> PathBuf {
    std::env::var_os("CHORUS_GOLDEN_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/golden"),
        PathBuf::from,
    )
}

/// Whether `CHORUS_GOLDEN_OPTIONAL=1`.
fn optional() -> bool {
    std::env::var("CHORUS_GOLDEN_OPTIONAL").as_deref() == Ok("1")
}

/// The first golden file that cannot be read, as a message naming it.
fn unreadable(dir: &std::path::Path) -> Option<String> {
    FILES.iter().find_map(|f| {
        let path = dir.join(f);
        std::fs::File::open(&path)
            .err()
            .map(|e| format!("golden file {} cannot be read: {e}", path.display()))
    })
}

/// Says that the golden files are missing: `None` with a `SKIPPED` line under
/// `CHORUS_GOLDEN_OPTIONAL=1`, else a panic naming the file.
fn missing<T>(e: &str) -> Option<T> {
    if optional() {
        println!("SKIPPED: {e} (CHORUS_GOLDEN_OPTIONAL=1)");
        return None;
    }
    panic!(
        "{e} (set CHORUS_GOLDEN_DIR to the golden folder, or CHORUS_GOLDEN_OPTIONAL=1 to skip \
         the parity tests)"
    )
}

/// The golden folder once both files are readable. `None` only with
/// `CHORUS_GOLDEN_OPTIONAL=1` (and a `SKIPPED` line).
///
/// # Panics
/// When a file cannot be read and the golden files are not optional.
pub fn golden_files() -> Option<PathBuf> {
    let dir = golden_dir();
    match unreadable(&dir) {
        None => Some(dir),
        Some(e) => missing(&e),
    }
}

/// The golden cases and their tensors, loaded onto one device.
#[derive(Debug)]
pub struct Golden {
    /// All tensors of `public.safetensors`.
    pub weights: Weights,
    /// The `cases` list of `public.json`.
    pub cases: Vec<serde_json::Value>,
}

impl Golden {
    /// Loads `public.json` and `public.safetensors` onto `device`. `None` only with
    /// `CHORUS_GOLDEN_OPTIONAL=1` (and a `SKIPPED` line).
    ///
    /// # Panics
    /// When a file cannot be read and the golden files are not optional.
    pub fn load(device: &Device) -> Option<Golden> {
        match Golden::read(device) {
            Ok(g) => Some(g),
            Err(e) => missing(&e),
        }
    }

    /// Like [`Golden::load`], but an unreadable folder is an `Err` naming the file: for tests
    /// that use the golden tensors as inputs when they are there and random ones otherwise.
    ///
    /// # Errors
    /// A golden file that cannot be read.
    ///
    /// # Panics
    /// When the files are there but do not parse.
    pub fn read(device: &Device) -> Result<Golden, String> {
        let dir = golden_dir();
        if let Some(e) = unreadable(&dir) {
            return Err(e);
        }
        let json_path = dir.join("public.json");
        let json = std::fs::read_to_string(&json_path)
            .map_err(|e| format!("golden file {} cannot be read: {e}", json_path.display()))?;
        let doc: serde_json::Value = serde_json::from_str(&json).expect("public.json parses");
        let cases = doc["cases"].as_array().expect("cases is a list").clone();
        let weights = Weights::from_file(device, dir.join("public.safetensors"))
            .expect("public.safetensors loads");
        Ok(Golden { weights, cases })
    }

    /// The case named `name`.
    ///
    /// # Panics
    /// Without such a case.
    pub fn case(&self, name: &str) -> &serde_json::Value {
        self.cases
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no golden case {name}"))
    }

    /// The case's `i`-th input tensor.
    ///
    /// # Panics
    /// Without such a case or input.
    pub fn input(&self, name: &str, i: usize) -> Tensor {
        let key = self.case(name)["inputs"][i].as_str().expect("input key");
        self.weights.get_any(key).expect("input tensor")
    }

    /// The case's `i`-th output tensor.
    ///
    /// # Panics
    /// Without such a case or output.
    pub fn output(&self, name: &str, i: usize) -> Tensor {
        let key = self.case(name)["outputs"][i].as_str().expect("output key");
        self.weights.get_any(key).expect("output tensor")
    }

    /// The case's `(rtol, atol)`.
    ///
    /// # Panics
    /// Without such a case or its tolerances.
    pub fn tolerance(&self, name: &str) -> (f32, f32) {
        let c = self.case(name);
        (
            c["rtol"].as_f64().expect("rtol") as f32,
            c["atol"].as_f64().expect("atol") as f32,
        )
    }
}
