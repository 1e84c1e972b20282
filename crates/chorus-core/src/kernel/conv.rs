//! Convolution and pooling over `[batch, channels, h, w]` planes.

use super::view::DevicePtr;
use crate::dtype::DType;

/// 2-D convolution (cross-correlation, PyTorch's `conv2d`, dilation 1) of the contiguous input
/// `[batch, c_in, h, w]` with weight `[c_out, c_in / groups, kh, kw]` and optional bias
/// `[c_out]`, zero padding; out contiguous `[batch, c_out, oh, ow]` with
/// `oh = (h + 2 pad_h - kh) / stride_h + 1`, likewise `ow`.
#[derive(Debug, Clone, PartialEq)]
pub struct Conv2d {
    /// Input.
    pub src: DevicePtr,
    /// Weight.
    pub weight: DevicePtr,
    /// Bias.
    pub bias: Option<DevicePtr>,
    /// Output.
    pub out: DevicePtr,
    /// Batch size.
    pub batch: usize,
    /// Input channels.
    pub c_in: usize,
    /// Input height and width.
    pub hw: [usize; 2],
    /// Output channels.
    pub c_out: usize,
    /// Kernel height and width.
    pub khw: [usize; 2],
    /// Stride (height, width).
    pub stride: [usize; 2],
    /// Zero padding (height, width).
    pub padding: [usize; 2],
    /// Groups (divides `c_in` and `c_out`).
    pub groups: usize,
    /// Output height and width.
    pub out_hw: [usize; 2],
    /// Element type of input, weight, bias and output.
    pub dtype: DType,
}

/// Output columns `lo..hi` of a kernel column and the input column `first` that `lo` reads.
pub type ColSpan = (usize, usize, usize);

impl Conv2d {
    /// Checks the geometry (what keeps every index of a kernel inside its buffer): the groups
    /// divide the channels, kernel and stride are positive, and the output size is PyTorch's.
    ///
    /// # Errors
    /// What is inconsistent.
    pub fn validate(&self) -> Result<(), String> {
        if self.groups == 0
            || !self.c_in.is_multiple_of(self.groups)
            || !self.c_out.is_multiple_of(self.groups)
        {
            return Err(format!(
                "{} groups do not divide {} -> {} channels",
                self.groups, self.c_in, self.c_out
            ));
        }
        for d in 0..2 {
            let span = self.hw[d] + 2 * self.padding[d];
            if self.khw[d] == 0
                || self.stride[d] == 0
                || span < self.khw[d]
                || self.out_hw[d] != (span - self.khw[d]) / self.stride[d] + 1
            {
                return Err(format!(
                    "output size {:?} does not match input {:?}, kernel {:?}, stride {:?}, padding {:?}",
                    self.out_hw, self.hw, self.khw, self.stride, self.padding
                ));
            }
        }
        Ok(())
    }

    /// Elements of the input.
    pub fn in_len(&self) -> usize {
        self.batch * self.c_in * self.hw[0] * self.hw[1]
    }

    /// Elements of the output.
    pub fn out_len(&self) -> usize {
        self.batch * self.c_out * self.out_hw[0] * self.out_hw[1]
    }

    /// Taps of one output element: `c_in / groups × kh × kw` (the length of a weight row).
    pub fn taps(&self) -> usize {
        self.c_in / self.groups * self.khw[0] * self.khw[1]
    }

    /// Elements of the weight.
    pub fn weight_len(&self) -> usize {
        self.c_out * self.taps()
    }

    /// For each kernel column `kj`, the output columns `lo..hi` whose input column
    /// `oj * sw + kj - pw` lies inside `0..w`, and the input column `first` of `lo` (all 0 when
    /// no output column reads inside the input).
    pub fn col_spans(&self) -> Vec<ColSpan> {
        let ([_, w], [_, kw], [_, sw], [_, pw], [_, ow]) =
            (self.hw, self.khw, self.stride, self.padding, self.out_hw);
        (0..kw)
            .map(|kj| {
                let lo = pw.saturating_sub(kj).div_ceil(sw);
                let hi = ow.min((w + pw).saturating_sub(kj).div_ceil(sw));
                if lo < hi {
                    (lo, hi, lo * sw + kj - pw)
                } else {
                    (0, 0, 0)
                }
            })
            .collect()
    }

    /// The input row read by output row `oi` at kernel row `ki`, if inside the input.
    pub fn in_row(&self, oi: usize, ki: usize) -> Option<usize> {
        (oi * self.stride[0] + ki)
            .checked_sub(self.padding[0])
            .filter(|&i| i < self.hw[0])
    }
}

/// Adaptive average pooling of the contiguous `[planes, h, w]` to `[planes, oh, ow]`: output
/// cell `(i, j)` averages the rows of [`AdaptiveAvgPool2d::window`]`(i, h, oh)` and likewise
/// columns.
#[derive(Debug, Clone, PartialEq)]
pub struct AdaptiveAvgPool2d {
    /// Input.
    pub src: DevicePtr,
    /// Output.
    pub out: DevicePtr,
    /// N × C.
    pub planes: usize,
    /// Input height and width.
    pub hw: [usize; 2],
    /// Output height and width.
    pub out_hw: [usize; 2],
    /// Element type of input and output.
    pub dtype: DType,
}

impl AdaptiveAvgPool2d {
    /// Elements of the input.
    pub fn in_len(&self) -> usize {
        self.planes * self.hw[0] * self.hw[1]
    }

    /// Elements of the output.
    pub fn out_len(&self) -> usize {
        self.planes * self.out_hw[0] * self.out_hw[1]
    }

    /// The input positions `⌊i n / out⌋ .. ⌈(i + 1) n / out⌉` that output position `i` of `out`
    /// averages along a dimension of `n` (PyTorch's adaptive windows).
    pub fn window(i: usize, n: usize, out: usize) -> std::ops::Range<usize> {
        (i * n / out)..((i + 1) * n).div_ceil(out)
    }
}
