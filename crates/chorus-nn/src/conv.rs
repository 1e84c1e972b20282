//! [`Conv2d`]: PyTorch's `nn.Conv2d` (zero padding, dilation 1, groups).
//!
//! # Weights
//! `weight` `[out_channels, in_channels / groups, kh, kw]` and, unless built without one,
//! `bias` `[out_channels]`.
//!
//! # Protocol
//! One `conv2d` kernel per forward pass on `[N, C, H, W]`. The module is immutable; see
//! [`Module`].

use crate::check::check_param;
use crate::error::{NnError, Result};
use crate::module::Module;
use crate::weights::Weights;
use chorus_core::Tensor;

/// The settings of a [`Conv2d`], named as PyTorch's constructor arguments.
///
/// # Examples
/// ```
/// use chorus_nn::Conv2dConfig;
/// // PyTorch: nn.Conv2d(16, 16, 3, padding=1, groups=16)
/// let depthwise = Conv2dConfig::new(16, 16, [3, 3]).padding([1, 1]).groups(16);
/// assert_eq!(depthwise.stride, [1, 1]);
/// assert!(depthwise.bias);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Conv2dConfig {
    /// Input channels `C`.
    pub in_channels: usize,
    /// Output channels `O`.
    pub out_channels: usize,
    /// Kernel size `[kh, kw]`.
    pub kernel_size: [usize; 2],
    /// Stride `[sh, sw]` (1).
    pub stride: [usize; 2],
    /// Zero padding on each side `[ph, pw]` (0).
    pub padding: [usize; 2],
    /// Groups (1); `C` and `O` are multiples of it.
    pub groups: usize,
    /// Whether there is a bias (true).
    pub bias: bool,
}

impl Conv2dConfig {
    /// PyTorch's defaults: stride 1, padding 0, groups 1, with bias.
    pub fn new(in_channels: usize, out_channels: usize, kernel_size: [usize; 2]) -> Conv2dConfig {
        Conv2dConfig {
            in_channels,
            out_channels,
            kernel_size,
            stride: [1, 1],
            padding: [0, 0],
            groups: 1,
            bias: true,
        }
    }
    /// With stride `s`.
    #[must_use]
    pub fn stride(mut self, s: [usize; 2]) -> Conv2dConfig {
        self.stride = s;
        self
    }
    /// With padding `p`.
    #[must_use]
    pub fn padding(mut self, p: [usize; 2]) -> Conv2dConfig {
        self.padding = p;
        self
    }
    /// With `g` groups.
    #[must_use]
    pub fn groups(mut self, g: usize) -> Conv2dConfig {
        self.groups = g;
        self
    }
    /// With or without bias.
    #[must_use]
    pub fn bias(mut self, bias: bool) -> Conv2dConfig {
        self.bias = bias;
        self
    }

    fn check(&self) -> Result<()> {
        let ok = self.groups > 0
            && self.in_channels > 0
            && self.out_channels > 0
            && self.in_channels.is_multiple_of(self.groups)
            && self.out_channels.is_multiple_of(self.groups)
            && !self.kernel_size.contains(&0)
            && !self.stride.contains(&0);
        if ok {
            Ok(())
        } else {
            Err(NnError::InvalidConfig {
                what: "Conv2d",
                reason: format!(
                    "channels must be non-zero multiples of groups, kernel and stride non-zero: \
                     {self:?}"
                ),
            })
        }
    }
}

/// 2-D convolution over `[N, C, H, W]`.
///
/// # Examples
/// ```
/// use chorus_core::Tensor;
/// use chorus_nn::{Conv2d, Conv2dConfig, Module};
/// # let device = chorus_cpu::device()?;
/// // A 1x1 convolution that doubles its single channel.
/// let weight = Tensor::from_slice(&device, &[2.0_f32], &[1, 1, 1, 1])?;
/// let conv = Conv2d::new(weight, None, Conv2dConfig::new(1, 1, [1, 1]).bias(false))?;
/// let x = Tensor::from_slice(&device, &[1.0_f32, 2.0, 3.0, 4.0], &[1, 1, 2, 2])?;
/// assert_eq!(conv.forward(&x)?.to_vec::<f32>()?, vec![2.0, 4.0, 6.0, 8.0]);
/// # Ok::<(), chorus_nn::NnError>(())
/// ```
#[derive(Debug, Clone)]
pub struct Conv2d {
    weight: Tensor,
    bias: Option<Tensor>,
    config: Conv2dConfig,
}

impl Conv2d {
    /// A convolution with settings `config` from `weight` and `bias` (present exactly when
    /// `config.bias`).
    ///
    /// # Errors
    /// [`NnError::InvalidConfig`] for invalid settings or a bias that contradicts
    /// `config.bias`; [`NnError::TensorShape`] / [`NnError::TensorDType`] for unfit tensors.
    pub fn new(weight: Tensor, bias: Option<Tensor>, config: Conv2dConfig) -> Result<Conv2d> {
        config.check()?;
        check_param("weight", &weight, &weight_shape(&config))?;
        match (&bias, config.bias) {
            (Some(b), true) => check_param("bias", b, &[config.out_channels])?,
            (None, false) => {}
            _ => {
                return Err(NnError::InvalidConfig {
                    what: "Conv2d bias",
                    reason: format!(
                        "config.bias is {} but a bias was {}given",
                        config.bias,
                        if bias.is_some() { "" } else { "not " }
                    ),
                })
            }
        }
        Ok(Conv2d {
            weight,
            bias,
            config,
        })
    }

    /// Loads `weight` and (when `config.bias`) `bias`.
    ///
    /// # Errors
    /// [`NnError::InvalidConfig`] for invalid settings; the load errors of [`Weights::get`],
    /// naming the full tensor name.
    pub fn load(weights: &Weights, config: Conv2dConfig) -> Result<Conv2d> {
        config.check()?;
        let weight = weights.get("weight", &weight_shape(&config))?;
        let bias = if config.bias {
            Some(weights.get("bias", &[config.out_channels])?)
        } else {
            None
        };
        Conv2d::new(weight, bias, config)
    }

    /// The settings.
    pub fn config(&self) -> &Conv2dConfig {
        &self.config
    }
}

fn weight_shape(c: &Conv2dConfig) -> [usize; 4] {
    [
        c.out_channels,
        c.in_channels / c.groups,
        c.kernel_size[0],
        c.kernel_size[1],
    ]
}

impl Module for Conv2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if x.rank() != 4 || x.shape()[1] != self.config.in_channels {
            return Err(NnError::InvalidInput {
                module: "Conv2d",
                shape: x.shape().to_vec(),
                reason: format!("needs [N, {}, H, W]", self.config.in_channels),
            });
        }
        let c = &self.config;
        Ok(x.conv2d(
            &self.weight,
            self.bias.as_ref(),
            c.stride,
            c.padding,
            c.groups,
        )?)
    }
    fn rows_independent(&self) -> bool {
        true
    }
}
