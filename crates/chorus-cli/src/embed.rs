//! `chorus embed`: sentence embeddings of a text file, one sentence per line, with a
//! sentence-transformers model folder (`chorus::text::SentenceEncoder`).
//!
//! # Input and output
//! - Input (`--input FILE`, or `-`/absent for stdin): one sentence per line (`\n`, a trailing
//!   `\r` dropped); an empty line is the empty sentence; a final newline ends the last line
//!   (it does not start one). A line that is not UTF-8 fails the run, naming its number:
//!   nothing is replaced or skipped silently.
//! - Sentences go to the encoder `--batch-size` at a time, in input order (a batch is padded
//!   to its longest sentence), so the same input gives the same bits.
//! - Output (`--output FILE`, or stdout): `--format jsonl` (default), one JSON array of floats
//!   per input line, in order; or `--format npy`, one float32 array `[sentences, dim]` in
//!   NumPy's `.npy` format (version 1.0, little-endian, C order).
//! - stderr: a progress bar when it is a terminal, and the sentences per second.

use crate::device::{self, DeviceChoice};
use anyhow::{bail, Context as _};
use chorus::text::SentenceEncoder;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::{IsTerminal as _, Read as _, Write as _};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Format {
    /// One JSON array per line.
    Jsonl,
    /// One NumPy float32 array.
    Npy,
}

/// Options of `chorus embed`.
#[derive(Debug, clap::Args)]
pub(crate) struct EmbedArgs {
    /// The sentence-transformers folder (config.json, tokenizer.json, model.safetensors, ...).
    #[arg(long, value_name = "DIR")]
    model: PathBuf,
    /// Device to run on: a compiled-in backend (`cpu`, `cuda`) or `auto`.
    #[arg(long, default_value = "cpu", value_parser = device::parse, value_name = "DEVICE")]
    device: DeviceChoice,
    /// Sentences per batch.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..=65_536))]
    batch_size: u64,
    /// The text file, one sentence per line (`-`: stdin).
    #[arg(long, default_value = "-", value_name = "FILE")]
    input: String,
    /// Where the embeddings go (default: stdout).
    #[arg(long, value_name = "FILE")]
    output: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Jsonl)]
    format: Format,
}

/// Runs `chorus embed`.
///
/// # Errors
/// An unreadable input, a line that is not UTF-8 (named by number), a model folder that does
/// not load, an unwritable output, or a device error.
pub(crate) fn run(args: &EmbedArgs) -> anyhow::Result<ExitCode> {
    let mut bytes = Vec::new();
    if args.input == "-" {
        std::io::stdin()
            .read_to_end(&mut bytes)
            .context("reading stdin")?;
    } else {
        bytes = std::fs::read(&args.input).with_context(|| format!("reading {}", args.input))?;
    }
    let sentences = lines(&bytes).with_context(|| format!("input {}", args.input))?;
    let device = device::build(&args.device)?;
    let encoder = SentenceEncoder::from_dir(&device, &args.model)
        .with_context(|| format!("loading the model {}", args.model.display()))?;
    let bar = progress_bar(sentences.len() as u64);
    let start = Instant::now();
    let mut embeddings = Vec::with_capacity(sentences.len());
    let batch = usize::try_from(args.batch_size).context("--batch-size")?;
    for chunk in sentences.chunks(batch) {
        embeddings.extend(encoder.encode(chunk).context("encoding")?);
        bar.inc(chunk.len() as u64);
    }
    let seconds = start.elapsed().as_secs_f64();
    bar.finish_and_clear();
    let out = match args.format {
        Format::Jsonl => jsonl(&embeddings),
        Format::Npy => npy(&embeddings, encoder.dim()),
    };
    match &args.output {
        Some(path) => {
            std::fs::write(path, out).with_context(|| format!("writing {}", path.display()))?
        }
        None => std::io::stdout()
            .write_all(&out)
            .context("writing stdout")?,
    }
    eprintln!(
        "embedded {} sentences in {seconds:.3} s: {:.1} sentences/s ({} on {})",
        sentences.len(),
        sentences.len() as f64 / seconds.max(1e-9),
        args.model.display(),
        device.describe()
    );
    Ok(ExitCode::SUCCESS)
}

/// The input's lines (module docs).
fn lines(bytes: &[u8]) -> anyhow::Result<Vec<&str>> {
    let body = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    if body.is_empty() && bytes.is_empty() {
        return Ok(Vec::new());
    }
    body.split(|&b| b == b'\n')
        .enumerate()
        .map(|(i, line)| {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            match std::str::from_utf8(line) {
                Ok(s) => Ok(s),
                Err(e) => bail!("line {} is not valid UTF-8 ({e})", i + 1),
            }
        })
        .collect()
}

fn progress_bar(len: u64) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    if let Ok(style) =
        ProgressStyle::with_template("embed {elapsed_precise} {wide_bar} {pos}/{len} ({per_sec})")
    {
        bar.set_style(style);
    }
    bar
}

fn jsonl(embeddings: &[Vec<f32>]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in embeddings {
        out.extend_from_slice(
            serde_json::to_string(e)
                .expect("floats serialize")
                .as_bytes(),
        );
        out.push(b'\n');
    }
    out
}

/// A `.npy` file (version 1.0) of a float32 `[n, dim]` array.
fn npy(embeddings: &[Vec<f32>], dim: usize) -> Vec<u8> {
    let mut header = format!(
        "{{'descr': '<f4', 'fortran_order': False, 'shape': ({}, {dim}), }}",
        embeddings.len()
    );
    // Magic (6) + version (2) + length (2) + header + '\n' is a multiple of 64.
    let pad = (64 - (10 + header.len() + 1) % 64) % 64;
    header.push_str(&" ".repeat(pad));
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for e in embeddings {
        for x in e {
            out.extend_from_slice(&x.to_le_bytes());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_follow_the_module_docs() {
        assert_eq!(lines(b"").unwrap(), Vec::<&str>::new());
        assert_eq!(lines(b"\n").unwrap(), vec![""]);
        assert_eq!(lines(b"a\n\nb\r\nc").unwrap(), vec!["a", "", "b", "c"]);
        assert_eq!(lines(b"a\nb\n").unwrap(), vec!["a", "b"]);
        let e = lines(b"ok\n\xff\xfe\nok").unwrap_err();
        assert!(e.to_string().contains("line 2 is not valid UTF-8"), "{e}");
    }

    #[test]
    fn npy_header_is_aligned_and_describes_the_array() {
        let out = npy(&[vec![1.0, 2.0], vec![3.0, 4.0], vec![5.0, 6.0]], 2);
        assert_eq!(&out[..8], b"\x93NUMPY\x01\x00");
        let len = u16::from_le_bytes([out[8], out[9]]) as usize;
        assert_eq!((10 + len) % 64, 0);
        let header = std::str::from_utf8(&out[10..10 + len]).unwrap();
        assert!(header.contains("'shape': (3, 2)") && header.ends_with('\n'));
        assert_eq!(out.len(), 10 + len + 6 * 4);
        assert_eq!(&out[10 + len..10 + len + 4], &1.0f32.to_le_bytes());
    }
}
