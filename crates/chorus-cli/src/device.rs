//! The `--device` option shared by the subcommands, and building the device it names.

use anyhow::Context as _;
use chorus::{BackendKind, ConfigBuilder, Device, DeviceExt};

/// A `--device` value: the name given and the backend it selects.
#[derive(Debug, Clone)]
pub(crate) struct DeviceChoice {
    /// The name as given on the command line, lowercased (`cpu`, `auto`, ...).
    pub(crate) name: String,
    /// The backend it selects.
    pub(crate) kind: BackendKind,
}

/// clap value parser of `--device`: a compiled-in backend or `auto`.
pub(crate) fn parse(name: &str) -> Result<DeviceChoice, String> {
    match BackendKind::parse(name) {
        Ok(kind) => Ok(DeviceChoice {
            name: name.trim().to_ascii_lowercase(),
            kind,
        }),
        Err(_) => Err(format!(
            "unknown device `{name}`; this build knows: {}, auto",
            backend_names().join(", ")
        )),
    }
}

/// The lowercase name of a backend (`cpu`).
pub(crate) fn backend_name(kind: BackendKind) -> String {
    kind.name().to_string()
}

/// The names of the compiled-in backends.
pub(crate) fn backend_names() -> Vec<String> {
    BackendKind::available()
        .iter()
        .map(|&k| backend_name(k))
        .collect()
}

/// Starts the chosen device with the settings of the `CHORUS_*` environment variables.
///
/// # Errors
/// An invalid `CHORUS_*` variable (the message names it) or a backend that cannot start.
pub(crate) fn build(choice: &DeviceChoice) -> anyhow::Result<Device> {
    start(choice, |b| b)
}

/// As [`build`], with at least `streams` streams unless `CHORUS_STREAMS` says otherwise (so
/// that every thread of a benchmark gets its own stream).
///
/// # Errors
/// As [`build`].
pub(crate) fn build_with_streams(choice: &DeviceChoice, streams: usize) -> anyhow::Result<Device> {
    start(choice, |b| {
        if std::env::var_os("CHORUS_STREAMS").is_none() {
            b.streams(streams)
        } else {
            b
        }
    })
}

/// The environment's builder, adjusted by `adjust`, started on the chosen backend.
fn start(
    choice: &DeviceChoice,
    adjust: impl FnOnce(ConfigBuilder) -> ConfigBuilder,
) -> anyhow::Result<Device> {
    let builder = Device::builder()
        .from_env()
        .context("reading the CHORUS_* environment variables")?;
    adjust(builder)
        .backend(choice.kind)
        .open()
        .with_context(|| format!("starting device `{}`", choice.name))
}

/// Whether `kind` is a GPU backend.
pub(crate) fn is_gpu(kind: BackendKind) -> bool {
    kind.name() != "cpu"
}
