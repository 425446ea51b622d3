//! AST -> graph: resolves names, instantiates blocks under their prefixes,
//! unrolls loops, maps calls to ops and checks every shape.
//!
//! Errors are collected, not thrown: a failed expression yields `Err(Poisoned)`
//! and lowering continues with the next statement, so one run reports every
//! independent mistake in a file.

mod args;
mod builtins;
mod image_input;

use crate::ir::ops::{Constant, Input, MatMul, Param};
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use super::image_input::ImageInput;
use super::lower_error::{did_you_mean, LowerError};
use super::{shape_rules, DType, Dim, Graph, NodeId, Op, TensorType};
use crate::span::Span;
use crate::syntax::ast::{self, BinOp, BlockParamKind, Expr, Item, PathSegment, Stmt};
use crate::tensor::Tensor;

/// Most nodes one model may lower to. Loops and blocks make a short file
/// describe a huge graph (blocks that call the previous one twice double
/// at each level); past this, lowering stops with an error instead of
/// eating memory for minutes.
pub const MAX_NODES: usize = 2_000_000;

/// Most loop iterations plus block instances one model may expand to
/// (an empty loop body costs no node but still takes time to unroll).
pub const MAX_EXPANSIONS: usize = 2_000_000;

/// Deepest chain of block instances (a block calling a block calling ...):
/// lowering recurses once per level.
pub const MAX_BLOCK_DEPTH: usize = 256;

/// A model ready for the passes: its graph and the weight file it names.
#[derive(Clone, Debug)]
pub struct LoweredModel {
    pub graph: Graph,
    /// `weights "..."` as written (relative to the model file), with its span.
    pub weights: Option<(String, Span)>,
    /// Inputs declared `= image(...)`, in declaration order.
    pub image_inputs: Vec<ImageInput>,
}

/// Marks a value whose error has already been recorded.
use crate::ir::ops::Poisoned;

type Lowered<T> = Result<T, Poisoned>;

#[derive(Clone, Debug)]
enum Value {
    Tensor(NodeId),
    Int(i64),
    Float(f64),
}

#[derive(Clone, Debug)]
struct Binding {
    value: Value,
    span: Span,
}

/// One lexical frame: the model body, a block instance, or a loop iteration.
#[derive(Default)]
struct Frame {
    names: HashMap<String, Binding>,
    /// Names whose definition failed: using them reports nothing more.
    poisoned: BTreeSet<String>,
    /// Loop frames let assignments reach names of enclosing frames.
    is_loop: bool,
}

struct Lowerer<'a> {
    graph: Graph,
    blocks: HashMap<&'a str, &'a ast::BlockDef>,
    frames: Vec<Frame>,
    prefix: Vec<String>,
    /// Full parameter names, for duplicate detection.
    params: HashMap<String, Span>,
    /// Symbols introduced by input and parameter shapes.
    symbols: BTreeSet<String>,
    /// Instantiation stack, to reject recursive blocks.
    active_blocks: Vec<String>,
    errors: Vec<LowerError>,
    /// Loop iterations and block instances so far (see `MAX_EXPANSIONS`).
    expansions: usize,
    /// Set once a size limit is hit: lowering then stops everywhere, since
    /// every later statement would only add noise.
    exhausted: bool,
    image_inputs: Vec<ImageInput>,
}

