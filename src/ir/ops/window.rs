//! What 2-D sliding-window ops (`conv2d`, `max_pool2d`, `avg_pool2d`)
//! share: stride, dilation and padding attributes, the data layout of their
//! input and output (NCHW or NHWC), the output size, and the padding
//! actually applied to an input of known size.
//!
//! Spatial sizes and symbols: `Dim` is a monomial, and an output size such
//! as `floor((h + pads - k) / s) + 1` is not one. So height and width must
//! be integers, except where the output size is the input size: stride 1
//! with "same" padding, or stride 1 with explicit padding adding up to the
//! window's extent minus 1 (a 1x1 convolution without padding, a 3x3 one
//! with padding 1). The batch and channel dims may be symbols.

use std::hash::Hash;

use super::shape::{err, ShapeError};
use super::{CallArgs, IntsOrWord, Poisoned};
use crate::ir::Dim;

/// How a window op pads its input's height and width.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Padding2d {
    /// Zeros (for pooling: nothing) added on each side.
    Explicit {
        top: usize,
        left: usize,
        bottom: usize,
        right: usize,
    },
    /// TensorFlow's "SAME": output size ceil(input / stride); the total
    /// padding that needs is split with the odd pixel at the bottom and right.
    Same,
}

/// Where the channels sit in a window op's input and output (and a fused
/// convolution's residual). Weights stay OIHW, the bias `[O]`, whatever the
/// layout: kernels repack them when the model is compiled.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum DataLayout {
    /// `[batch, channels, height, width]`, PyTorch's and ONNX's.
    #[default]
    Nchw,
    /// `[batch, height, width, channels]` (channels last), TensorFlow's:
    /// what kernels vectorising across channels read.
    Nhwc,
}

impl DataLayout {
    pub const NAMES: [&'static str; 2] = ["nchw", "nhwc"];

    pub fn name(self) -> &'static str {
        match self {
            DataLayout::Nchw => "nchw",
            DataLayout::Nhwc => "nhwc",
        }
    }

    fn from_name(name: &str) -> Option<DataLayout> {
        match name {
            "nchw" => Some(DataLayout::Nchw),
            "nhwc" => Some(DataLayout::Nhwc),
            _ => None,
        }
    }

    /// The axis of the channels in a rank-4 tensor of this layout.
    pub fn channel_axis(self) -> usize {
        match self {
            DataLayout::Nchw => 1,
            DataLayout::Nhwc => 3,
        }
    }

    /// The axes of height and width in a rank-4 tensor of this layout.
    pub fn spatial_axes(self) -> [usize; 2] {
        match self {
            DataLayout::Nchw => [2, 3],
            DataLayout::Nhwc => [1, 2],
        }
    }

    /// `[batch, channels, height, width]` of a shape in this layout.
    pub fn to_nchw<T: Clone>(self, shape: &[T]) -> [T; 4] {
        let [h, w] = self.spatial_axes();
        [
            shape[0].clone(),
            shape[self.channel_axis()].clone(),
            shape[h].clone(),
            shape[w].clone(),
        ]
    }

    /// The shape in this layout of `[batch, channels, height, width]`.
    pub fn from_nchw<T>(self, [n, c, h, w]: [T; 4]) -> Vec<T> {
        match self {
            DataLayout::Nchw => vec![n, c, h, w],
            DataLayout::Nhwc => vec![n, h, w, c],
        }
    }

    /// The flat index of element `(n, c, y, x)` of a tensor of this layout
    /// with `channels` channels and `height` x `width` pixels.
    pub fn index(
        self,
        [channels, height, width]: [usize; 3],
        n: usize,
        c: usize,
        y: usize,
        x: usize,
    ) -> usize {
        match self {
            DataLayout::Nchw => ((n * channels + c) * height + y) * width + x,
            DataLayout::Nhwc => ((n * height + y) * width + x) * channels + c,
        }
    }

    /// The permutation (for `permute`) taking an NCHW tensor to this
    /// layout, and the one taking this layout back to NCHW.
    pub fn from_nchw_perm(self) -> [usize; 4] {
        match self {
            DataLayout::Nchw => [0, 1, 2, 3],
            DataLayout::Nhwc => [0, 2, 3, 1],
        }
    }

