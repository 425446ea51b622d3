//! Unary elementwise ops on f32: `neg`, `relu`, `sigmoid`, `tanh`, `gelu`,
//! `gelu_tanh`, `exp`, `log`, `sqrt`, `rsqrt`, `erf`, `abs`, `recip`, `sin`,
//! `cos`, `relu6`, `hard_sigmoid`, `hard_swish`. Each is a built-in of the same name taking one tensor; the result
//! has the operand's type.

use super::math;
use super::shape::{expect_dtype, ShapeError};
use super::values::elements;
use super::{Builtin, CallArgs, EvalError, NodeId, Op, OpKind, Poisoned};
use crate::ir::{DType, TensorType};
use crate::tensor::Tensor;

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

    /// Activations a fused linear layer may apply in its epilogue.
    pub fn is_activation(self) -> bool {
        matches!(
            self,
            UnaryOp::Relu | UnaryOp::Sigmoid | UnaryOp::Tanh | UnaryOp::Gelu | UnaryOp::GeluTanh
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