/// Lowers a parsed file to a graph, or reports every error found.
pub fn lower(file: &ast::File) -> Result<LoweredModel, Vec<LowerError>> {
    let mut lw = Lowerer {
        graph: Graph::default(),
        blocks: HashMap::new(),
        frames: Vec::new(),
        prefix: Vec::new(),
        params: HashMap::new(),
        symbols: BTreeSet::new(),
        active_blocks: Vec::new(),
        errors: Vec::new(),
        expansions: 0,
        exhausted: false,
        image_inputs: Vec::new(),
    };
    let mut model: Option<&ast::ModelDef> = None;
    let mut weights = None;
    for item in &file.items {
        match item {
            Item::Weights { path, span } => {
                if let Some((_, first)) = &weights {
                    lw.errors.push(LowerError::Duplicate {
                        name: "weights".into(),
                        span: *span,
                        first: *first,
                    });
                } else {
                    weights = Some((path.clone(), *span));
                }
            }
            Item::Block(b) => {
                if let Some(first) = lw.blocks.get(b.name.name.as_str()) {
                    lw.errors.push(LowerError::Duplicate {
                        name: b.name.name.clone(),
                        span: b.name.span,
                        first: first.name.span,
                    });
                } else if builtins::is_builtin(&b.name.name) {
                    lw.errors.push(LowerError::Invalid {
                        message: format!(
                            "block `{}` has the name of a built-in function",
                            b.name.name
                        ),
                        span: b.name.span,
                    });
                } else {
                    lw.blocks.insert(&b.name.name, b);
                }
            }
            Item::Model(m) => match model {
                Some(first) => lw.errors.push(LowerError::SecondModel {
                    name: m.name.name.clone(),
                    span: m.name.span,
                    first: first.name.span,
                }),
                None => model = Some(m),
            },
        }
    }
    match model {
        None => lw.errors.push(LowerError::NoModel),
        Some(m) => lw.model(m),
    }
    // A block instantiated twice reports its mistakes twice: keep one.
    // (A set, not a list scan: a generated file may hold tens of thousands
    // of errors.)
    let mut seen = std::collections::HashSet::new();
    lw.errors.retain(|e| seen.insert(format!("{e:?}")));
    if lw.errors.is_empty() {
        Ok(LoweredModel {
            graph: lw.graph,
            weights,
            image_inputs: lw.image_inputs,
        })
    } else {
        Err(lw.errors)
    }
}

impl<'a> Lowerer<'a> {
    fn model(&mut self, m: &'a ast::ModelDef) {
        self.graph.name = m.name.name.clone();
        self.frames.push(Frame::default());
        for stmt in &m.body {
            self.stmt(stmt, true);
        }
        if self.graph.outputs.is_empty() && self.errors.is_empty() {
            self.errors.push(LowerError::Invalid {
                message: format!(
                    "model `{}` has no outputs (add `output NAME = ...`)",
                    m.name.name
                ),
                span: m.name.span,
            });
        }
        self.frames.pop();
    }

    fn error(&mut self, e: LowerError) -> Poisoned {
        self.errors.push(e);
        Poisoned
    }

    // ---- statements -------------------------------------------------------

    /// Counts one loop iteration or block instance; false (with one error
    /// for the whole model) once the limit is passed.
    fn expand(&mut self, span: Span) -> bool {
        self.expansions += 1;
        if self.expansions > MAX_EXPANSIONS && !self.exhausted {
            self.exhausted = true;
            self.error(LowerError::Invalid {
                message: format!(
                    "this model expands to more than {MAX_EXPANSIONS} loop iterations and block \
                     instances; lamina unrolls at most that many (see docs/language.md, Limits)"
                ),
                span,
            });
        }
        !self.exhausted
    }

    fn stmt(&mut self, stmt: &'a Stmt, in_model: bool) {
        if self.exhausted {
            return;
        }
        match stmt {
            Stmt::Input {
                name,
                ty,
                preprocess,
                span,
            } => {
                if !in_model {
                    self.error(LowerError::Invalid {
                        message: "`input` belongs in a model, not in a block (pass it as a block argument)".into(),
                        span: *span,
                    });
                    return;
                }
                let Ok(ty) = self.tensor_type(ty, true) else {
                    self.poison(&name.name);
                    return;
                };
                if let Some(e) = preprocess {
                    if let Ok(image) = image_input::image_input(self, &name.name, &ty, e) {
                        self.image_inputs.push(image);
                    }
                }
                let id = self.graph.add_node(
                    Op::Input(Input {
                        name: name.name.clone(),
                    }),
                    &[],
                    ty,
                    Some(*span),
                );
                if self
                    .define(&name.name, Value::Tensor(id), name.span)
                    .is_ok()
                {
                    self.graph.inputs.push(id);
                }
            }
            Stmt::Param {
                name,
                ty,
                init,
                span,
            } => {
                if self.param(name, ty, init.as_ref(), *span).is_err() {
                    if let Ok(local) = self.path_string(name) {
                        self.poison(&local);
                    }
                }
            }
            Stmt::Let { name, value, .. } => match self.expr(value) {
                Ok(v) => {
                    let _ = self.assign(&name.name, v, name.span);
                }
                Err(Poisoned) => self.poison(&name.name),
            },
            Stmt::Output {
                name,
                ty,
                value,
                span,
            } => {
                if !in_model {
                    self.error(LowerError::Invalid {
                        message:
                            "`output` belongs in a model; a block gives its result with `return`"
                                .into(),
                        span: *span,
                    });
                    return;
                }
                let _ = self.output(name, ty.as_ref(), value.as_ref());
            }
            Stmt::For {
                var,
                start,
                end,
                body,
                span,
            } => {
                let count = (*end as i128 - *start as i128).max(0);
                if count > MAX_EXPANSIONS as i128 {
                    self.error(LowerError::Invalid {
                        message: format!(
                            "this loop runs {count} times; lamina unrolls at most \
                             {MAX_EXPANSIONS} iterations (see docs/language.md, Limits)"
                        ),
                        span: *span,
                    });
                    return;
                }
                for i in *start..*end {
                    if !self.expand(*span) {
                        break;
                    }
                    let mut frame = Frame {
                        is_loop: true,
                        ..Frame::default()
                    };
                    frame.names.insert(
                        var.name.clone(),
                        Binding {
                            value: Value::Int(i),
                            span: var.span,
                        },
                    );
                    self.frames.push(frame);
                    let errors_before = self.errors.len();
                    for s in body {
                        self.stmt(s, in_model);
                    }
                    self.frames.pop();
                    // The same mistake in every iteration is one mistake.
                    if self.errors.len() > errors_before {
                        break;
                    }
                }
            }
        }
    }

