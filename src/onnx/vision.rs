//! ONNX convolution, pooling, padding and resampling onto lamina's 2-D
//! window ops (`conv2d`, `max_pool2d`, `avg_pool2d`, `pad`, `resize`).
//!
//! lamina's window ops take NCHW: a 1-D ONNX op (`[N, C, L]`) runs as a 2-D
//! one of height 1 between two reshapes; 3-D ones are not imported. ONNX's
//! `auto_pad` and `ceil_mode` become explicit padding computed from the
//! known input size (`SAME_UPPER` on a symbolic size is lamina's `"same"`).

use crate::ir::image_input::ResizeFilter;
use crate::ir::ops::pad::Pad;
use crate::ir::ops::pool::{Pool2d, PoolKind};
use crate::ir::ops::resize::Resize;
use crate::ir::ops::window::{DataLayout, Padding2d, Window2d};
use crate::ir::ops::{conv::Conv2d, Float};
use crate::ir::{Dim, Op};

use super::builder::{Builder, Val};
use super::convert::{float_only, known_f32, known_ints, opt, req, Node};

/// The spatial geometry of one ONNX window op, per spatial axis.
struct Geometry {
    stride: Vec<usize>,
    dilation: Vec<usize>,
    /// `(begin, end)` per axis, or `None` for lamina's `"same"`.
    pads: Option<Vec<(usize, usize)>>,
}

fn positive(values: Vec<i64>, what: &str) -> Result<Vec<usize>, String> {
    values
        .into_iter()
        .map(|v| {
            usize::try_from(v)
                .ok()
                .filter(|&v| v > 0)
                .ok_or_else(|| format!("{what} must be positive, got {v}"))
        })
        .collect()
}

/// Reads kernel, strides, dilations, pads, `auto_pad` and `ceil_mode` for
/// an input of spatial size `spatial`.
fn geometry(n: &Node<'_>, kernel: Vec<usize>, spatial: &[Dim]) -> Result<Geometry, String> {
    let k = kernel.len();
    let stride = positive(n.ints("strides").unwrap_or(vec![1; k]), "strides")?;
    let dilation = positive(n.ints("dilations").unwrap_or(vec![1; k]), "dilations")?;
    if stride.len() != k || dilation.len() != k {
        return Err(format!(
            "strides and dilations need one entry per spatial axis ({k})"
        ));
    }
    let extent = |i: usize| (kernel[i] - 1) * dilation[i] + 1;
    let auto_pad = n.string("auto_pad").unwrap_or_else(|| "NOTSET".into());
    let mut pads: Vec<(usize, usize)> = match auto_pad.as_str() {
        "NOTSET" => {
            let p = n.ints("pads").unwrap_or(vec![0; 2 * k]);
            if p.len() != 2 * k || p.iter().any(|&v| v < 0) {
                return Err(format!(
                    "pads must be {} non-negative integers, got {p:?}",
                    2 * k
                ));
            }
            (0..k).map(|i| (p[i] as usize, p[k + i] as usize)).collect()
        }
        "VALID" => vec![(0, 0); k],
        "SAME_UPPER" | "SAME_LOWER" => {
            let known: Option<Vec<usize>> = spatial.iter().map(Dim::as_known).collect();
            let Some(sizes) = known else {
                if auto_pad == "SAME_UPPER" {
                    return Ok(Geometry {
                        stride,
                        dilation,
                        pads: None,
                    });
                }
                return Err("auto_pad SAME_LOWER needs a known height and width".into());
            };
            (0..k)
                .map(|i| {
                    let out = sizes[i].div_ceil(stride[i]);
                    let total = ((out.max(1) - 1) * stride[i] + extent(i)).saturating_sub(sizes[i]);
                    let small = total / 2;
                    if auto_pad == "SAME_UPPER" {
                        (small, total - small)
                    } else {
                        (total - small, small)
                    }
                })
                .collect()
        }
        other => return Err(format!("auto_pad `{other}` is not an ONNX padding mode")),
    };
    if n.int("ceil_mode", 0) != 0 {
        // Ceiling output sizes as extra end padding (which a max never
        // picks and an average does not count); a window that would start
        // in the end padding is dropped, as ONNX's reference does.
        let known: Option<Vec<usize>> = spatial.iter().map(Dim::as_known).collect();
        let sizes = known.ok_or("ceil_mode needs a known height and width")?;
        for i in 0..k {
            let padded = sizes[i] + pads[i].0 + pads[i].1;
            if padded < extent(i) {
                continue;
            }
            let mut out = (padded - extent(i)).div_ceil(stride[i]) + 1;
            if (out - 1) * stride[i] >= sizes[i] + pads[i].0 {
                out -= 1;
            }
            let needed = (out - 1) * stride[i] + extent(i);
            pads[i].1 += needed.saturating_sub(padded);
        }
    }
    Ok(Geometry {
        stride,
        dilation,
        pads: Some(pads),
    })
}

