//! Matrix products: `matmul` (`a @ b`) and the `fused_linear` layer the
//! `fuse-linear` pass makes of matmul + bias + activation + residual.

use super::shape::{
    broadcast_keeps_samples, err, expect_dtype, matmul_shape, operand_keeps_samples, show,
    ShapeError,
};
use crate::ir::vjp::{GradError, Vjp};
use std::borrow::Cow;

use super::values::{broadcast_offsets, elements};
use super::{BinaryOp, Builtin, CallArgs, EvalError, NodeId, Op, OpKind, Poisoned, UnaryOp};
use crate::ir::graph::ShapeDisplay;
use crate::ir::{DType, TensorType};
use crate::tensor::Tensor;

/// `a @ b`: 2-D, or batched with broadcast batch dims; a 1-D operand is
/// not promoted (write a reshape). `transpose_*` swap the last two axes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct MatMul {
    pub transpose_a: bool,
    pub transpose_b: bool,
}

/// The epilogue of a fused linear layer or convolution (`fused_linear`,
/// `fused_conv2d`), applied to each output element before it is stored:
/// `act(acc + bias) + residual`. Its operands follow the product's own:
/// the bias first (if any), then the residual (if any).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct LinearEpilogue {
    pub bias: bool,
    pub activation: Option<UnaryOp>,
    pub residual: bool,
}

impl LinearEpilogue {
    /// The fused node's operand count, for a product of `product_operands`.
    pub fn operand_count(&self, product_operands: usize) -> usize {
        product_operands + usize::from(self.bias) + usize::from(self.residual)
    }

    /// The position of the bias among the fused node's operands.
    pub fn bias_operand(&self, product_operands: usize) -> Option<usize> {
        self.bias.then_some(product_operands)
    }

    /// The position of the residual among the fused node's operands.
    pub fn residual_operand(&self, product_operands: usize) -> Option<usize> {
        self.residual
            .then_some(product_operands + usize::from(self.bias))
    }

    /// The printed attributes, after the product's own.
    pub fn attributes(&self) -> Vec<(&'static str, String)> {
        let mut a = vec![];
        if self.bias {
            a.push(("bias", "true".to_string()));
        }
        if let Some(act) = self.activation {
            a.push(("activation", act.name().to_string()));
        }
        if self.residual {
            a.push(("residual", "true".to_string()));
        }
        a
    }
}

/// matmul + epilogue. Inputs: a, b, then bias (if any), then residual (if any).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct FusedLinear {
    pub transpose_b: bool,
    pub epilogue: LinearEpilogue,
}

/// 2 flops per multiply-add: 2 * (output elements) * (inner dimension).
fn product_flops(a_shape: &[usize], inner_from_end: usize, out_shape: &[usize]) -> u64 {
    let k = a_shape
        .len()
        .checked_sub(inner_from_end)
        .map_or(0, |axis| a_shape[axis]);
    let outputs: usize = out_shape.iter().product();
    2 * outputs as u64 * k as u64
}

impl OpKind for MatMul {
    fn name(&self) -> &'static str {
        "matmul"
    }

    fn arity(&self) -> (usize, usize) {
        (2, 2)
    }

    fn keeps_samples(&self, inputs: &[&TensorType], batched: &[bool]) -> bool {
        product_keeps_samples(inputs, batched, self.transpose_a)
    }

    fn infer(&self, inputs: &[&TensorType]) -> Result<TensorType, ShapeError> {
        expect_dtype("matmul", "a", inputs[0], DType::F32)?;
        expect_dtype("matmul", "b", inputs[1], DType::F32)?;
        Ok(TensorType::new(
            DType::F32,
            matmul_shape(inputs[0], inputs[1], self.transpose_a, self.transpose_b)?,
        ))
    }

    fn eval(&self, inputs: &[&Tensor], out_shape: &[usize]) -> Result<Tensor, EvalError> {
        matmul(
            inputs[0],
            inputs[1],
            self.transpose_a,
            self.transpose_b,
            out_shape,
        )
    }

    fn attributes(&self) -> Vec<(&'static str, String)> {
        let mut a = vec![];
        if self.transpose_a {
            a.push(("transpose_a", "true".to_string()));
        }
        if self.transpose_b {
            a.push(("transpose_b", "true".to_string()));
        }
        a
    }

    fn flops(&self, inputs: &[&[usize]], out_shape: &[usize]) -> u64 {
        product_flops(inputs[0], if self.transpose_a { 2 } else { 1 }, out_shape)
    }

    /// dA = G op(B)^T, dB = op(A)^T G (see `matmul_vjp`).
    fn vjp(
        &self,
        cx: &mut Vjp<'_>,
        _node: NodeId,
        inputs: &[NodeId],
        g: NodeId,
        wants: &[bool],
    ) -> Result<Vec<Option<NodeId>>, GradError> {
        let [da, db] = matmul_vjp(
            cx,
            inputs[0],
            inputs[1],
            self.transpose_a,
            self.transpose_b,
            g,
            [wants[0], wants[1]],
        )?;
        Ok(vec![da, db])
    }
}