    fn output(
        &mut self,
        name: &ast::Ident,
        ty: Option<&ast::TypeExpr>,
        value: Option<&'a Expr>,
    ) -> Lowered<()> {
        let id = match value {
            Some(e) => {
                let v = self.expr(e)?;
                self.tensor_value(v, e.span())?
            }
            None => {
                let v = self.lookup(&name.name, name.span)?;
                self.tensor_value(v, name.span)?
            }
        };
        if let Some((_, first)) = self.graph.outputs.iter().find(|(n, _)| *n == name.name) {
            let first = self.graph.node(*first).span.unwrap_or(name.span);
            return Err(self.error(LowerError::Duplicate {
                name: name.name.clone(),
                span: name.span,
                first,
            }));
        }
        if let Some(ty) = ty {
            let declared = self.tensor_type(ty, false)?;
            let actual = &self.graph.node(id).ty;
            if declared != *actual {
                return Err(self.error(LowerError::Invalid {
                    message: format!(
                        "output `{}` is declared {declared} but computes {actual}",
                        name.name
                    ),
                    span: ty.span,
                }));
            }
        }
        if value.is_some() {
            self.define(&name.name, Value::Tensor(id), name.span)?;
        }
        self.graph.outputs.push((name.name.clone(), id));
        Ok(())
    }

    fn param(
        &mut self,
        path: &ast::Path,
        ty: &ast::TypeExpr,
        init: Option<&'a Expr>,
        span: Span,
    ) -> Lowered<()> {
        let local = self.path_string(path)?;
        let full = self
            .prefix
            .iter()
            .cloned()
            .chain(std::iter::once(local.clone()))
            .collect::<Vec<_>>()
            .join(".");
        let ty = self.tensor_type(ty, true);
        let init = init.map(|e| builtins::initializer(self, e)).transpose();
        let (ty, init) = (ty?, init?);
        if let Some(first) = self.params.get(&full) {
            return Err(self.error(LowerError::Duplicate {
                name: full,
                span: path.span,
                first: *first,
            }));
        }
        if init.is_some() && ty.dtype != DType::F32 {
            return Err(self.error(LowerError::Invalid {
                message: format!("initializers make f32 tensors; parameter `{full}` is {ty}"),
                span,
            }));
        }
        self.params.insert(full.clone(), path.span);
        let id = self
            .graph
            .add_node(Op::Param(Param { name: full, init }), &[], ty, Some(span));
        self.define(&local, Value::Tensor(id), path.span)
    }

    // ---- scopes -----------------------------------------------------------

    /// Records that `name`'s definition failed (its error is already reported).
    fn poison(&mut self, name: &str) {
        self.frames
            .last_mut()
            .expect("a frame is open")
            .poisoned
            .insert(name.to_string());
    }

    fn is_poisoned(&self, name: &str) -> bool {
        for frame in self.frames.iter().rev() {
            if frame.poisoned.contains(name) {
                return true;
            }
            if !frame.is_loop {
                break;
            }
        }
        false
    }

