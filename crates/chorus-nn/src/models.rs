//! Ready-made models assembled from the modules, with PyTorch's `state_dict` names.
//!
//! # Protocol
//! Each function loads one model from a [`Weights`] handle whose prefix is the model's root
//! (`weights.with_prefix("depthwise_separable.w.")`), checks every tensor's shape against the
//! configuration, and returns an immutable model to share between threads.

use crate::conv::{Conv2d, Conv2dConfig};
use crate::error::{NnError, Result};
use crate::layers::{AdaptiveAvgPool2d, Flatten, Relu};
use crate::linear::Linear;
use crate::norm::{GroupNorm, DEFAULT_EPS};
use crate::sequential::Sequential;
use crate::weights::Weights;

/// The depthwise-separable classifier
///
/// ```text
/// nn.Sequential(
///     nn.Conv2d(C, C, 3, padding=1, groups=C),  # 0: depthwise
///     nn.Conv2d(C, 2C, 1),                      # 1: pointwise
///     nn.GroupNorm(groups, 2C),                 # 2
///     nn.ReLU(),                                # 3
///     nn.AdaptiveAvgPool2d(1),                  # 4
///     nn.Flatten(),                             # 5
///     nn.Linear(2C, classes),                   # 6
/// )
/// ```
///
/// from `0.weight`, `0.bias`, `1.weight`, `1.bias`, `2.weight`, `2.bias`, `6.weight`,
/// `6.bias`. It maps `[N, C, H, W]` to `[N, classes]`.
///
/// # Examples
/// ```no_run
/// use chorus_core::Tensor;
/// use chorus_nn::{depthwise_separable, Module, Weights};
/// let device = chorus_cpu::device()?;
/// let weights = Weights::from_file(&device, "public.safetensors")?;
/// let model = depthwise_separable(&weights.with_prefix("depthwise_separable.w."), 16, 4, 10)?;
/// let logits = model.forward(&Tensor::randn(&device, &[2, 16, 12, 12], 0)?)?;
/// assert_eq!(logits.shape(), &[2, 10]);
/// # Ok::<(), chorus_nn::NnError>(())
/// ```
///
/// # Errors
/// [`NnError::InvalidConfig`] unless `2 * in_channels` is a multiple of `groups` and
/// `classes > 0`; the load errors of [`Weights::get`], naming the full tensor name.
pub fn depthwise_separable(
    weights: &Weights,
    in_channels: usize,
    groups: usize,
    classes: usize,
) -> Result<Sequential> {
    let c = in_channels;
    if classes == 0 {
        return Err(NnError::InvalidConfig {
            what: "depthwise_separable",
            reason: "classes must be non-zero".into(),
        });
    }
    if c.checked_mul(2).is_none() {
        return Err(NnError::InvalidConfig {
            what: "depthwise_separable",
            reason: format!("in_channels {c} is too large"),
        });
    }
    let depthwise = Conv2dConfig::new(c, c, [3, 3]).padding([1, 1]).groups(c);
    let pointwise = Conv2dConfig::new(c, 2 * c, [1, 1]);
    Ok(Sequential::new()
        .push(Conv2d::load(&weights.sub("0."), depthwise)?)
        .push(Conv2d::load(&weights.sub("1."), pointwise)?)
        .push(GroupNorm::load(
            &weights.sub("2."),
            groups,
            2 * c,
            DEFAULT_EPS,
        )?)
        .push(Relu)
        .push(AdaptiveAvgPool2d::new([1, 1]))
        .push(Flatten::default())
        .push(Linear::load(&weights.sub("6."), 2 * c, classes, true)?))
}
