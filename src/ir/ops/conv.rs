//! `conv2d(x, w, b, stride=1, padding=0, dilation=1, groups=1,
//! layout="nchw")`: 2-D convolution (cross-correlation, as PyTorch and ONNX
//! define it) of an NCHW input (NHWC with `layout="nhwc"`, the output then
//! NHWC too) with OIHW weights (PyTorch's layout, whatever the data layout),
//! optional bias `[O]`. `groups` splits channels into independent groups
//! (depthwise: groups = input channels). Padding is zeros; see `window.rs`
//! for the attributes.
//!
//! `fused_conv2d` is what the `fuse-conv` pass makes of a convolution and
//! the ops after it: `act(conv2d(x, w, bias)) + residual`, with the same
//! [`LinearEpilogue`] as `fused_linear`, so kernels implement one epilogue.

use super::linalg::{activation_and_residual, LinearEpilogue};
use super::shape::{
    broadcast_keeps_samples, err, expect_dtype, only_keeps_samples, show, ShapeError,
};
use super::values::elements;
use super::window::{DataLayout, Padding2d, Window2d};
use super::{Builtin, CallArgs, EvalError, Gather, NodeId, Op, OpKind, Poisoned, ReduceOp};
use crate::ir::graph::ShapeDisplay;
use crate::ir::vjp::{GradError, Vjp};
use crate::ir::{DType, Dim, TensorType};
use crate::tensor::Tensor;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Conv2d {
    pub window: Window2d,
    pub groups: usize,
}

/// conv2d + epilogue: `act(conv2d(x, w, bias)) + residual`. Operands: x, w,
/// then the bias `[C_out]` (if `epilogue.bias`), then the residual (if
/// `epilogue.residual`, of the output's type). The bias is the convolution's
/// own (added to each channel's sums before rounding, as `conv2d` adds it);
/// the activation and the residual add are rounded as the unfused ops are.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct FusedConv2d {
    pub conv: Conv2d,
    pub epilogue: LinearEpilogue,
}

/// The sizes of one convolution, all known (the shape rule has run).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvGeometry {
    pub batch: usize,
    pub in_channels: usize,
    pub in_h: usize,
    pub in_w: usize,
    pub out_channels: usize,
    pub out_h: usize,
    pub out_w: usize,
    pub kernel_h: usize,
    pub kernel_w: usize,
    pub groups: usize,
    /// Padding before the input: top and left.
    pub pad_top: usize,
    pub pad_left: usize,
}

impl Conv2d {
    /// The geometry for an input `[N, C, H, W]` (`[N, H, W, C]` in NHWC),
    /// weights `[O, C/g, kh, kw]` and output shape the shape rule accepted.
    pub fn geometry(&self, x: &[usize], w: &[usize], out: &[usize]) -> ConvGeometry {
        let pads = |axis: usize, size: usize, k: usize| {
            self.window
                .pads(axis, size, k)
                .expect("the shape rule checked the sizes")
                .0
        };
        let [batch, in_channels, in_h, in_w] = self.window.layout.to_nchw(x);
        let [_, _, out_h, out_w] = self.window.layout.to_nchw(out);
        ConvGeometry {
            batch,
            in_channels,
            in_h,
            in_w,
            out_channels: w[0],
            out_h,
            out_w,
            kernel_h: w[2],
            kernel_w: w[3],
            groups: self.groups,
            pad_top: pads(0, in_h, w[2]),
            pad_left: pads(1, in_w, w[3]),
        }
    }
}