impl OpKind for FusedLinear {
    fn name(&self) -> &'static str {
        "fused_linear"
    }

    fn arity(&self) -> (usize, usize) {
        let n = self.epilogue.operand_count(2);
        (n, n)
    }

    fn keeps_samples(&self, inputs: &[&TensorType], batched: &[bool]) -> bool {
        let rank = inputs[0].shape.len().max(inputs[1].shape.len());
        let epilogue_ok = (2..inputs.len()).all(|i| {
            if Some(i) == self.epilogue.residual_operand(2) {
                operand_keeps_samples(inputs[i], batched[i], rank)
            } else {
                !batched[i]
            }
        });
        epilogue_ok && product_keeps_samples(&inputs[..2], &batched[..2], false)
    }

    fn infer(&self, inputs: &[&TensorType]) -> Result<TensorType, ShapeError> {
        expect_dtype("fused_linear", "a", inputs[0], DType::F32)?;
        expect_dtype("fused_linear", "b", inputs[1], DType::F32)?;
        let shape = matmul_shape(inputs[0], inputs[1], false, self.transpose_b)?;
        let n = shape.last().expect("matmul rank >= 2").clone();
        let mut next = 2;
        if self.epilogue.bias {
            let bias = inputs[next];
            next += 1;
            if bias.shape != [n.clone()] {
                return err(format!(
                    "fused_linear: bias must be [{n}], got {}",
                    show(bias)
                ));
            }
        }
        if self.epilogue.residual {
            let residual = inputs[next];
            if residual.shape != shape {
                return err(format!(
                    "fused_linear: residual must be {}, got {}",
                    ShapeDisplay(&shape),
                    show(residual)
                ));
            }
        }
        Ok(TensorType::new(DType::F32, shape))
    }

    fn eval(&self, inputs: &[&Tensor], out_shape: &[usize]) -> Result<Tensor, EvalError> {
        fused_linear(inputs, self.transpose_b, &self.epilogue, out_shape)
    }

    fn attributes(&self) -> Vec<(&'static str, String)> {
        let mut a = vec![];
        if self.transpose_b {
            a.push(("transpose_b", "true".to_string()));
        }
        a.extend(self.epilogue.attributes());
        a
    }

    fn flops(&self, inputs: &[&[usize]], out_shape: &[usize]) -> u64 {
        product_flops(inputs[0], 1, out_shape)
    }

    /// As matmul, bias add, activation and residual add.
    fn vjp(
        &self,
        cx: &mut Vjp<'_>,
        _node: NodeId,
        inputs: &[NodeId],
        g: NodeId,
        wants: &[bool],
    ) -> Result<Vec<Option<NodeId>>, GradError> {
        fused_linear_vjp(cx, inputs, self.transpose_b, &self.epilogue, g, wants)
    }
}

/// `matmul(a, b, transpose_a=false, transpose_b=false)` (also `a @ b`).
pub const BUILTIN: Builtin = Builtin {
    names: &["matmul"],
    lower,
};

fn lower(_name: &str, args: &mut dyn CallArgs) -> Result<(Op, Vec<NodeId>), Poisoned> {
    let a = args.tensor()?;
    let b = args.tensor()?;
    let transpose_a = args.bool("transpose_a", false)?;
    let transpose_b = args.bool("transpose_b", false)?;
    Ok((
        Op::MatMul(MatMul {
            transpose_a,
            transpose_b,
        }),
        vec![a, b],
    ))
}

