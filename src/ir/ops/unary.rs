//! Unary elementwise ops on f32: `neg`, `relu`, `sigmoid`, `tanh`, `gelu`,
//! `gelu_tanh`, `exp`, `log`, `sqrt`, `rsqrt`, `erf`, `abs`, `recip`, `sin`,
//! `cos`, `relu6`, `hard_sigmoid`, `hard_swish`. Each is a built-in of the same name taking one tensor; the result
//! has the operand's type.

use super::math;
use super::shape::{expect_dtype, ShapeError};
use super::values::elements;
use super::{Builtin, CallArgs, EvalError, NodeId, Op, OpKind, Poisoned};
use crate::ir::vjp::{GradError, Vjp};
use crate::ir::{BinaryOp, CompareOp};
use crate::ir::{DType, TensorType};
use crate::tensor::Tensor;
use std::f64::consts::PI;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UnaryOp {
    Neg,
    Relu,
    Sigmoid,
    Tanh,
    /// 0.5 x (1 + erf(x / sqrt 2))
    Gelu,
    /// 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
    GeluTanh,
    Exp,
    Log,
    Sqrt,
    Rsqrt,
    Erf,
    Abs,
    Recip,
    Sin,
    Cos,
    /// min(max(x, 0), 6)
    Relu6,
    /// relu6(x + 3) / 6, PyTorch's `hardsigmoid`
    HardSigmoid,
    /// x * relu6(x + 3) / 6, PyTorch's `hardswish`
    HardSwish,
}

impl UnaryOp {
    pub const ALL: [UnaryOp; 18] = [
        UnaryOp::Neg,
        UnaryOp::Relu,
        UnaryOp::Sigmoid,
        UnaryOp::Tanh,
        UnaryOp::Gelu,
        UnaryOp::GeluTanh,
        UnaryOp::Exp,
        UnaryOp::Log,
        UnaryOp::Sqrt,
        UnaryOp::Rsqrt,
        UnaryOp::Erf,
        UnaryOp::Abs,
        UnaryOp::Recip,
        UnaryOp::Sin,
        UnaryOp::Cos,
        UnaryOp::Relu6,
        UnaryOp::HardSigmoid,
        UnaryOp::HardSwish,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            UnaryOp::Neg => "neg",
            UnaryOp::Relu => "relu",
            UnaryOp::Sigmoid => "sigmoid",
            UnaryOp::Tanh => "tanh",
            UnaryOp::Gelu => "gelu",
            UnaryOp::GeluTanh => "gelu_tanh",
            UnaryOp::Exp => "exp",
            UnaryOp::Log => "log",
            UnaryOp::Sqrt => "sqrt",
            UnaryOp::Rsqrt => "rsqrt",
            UnaryOp::Erf => "erf",
            UnaryOp::Abs => "abs",
            UnaryOp::Recip => "recip",
            UnaryOp::Sin => "sin",
            UnaryOp::Cos => "cos",
            UnaryOp::Relu6 => "relu6",
            UnaryOp::HardSigmoid => "hard_sigmoid",
            UnaryOp::HardSwish => "hard_swish",
        }
    }

    pub fn from_name(name: &str) -> Option<UnaryOp> {
        UnaryOp::ALL.into_iter().find(|op| op.name() == name)
    }

    /// Activations a fused layer (linear or convolution) may apply in its
    /// epilogue: those the GEMM epilogue of every kernel tier has.
    pub fn is_activation(self) -> bool {
        matches!(
            self,
            UnaryOp::Relu
                | UnaryOp::Sigmoid
                | UnaryOp::Tanh
                | UnaryOp::Gelu
                | UnaryOp::GeluTanh
                | UnaryOp::Relu6
                | UnaryOp::HardSigmoid
                | UnaryOp::HardSwish
        )
    }
}

impl OpKind for UnaryOp {
    fn name(&self) -> &'static str {
        UnaryOp::name(*self)
    }

    fn arity(&self) -> (usize, usize) {
        (1, 1)
    }

    fn keeps_samples(&self, inputs: &[&TensorType], batched: &[bool]) -> bool {
        let _ = (inputs, batched);
        true
    }

    fn infer(&self, inputs: &[&TensorType]) -> Result<TensorType, ShapeError> {
        expect_dtype(self.name(), "operand", inputs[0], DType::F32)?;
        Ok(inputs[0].clone())
    }

    fn eval(&self, inputs: &[&Tensor], _out_shape: &[usize]) -> Result<Tensor, EvalError> {
        let x = inputs[0];
        let values = elements::<f32>(self.name(), x)?;
        Ok(Tensor::f32(
            x.shape().to_vec(),
            values.iter().map(|&v| apply(*self, v)).collect(),
        ))
    }

    fn vjp(
        &self,
        cx: &mut Vjp<'_>,
        node: NodeId,
        inputs: &[NodeId],
        g: NodeId,
        _wants: &[bool],
    ) -> Result<Vec<Option<NodeId>>, GradError> {
        Ok(vec![Some(self.derivative(cx, inputs[0], node, g)?)])
    }
}