impl OpKind for Conv2d {
    fn name(&self) -> &'static str {
        "conv2d"
    }

    fn arity(&self) -> (usize, usize) {
        (2, 3)
    }

    fn keeps_samples(&self, inputs: &[&TensorType], batched: &[bool]) -> bool {
        let _ = inputs;
        only_keeps_samples(batched, 0)
    }

    fn infer(&self, inputs: &[&TensorType]) -> Result<TensorType, ShapeError> {
        self.output_type("conv2d", inputs)
    }

    fn eval(&self, inputs: &[&Tensor], out_shape: &[usize]) -> Result<Tensor, EvalError> {
        self.evaluate("conv2d", inputs, out_shape)
    }

    fn attributes(&self) -> Vec<(&'static str, String)> {
        let mut attributes = self.window.attributes();
        attributes.push(("groups", self.groups.to_string()));
        attributes
    }

    /// Both gradients are convolutions (see `input_gradient` and
    /// `weight_gradient`), so whatever kernel runs conv2d runs them; the
    /// bias's is the sum of `g` over batch, height and width. In NHWC, the
    /// NCHW rule applies to `x` and `g` permuted to NCHW, and the input's
    /// gradient is permuted back.
    fn vjp(
        &self,
        cx: &mut Vjp<'_>,
        _node: NodeId,
        inputs: &[NodeId],
        g: NodeId,
        wants: &[bool],
    ) -> Result<Vec<Option<NodeId>>, GradError> {
        let layout = self.window.layout;
        if layout != DataLayout::Nchw {
            let nchw = Conv2d {
                window: Window2d {
                    layout: DataLayout::Nchw,
                    ..self.window
                },
                groups: self.groups,
            };
            let to_nchw = layout.to_nchw_perm().to_vec();
            let mut operands = inputs.to_vec();
            if wants[0] || wants[1] {
                operands[0] = cx.permute(inputs[0], to_nchw.clone())?;
            }
            let g_nchw = cx.permute(g, to_nchw)?;
            let mut grads = nchw.vjp(cx, _node, &operands, g_nchw, wants)?;
            if let Some(dx) = grads[0] {
                grads[0] = Some(cx.permute(dx, layout.from_nchw_perm().to_vec())?);
            }
            return Ok(grads);
        }
        let mut grads = vec![None; inputs.len()];
        if wants[0] {
            grads[0] = Some(self.input_gradient(cx, inputs[0], inputs[1], g)?);
        }
        if wants[1] {
            grads[1] = Some(self.weight_gradient(cx, inputs[0], inputs[1], g)?);
        }
        if wants.get(2) == Some(&true) {
            grads[2] = Some(cx.reduce(ReduceOp::Sum, g, vec![0, 2, 3], false)?);
        }
        Ok(grads)
    }

    fn flops(&self, inputs: &[&[usize]], out_shape: &[usize]) -> u64 {
        // Two per multiply-add: each output element sums C/g * kh * kw products.
        let w = inputs[1];
        let per_output = w[1..].iter().product::<usize>() as u64;
        2 * per_output * out_shape.iter().product::<usize>() as u64
    }
}

impl Conv2d {
    /// The shape rule of `conv2d(x, w, [bias])`, its messages naming `op`.
    fn output_type(&self, op: &str, inputs: &[&TensorType]) -> Result<TensorType, ShapeError> {
        let (x, w) = (inputs[0], inputs[1]);
        for (what, ty) in [("input", x), ("weights", w)] {
            expect_dtype(op, what, ty, DType::F32)?;
        }
        let layout = self.window.layout;
        if x.rank() != 4 || w.rank() != 4 {
            return err(format!(
                "{op}: takes an input {} and weights \
                 [out_channels, in_channels / groups, kernel_h, kernel_w]; got {x} and {w}",
                layout_shape_words(layout)
            ));
        }
        let [batch, channels, height, width] = layout.to_nchw(&x.shape);
        let (Some(kh), Some(kw)) = (w.shape[2].as_known(), w.shape[3].as_known()) else {
            return err(format!(
                "{op}: the kernel size must be known integers, got weights {w}"
            ));
        };
        let groups = Dim::known(self.groups);
        let per_group = channels.div(&groups);
        if per_group.as_ref() != Some(&w.shape[1]) {
            return err(format!(
                "{op}: the input's {} channels in {} group(s) need weights with {} \
                 input channels each, got {w}",
                channels,
                self.groups,
                per_group.map_or_else(
                    || format!("{} / {}", channels, self.groups),
                    |d| d.to_string()
                ),
            ));
        }
        if w.shape[0].div(&groups).is_none() {
            return err(format!(
                "{op}: {} output channels do not split into {} groups",
                w.shape[0], self.groups
            ));
        }
        if let Some(b) = inputs.get(2) {
            expect_dtype(op, "bias", b, DType::F32)?;
            if b.shape != [w.shape[0].clone()] {
                return err(format!(
                    "{op}: the bias must be [{}] (one per output channel), got {b}",
                    w.shape[0]
                ));
            }
        }
        let h = self.window.out_dim(op, 0, &height, kh)?;
        let wd = self.window.out_dim(op, 1, &width, kw)?;
        Ok(TensorType::new(
            DType::F32,
            layout.from_nchw([batch, w.shape[0].clone(), h, wd]),
        ))
    }