/// The geometry as lamina's 2-D window (1-D ops as height 1).
fn window(g: &Geometry) -> Window2d {
    let pair = |v: &[usize], one: usize| {
        if v.len() == 1 {
            [one, v[0]]
        } else {
            [v[0], v[1]]
        }
    };
    let padding = match &g.pads {
        None => Padding2d::Same,
        Some(p) if p.len() == 1 => Padding2d::Explicit {
            top: 0,
            left: p[0].0,
            bottom: 0,
            right: p[0].1,
        },
        Some(p) => Padding2d::Explicit {
            top: p[0].0,
            left: p[1].0,
            bottom: p[0].1,
            right: p[1].1,
        },
    };
    Window2d {
        stride: pair(&g.stride, 1),
        dilation: pair(&g.dilation, 1),
        padding,
        layout: DataLayout::Nchw,
    }
}

/// `x` as NCHW: rank 4 as it is, rank 3 (`[N, C, L]`) with a height of 1.
fn as_2d(b: &mut Builder, x: &Val, h: &str) -> Result<(Val, usize), String> {
    let ty = b.ty(x)?;
    match ty.rank() {
        4 => Ok((x.clone(), 2)),
        3 => {
            let mut shape = ty.shape.clone();
            shape.insert(2, Dim::known(1));
            Ok((b.reshape(x, shape, &format!("{h}_2d"))?, 1))
        }
        r => Err(format!(
            "lamina's window ops are 2-D (and 1-D through them); this one has {} spatial axes",
            r.saturating_sub(2)
        )),
    }
}

/// Back from NCHW to the rank the ONNX op had.
fn from_2d(b: &mut Builder, y: &Val, spatial: usize, h: &str) -> Result<Val, String> {
    if spatial == 2 {
        return Ok(y.clone());
    }
    let mut shape = b.ty(y)?.shape;
    shape.remove(2);
    b.reshape(y, shape, h)
}

pub fn conv(b: &mut Builder, n: &Node<'_>, ins: &[Option<Val>], h: &str) -> Result<Val, String> {
    let (x, w) = (req(ins, 0, "X")?, req(ins, 1, "W")?);
    float_only(b, x)?;
    float_only(b, w)?;
    let wty = b.ty(w)?;
    let kernel: Vec<usize> = match n.ints("kernel_shape") {
        Some(k) => positive(k, "kernel_shape")?,
        None => wty.shape[2.min(wty.rank())..]
            .iter()
            .map(|d| d.as_known().ok_or("the kernel size must be known"))
            .collect::<Result<_, _>>()?,
    };
    let spatial_ty = b.ty(x)?;
    let g = geometry(n, kernel, &spatial_ty.shape[2.min(spatial_ty.rank())..])?;
    let (x2, spatial) = as_2d(b, x, h)?;
    let (w2, _) = as_2d(b, w, &format!("{h}_weight"))?;
    let groups = usize::try_from(n.int("group", 1))
        .ok()
        .filter(|&g| g > 0)
        .ok_or("group must be positive")?;
    let op = Op::Conv2d(Conv2d {
        window: window(&g),
        groups,
    });
    let name = if spatial == 2 {
        h.to_string()
    } else {
        format!("{h}_conv")
    };
    let y = match opt(ins, 2) {
        Some(bias) => b.op(op, &[&x2, &w2, bias], &name)?,
        None => b.op(op, &[&x2, &w2], &name)?,
    };
    from_2d(b, &y, spatial, h)
}