    fn find(&self, name: &str) -> Option<&Binding> {
        for frame in self.frames.iter().rev() {
            if let Some(b) = frame.names.get(name) {
                return Some(b);
            }
            if !frame.is_loop {
                break;
            }
        }
        None
    }

    /// Defines a new name in the innermost frame.
    fn define(&mut self, name: &str, value: Value, span: Span) -> Lowered<()> {
        let frame = self.frames.last_mut().expect("a frame is open");
        if let Some(first) = frame.names.get(name) {
            let first = first.span;
            return Err(self.error(LowerError::Duplicate {
                name: name.to_string(),
                span,
                first,
            }));
        }
        frame
            .names
            .insert(name.to_string(), Binding { value, span });
        Ok(())
    }

    /// `name = value`: inside a loop, a name from before the loop is rebound
    /// (loop-carried); anywhere else a second definition is an error.
    fn assign(&mut self, name: &str, value: Value, span: Span) -> Lowered<()> {
        let innermost = self.frames.len() - 1;
        if self.frames[innermost].is_loop && !self.frames[innermost].names.contains_key(name) {
            for i in (0..innermost).rev() {
                if let Some(b) = self.frames[i].names.get_mut(name) {
                    if matches!(b.value, Value::Tensor(_)) {
                        b.value = value;
                        return Ok(());
                    }
                    break;
                }
                if !self.frames[i].is_loop {
                    break;
                }
            }
        }
        self.define(name, value, span)
    }

    fn visible_names(&self) -> Vec<String> {
        let mut names = Vec::new();
        for frame in self.frames.iter().rev() {
            names.extend(frame.names.keys().cloned());
            if !frame.is_loop {
                break;
            }
        }
        names
    }

    fn lookup(&mut self, name: &str, span: Span) -> Lowered<Value> {
        if let Some(b) = self.find(name) {
            return Ok(b.value.clone());
        }
        if self.is_poisoned(name) {
            return Err(Poisoned);
        }
        let names = self.visible_names();
        let hint = if self.symbols.contains(name) {
            " (it is a shape symbol, not a tensor)".to_string()
        } else {
            did_you_mean(name, names.iter().map(String::as_str))
        };
        Err(self.error(LowerError::UnknownName {
            name: name.to_string(),
            span,
            hint,
        }))
    }

    fn path_string(&mut self, path: &ast::Path) -> Lowered<String> {
        let mut parts = Vec::with_capacity(path.segments.len());
        for seg in &path.segments {
            match seg {
                PathSegment::Name(n) => parts.push(n.clone()),
                PathSegment::Index(i) => parts.push(i.to_string()),
                PathSegment::Interpolate(var) => match self.find(var).map(|b| b.value.clone()) {
                    Some(Value::Int(i)) => parts.push(i.to_string()),
                    _ => {
                        return Err(self.error(LowerError::Invalid {
                            message: format!("`{{{var}}}` needs an integer loop variable or block argument named `{var}`"),
                            span: path.span,
                        }))
                    }
                },
            }
        }
        Ok(parts.join("."))
    }

    // ---- types and dims ---------------------------------------------------

    /// `f32[batch, 784]`. With `introduce`, unknown names become new symbols
    /// (input and parameter declarations); otherwise they must exist.
    fn tensor_type(&mut self, ty_expr: &ast::TypeExpr, introduce: bool) -> Lowered<TensorType> {
        let ty = ty_expr;
        let dtype = ty.dtype.name.parse::<DType>().ok();
        let dims: Vec<Lowered<Dim>> = ty
            .dims
            .iter()
            .map(|d| self.dim(d, introduce, "a type"))
            .collect();
        let Some(dtype) = dtype else {
            return Err(self.error(LowerError::UnknownDType {
                name: ty.dtype.name.clone(),
                span: ty.dtype.span,
            }));
        };
        let ty = TensorType::new(dtype, dims.into_iter().collect::<Lowered<_>>()?);
        if let Err(e) = shape_rules::check_size(&ty) {
            return Err(self.error(LowerError::Invalid {
                message: e.0,
                span: ty_expr.span,
            }));
        }
        Ok(ty)
    }