    pub fn to_nchw_perm(self) -> [usize; 4] {
        match self {
            DataLayout::Nchw => [0, 1, 2, 3],
            DataLayout::Nhwc => [0, 3, 1, 2],
        }
    }
}

/// Stride, dilation, padding and data layout of a 2-D window.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Window2d {
    pub stride: [usize; 2],
    pub dilation: [usize; 2],
    pub padding: Padding2d,
    pub layout: DataLayout,
}

impl Window2d {
    /// Reads `stride=`, `dilation=` and `padding=` (each an int or a pair;
    /// padding also four sides `[top, left, bottom, right]`, `"valid"` or
    /// `"same"`) and `layout=` (`"nchw"`, the default, or `"nhwc"`).
    /// `default_stride` is what `stride` is when not given.
    pub fn read(args: &mut dyn CallArgs, default_stride: [usize; 2]) -> Result<Window2d, Poisoned> {
        let stride = read_pair(args, "stride", default_stride)?;
        let dilation = read_pair(args, "dilation", [1, 1])?;
        let padding = match args.ints_or_word("padding", &["valid", "same"])? {
            None => Padding2d::Explicit {
                top: 0,
                left: 0,
                bottom: 0,
                right: 0,
            },
            Some(IntsOrWord::Word(w)) if w == "same" => Padding2d::Same,
            Some(IntsOrWord::Word(_)) => Padding2d::Explicit {
                top: 0,
                left: 0,
                bottom: 0,
                right: 0,
            },
            Some(IntsOrWord::Ints(values)) => {
                if values.iter().any(|&v| v < 0) {
                    return Err(args.error(format!("padding must be >= 0, got {values:?}")));
                }
                let v: Vec<usize> = values.iter().map(|&v| v as usize).collect();
                match v.as_slice() {
                    [p] => Padding2d::Explicit {
                        top: *p,
                        left: *p,
                        bottom: *p,
                        right: *p,
                    },
                    [h, w] => Padding2d::Explicit {
                        top: *h,
                        left: *w,
                        bottom: *h,
                        right: *w,
                    },
                    [top, left, bottom, right] => Padding2d::Explicit {
                        top: *top,
                        left: *left,
                        bottom: *bottom,
                        right: *right,
                    },
                    _ => {
                        return Err(args.error(format!(
                            "padding is one int, [height, width], [top, left, bottom, right], \
                             \"valid\" or \"same\"; got {} values",
                            v.len()
                        )))
                    }
                }
            }
        };
        let layout = read_layout(args)?;
        Ok(Window2d {
            stride,
            dilation,
            padding,
            layout,
        })
    }

    /// The extent of a kernel of `k` taps along `axis` (0 height, 1 width).
    fn extent(&self, axis: usize, k: usize) -> Option<usize> {
        (k.checked_sub(1)?)
            .checked_mul(self.dilation[axis])?
            .checked_add(1)
    }

    /// `(before, after)` padding along `axis` for an input of `size` and a
    /// kernel of `k` taps. `None` when sizes overflow.
    pub fn pads(&self, axis: usize, size: usize, k: usize) -> Option<(usize, usize)> {
        match self.padding {
            Padding2d::Explicit {
                top,
                left,
                bottom,
                right,
            } => Some(if axis == 0 {
                (top, bottom)
            } else {
                (left, right)
            }),
            Padding2d::Same => {
                let stride = self.stride[axis];
                let out = size.div_ceil(stride);
                let needed = (out.saturating_sub(1))
                    .checked_mul(stride)?
                    .checked_add(self.extent(axis, k)?)?;
                let total = needed.saturating_sub(size);
                Some((total / 2, total - total / 2))
            }
        }
    }

