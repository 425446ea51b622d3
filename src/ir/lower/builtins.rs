//! Calls of built-in functions and initializers. Each op family lowers its
//! own built-ins (`ops::BUILTINS`, in the op files) through the
//! [`CallArgs`] this file implements over `Args`; this file finds the
//! built-in by name, suggests a near name for an unknown one, and reports
//! arguments left unread.

use super::args::Args;
use super::{Lowered, Lowerer, Poisoned};
use crate::ir::lower_error::{did_you_mean, LowerError};
use crate::ir::ops::{self, CallArgs, Float, Init};
use crate::ir::{DType, Dim, NodeId, Op, TensorType};
use crate::span::Span;
use crate::syntax::ast::{self, Expr, PathSegment};

const INITIALIZERS: &[&str] = &["zeros", "ones", "uniform", "normal", "xavier", "he"];

pub(super) fn is_builtin(name: &str) -> bool {
    ops::builtin(name).is_some()
}

fn all_names() -> impl Iterator<Item = &'static str> {
    ops::BUILTINS.iter().flat_map(|b| b.names.iter().copied())
}

/// One call's arguments as the op files read them.
struct CallSite<'l, 'a> {
    lw: &'l mut Lowerer<'a>,
    args: &'l mut Args<'a>,
}

impl CallArgs for CallSite<'_, '_> {
    fn tensor(&mut self) -> Lowered<NodeId> {
        self.args.tensor(self.lw)
    }
    fn rest_tensors(&mut self) -> Lowered<Vec<NodeId>> {
        self.args.rest_tensors(self.lw)
    }
    fn int(&mut self, key: &str, default: Option<i64>) -> Lowered<i64> {
        self.args.int(self.lw, key, default)
    }
    fn float(&mut self, key: &str, default: f64) -> Lowered<f64> {
        self.args.float(self.lw, key, default)
    }
    fn bool(&mut self, key: &str, default: bool) -> Lowered<bool> {
        self.args.bool(self.lw, key, default)
    }
    fn int_list(&mut self, key: &str, positional: bool) -> Lowered<Option<Vec<i64>>> {
        self.args.int_list(self.lw, key, positional)
    }
    fn dtype(&mut self, key: &str) -> Lowered<DType> {
        self.args.dtype(self.lw, key)
    }
    fn word(&mut self, key: &str, words: &[&str], default: &'static str) -> Lowered<String> {
        self.args.word(self.lw, key, words, default)
    }
    fn ints_or_word(&mut self, key: &str, words: &[&str]) -> Lowered<Option<ops::IntsOrWord>> {
        self.args.ints_or_word(self.lw, key, words)
    }
    fn operand_type(&self, operand: NodeId) -> &TensorType {
        &self.lw.graph.node(operand).ty
    }
    fn dim_list(&mut self, key: &str, context: &str) -> Lowered<(Vec<Option<Dim>>, Span)> {
        let (items, list_span) = self.args.list(self.lw, key, true)?;
        let mut dims = Vec::with_capacity(items.len());
        let mut failed = false;
        for item in items {
            let is_infer = matches!(item, Expr::Neg { operand, .. } if matches!(**operand, Expr::Int { value: 1, .. }));
            if is_infer {
                dims.push(None);
                continue;
            }
            match self.lw.dim(item, false, context) {
                Ok(d) => dims.push(Some(d)),
                Err(_) => failed = true,
            }
        }
        if failed {
            return Err(Poisoned);
        }
        Ok((dims, list_span))
    }
    fn dim(&mut self, key: &str, context: &str) -> Lowered<Option<Dim>> {
        match self.args.raw(key) {
            Some(e) => self.lw.dim(e, false, context).map(Some),
            None => Ok(None),
        }
    }
    fn error(&mut self, message: String) -> Poisoned {
        let span = self.args.span;
        self.error_at(span, message)
    }
    fn error_at(&mut self, span: Span, message: String) -> Poisoned {
        self.lw.error(LowerError::Argument {
            func: self.args.func.clone(),
            message,
            span,
        })
    }
    fn shape_error_at(&mut self, span: Span, message: String) -> Poisoned {
        self.lw.error(LowerError::Shape {
            op: self.args.func.clone(),
            message,
            span,
        })
    }
    fn add_node(&mut self, op: Op, inputs: &[NodeId]) -> Lowered<NodeId> {
        let span = self.args.span;
        self.lw.node(op, inputs, span)
    }
    fn arity_error(&mut self, expected: &str, got: usize) -> Poisoned {
        self.lw.error(LowerError::Arity {
            func: self.args.func.clone(),
            expected: expected.to_string(),
            got,
            span: self.args.span,
        })
    }
}