// ---- reference evaluation ----

/// One `[m, k] @ [k, n]` product into `out`, in i-k-j order so the inner
/// loop runs over contiguous rows of `b` and `out`. Sums are accumulated in
/// f64 and rounded once, so the result is the correctly rounded dot product
/// in all but pathological cases: more accurate than any f32 fast path.
/// No term is skipped for a zero factor, so NaN and inf propagate.
fn matmul_block(a: &[f32], b: &[f32], out: &mut [f32], k: usize, n: usize, row_sums: &mut [f64]) {
    for (a_row, out_row) in a.chunks_exact(k).zip(out.chunks_exact_mut(n)) {
        row_sums.fill(0.0);
        for (&a_ip, b_row) in a_row.iter().zip(b.chunks_exact(n)) {
            let a_ip = f64::from(a_ip);
            for (sum, &b_pj) in row_sums.iter_mut().zip(b_row) {
                *sum += a_ip * f64::from(b_pj);
            }
        }
        for (o, &sum) in out_row.iter_mut().zip(row_sums.iter()) {
            *o = sum as f32;
        }
    }
}

/// `a @ b` over the last two axes, the leading (batch) axes broadcast.
/// A transpose flag swaps that operand's last two axes first.
pub(super) fn matmul(
    a: &Tensor,
    b: &Tensor,
    transpose_a: bool,
    transpose_b: bool,
    out_shape: &[usize],
) -> Result<Tensor, EvalError> {
    let a = if transpose_a {
        Cow::Owned(super::layout::transpose_last_two(a)?)
    } else {
        Cow::Borrowed(a)
    };
    let b = if transpose_b {
        Cow::Owned(super::layout::transpose_last_two(b)?)
    } else {
        Cow::Borrowed(b)
    };
    let (a_values, b_values) = (
        elements::<f32>("matmul", &a)?,
        elements::<f32>("matmul", &b)?,
    );
    let (a_batch, a_matrix) = a.shape().split_at(a.shape().len() - 2);
    let (b_batch, b_matrix) = b.shape().split_at(b.shape().len() - 2);
    let out_batch = &out_shape[..out_shape.len() - 2];
    let (m, k, n) = (a_matrix[0], a_matrix[1], b_matrix[1]);

    let mut out = vec![0.0f32; out_shape.iter().product()];
    let mut row_sums = vec![0.0f64; n];
    // chunks_exact rejects a zero chunk size; with m, k or n zero the
    // zero-filled output is already the answer (an empty sum is 0).
    if m > 0 && k > 0 && n > 0 {
        let batches =
            broadcast_offsets(a_batch, out_batch).zip(broadcast_offsets(b_batch, out_batch));
        for ((a_index, b_index), out_block) in batches.zip(out.chunks_exact_mut(m * n)) {
            matmul_block(
                &a_values[a_index * m * k..(a_index + 1) * m * k],
                &b_values[b_index * k * n..(b_index + 1) * k * n],
                out_block,
                k,
                n,
                &mut row_sums,
            );
        }
    }
    Ok(Tensor::f32(out_shape.to_vec(), out))
}

/// `act(a @ b + bias) + residual`, computed as the unfused ops would be
/// (each step rounded to f32), so fusing changes no bit of the result.
pub(super) fn fused_linear(
    inputs: &[&Tensor],
    transpose_b: bool,
    epilogue: &LinearEpilogue,
    out_shape: &[usize],
) -> Result<Tensor, EvalError> {
    let mut y = matmul(inputs[0], inputs[1], false, transpose_b, out_shape)?;
    if let Some(bias) = epilogue.bias_operand(2) {
        y = super::elementwise::binary(BinaryOp::Add, &y, inputs[bias], out_shape)?;
    }
    let residual = epilogue.residual_operand(2).map(|i| inputs[i]);
    activation_and_residual(y, epilogue.activation, residual, out_shape)
}