    /// The reference convolution of `x, w, [bias]`, bias added to the f64
    /// sums before the one rounding.
    fn evaluate(
        &self,
        op: &'static str,
        inputs: &[&Tensor],
        out_shape: &[usize],
    ) -> Result<Tensor, EvalError> {
        let x = elements::<f32>(op, inputs[0])?;
        let w = elements::<f32>(op, inputs[1])?;
        let bias = match inputs.get(2) {
            Some(b) => Some(elements::<f32>(op, b)?),
            None => None,
        };
        let g = self.geometry(inputs[0].shape(), inputs[1].shape(), out_shape);
        let layout = self.window.layout;
        let in_sizes = [g.in_channels, g.in_h, g.in_w];
        let out_sizes = [g.out_channels, g.out_h, g.out_w];
        let in_per_group = g.in_channels / g.groups;
        let out_per_group = g.out_channels / g.groups;
        let mut out = vec![0.0f32; out_shape.iter().product()];
        for n in 0..g.batch {
            for o in 0..g.out_channels {
                let group = o / out_per_group;
                for oy in 0..g.out_h {
                    for ox in 0..g.out_w {
                        let mut acc = bias.map_or(0.0, |b| f64::from(b[o]));
                        for ci in 0..in_per_group {
                            let c = group * in_per_group + ci;
                            let kernel = &w[(o * in_per_group + ci) * g.kernel_h * g.kernel_w..];
                            for (iy, ky) in self.window.taps(0, oy, g.pad_top, g.in_h, g.kernel_h) {
                                for (ix, kx) in
                                    self.window.taps(1, ox, g.pad_left, g.in_w, g.kernel_w)
                                {
                                    acc += f64::from(x[layout.index(in_sizes, n, c, iy, ix)])
                                        * f64::from(kernel[ky * g.kernel_w + kx]);
                                }
                            }
                        }
                        out[layout.index(out_sizes, n, o, oy, ox)] = acc as f32;
                    }
                }
            }
        }
        Ok(Tensor::f32(out_shape.to_vec(), out))
    }
}

impl OpKind for FusedConv2d {
    fn name(&self) -> &'static str {
        "fused_conv2d"
    }

    fn arity(&self) -> (usize, usize) {
        let n = self.epilogue.operand_count(2);
        (n, n)
    }

    fn keeps_samples(&self, inputs: &[&TensorType], batched: &[bool]) -> bool {
        // x and the residual carry the samples; weights and bias are shared.
        let residual = self.epilogue.residual_operand(2);
        let shared = (1..inputs.len())
            .filter(|&i| Some(i) != residual)
            .all(|i| !batched[i]);
        shared
            && batched[0]
            && broadcast_keeps_samples(
                std::iter::once(0)
                    .chain(residual)
                    .map(|i| (inputs[i], batched[i])),
            )
    }

    fn infer(&self, inputs: &[&TensorType]) -> Result<TensorType, ShapeError> {
        let conv_operands = 2 + usize::from(self.epilogue.bias);
        let out = self
            .conv
            .output_type("fused_conv2d", &inputs[..conv_operands])?;
        if let Some(residual) = self.epilogue.residual_operand(2).map(|i| inputs[i]) {
            if residual.shape != out.shape || residual.dtype != out.dtype {
                return err(format!(
                    "fused_conv2d: residual must be f32{}, got {}",
                    ShapeDisplay(&out.shape),
                    show(residual)
                ));
            }
        }
        Ok(out)
    }

    fn eval(&self, inputs: &[&Tensor], out_shape: &[usize]) -> Result<Tensor, EvalError> {
        let conv_operands = 2 + usize::from(self.epilogue.bias);
        let y = self
            .conv
            .evaluate("fused_conv2d", &inputs[..conv_operands], out_shape)?;
        let residual = self.epilogue.residual_operand(2).map(|i| inputs[i]);
        activation_and_residual(y, self.epilogue.activation, residual, out_shape)
    }

    fn attributes(&self) -> Vec<(&'static str, String)> {
        let mut attributes = self.conv.attributes();
        attributes.extend(self.epilogue.attributes());
        attributes
    }

    fn flops(&self, inputs: &[&[usize]], out_shape: &[usize]) -> u64 {
        self.conv.flops(inputs, out_shape)
    }

    /// The convolution's rule, given the gradient through the epilogue: the
    /// residual takes `g` as it is, and the pre-activation (recomputed from
    /// the operands, as the fused node keeps only its result) the
    /// activation's derivative times `g`.
    fn vjp(
        &self,
        cx: &mut Vjp<'_>,
        node: NodeId,
        inputs: &[NodeId],
        g: NodeId,
        wants: &[bool],
    ) -> Result<Vec<Option<NodeId>>, GradError> {
        let conv_operands = 2 + usize::from(self.epilogue.bias);
        let (convolution, gz) = match self.epilogue.activation {
            Some(act) => {
                let z = cx.add(Op::Conv2d(self.conv.clone()), &inputs[..conv_operands])?;
                let y = cx.add(Op::Unary(act), &[z])?;
                (z, act.derivative(cx, z, y, g)?)
            }
            None => (node, g),
        };
        let mut grads = self.conv.vjp(
            cx,
            convolution,
            &inputs[..conv_operands],
            gz,
            &wants[..conv_operands],
        )?;
        if self.epilogue.residual {
            grads.push(wants[conv_operands].then_some(g));
        }
        Ok(grads)
    }
}

