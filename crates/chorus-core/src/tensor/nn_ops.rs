//! Neural-network ops: linear (with fused bias and activation), activations, softmax family,
//! normalizations, convolution and pooling.

use super::check::{need_dtype, same_device, split_at};
use super::Tensor;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::kernel::{self, Epilogue, Kernel, MatOperand, UnaryOp};
use crate::shape::dim;

fn f32_only(op: &'static str, t: &Tensor) -> Result<()> {
    need_dtype(op, t, DType::F32)
}

/// Checks an optional per-feature parameter (`[n]`, f32, same device).
fn param(op: &'static str, x: &Tensor, p: Option<&Tensor>, n: usize) -> Result<()> {
    if let Some(p) = p {
        same_device(op, x, p)?;
        f32_only(op, p)?;
        if p.shape != [n] {
            return Err(Error::ShapeMismatch {
                op,
                lhs: x.shape.clone(),
                rhs: p.shape.clone(),
                reason: "parameter must be 1-D of the feature size",
            });
        }
    }
    Ok(())
}

impl Tensor {
    fn unary(&self, op: UnaryOp, name: &'static str) -> Result<Tensor> {
        f32_only(name, self)?;
        let rt = self.rt();
        let s = rt.current_stream()?;
        let src = self.input_on(s)?;
        let out = Tensor::empty_on(rt, s, &self.shape, DType::F32, name)?;
        let k = Kernel::Unary(kernel::Unary {
            op,
            src: src.ptr(),
            out: out.tensor.ptr(),
            len: self.len(),
            dtype: DType::F32,
        });
        Tensor::launch(rt, s, k, out, [self])
    }