pub fn pool(b: &mut Builder, n: &Node<'_>, ins: &[Option<Val>], h: &str) -> Result<Val, String> {
    let x = req(ins, 0, "X")?;
    float_only(b, x)?;
    if n.op_type() == "MaxPool" && n.wants_output(1) {
        return Err("the Indices output (argmax positions) is not imported".into());
    }
    if n.int("storage_order", 0) != 0 {
        return Err("storage_order 1 (column-major indices) is not imported".into());
    }
    let kernel = positive(
        n.ints("kernel_shape").ok_or("kernel_shape is required")?,
        "kernel_shape",
    )?;
    let ty = b.ty(x)?;
    if ty.rank() != kernel.len() + 2 {
        return Err(format!(
            "kernel_shape has {} entries for an input of rank {}",
            kernel.len(),
            ty.rank()
        ));
    }
    let count_include_pad = n.int("count_include_pad", 0) != 0;
    if count_include_pad && n.int("ceil_mode", 0) != 0 {
        return Err(
            "ceil_mode with count_include_pad is not imported (the ceiling's extra window part would count as padding)"
                .into(),
        );
    }
    let g = geometry(n, kernel.clone(), &ty.shape[2..])?;
    let (x2, spatial) = as_2d(b, x, h)?;
    let kind = if n.op_type() == "MaxPool" {
        PoolKind::Max
    } else {
        PoolKind::Avg { count_include_pad }
    };
    let kernel = if kernel.len() == 1 {
        [1, kernel[0]]
    } else {
        [kernel[0], kernel[1]]
    };
    let op = Op::Pool2d(Pool2d {
        kind,
        kernel,
        window: window(&g),
    });
    let name = if spatial == 2 {
        h.to_string()
    } else {
        format!("{h}_pool")
    };
    let y = b.op(op, &[&x2], &name)?;
    from_2d(b, &y, spatial, h)
}

/// `Pad` in constant mode (opset 2's attributes or 11's inputs, with 18's
/// `axes`).
pub fn pad(b: &mut Builder, n: &Node<'_>, ins: &[Option<Val>], h: &str) -> Result<Val, String> {
    let x = req(ins, 0, "data")?;
    let mode = n.string("mode").unwrap_or_else(|| "constant".into());
    if mode != "constant" {
        return Err(format!(
            "mode `{mode}` is not imported (lamina's pad adds a constant border)"
        ));
    }
    let rank = b.rank(x)?;
    let (pads, value) = if n.opset < 11 {
        (
            n.ints("pads").ok_or("pads is required")?,
            n.float("value", 0.0),
        )
    } else {
        let pads = known_ints(req(ins, 1, "pads")?, "the pads")?;
        let value = match opt(ins, 2) {
            Some(v) => known_f32(v, "the constant value")?,
            None => 0.0,
        };
        (pads, value)
    };
    let axes: Vec<usize> = match opt(ins, 3) {
        Some(a) => known_ints(a, "the axes")?
            .into_iter()
            .map(|a| super::convert::axis(a, rank))
            .collect::<Result<_, _>>()?,
        None => (0..rank).collect(),
    };
    if pads.len() != 2 * axes.len() {
        return Err(format!(
            "{} pads for {} axes (ONNX wants begins then ends)",
            pads.len(),
            axes.len()
        ));
    }
    let mut per_axis = vec![(0usize, 0usize); rank];
    for (i, &a) in axes.iter().enumerate() {
        let (begin, end) = (pads[i], pads[axes.len() + i]);
        if begin < 0 || end < 0 {
            return Err(format!(
                "negative pads (cropping) are not imported, got {pads:?}"
            ));
        }
        per_axis[a] = (begin as usize, end as usize);
    }
    if !value.is_finite() {
        return Err(format!("a pad value of {value} is not imported"));
    }
    b.op(
        Op::Pad(Pad {
            pads: per_axis,
            value: Float(value),
        }),
        &[x],
        h,
    )
}