/// One spatial axis of a convolution as its gradients see it.
struct AxisGeometry {
    /// The input's size; `None` for a symbol (then stride is 1 and the
    /// output has the input's size).
    size: Option<usize>,
    /// The output's size, when known.
    out: Option<usize>,
    kernel: usize,
    stride: usize,
    dilation: usize,
    /// Padding before the input.
    before: usize,
}

impl AxisGeometry {
    /// The kernel's extent, `(kernel - 1) * dilation + 1`.
    fn extent(&self) -> usize {
        (self.kernel - 1) * self.dilation + 1
    }
}

impl Conv2d {
    fn axis_geometry(
        &self,
        cx: &Vjp<'_>,
        axis: usize,
        x: NodeId,
        w: NodeId,
        g: NodeId,
    ) -> Result<AxisGeometry, GradError> {
        let size = cx.ty(x).shape[2 + axis].as_known();
        let out = cx.ty(g).shape[2 + axis].as_known();
        let kernel = cx.ty(w).shape[2 + axis]
            .as_known()
            .expect("the shape rule wants a known kernel size");
        // A symbolic size means the output keeps it (stride 1, padding
        // adding up to the extent minus 1), so any size gives the same pads.
        let pads = match (size, self.window.padding) {
            (Some(n), _) => self.window.pads(axis, n, kernel),
            (None, Padding2d::Same) => self.window.pads(axis, 1, kernel),
            (None, Padding2d::Explicit { .. }) => self.window.pads(axis, 0, kernel),
        };
        let Some((before, _)) = pads else {
            return cx.no_rule("its padding overflows");
        };
        Ok(AxisGeometry {
            size,
            out,
            kernel,
            stride: self.window.stride[axis],
            dilation: self.window.dilation[axis],
            before,
        })
    }