    /// A dim expression: an integer, an int block argument, a symbol, or a product.
    fn dim(&mut self, e: &Expr, introduce: bool, context: &str) -> Lowered<Dim> {
        match e {
            Expr::Int { value, span } => usize::try_from(*value).map(Dim::known).map_err(|_| {
                self.error(LowerError::Invalid {
                    message: format!("a dimension must be a non-negative integer, got {value}"),
                    span: *span,
                })
            }),
            Expr::Binary {
                op: BinOp::Mul,
                lhs,
                rhs,
                ..
            } => {
                let a = self.dim(lhs, introduce, context);
                let b = self.dim(rhs, introduce, context);
                let (a, b) = (a?, b?);
                a.checked_mul(&b).ok_or_else(|| {
                    self.error(LowerError::Invalid {
                        message: format!(
                            "the dimension {a}*{b} overflows: it is larger than any tensor can be"
                        ),
                        span: e.span(),
                    })
                })
            }
            Expr::Name(path) if path.segments.len() == 1 => {
                let PathSegment::Name(name) = &path.segments[0] else {
                    return Err(self.bad_dim(e));
                };
                match self.find(name).map(|b| b.value.clone()) {
                    Some(Value::Int(v)) if v >= 0 => return Ok(Dim::known(v as usize)),
                    Some(_) => return Err(self.bad_dim(e)),
                    None => {}
                }
                if introduce {
                    self.symbols.insert(name.clone());
                } else if !self.symbols.contains(name) {
                    return Err(self.error(LowerError::UnknownSymbol {
                        name: name.clone(),
                        context: context.to_string(),
                        span: path.span,
                    }));
                }
                Ok(Dim::symbol(name))
            }
            _ => Err(self.bad_dim(e)),
        }
    }

    fn bad_dim(&mut self, e: &Expr) -> Poisoned {
        self.error(LowerError::Invalid {
            message:
                "a dimension is an integer, an int block argument, a symbol, or a product of those"
                    .into(),
            span: e.span(),
        })
    }

    // ---- expressions ------------------------------------------------------

    fn expr(&mut self, e: &'a Expr) -> Lowered<Value> {
        match e {
            Expr::Int { value, .. } => Ok(Value::Int(*value)),
            Expr::Float { value, .. } => Ok(Value::Float(*value)),
            Expr::Bool { span, .. } => Err(self.error(LowerError::Invalid {
                message: "`true`/`false` are only attribute values (keepdims=true)".into(),
                span: *span,
            })),
            Expr::Str { span, .. } => Err(self.error(LowerError::Invalid {
                message: "a string is only an attribute value (padding=\"same\")".into(),
                span: *span,
            })),
            Expr::List { span, .. } => Err(self.error(LowerError::Invalid {
                message: "a list is only an attribute value (shape=[...], perm=[...], axis=[...])"
                    .into(),
                span: *span,
            })),
            Expr::Name(path) => {
                let name = self.path_string(path)?;
                self.lookup(&name, path.span)
            }
            Expr::Neg { operand, span } => match self.expr(operand)? {
                Value::Int(v) => Ok(Value::Int(-v)),
                Value::Float(v) => Ok(Value::Float(-v)),
                Value::Tensor(x) => self
                    .node(Op::Unary(super::UnaryOp::Neg), &[x], *span)
                    .map(Value::Tensor),
            },
            Expr::Binary { op, lhs, rhs, span } => {
                let a = self.expr(lhs);
                let b = self.expr(rhs);
                let (a, b) = (a?, b?);
                let a = self.tensor_value(a, lhs.span())?;
                let b = self.tensor_value(b, rhs.span())?;
                let op = match op {
                    BinOp::Add => Op::Binary(super::BinaryOp::Add),
                    BinOp::Sub => Op::Binary(super::BinaryOp::Sub),
                    BinOp::Mul => Op::Binary(super::BinaryOp::Mul),
                    BinOp::Div => Op::Binary(super::BinaryOp::Div),
                    BinOp::Pow => Op::Binary(super::BinaryOp::Pow),
                    BinOp::MatMul => Op::MatMul(MatMul {
                        transpose_a: false,
                        transpose_b: false,
                    }),
                    BinOp::Lt => Op::Compare(super::CompareOp::Lt),
                    BinOp::Le => Op::Compare(super::CompareOp::Le),
                    BinOp::Gt => Op::Compare(super::CompareOp::Gt),
                    BinOp::Ge => Op::Compare(super::CompareOp::Ge),
                    BinOp::Eq => Op::Compare(super::CompareOp::Eq),
                    BinOp::Ne => Op::Compare(super::CompareOp::Ne),
                };
                self.node(op, &[a, b], *span).map(Value::Tensor)
            }
            Expr::Call {
                func,
                args,
                prefix,
                span,
            } => {
                if let Some(block) = self.blocks.get(func.name.as_str()).copied() {
                    return self
                        .instantiate(block, args, prefix.as_ref(), *span)
                        .map(Value::Tensor);
                }
                if let Some(p) = prefix {
                    return Err(self.error(LowerError::Invalid {
                        message: format!(
                            "`as {}` names a block instance; `{}` is not a block",
                            p, func.name
                        ),
                        span: p.span,
                    }));
                }
                builtins::call(self, func, args, *span).map(Value::Tensor)
            }
        }
    }