    /// The output size along `axis` (0 height, 1 width) for input `size`
    /// and a kernel of `k` taps; `op` and `input` name things in messages.
    pub fn out_dim(&self, op: &str, axis: usize, size: &Dim, k: usize) -> Result<Dim, ShapeError> {
        let side = ["height", "width"][axis];
        let stride = self.stride[axis];
        let Some(extent) = self.extent(axis, k) else {
            return err(format!("{op}: the kernel's {side} {k} is 0 or too large"));
        };
        let Some(n) = size.as_known() else {
            let keeps_size = stride == 1
                && match self.padding {
                    Padding2d::Same => true,
                    Padding2d::Explicit { .. } => {
                        let (a, b) = self.pads(axis, 0, k).expect("explicit pads");
                        a.checked_add(b) == Some(extent - 1)
                    }
                };
            if keeps_size {
                return Ok(size.clone());
            }
            return err(format!(
                "{op}: the input's {side} is the symbol `{size}`, but the output {side} \
                 floor(({size} + padding - {extent}) / {stride}) + 1 is not a product of \
                 symbols; give the {side} as an integer (only stride 1 with \"same\" padding, \
                 or padding that adds up to the window's extent minus 1, keeps a symbolic size)"
            ));
        };
        let Some((before, after)) = self.pads(axis, n, k) else {
            return err(format!("{op}: padding overflows"));
        };
        let Some(padded) = n.checked_add(before).and_then(|p| p.checked_add(after)) else {
            return err(format!("{op}: padding overflows"));
        };
        if padded < extent {
            return err(format!(
                "{op}: the window's {side} ({extent}{}) is larger than the padded input's ({padded})",
                if self.dilation[axis] > 1 {
                    format!(", {k} taps dilated by {}", self.dilation[axis])
                } else {
                    String::new()
                }
            ));
        }
        Ok(Dim::known((padded - extent) / stride + 1))
    }

    /// The printed attributes.
    pub fn attributes(&self) -> Vec<(&'static str, String)> {
        let pair = |p: [usize; 2]| {
            if p[0] == p[1] {
                p[0].to_string()
            } else {
                format!("[{}, {}]", p[0], p[1])
            }
        };
        let padding = match self.padding {
            Padding2d::Same => "\"same\"".to_string(),
            Padding2d::Explicit {
                top,
                left,
                bottom,
                right,
            } => format!("[{top}, {left}, {bottom}, {right}]"),
        };
        let mut attributes = vec![
            ("stride", pair(self.stride)),
            ("dilation", pair(self.dilation)),
            ("padding", padding),
        ];
        // Only when not the default, so NCHW graphs print as they always have.
        if self.layout != DataLayout::Nchw {
            attributes.push(("layout", format!("\"{}\"", self.layout.name())));
        }
        attributes
    }

    /// Every input pixel a window tap reads, as `(input index, tap index)`
    /// pairs along `axis` for output position `o`, skipping taps that land
    /// in padding. `before` is the padding before the input.
    pub fn taps(&self, axis: usize, o: usize, before: usize, size: usize, k: usize) -> Taps {
        Taps {
            start: (o * self.stride[axis]) as isize - before as isize,
            dilation: self.dilation[axis] as isize,
            size: size as isize,
            k,
            next: 0,
        }
    }
}

/// See [`Window2d::taps`].
pub struct Taps {
    start: isize,
    dilation: isize,
    size: isize,
    k: usize,
    next: usize,
}

impl Iterator for Taps {
    type Item = (usize, usize);

    fn next(&mut self) -> Option<(usize, usize)> {
        while self.next < self.k {
            let tap = self.next;
            self.next += 1;
            let at = self.start + tap as isize * self.dilation;
            if (0..self.size).contains(&at) {
                return Some((at as usize, tap));
            }
        }
        None
    }
}

/// `layout="nchw"|"nhwc"`, NCHW when absent.
pub fn read_layout(args: &mut dyn CallArgs) -> Result<DataLayout, Poisoned> {
    let name = args.word("layout", &DataLayout::NAMES, DataLayout::Nchw.name())?;
    Ok(DataLayout::from_name(&name).expect("`word` accepts only the listed names"))
}

/// An attribute that is one positive int or a pair `[height, width]`.
pub fn read_pair(
    args: &mut dyn CallArgs,
    key: &str,
    default: [usize; 2],
) -> Result<[usize; 2], Poisoned> {
    let Some(values) = args.int_list(key, false)? else {
        return Ok(default);
    };
    let positive = |v: i64| usize::try_from(v).ok().filter(|&v| v > 0);
    match values.as_slice() {
        [v] => positive(*v).map(|v| [v, v]),
        [h, w] => positive(*h).zip(positive(*w)).map(|(h, w)| [h, w]),
        _ => None,
    }
    .ok_or_else(|| {
        args.error(format!(
            "{key} is one positive int or [height, width], got {values:?}"
        ))
    })
}