    /// `max(x, 0)`.
    ///
    /// # Errors
    /// [`Error::DTypeMismatch`] unless f32.
    pub fn relu(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Relu, "relu")
    }
    /// GELU with the exact normal CDF (PyTorch's default).
    ///
    /// # Errors
    /// [`Error::DTypeMismatch`] unless f32.
    pub fn gelu(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Gelu, "gelu")
    }
    /// GELU with the tanh approximation (PyTorch's `approximate="tanh"`).
    ///
    /// # Errors
    /// [`Error::DTypeMismatch`] unless f32.
    pub fn gelu_tanh(&self) -> Result<Tensor> {
        self.unary(UnaryOp::GeluTanh, "gelu")
    }
    /// `tanh(x)`.
    ///
    /// # Errors
    /// [`Error::DTypeMismatch`] unless f32.
    pub fn tanh(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Tanh, "tanh")
    }
    /// `e^x`.
    ///
    /// # Errors
    /// [`Error::DTypeMismatch`] unless f32.
    pub fn exp(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Exp, "exp")
    }

    /// `x @ weight^T + bias` over the last dimension (`weight`: `[out, in]`), then `act`,
    /// all in one kernel: PyTorch's `linear` followed by an activation.
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] when `in` differs or the bias is not `[out]`;
    /// [`Error::DTypeMismatch`] unless f32; [`Error::DeviceMismatch`].
    pub fn linear_act(
        &self,
        weight: &Tensor,
        bias: Option<&Tensor>,
        act: Option<UnaryOp>,
    ) -> Result<Tensor> {
        const OP: &str = "linear";
        same_device(OP, self, weight)?;
        f32_only(OP, self)?;
        f32_only(OP, weight)?;
        if self.rank() == 0 || weight.rank() != 2 || weight.shape[1] != self.shape[self.rank() - 1]
        {
            return Err(Error::ShapeMismatch {
                op: OP,
                lhs: self.shape.clone(),
                rhs: weight.shape.clone(),
                reason: "input's last dimension must equal weight's second",
            });
        }
        let (out_f, in_f) = (weight.shape[0], weight.shape[1]);
        param(OP, self, bias, out_f)?;
        // The leading dimensions' product (not len / in: with in = 0 that would be 0 rows).
        let rows: usize = self.shape[..self.rank() - 1].iter().product();
        let rt = self.rt();
        let s = rt.current_stream()?;
        let x = self.input_on(s)?;
        let w = weight.input_on(s)?;
        let b = bias.map(|b| b.input_on(s)).transpose()?;
        let mut shape = self.shape.clone();
        *shape.last_mut().expect("rank >= 1") = out_f;
        let out = Tensor::empty_on(rt, s, &shape, DType::F32, OP)?;
        let k = Kernel::Matmul(kernel::Matmul {
            lhs: MatOperand {
                ptr: x.ptr(),
                batch_stride: 0,
                row_stride: in_f,
                col_stride: 1,
            },
            // weight^T: element [p, j] is weight[j, p].
            rhs: MatOperand {
                ptr: w.ptr(),
                batch_stride: 0,
                row_stride: 1,
                col_stride: in_f,
            },
            out: out.tensor.ptr(),
            batch: 1,
            m: rows,
            n: out_f,
            k: in_f,
            epilogue: Epilogue {
                bias: b.as_ref().map(Tensor::ptr),
                act,
            },
            rhs_derived: rt.prepares_weights().then(|| w.storage.derived()).flatten(),
            dtype: DType::F32,
        });
        Tensor::launch(
            rt,
            s,
            k,
            out,
            [Some(self), Some(weight), bias].into_iter().flatten(),
        )
    }

    /// PyTorch's `linear`: `x @ weight^T + bias`.
    ///
    /// # Errors
    /// As [`Tensor::linear_act`].
    pub fn linear(&self, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        self.linear_act(weight, bias, None)
    }

    fn softmax_impl(&self, name: &'static str, d: isize, scale: f32, log: bool) -> Result<Tensor> {
        f32_only(name, self)?;
        let dd = dim(name, d, self.rank())?;
        let rt = self.rt();
        let s = rt.current_stream()?;
        let src = self.input_on(s)?;
        let (outer, n, inner) = split_at(&self.shape, dd);
        let out = Tensor::empty_on(rt, s, &self.shape, DType::F32, name)?;
        let k = Kernel::Softmax(kernel::Softmax {
            src: src.ptr(),
            out: out.tensor.ptr(),
            outer,
            n,
            inner,
            scale,
            log,
            causal: None,
            mask: None,
            dtype: DType::F32,
        });
        Tensor::launch(rt, s, k, out, [self])
    }

    /// Softmax along `d`.
    ///
    /// # Errors
    /// [`Error::InvalidDim`]; [`Error::DTypeMismatch`] unless f32.
    pub fn softmax(&self, d: isize) -> Result<Tensor> {
        self.softmax_impl("softmax", d, 1.0, false)
    }
    /// `softmax(scale * x)` along `d`, in one kernel.
    ///
    /// # Errors
    /// As [`Tensor::softmax`].
    pub fn scaled_softmax(&self, d: isize, scale: f32) -> Result<Tensor> {
        self.softmax_impl("scaled_softmax", d, scale, false)
    }
    /// Log-softmax along `d`.
    ///
    /// # Errors
    /// As [`Tensor::softmax`].
    pub fn log_softmax(&self, d: isize) -> Result<Tensor> {
        self.softmax_impl("log_softmax", d, 1.0, true)
    }

    /// Layer norm over the last dimension with optional `[n]` weight and bias.
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] for parameters of the wrong size; [`Error::DTypeMismatch`].
    pub fn layer_norm(
        &self,
        weight: Option<&Tensor>,
        bias: Option<&Tensor>,
        eps: f32,
    ) -> Result<Tensor> {
        self.layer_norm_check(weight, bias)?;
        self.layer_norm_kernel(None, weight, bias, eps)
    }

    /// The checks of [`Tensor::layer_norm`].
    fn layer_norm_check(&self, weight: Option<&Tensor>, bias: Option<&Tensor>) -> Result<()> {
        const OP: &str = "layer_norm";
        f32_only(OP, self)?;
        let n = *self.shape.last().ok_or(Error::InvalidShape {
            op: OP,
            shape: vec![],
            reason: "needs at least one dimension".into(),
        })?;
        param(OP, self, weight, n)?;
        param(OP, self, bias, n)
    }

    /// Layer norm of `self + residual` (a residual connection followed by a norm, as in a
    /// transformer layer) in one kernel: the result is bit for bit `self.add(residual)?
    /// .layer_norm(weight, bias, eps)`, without writing the sum to memory and reading it back.
    /// Shapes that differ are broadcast by that unfused path.
    ///
    /// # Errors
    /// As [`Tensor::add`] and [`Tensor::layer_norm`].
    pub fn add_layer_norm(
        &self,
        residual: &Tensor,
        weight: Option<&Tensor>,
        bias: Option<&Tensor>,
        eps: f32,
    ) -> Result<Tensor> {
        if self.shape != residual.shape || self.dtype() != residual.dtype() {
            return self.add(residual)?.layer_norm(weight, bias, eps);
        }
        self.layer_norm_check(weight, bias)?;
        self.layer_norm_kernel(Some(residual), weight, bias, eps)
    }

    /// The `LayerNorm` kernel of `self (+ residual)`; arguments checked by the callers.
    fn layer_norm_kernel(
        &self,
        residual: Option<&Tensor>,
        weight: Option<&Tensor>,
        bias: Option<&Tensor>,
        eps: f32,
    ) -> Result<Tensor> {
        const OP: &str = "layer_norm";
        let n = *self.shape.last().expect("checked by layer_norm");
        let rt = self.rt();
        let s = rt.current_stream()?;
        let src = self.input_on(s)?;
        let res = residual.map(|r| r.input_on(s)).transpose()?;
        let w = weight.map(|w| w.input_on(s)).transpose()?;
        let b = bias.map(|b| b.input_on(s)).transpose()?;
        let out = Tensor::empty_on(rt, s, &self.shape, DType::F32, OP)?;
        let k = Kernel::LayerNorm(kernel::LayerNorm {
            src: src.ptr(),
            residual: res.as_ref().map(Tensor::ptr),
            out: out.tensor.ptr(),
            weight: w.as_ref().map(Tensor::ptr),
            bias: b.as_ref().map(Tensor::ptr),
            rows: self.len() / n.max(1),
            n,
            eps,
            dtype: DType::F32,
        });
        Tensor::launch(
            rt,
            s,
            k,
            out,
            [Some(self), residual, weight, bias].into_iter().flatten(),
        )
    }

    /// Group norm of `[N, C, *]` with `groups` groups and optional `[C]` weight and bias.
    ///
    /// # Errors
    /// [`Error::InvalidShape`] when `C` is not a multiple of `groups`; as [`Tensor::layer_norm`].
    pub fn group_norm(
        &self,
        groups: usize,
        weight: Option<&Tensor>,
        bias: Option<&Tensor>,
        eps: f32,
    ) -> Result<Tensor> {
        const OP: &str = "group_norm";
        f32_only(OP, self)?;
        if self.rank() < 2 || groups == 0 || !self.shape[1].is_multiple_of(groups) {
            return Err(Error::InvalidShape {
                op: OP,
                shape: self.shape.clone(),
                reason: format!("needs [N, C, ...] with C a multiple of {groups} groups"),
            });
        }
        let c = self.shape[1];
        param(OP, self, weight, c)?;
        param(OP, self, bias, c)?;
        let rt = self.rt();
        let s = rt.current_stream()?;
        let src = self.input_on(s)?;
        let w = weight.map(|w| w.input_on(s)).transpose()?;
        let b = bias.map(|b| b.input_on(s)).transpose()?;
        let out = Tensor::empty_on(rt, s, &self.shape, DType::F32, OP)?;
        let k = Kernel::GroupNorm(kernel::GroupNorm {
            src: src.ptr(),
            out: out.tensor.ptr(),
            weight: w.as_ref().map(Tensor::ptr),
            bias: b.as_ref().map(Tensor::ptr),
            batch: self.shape[0],
            channels: c,
            groups,
            spatial: self.shape[2..].iter().product(),
            eps,
            dtype: DType::F32,
        });
        Tensor::launch(
            rt,
            s,
            k,
            out,
            [Some(self), weight, bias].into_iter().flatten(),
        )
    }

    /// 2-D convolution of `[N, C, H, W]` with `weight` `[O, C / groups, kh, kw]` and optional
    /// `[O]` bias, zero padding, dilation 1 (PyTorch's `conv2d`).
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] / [`Error::InvalidShape`] naming the offending shapes;
    /// [`Error::DTypeMismatch`]; [`Error::DeviceMismatch`].
    pub fn conv2d(
        &self,
        weight: &Tensor,
        bias: Option<&Tensor>,
        stride: [usize; 2],
        padding: [usize; 2],
        groups: usize,
    ) -> Result<Tensor> {
        const OP: &str = "conv2d";
        same_device(OP, self, weight)?;
        f32_only(OP, self)?;
        f32_only(OP, weight)?;
        let bad = |reason| Error::ShapeMismatch {
            op: OP,
            lhs: self.shape.clone(),
            rhs: weight.shape.clone(),
            reason,
        };
        if self.rank() != 4 || weight.rank() != 4 {
            return Err(bad(
                "input must be [N, C, H, W] and weight [O, C/groups, kh, kw]",
            ));
        }
        let [n, c, h, w] = [self.shape[0], self.shape[1], self.shape[2], self.shape[3]];
        let [o, cg, kh, kw] = [
            weight.shape[0],
            weight.shape[1],
            weight.shape[2],
            weight.shape[3],
        ];
        if groups == 0 || c % groups != 0 || o % groups != 0 || cg != c / groups {
            return Err(bad("channels must split into groups: C and O multiples of groups, weight's second dim C/groups"));
        }
        let padded = |x: usize, p: usize| p.checked_mul(2).and_then(|p2| x.checked_add(p2));
        let (Some(ph), Some(pw)) = (padded(h, padding[0]), padded(w, padding[1])) else {
            return Err(bad("the padding overflows the input's size"));
        };
        if stride.contains(&0) || ph < kh || pw < kw || kh == 0 || kw == 0 {
            return Err(bad(
                "the kernel must fit the padded input, with non-zero stride",
            ));
        }
        param(OP, self, bias, o)?;
        let out_hw = [(ph - kh) / stride[0] + 1, (pw - kw) / stride[1] + 1];
        let rt = self.rt();
        let s = rt.current_stream()?;
        let src = self.input_on(s)?;
        let wt = weight.input_on(s)?;
        let b = bias.map(|b| b.input_on(s)).transpose()?;
        let out = Tensor::empty_on(rt, s, &[n, o, out_hw[0], out_hw[1]], DType::F32, OP)?;
        let k = Kernel::Conv2d(kernel::Conv2d {
            src: src.ptr(),
            weight: wt.ptr(),
            bias: b.as_ref().map(Tensor::ptr),
            out: out.tensor.ptr(),
            batch: n,
            c_in: c,
            hw: [h, w],
            c_out: o,
            khw: [kh, kw],
            stride,
            padding,
            groups,
            out_hw,
            dtype: DType::F32,
        });
        Tensor::launch(
            rt,
            s,
            k,
            out,
            [Some(self), Some(weight), bias].into_iter().flatten(),
        )
    }

    /// Adaptive average pooling of `[.., H, W]` to `[.., oh, ow]` (PyTorch's bins).
    ///
    /// # Errors
    /// [`Error::InvalidShape`] for fewer than 2 dimensions or a zero output size.
    pub fn adaptive_avg_pool2d(&self, out_hw: [usize; 2]) -> Result<Tensor> {
        const OP: &str = "adaptive_avg_pool2d";
        f32_only(OP, self)?;
        let r = self.rank();
        if r < 2 || out_hw.contains(&0) || self.shape[r - 2] == 0 || self.shape[r - 1] == 0 {
            return Err(Error::InvalidShape {
                op: OP,
                shape: self.shape.clone(),
                reason: format!(
                    "needs [.., H, W] with H, W > 0 and an output size > 0, got {out_hw:?}"
                ),
            });
        }
        let rt = self.rt();
        let s = rt.current_stream()?;
        let src = self.input_on(s)?;
        let mut shape = self.shape.clone();
        shape[r - 2] = out_hw[0];
        shape[r - 1] = out_hw[1];
        let out = Tensor::empty_on(rt, s, &shape, DType::F32, OP)?;
        let planes = self.shape[..r - 2].iter().product();
        let k = Kernel::AdaptiveAvgPool2d(kernel::AdaptiveAvgPool2d {
            src: src.ptr(),
            out: out.tensor.ptr(),
            planes,
            hw: [self.shape[r - 2], self.shape[r - 1]],
            out_hw,
            dtype: DType::F32,
        });
        Tensor::launch(rt, s, k, out, [self])
    }
}