    /// dL/dx: the transposed convolution of `g`. With `g` spread out by
    /// the stride (zeros between its pixels) and padded by the extent minus
    /// 1 minus the forward padding, it is a stride-1 convolution with the
    /// same dilation of the weights flipped in height and width and with
    /// input and output channels swapped within each group. Padding below
    /// zero (forward padding wider than the kernel reaches) crops `g`.
    fn input_gradient(
        &self,
        cx: &mut Vjp<'_>,
        x: NodeId,
        w: NodeId,
        g: NodeId,
    ) -> Result<NodeId, GradError> {
        let axes = [
            self.axis_geometry(cx, 0, x, w, g)?,
            self.axis_geometry(cx, 1, x, w, g)?,
        ];
        let x_ty = cx.ty(x).clone();
        let w_ty = cx.ty(w).clone();
        let g_ty = cx.ty(g).clone();
        let groups = Dim::known(self.groups);

        // Weights [O, C/G, kh, kw] -> [C, O/G, kh, kw], flipped.
        let out_per_group = w_ty.shape[0]
            .div(&groups)
            .expect("the shape rule checked it");
        let mut flipped = if self.groups == 1 {
            cx.permute(w, vec![1, 0, 2, 3])?
        } else {
            let kernel = [w_ty.shape[2].clone(), w_ty.shape[3].clone()];
            let split = cx.reshape(
                w,
                vec![
                    groups.clone(),
                    out_per_group.clone(),
                    w_ty.shape[1].clone(),
                    kernel[0].clone(),
                    kernel[1].clone(),
                ],
            )?;
            let swapped = cx.permute(split, vec![0, 2, 1, 3, 4])?;
            cx.reshape(
                swapped,
                vec![
                    x_ty.shape[1].clone(),
                    out_per_group,
                    kernel[0].clone(),
                    kernel[1].clone(),
                ],
            )?
        };
        for (axis, geometry) in axes.iter().enumerate() {
            if geometry.kernel > 1 {
                let reversed = cx.ids((0..geometry.kernel as i64).rev().collect());
                flipped = cx.add(Op::Gather(Gather { axis: 2 + axis }), &[flipped, reversed])?;
            }
        }

        // g spread out by the stride: [N, O, oh, 1, ow, 1] padded to
        // [N, O, oh, sh, ow, sw], read as [N, O, oh * sh, ow * sw].
        let mut spread = g;
        let mut spread_len = [g_ty.shape[2].clone(), g_ty.shape[3].clone()];
        if axes.iter().any(|a| a.stride > 1) {
            let (Some(oh), Some(ow)) = (axes[0].out, axes[1].out) else {
                unreachable!("a stride above 1 needs known sizes");
            };
            let [sh, sw] = [axes[0].stride, axes[1].stride];
            let (n, o) = (g_ty.shape[0].clone(), g_ty.shape[1].clone());
            let one = Dim::known(1);
            let six = cx.reshape(
                g,
                vec![
                    n.clone(),
                    o.clone(),
                    Dim::known(oh),
                    one.clone(),
                    Dim::known(ow),
                    one,
                ],
            )?;
            let padded = cx.add(
                Op::Pad(super::pad::Pad {
                    pads: vec![(0, 0), (0, 0), (0, 0), (0, sh - 1), (0, 0), (0, sw - 1)],
                    value: super::Float(0.0),
                }),
                &[six],
            )?;
            spread_len = [Dim::known(oh * sh), Dim::known(ow * sw)];
            spread = cx.reshape(
                padded,
                vec![n, o, spread_len[0].clone(), spread_len[1].clone()],
            )?;
        }

        // Padding around the spread g, cropping where it is negative.
        let mut pads = [0usize; 4]; // top, left, bottom, right
        for (axis, a) in axes.iter().enumerate() {
            let before = a.extent() as isize - 1 - a.before as isize;
            let after = match (a.size, &spread_len[axis].as_known()) {
                (Some(size), Some(len)) => (size + a.before) as isize - *len as isize,
                // Symbolic: stride 1 and the size kept, so len = size.
                _ => a.before as isize,
            };
            if before < 0 || after < 0 {
                let len = spread_len[axis]
                    .as_known()
                    .expect("cropping happens only at known sizes");
                let start = (-before).max(0) as usize;
                let end = len - (-after).max(0) as usize;
                spread = cx.slice(spread, 2 + axis, start, Dim::known(end))?;
            }
            pads[axis] = before.max(0) as usize;
            pads[2 + axis] = after.max(0) as usize;
        }
        let transposed = Conv2d {
            window: Window2d {
                stride: [1, 1],
                dilation: self.window.dilation,
                padding: Padding2d::Explicit {
                    top: pads[0],
                    left: pads[1],
                    bottom: pads[2],
                    right: pads[3],
                },
                layout: DataLayout::Nchw,
            },
            groups: self.groups,
        };
        cx.add(Op::Conv2d(transposed), &[spread, flipped])
    }