/// `Resize` of height and width where it is lamina's `resize`: half-pixel
/// coordinates, nearest or bilinear, no antialiasing, and an output size
/// whose ratio to the input is the scale ONNX resamples with.
pub fn resize(b: &mut Builder, n: &Node<'_>, ins: &[Option<Val>], h: &str) -> Result<Val, String> {
    let x = req(ins, 0, "X")?;
    float_only(b, x)?;
    let ty = b.ty(x)?;
    if ty.rank() != 4 {
        return Err(format!(
            "resizes a rank-{} input; lamina resizes NCHW only",
            ty.rank()
        ));
    }
    let in_hw: Vec<usize> = ty.shape[2..]
        .iter()
        .map(|d| {
            d.as_known()
                .ok_or("the input's height and width must be known")
        })
        .collect::<Result<_, _>>()?;
    let unsupported = |what: String| {
        Err(format!("{what} is not imported (lamina's resize: half-pixel centres, nearest or bilinear, no antialiasing)"))
    };
    let mode = n.string("mode").unwrap_or_else(|| "nearest".into());
    let transform = n
        .string("coordinate_transformation_mode")
        .unwrap_or_else(|| "half_pixel".into());
    if n.int("antialias", 0) != 0 {
        return unsupported("antialias".into());
    }
    if n.ints("axes").is_some_and(|a| a != [2, 3] && a != [-2, -1]) {
        return unsupported("resizing axes other than height and width".into());
    }
    if n.string("keep_aspect_ratio_policy")
        .is_some_and(|p| p != "stretch")
    {
        return unsupported("keep_aspect_ratio_policy other than stretch".into());
    }
    let filter = match mode.as_str() {
        "nearest" => ResizeFilter::Nearest,
        "linear" => ResizeFilter::Bilinear,
        other => return unsupported(format!("mode `{other}`")),
    };
    // Inputs: X, roi (opset 11+), scales, sizes; opset 10: X, scales.
    let (scales_at, sizes_at) = if n.opset < 11 { (1, 2) } else { (2, 3) };
    let hw = |v: Vec<f64>| -> Result<[f64; 2], String> {
        match v.as_slice() {
            [a, b] => Ok([*a, *b]),
            [1.0, 1.0, a, b] => Ok([*a, *b]),
            _ => Err(format!(
                "scales or sizes {v:?} change more than height and width"
            )),
        }
    };
    fn nonempty<'v>(b: &Builder, v: Option<&'v Val>) -> Option<&'v Val> {
        v.filter(|v| {
            b.ty(v)
                .is_ok_and(|t| t.known_shape().map(|s| s.iter().product::<usize>()) != Some(0))
        })
    }
    let (out, scale) = if let Some(sizes) = nonempty(b, opt(ins, sizes_at)) {
        let s = hw(known_ints(sizes, "the sizes")?
            .into_iter()
            .map(|v| v as f64)
            .collect())?;
        let out = [s[0] as usize, s[1] as usize];
        (out, [s[0] / in_hw[0] as f64, s[1] / in_hw[1] as f64])
    } else {
        let scales_val =
            nonempty(b, opt(ins, scales_at)).ok_or("neither scales nor sizes is given")?;
        let s = hw(scale_values(scales_val)?)?;
        let out = [
            (in_hw[0] as f64 * s[0]).floor() as usize,
            (in_hw[1] as f64 * s[1]).floor() as usize,
        ];
        (out, s)
    };
    for i in 0..2 {
        if out[i] == 0 || (out[i] as f64 / in_hw[i] as f64 - scale[i]).abs() > 1e-9 * scale[i] {
            return unsupported(format!(
                "a scale ({}) that is not the ratio of output to input size ({} to {})",
                scale[i], out[i], in_hw[i]
            ));
        }
    }
    match transform.as_str() {
        "half_pixel" => {}
        "pytorch_half_pixel" if out[0] > 1 && out[1] > 1 => {}
        other => return unsupported(format!("coordinate_transformation_mode `{other}`")),
    }
    if filter == ResizeFilter::Nearest {
        // lamina's nearest pixel is floor((dst + 0.5) * in / out): ONNX's
        // round_prefer_ceil, and round_prefer_floor wherever no source
        // coordinate falls exactly between two pixels.
        let nearest = n
            .string("nearest_mode")
            .unwrap_or_else(|| "round_prefer_floor".into());
        let ties = (0..2).any(|i| {
            (0..out[i]).any(|d| {
                // (d + 0.5) * in / out - 0.5 is k + 0.5 exactly when
                // (2d + 1) * in is a multiple of 2 * out.
                ((2 * d + 1) * in_hw[i]) % (2 * out[i]) == 0
            })
        });
        match nearest.as_str() {
            "round_prefer_ceil" => {}
            "round_prefer_floor" if !ties => {}
            other => return unsupported(format!("nearest_mode `{other}` here")),
        }
    }
    b.op(
        Op::Resize(Resize {
            size: out,
            mode: filter,
        }),
        &[x],
        h,
    )
}

fn scale_values(v: &Val) -> Result<Vec<f64>, String> {
    match v.as_const().map(|t| t.data()) {
        Some(crate::tensor::TensorData::F32(d)) => Ok(d.iter().map(|&x| f64::from(x)).collect()),
        _ => Err("the scales must be known when the model is imported (f32 constants)".into()),
    }
}
