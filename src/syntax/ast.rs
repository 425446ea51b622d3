//! The abstract syntax tree of a `.lam` file, exactly as written.
//!
//! Nothing here is resolved: names are strings, attributes are expressions,
//! blocks are not yet instantiated. `ir::lower` gives it meaning.

use crate::span::Span;

#[derive(Clone, Debug, PartialEq)]
pub struct Ident {
    pub name: String,
    pub span: Span,
}

/// One segment of a dotted path: `encoder`, `0`, or an interpolated loop
/// variable `{i}`.
#[derive(Clone, Debug, PartialEq)]
pub enum PathSegment {
    Name(String),
    Index(u64),
    Interpolate(String),
}

/// A dotted name such as `encoder.layer.{i}.attention.self.query.weight`.
#[derive(Clone, Debug, PartialEq)]
pub struct Path {
    pub segments: Vec<PathSegment>,
    pub span: Span,
}

impl std::fmt::Display for Path {
    /// The path as written: `encoder.layer.{i}.output`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, segment) in self.segments.iter().enumerate() {
            if i > 0 {
                f.write_str(".")?;
            }
            match segment {
                PathSegment::Name(n) => f.write_str(n)?,
                PathSegment::Index(i) => write!(f, "{i}")?,
                PathSegment::Interpolate(v) => write!(f, "{{{v}}}")?,
            }
        }
        Ok(())
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct File {
    pub items: Vec<Item>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Item {
    /// `weights "digits.safetensors"`: the weight file, relative to the model file.
    Weights {
        path: String,
        span: Span,
    },
    Block(BlockDef),
    Model(ModelDef),
}

/// `block name(x, in: int, eps: float) { ... return expr }`
#[derive(Clone, Debug, PartialEq)]
pub struct BlockDef {
    pub name: Ident,
    pub params: Vec<BlockParam>,
    pub body: Vec<Stmt>,
    pub ret: Expr,
    pub span: Span,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockParamKind {
    Tensor,
    Int,
    Float,
}

#[derive(Clone, Debug, PartialEq)]
pub struct BlockParam {
    pub name: Ident,
    pub kind: BlockParamKind,
}

/// `model name { ... }`
#[derive(Clone, Debug, PartialEq)]
pub struct ModelDef {
    pub name: Ident,
    pub body: Vec<Stmt>,
    pub span: Span,
}

/// `f32[batch, 784]`
#[derive(Clone, Debug, PartialEq)]
pub struct TypeExpr {
    pub dtype: Ident,
    pub dims: Vec<Expr>,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Stmt {
    /// `input x: f32[batch, 784]` (model only); `= image(...)` declares
    /// how a photo is turned into this input.
    Input {
        name: Ident,
        ty: TypeExpr,
        preprocess: Option<Expr>,
        span: Span,
    },
    /// `param fc1.weight: f32[784, 512] = xavier(seed=1)`; no initializer
    /// means the tensor comes from the weight file.
    Param {
        name: Path,
        ty: TypeExpr,
        init: Option<Expr>,
        span: Span,
    },
    /// `h = relu(x @ w)`
    Let {
        name: Ident,
        value: Expr,
        span: Span,
    },
    /// `output probs = softmax(h, axis=-1)`, `output probs: f32[batch, 10] = ...`
    /// or `output h` (exports an existing name). (model only)
    Output {
        name: Ident,
        ty: Option<TypeExpr>,
        value: Option<Expr>,
        span: Span,
    },
    /// `for i in 0..6 { h = layer(h) as encoder.layer.{i} }`: unrolled;
    /// assigning a name from outside the loop rebinds it for the next iteration.
    For {
        var: Ident,
        start: i64,
        end: i64,
        body: Vec<Stmt>,
        span: Span,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
    MatMul,
    Pow,
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
    Ne,
}

impl BinOp {
    pub fn symbol(self) -> &'static str {
        match self {
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Mul => "*",
            BinOp::Div => "/",
            BinOp::MatMul => "@",
            BinOp::Pow => "**",
            BinOp::Lt => "<",
            BinOp::Le => "<=",
            BinOp::Gt => ">",
            BinOp::Ge => ">=",
            BinOp::Eq => "==",
            BinOp::Ne => "!=",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Arg {
    Positional(Expr),
    Keyword { name: Ident, value: Expr },
}

#[derive(Clone, Debug, PartialEq)]
pub enum Expr {
    /// An integer literal as written (`784`, `-1` is `Neg(Int(1))`).
    Int {
        value: i64,
        span: Span,
    },
    Float {
        value: f64,
        span: Span,
    },
    Bool {
        value: bool,
        span: Span,
    },
    /// `"same"`: attribute values only; the text between the quotes, as written.
    Str {
        value: String,
        span: Span,
    },
    /// A name or dotted path: a local, an input, a parameter, a symbol, a
    /// block argument, or a bare word such as a dtype in `cast(x, f32)`.
    Name(Path),
    /// `[a, b, c]`: shapes and permutations in attributes.
    List {
        items: Vec<Expr>,
        span: Span,
    },
    Neg {
        operand: Box<Expr>,
        span: Span,
    },
    Binary {
        op: BinOp,
        lhs: Box<Expr>,
        rhs: Box<Expr>,
        span: Span,
    },
    /// `f(args)` or `block(args) as prefix.path`.
    Call {
        func: Ident,
        args: Vec<Arg>,
        prefix: Option<Path>,
        span: Span,
    },
}

impl Expr {
    pub fn span(&self) -> Span {
        match self {
            Expr::Int { span, .. }
            | Expr::Float { span, .. }
            | Expr::Bool { span, .. }
            | Expr::Str { span, .. }
            | Expr::List { span, .. }
            | Expr::Neg { span, .. }
            | Expr::Binary { span, .. }
            | Expr::Call { span, .. } => *span,
            Expr::Name(path) => path.span,
        }
    }
}