    /// dL/dw: for each group, the correlation of the input with `g`
    /// summed over the batch, a convolution whose "batch" is the input
    /// channel within the group, whose channels are (group, example) and
    /// whose kernel is `g` [O, N, oh, ow]; its stride is the forward
    /// dilation and its dilation the forward stride.
    fn weight_gradient(
        &self,
        cx: &mut Vjp<'_>,
        x: NodeId,
        w: NodeId,
        g: NodeId,
    ) -> Result<NodeId, GradError> {
        let x_ty = cx.ty(x).clone();
        let g_ty = cx.ty(g).clone();
        let (Some(oh), Some(ow)) = (g_ty.shape[2].as_known(), g_ty.shape[3].as_known()) else {
            return cx.no_rule(format!(
                "the weights' gradient needs the output's height and width as integers, got {g_ty}"
            ));
        };
        let groups = Dim::known(self.groups);
        let (n, o) = (x_ty.shape[0].clone(), g_ty.shape[1].clone());
        let (mut input, kernel) = if self.groups == 1 {
            (
                cx.permute(x, vec![1, 0, 2, 3])?,
                cx.permute(g, vec![1, 0, 2, 3])?,
            )
        } else {
            let per_group = cx.ty(w).shape[1].clone();
            let (h, w) = (x_ty.shape[2].clone(), x_ty.shape[3].clone());
            let split = cx.reshape(
                x,
                vec![
                    n.clone(),
                    groups.clone(),
                    per_group.clone(),
                    h.clone(),
                    w.clone(),
                ],
            )?;
            let swapped = cx.permute(split, vec![2, 1, 0, 3, 4])?;
            let channels = groups.checked_mul(&n).expect("G * N fits, as C * N does");
            let input = cx.reshape(swapped, vec![per_group, channels, h, w])?;
            let out_per_group = o.div(&groups).expect("the shape rule checked it");
            let g_split = cx.reshape(
                g,
                vec![
                    n.clone(),
                    groups.clone(),
                    out_per_group,
                    Dim::known(oh),
                    Dim::known(ow),
                ],
            )?;
            let g_swapped = cx.permute(g_split, vec![1, 2, 0, 3, 4])?;
            let kernel = cx.reshape(g_swapped, vec![o, n, Dim::known(oh), Dim::known(ow)])?;
            (input, kernel)
        };
        // Pad after so the output is exactly the kernel's size; crop where
        // the forward padding was more than the windows reached.
        let out_size = [oh, ow];
        let (mut before, mut after) = ([0usize; 2], [0usize; 2]);
        for axis in 0..2 {
            let a = self.axis_geometry(cx, axis, x, w, g)?;
            let size = a
                .size
                .expect("a known output size implies a known input size");
            let spread = (out_size[axis] - 1) * a.stride + 1;
            let needed = (a.kernel - 1) * a.dilation + spread;
            let pad_after = needed as isize - (size + a.before) as isize;
            if pad_after < 0 {
                let end = (size as isize + pad_after) as usize;
                input = cx.slice(input, 2 + axis, 0, Dim::known(end))?;
            }
            before[axis] = a.before;
            after[axis] = pad_after.max(0) as usize;
        }
        let correlation = Conv2d {
            window: Window2d {
                stride: self.window.dilation,
                dilation: self.window.stride,
                padding: Padding2d::Explicit {
                    top: before[0],
                    left: before[1],
                    bottom: after[0],
                    right: after[1],
                },
                layout: DataLayout::Nchw,
            },
            groups: self.groups,
        };
        let per_input_channel = cx.add(Op::Conv2d(correlation), &[input, kernel])?;
        cx.permute(per_input_channel, vec![1, 0, 2, 3])
    }
}

/// How a message names the input shape a window op takes in `layout`.
pub(super) fn layout_shape_words(layout: DataLayout) -> &'static str {
    match layout {
        DataLayout::Nchw => "[batch, channels, height, width]",
        DataLayout::Nhwc => "[batch, height, width, channels] (layout \"nhwc\")",
    }
}

pub const BUILTIN: Builtin = Builtin {
    names: &["conv2d"],
    lower,
};

/// `conv2d(x, w, [b], stride=, padding=, dilation=, groups=)`.
fn lower(_name: &str, args: &mut dyn CallArgs) -> Result<(Op, Vec<NodeId>), Poisoned> {
    let mut operands = vec![args.tensor()?, args.tensor()?];
    operands.extend(args.rest_tensors()?);
    if operands.len() > 3 {
        return Err(args.error(format!(
            "takes an input, weights and an optional bias; got {} tensors",
            operands.len()
        )));
    }
    let window = Window2d::read(args, [1, 1])?;
    let groups = args.int("groups", Some(1))?;
    let Some(groups) = usize::try_from(groups).ok().filter(|&g| g > 0) else {
        return Err(args.error(format!("groups must be >= 1, got {groups}")));
    };
    Ok((Op::Conv2d(Conv2d { window, groups }), operands))
}