impl UnaryOp {
    /// `g` times d op(x) / dx, built as ops; `y` is op(x) (several
    /// derivatives are cheapest from it). The rule of the op, and of its
    /// uses inside fused ops.
    pub fn derivative(
        self,
        cx: &mut Vjp<'_>,
        x: NodeId,
        y: NodeId,
        g: NodeId,
    ) -> Result<NodeId, GradError> {
        let un = |cx: &mut Vjp<'_>, op: UnaryOp, a: NodeId| cx.add(Op::Unary(op), &[a]);
        match self {
            UnaryOp::Neg => cx.neg(g),
            UnaryOp::Relu => {
                let zero = cx.scalar(0.0);
                let positive = cx.add(Op::Compare(CompareOp::Gt), &[x, zero])?;
                cx.add(Op::Where, &[positive, g, zero])
            }
            UnaryOp::Sigmoid => {
                // y (1 - y)
                let one = cx.scalar(1.0);
                let rest = cx.binary(BinaryOp::Sub, one, y)?;
                let d = cx.mul(y, rest)?;
                cx.mul(g, d)
            }
            UnaryOp::Tanh => {
                // 1 - y^2
                let one = cx.scalar(1.0);
                let yy = cx.mul(y, y)?;
                let d = cx.binary(BinaryOp::Sub, one, yy)?;
                cx.mul(g, d)
            }
            UnaryOp::Exp => cx.mul(g, y),
            UnaryOp::Log => cx.binary(BinaryOp::Div, g, x),
            UnaryOp::Sqrt => {
                // 1 / (2 sqrt x)
                let half = cx.mul_scalar(g, 0.5)?;
                cx.binary(BinaryOp::Div, half, y)
            }
            UnaryOp::Rsqrt => {
                // -x^(-3/2) / 2 = -y^3 / 2
                let yy = cx.mul(y, y)?;
                let yyy = cx.mul(yy, y)?;
                let d = cx.mul_scalar(yyy, -0.5)?;
                cx.mul(g, d)
            }
            UnaryOp::Recip => {
                // -1 / x^2 = -y^2
                let yy = cx.mul(y, y)?;
                let gyy = cx.mul(g, yy)?;
                cx.neg(gyy)
            }
            UnaryOp::Abs => {
                // sign(x); 0 at 0, the subgradient that keeps zeros where they are
                let zero = cx.scalar(0.0);
                let one = cx.scalar(1.0);
                let minus_one = cx.scalar(-1.0);
                let positive = cx.add(Op::Compare(CompareOp::Gt), &[x, zero])?;
                let negative = cx.add(Op::Compare(CompareOp::Lt), &[x, zero])?;
                let down = cx.add(Op::Where, &[negative, minus_one, zero])?;
                let sign = cx.add(Op::Where, &[positive, one, down])?;
                cx.mul(g, sign)
            }
            UnaryOp::Erf => {
                // 2/sqrt(pi) exp(-x^2)
                let xx = cx.mul(x, x)?;
                let minus_xx = cx.neg(xx)?;
                let e = un(cx, UnaryOp::Exp, minus_xx)?;
                let d = cx.mul_scalar(e, (2.0 / PI.sqrt()) as f32)?;
                cx.mul(g, d)
            }
            UnaryOp::Gelu => {
                // Phi(x) + x phi(x) = (1 + erf(x/sqrt2))/2 + x exp(-x^2/2)/sqrt(2 pi)
                let scaled = cx.mul_scalar(x, std::f64::consts::FRAC_1_SQRT_2 as f32)?;
                let erf = un(cx, UnaryOp::Erf, scaled)?;
                let one = cx.scalar(1.0);
                let cdf2 = cx.binary(BinaryOp::Add, one, erf)?;
                let cdf = cx.mul_scalar(cdf2, 0.5)?;
                let xx = cx.mul(x, x)?;
                let exponent = cx.mul_scalar(xx, -0.5)?;
                let e = un(cx, UnaryOp::Exp, exponent)?;
                let pdf = cx.mul_scalar(e, (1.0 / (2.0 * PI).sqrt()) as f32)?;
                let xpdf = cx.mul(x, pdf)?;
                let d = cx.binary(BinaryOp::Add, cdf, xpdf)?;
                cx.mul(g, d)
            }
            UnaryOp::Relu6 | UnaryOp::HardSigmoid | UnaryOp::HardSwish => {
                // Piecewise: the slope inside the ramp (relu6's 0 < x < 6, the
                // others' -3 < x < 3), 0 below; hard_swish is 1 above.
                let (low, high) = if self == UnaryOp::Relu6 {
                    (0.0, 6.0)
                } else {
                    (-3.0, 3.0)
                };
                let zero = cx.scalar(0.0);
                let low = cx.scalar(low);
                let high = cx.scalar(high);
                let above_low = cx.add(Op::Compare(CompareOp::Gt), &[x, low])?;
                let below_high = cx.add(Op::Compare(CompareOp::Lt), &[x, high])?;
                let slope = match self {
                    UnaryOp::Relu6 => cx.scalar(1.0),
                    UnaryOp::HardSigmoid => cx.scalar(1.0 / 6.0),
                    _ => {
                        // d/dx x (x + 3) / 6 = (2x + 3) / 6
                        let two_x = cx.mul_scalar(x, 2.0 / 6.0)?;
                        let half = cx.scalar(0.5);
                        cx.binary(BinaryOp::Add, two_x, half)?
                    }
                };
                let above = if self == UnaryOp::HardSwish {
                    cx.scalar(1.0)
                } else {
                    zero
                };
                let upper = cx.add(Op::Where, &[below_high, slope, above])?;
                let d = cx.add(Op::Where, &[above_low, upper, zero])?;
                cx.mul(g, d)
            }
            UnaryOp::Sin => {
                let c = un(cx, UnaryOp::Cos, x)?;
                cx.mul(g, c)
            }
            UnaryOp::Cos => {
                let s = un(cx, UnaryOp::Sin, x)?;
                let gs = cx.mul(g, s)?;
                cx.neg(gs)
            }
            UnaryOp::GeluTanh => {
                // t = tanh(c (x + k x^3)):
                // (1 + t)/2 + x (1 - t^2) c (1 + 3k x^2) / 2
                const K: f32 = 0.044715;
                let c = (2.0 / PI).sqrt() as f32;
                let xx = cx.mul(x, x)?;
                let xxx = cx.mul(xx, x)?;
                let kxxx = cx.mul_scalar(xxx, K)?;
                let inner = cx.binary(BinaryOp::Add, x, kxxx)?;
                let u = cx.mul_scalar(inner, c)?;
                let t = un(cx, UnaryOp::Tanh, u)?;
                let one = cx.scalar(1.0);
                let one_plus_t = cx.binary(BinaryOp::Add, one, t)?;
                let first = cx.mul_scalar(one_plus_t, 0.5)?;
                let tt = cx.mul(t, t)?;
                let sech2 = cx.binary(BinaryOp::Sub, one, tt)?;
                let kxx3 = cx.mul_scalar(xx, 3.0 * K)?;
                let du = cx.binary(BinaryOp::Add, one, kxx3)?;
                let du = cx.mul_scalar(du, 0.5 * c)?;
                let xs = cx.mul(x, sech2)?;
                let second = cx.mul(xs, du)?;
                let d = cx.binary(BinaryOp::Add, first, second)?;
                cx.mul(g, d)
            }
        }
    }
}