/// The epilogue after the bias, `act(y) + residual`, each step rounded to
/// f32 as the unfused ops are: shared by `fused_linear` and `fused_conv2d`
/// (whose biases broadcast along different axes).
pub(super) fn activation_and_residual(
    mut y: Tensor,
    activation: Option<UnaryOp>,
    residual: Option<&Tensor>,
    out_shape: &[usize],
) -> Result<Tensor, EvalError> {
    if let Some(activation) = activation {
        y = crate::ir::ops::OpKind::eval(&activation, &[&y], out_shape)?;
    }
    if let Some(residual) = residual {
        y = super::elementwise::binary(BinaryOp::Add, &y, residual, out_shape)?;
    }
    Ok(y)
}

/// C = op(A) @ op(B), op a transpose of the last two axes or not:
/// dop(A) = G op(B)^T and dop(B) = op(A)^T G, each transposed back when the
/// operand was, and summed over batch axes broadcasting added.
fn matmul_vjp(
    cx: &mut Vjp<'_>,
    a: NodeId,
    b: NodeId,
    ta: bool,
    tb: bool,
    g: NodeId,
    wants: [bool; 2],
) -> Result<[Option<NodeId>; 2], GradError> {
    let mm = |cx: &mut Vjp<'_>, x: NodeId, y: NodeId, tx: bool, ty: bool| {
        cx.add(
            Op::MatMul(MatMul {
                transpose_a: tx,
                transpose_b: ty,
            }),
            &[x, y],
        )
    };
    let da = if wants[0] {
        let d = if ta {
            mm(cx, b, g, tb, true)?
        } else {
            mm(cx, g, b, false, !tb)?
        };
        let shape = cx.ty(a).shape.clone();
        Some(cx.unbroadcast(d, &shape)?)
    } else {
        None
    };
    let db = if wants[1] {
        let d = if tb {
            mm(cx, g, a, true, ta)?
        } else {
            mm(cx, a, g, !ta, false)?
        };
        let shape = cx.ty(b).shape.clone();
        Some(cx.unbroadcast(d, &shape)?)
    } else {
        None
    };
    Ok([da, db])
}

/// `act(a @ op(b) + bias) + residual`: the pre-activation is recomputed
/// from the operands (the fused node keeps only the result).
fn fused_linear_vjp(
    cx: &mut Vjp<'_>,
    inputs: &[NodeId],
    tb: bool,
    epilogue: &LinearEpilogue,
    g: NodeId,
    wants: &[bool],
) -> Result<Vec<Option<NodeId>>, GradError> {
    let (a, b) = (inputs[0], inputs[1]);
    let bias = epilogue.bias.then(|| inputs[2]);
    let mut out = vec![None; inputs.len()];
    if epilogue.residual {
        out[inputs.len() - 1] = Some(g);
    }
    let gz = match epilogue.activation {
        Some(act) => {
            let product = cx.add(
                Op::MatMul(MatMul {
                    transpose_a: false,
                    transpose_b: tb,
                }),
                &[a, b],
            )?;
            let z = match bias {
                Some(bias) => cx.binary(BinaryOp::Add, product, bias)?,
                None => product,
            };
            let y = cx.add(Op::Unary(act), &[z])?;
            act.derivative(cx, z, y, g)?
        }
        None => g,
    };
    if let Some(bias) = bias {
        let shape = cx.ty(bias).shape.clone();
        out[2] = Some(cx.unbroadcast(gz, &shape)?);
    }
    let [da, db] = matmul_vjp(cx, a, b, false, tb, gz, [wants[0], wants[1]])?;
    out[0] = da;
    out[1] = db;
    Ok(out)
}

/// `keeps_samples` of a matrix product `a @ b` (matmul, fused_linear): at
/// rank 2 the samples are A's rows (A batched and not transposed, B
/// shared); above, they are the leading batch axis, which broadcasts like
/// an elementwise operand's.
fn product_keeps_samples(inputs: &[&TensorType], batched: &[bool], transpose_a: bool) -> bool {
    let (a, b) = (inputs[0], inputs[1]);
    match a.shape.len().max(b.shape.len()) {
        2 => a.shape.len() == 2 && batched[..2] == [true, false] && !transpose_a,
        rank => rank > 2 && broadcast_keeps_samples([(a, batched[0]), (b, batched[1])]),
    }
}
