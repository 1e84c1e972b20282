//! Normalizations: layer norm over the last axis, group norm over groups of channels.

use super::view::DevicePtr;
use crate::dtype::DType;

/// Layer norm over the last axis of the contiguous `[rows, n]`: `(x - mean) / sqrt(var + eps) *
/// weight + bias` with the biased variance; statistics in f64.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerNorm {
    /// Input.
    pub src: DevicePtr,
    /// Added to the input element by element before normalizing (`[rows, n]` like it), if any:
    /// a residual connection fused into the norm.
    pub residual: Option<DevicePtr>,
    /// Output.
    pub out: DevicePtr,
    /// `[n]` scale, if any.
    pub weight: Option<DevicePtr>,
    /// `[n]` shift, if any.
    pub bias: Option<DevicePtr>,
    /// Rows.
    pub rows: usize,
    /// Normalized size.
    pub n: usize,
    /// Added to the variance.
    pub eps: f32,
    /// Element type of input, residual, parameters and output.
    pub dtype: DType,
}

impl LayerNorm {
    /// Elements of input and output.
    pub fn len(&self) -> usize {
        self.rows * self.n
    }

    /// Whether there is no element.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Group norm of the contiguous `[batch, channels, spatial]`: each of `groups` groups of
/// `channels / groups` channels is normalized over its channels and spatial positions, then
/// scaled and shifted per channel; statistics in f64.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupNorm {
    /// Input.
    pub src: DevicePtr,
    /// Output.
    pub out: DevicePtr,
    /// `[channels]` scale, if any.
    pub weight: Option<DevicePtr>,
    /// `[channels]` shift, if any.
    pub bias: Option<DevicePtr>,
    /// Batch size.
    pub batch: usize,
    /// Channels (a multiple of `groups`).
    pub channels: usize,
    /// Number of groups.
    pub groups: usize,
    /// Spatial size (H × W).
    pub spatial: usize,
    /// Added to the variance.
    pub eps: f32,
    /// Element type of input, parameters and output.
    pub dtype: DType,
}

impl GroupNorm {
    /// Elements of input and output.
    pub fn len(&self) -> usize {
        self.batch * self.channels * self.spatial
    }

    /// Whether there is no element.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Groups normalized across the batch (`batch × groups`), each one contiguous run.
    pub fn rows(&self) -> usize {
        self.batch * self.groups
    }

    /// Channels per group.
    pub fn group_channels(&self) -> usize {
        self.channels / self.groups
    }

    /// Elements per group (`channels / groups × spatial`).
    pub fn group_len(&self) -> usize {
        self.group_channels() * self.spatial
    }
}