pub(super) fn call<'a>(
    lw: &mut Lowerer<'a>,
    func: &ast::Ident,
    call_args: &'a [ast::Arg],
    span: Span,
) -> Lowered<NodeId> {
    let name = func.name.as_str();
    if !is_builtin(name) {
        let hint = if INITIALIZERS.contains(&name) {
            " (initializers go after `param NAME: TYPE =`)".to_string()
        } else {
            let mut candidates: Vec<&str> = all_names().collect();
            candidates.extend(lw.blocks.keys().copied());
            did_you_mean(name, candidates)
        };
        return Err(lw.error(LowerError::UnknownFunction {
            name: name.to_string(),
            span: func.span,
            hint,
        }));
    }
    let builtin = ops::builtin(name).expect("is_builtin checked the name");
    let mut args = Args::new(lw, name, call_args, span)?;
    let op_and_inputs = (builtin.lower)(
        name,
        &mut CallSite {
            lw,
            args: &mut args,
        },
    );
    // A lowering that failed stopped reading at its error: what it left
    // unread is not unknown, so only a successful one reports leftovers.
    let (op, inputs) = op_and_inputs?;
    args.finish(lw)?;
    lw.node(op, &inputs, span)
}

/// `zeros`, `ones`, `uniform(low=, high=, seed=)`, `normal(mean=, std=, seed=)`,
/// `xavier(seed=)`, `he(seed=)`.
pub(super) fn initializer<'a>(lw: &mut Lowerer<'a>, e: &'a Expr) -> Lowered<Init> {
    let (name, span, call_args): (&str, Span, &'a [ast::Arg]) = match e {
        Expr::Name(p) => match p.segments.as_slice() {
            [PathSegment::Name(n)] => (n.as_str(), p.span, &[]),
            _ => return Err(bad_init(lw, e.span(), "?")),
        },
        Expr::Call {
            func,
            args,
            prefix: None,
            span,
        } => (func.name.as_str(), *span, args.as_slice()),
        _ => return Err(bad_init(lw, e.span(), "?")),
    };
    if !INITIALIZERS.contains(&name) {
        return Err(bad_init(lw, span, name));
    }
    let mut args = Args::new(lw, name, call_args, span)?;
    let seed = |lw: &mut Lowerer<'a>, args: &mut Args<'a>| -> Lowered<u64> {
        let s = args.int(lw, "seed", Some(0))?;
        u64::try_from(s).map_err(|_| {
            lw.error(LowerError::Argument {
                func: name.to_string(),
                message: "seed must be >= 0".into(),
                span,
            })
        })
    };
    let init = match name {
        "zeros" => Init::Zeros,
        "ones" => Init::Ones,
        "uniform" => Init::Uniform {
            low: Float(args.float(lw, "low", -0.1)? as f32),
            high: Float(args.float(lw, "high", 0.1)? as f32),
            seed: seed(lw, &mut args)?,
        },
        "normal" => Init::Normal {
            mean: Float(args.float(lw, "mean", 0.0)? as f32),
            std: Float(args.float(lw, "std", 0.02)? as f32),
            seed: seed(lw, &mut args)?,
        },
        "xavier" => Init::Xavier {
            seed: seed(lw, &mut args)?,
        },
        _ => Init::He {
            seed: seed(lw, &mut args)?,
        },
    };
    args.finish(lw)?;
    Ok(init)
}

fn bad_init(lw: &mut Lowerer<'_>, span: Span, name: &str) -> Poisoned {
    lw.error(LowerError::Invalid {
        message: format!(
            "`{name}` is not an initializer (expected one of {})",
            INITIALIZERS.join(", ")
        ),
        span,
    })
}