    /// Numbers used as tensors become f32 scalar constants.
    fn tensor_value(&mut self, v: Value, span: Span) -> Lowered<NodeId> {
        match v {
            Value::Tensor(id) => Ok(id),
            Value::Int(i) => Ok(self.constant(i as f32, span)),
            Value::Float(f) => Ok(self.constant(f as f32, span)),
        }
    }

    fn constant(&mut self, value: f32, span: Span) -> NodeId {
        let op = Op::Constant(Constant {
            value: Arc::new(Tensor::scalar(value)),
        });
        self.graph
            .add_node(op, &[], TensorType::new(DType::F32, vec![]), Some(span))
    }

    /// Adds a node after checking its operand types with the op's shape rule.
    fn node(&mut self, op: Op, inputs: &[NodeId], span: Span) -> Lowered<NodeId> {
        if self.graph.node_count() >= MAX_NODES {
            if !self.exhausted {
                self.exhausted = true;
                self.error(LowerError::Invalid {
                    message: format!(
                        "this model lowers to more than {MAX_NODES} nodes; split it or \
                         use fewer loop iterations and block instances (see docs/language.md, Limits)"
                    ),
                    span,
                });
            }
            return Err(Poisoned);
        }
        let name = op.name();
        super::builder::add_typed(&mut self.graph, op, inputs, Some(span)).map_err(|e| {
            self.error(LowerError::Shape {
                op: name.to_string(),
                message: e.0,
                span,
            })
        })
    }

    // ---- blocks -----------------------------------------------------------

    fn instantiate(
        &mut self,
        block: &'a ast::BlockDef,
        args: &'a [ast::Arg],
        prefix: Option<&ast::Path>,
        span: Span,
    ) -> Lowered<NodeId> {
        let name = block.name.name.clone();
        if self.active_blocks.contains(&name) {
            return Err(self.error(LowerError::Invalid {
                message: format!("block `{name}` instantiates itself"),
                span,
            }));
        }
        if self.active_blocks.len() >= MAX_BLOCK_DEPTH {
            return Err(self.error(LowerError::Invalid {
                message: format!(
                    "blocks are instantiated inside each other more than {MAX_BLOCK_DEPTH} \
                     levels deep here (see docs/language.md, Limits)"
                ),
                span,
            }));
        }
        if !self.expand(span) {
            return Err(Poisoned);
        }
        let bound = args::bind_block_args(self, block, args, span)?;
        let prefix_parts = match prefix {
            Some(p) => Some(self.path_string(p)?),
            None => None,
        };
        let mut frame = Frame::default();
        for (param, value) in block.params.iter().zip(bound) {
            frame.names.insert(
                param.name.name.clone(),
                Binding {
                    value,
                    span: param.name.span,
                },
            );
        }
        let saved_frames = std::mem::take(&mut self.frames);
        self.frames.push(frame);
        let has_prefix = prefix_parts.is_some();
        self.prefix.extend(prefix_parts);
        self.active_blocks.push(name);
        let errors_before = self.errors.len();
        for stmt in &block.body {
            self.stmt(stmt, false);
        }
        let result = if self.errors.len() > errors_before {
            Err(Poisoned)
        } else {
            self.expr(&block.ret)
                .and_then(|v| self.tensor_value(v, block.ret.span()))
        };
        self.active_blocks.pop();
        if has_prefix {
            self.prefix.pop();
        }
        self.frames = saved_frames;
        result
    }
}

impl BlockParamKind {
    fn describe(self) -> &'static str {
        match self {
            BlockParamKind::Tensor => "a tensor",
            BlockParamKind::Int => "an integer",
            BlockParamKind::Float => "a number",
        }
    }
}