const NAMES: [&str; UnaryOp::ALL.len()] = {
    let mut names = [""; UnaryOp::ALL.len()];
    let mut i = 0;
    while i < names.len() {
        names[i] = UnaryOp::ALL[i].name();
        i += 1;
    }
    names
};

pub const BUILTIN: Builtin = Builtin {
    names: &NAMES,
    lower,
};

/// `name(x)`.
fn lower(name: &str, args: &mut dyn CallArgs) -> Result<(Op, Vec<NodeId>), Poisoned> {
    let op = UnaryOp::from_name(name).expect("BUILTIN lists only unary names");
    Ok((Op::Unary(op), vec![args.tensor()?]))
}

/// min(max(x, 0), 6), NaN passing through as numpy's `clip`.
fn relu6(x: f64) -> f64 {
    if x < 0.0 {
        0.0
    } else if x > 6.0 {
        6.0
    } else {
        x
    }
}

/// The op on one element: computed in f64, rounded once to f32.
pub fn apply(op: UnaryOp, x: f32) -> f32 {
    let x = f64::from(x);
    let y = match op {
        UnaryOp::Neg => -x,
        // `x < 0` is false for NaN, so NaN passes through like numpy's
        // maximum(x, 0); `f64::max` would return 0.
        UnaryOp::Relu => {
            if x < 0.0 {
                0.0
            } else {
                x
            }
        }
        UnaryOp::Sigmoid => 1.0 / (1.0 + (-x).exp()),
        UnaryOp::Tanh => x.tanh(),
        UnaryOp::Gelu => math::gelu(x),
        UnaryOp::GeluTanh => math::gelu_tanh(x),
        UnaryOp::Exp => x.exp(),
        UnaryOp::Log => x.ln(),
        UnaryOp::Sqrt => x.sqrt(),
        UnaryOp::Rsqrt => 1.0 / x.sqrt(),
        UnaryOp::Erf => math::erf(x),
        UnaryOp::Abs => x.abs(),
        UnaryOp::Recip => 1.0 / x,
        UnaryOp::Sin => x.sin(),
        UnaryOp::Cos => x.cos(),
        UnaryOp::Relu6 => relu6(x),
        UnaryOp::HardSigmoid => relu6(x + 3.0) / 6.0,
        UnaryOp::HardSwish => x * relu6(x + 3.0) / 6.0,
    };
    y as f32
}
