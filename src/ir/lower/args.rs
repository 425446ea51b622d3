//! Call arguments: positional tensors and typed keyword attributes.

use std::collections::HashMap;

use super::{Lowered, Lowerer, Poisoned, Value};
use crate::ir::lower_error::LowerError;
use crate::ir::ops::IntsOrWord;
use crate::ir::{DType, NodeId};
use crate::span::Span;
use crate::syntax::ast::{self, BlockParamKind, Expr, PathSegment};

/// The arguments of one built-in call, consumed by name or position.
/// `finish` reports anything left over.
pub(super) struct Args<'a> {
    pub func: String,
    pub span: Span,
    positional: Vec<&'a Expr>,
    keywords: HashMap<String, (&'a Expr, Span)>,
    next: usize,
}

impl<'a> Args<'a> {
    pub fn new(
        lw: &mut Lowerer<'a>,
        func: &str,
        args: &'a [ast::Arg],
        span: Span,
    ) -> Lowered<Args<'a>> {
        let mut positional = Vec::new();
        let mut keywords = HashMap::new();
        let mut seen_keyword = false;
        for arg in args {
            match arg {
                ast::Arg::Positional(e) => {
                    if seen_keyword {
                        return Err(lw.error(LowerError::Argument {
                            func: func.to_string(),
                            message: "a positional argument follows a keyword argument".into(),
                            span: e.span(),
                        }));
                    }
                    positional.push(e);
                }
                ast::Arg::Keyword { name, value } => {
                    seen_keyword = true;
                    if keywords
                        .insert(name.name.clone(), (value, name.span))
                        .is_some()
                    {
                        return Err(lw.error(LowerError::Argument {
                            func: func.to_string(),
                            message: format!("`{}` is given twice", name.name),
                            span: name.span,
                        }));
                    }
                }
            }
        }
        Ok(Args {
            func: func.to_string(),
            span,
            positional,
            keywords,
            next: 0,
        })
    }

    fn arg_error(&self, lw: &mut Lowerer<'a>, message: String, span: Span) -> Poisoned {
        lw.error(LowerError::Argument {
            func: self.func.clone(),
            message,
            span,
        })
    }

    /// The next positional argument, as a tensor.
    pub fn tensor(&mut self, lw: &mut Lowerer<'a>) -> Lowered<NodeId> {
        let Some(e) = self.positional.get(self.next).copied() else {
            return Err(lw.error(LowerError::Argument {
                func: self.func.clone(),
                message: format!(
                    "missing tensor argument {} (got {} positional argument(s))",
                    self.next + 1,
                    self.positional.len()
                ),
                span: self.span,
            }));
        };
        self.next += 1;
        let v = lw.expr(e)?;
        lw.tensor_value(v, e.span())
    }

    /// All remaining positional arguments, as tensors.
    pub fn rest_tensors(&mut self, lw: &mut Lowerer<'a>) -> Lowered<Vec<NodeId>> {
        let mut out = Vec::new();
        let mut failed = false;
        while self.next < self.positional.len() {
            match self.tensor(lw) {
                Ok(t) => out.push(t),
                Err(_) => failed = true,
            }
        }
        if failed {
            Err(Poisoned)
        } else {
            Ok(out)
        }
    }

    /// An attribute given by keyword, or as the next positional argument
    /// when `positional` is set (`cast(x, f32)`, `reshape(x, [..])`).
    fn attr(&mut self, name: &str, positional: bool) -> Option<(&'a Expr, Span)> {
        if let Some(found) = self.keywords.remove(name) {
            return Some(found);
        }
        if positional {
            if let Some(e) = self.positional.get(self.next).copied() {
                self.next += 1;
                return Some((e, e.span()));
            }
        }
        None
    }

    pub fn int(&mut self, lw: &mut Lowerer<'a>, name: &str, default: Option<i64>) -> Lowered<i64> {
        match self.attr(name, false) {
            None => {
                default.ok_or_else(|| self.arg_error(lw, format!("needs `{name}=`"), self.span))
            }
            Some((e, span)) => match lw.expr(e)? {
                Value::Int(v) => Ok(v),
                _ => Err(self.arg_error(lw, format!("`{name}` must be an integer"), span)),
            },
        }
    }

    pub fn float(&mut self, lw: &mut Lowerer<'a>, name: &str, default: f64) -> Lowered<f64> {
        match self.attr(name, false) {
            None => Ok(default),
            Some((e, span)) => match lw.expr(e)? {
                Value::Int(v) => Ok(v as f64),
                Value::Float(v) => Ok(v),
                Value::Tensor(_) => {
                    Err(self.arg_error(lw, format!("`{name}` must be a number"), span))
                }
            },
        }
    }

    pub fn bool(&mut self, lw: &mut Lowerer<'a>, name: &str, default: bool) -> Lowered<bool> {
        match self.attr(name, false) {
            None => Ok(default),
            Some((Expr::Bool { value, .. }, _)) => Ok(*value),
            Some((_, span)) => {
                Err(self.arg_error(lw, format!("`{name}` must be true or false"), span))
            }
        }
    }

    /// An integer or a list of integers (`axis=1`, `axis=[1, 2]`); None if absent.
    pub fn int_list(
        &mut self,
        lw: &mut Lowerer<'a>,
        name: &str,
        positional: bool,
    ) -> Lowered<Option<Vec<i64>>> {
        let Some((e, span)) = self.attr(name, positional) else {
            return Ok(None);
        };
        let items: Vec<&'a Expr> = match e {
            Expr::List { items, .. } => items.iter().collect(),
            single => vec![single],
        };
        let mut out = Vec::with_capacity(items.len());
        for item in items {
            match lw.expr(item)? {
                Value::Int(v) => out.push(v),
                _ => return Err(self.arg_error(lw, format!("`{name}` must be integers"), span)),
            }
        }
        Ok(Some(out))
    }

    /// One number or a list of numbers (`mean=127.0`, `mean=[123.7, 116.3, 103.5]`);
    /// None if absent.
    pub fn float_list(&mut self, lw: &mut Lowerer<'a>, name: &str) -> Lowered<Option<Vec<f64>>> {
        let Some((e, span)) = self.attr(name, false) else {
            return Ok(None);
        };
        let items: Vec<&'a Expr> = match e {
            Expr::List { items, .. } => items.iter().collect(),
            single => vec![single],
        };
        let mut out = Vec::with_capacity(items.len());
        for item in items {
            match lw.expr(item)? {
                Value::Int(v) => out.push(v as f64),
                Value::Float(v) => out.push(v),
                Value::Tensor(_) => {
                    return Err(self.arg_error(lw, format!("`{name}` must be numbers"), span))
                }
            }
        }
        Ok(Some(out))
    }

    /// A word attribute that must be one of `allowed` (`mode="bilinear"`).
    pub fn word(
        &mut self,
        lw: &mut Lowerer<'a>,
        name: &str,
        allowed: &[&str],
        default: &'static str,
    ) -> Lowered<String> {
        match self.attr(name, false) {
            None => Ok(default.to_string()),
            Some((e, span)) => match e {
                Expr::Str { value, span } => self.checked_word(lw, name, value, allowed, *span),
                _ => Err(self.arg_error(
                    lw,
                    format!("`{name}` must be a string, one of {}", quoted(allowed)),
                    span,
                )),
            },
        }
    }

    /// One integer, a list of integers, or one of `words` (`padding="same"`).
    pub fn ints_or_word(
        &mut self,
        lw: &mut Lowerer<'a>,
        name: &str,
        words: &[&str],
    ) -> Lowered<Option<IntsOrWord>> {
        match self.attr(name, false) {
            None => Ok(None),
            Some((Expr::Str { value, span }, _)) => self
                .checked_word(lw, name, value, words, *span)
                .map(|w| Some(IntsOrWord::Word(w))),
            Some((e, span)) => {
                let items: Vec<&'a Expr> = match e {
                    Expr::List { items, .. } => items.iter().collect(),
                    single => vec![single],
                };
                let mut out = Vec::with_capacity(items.len());
                for item in items {
                    match lw.expr(item)? {
                        Value::Int(v) => out.push(v),
                        _ => {
                            return Err(self.arg_error(
                                lw,
                                format!(
                                    "`{name}` must be an integer, a list of integers or one of {}",
                                    quoted(words)
                                ),
                                span,
                            ))
                        }
                    }
                }
                Ok(Some(IntsOrWord::Ints(out)))
            }
        }
    }

    fn checked_word(
        &self,
        lw: &mut Lowerer<'a>,
        name: &str,
        value: &str,
        allowed: &[&str],
        span: Span,
    ) -> Lowered<String> {
        if allowed.contains(&value) {
            Ok(value.to_string())
        } else {
            Err(self.arg_error(
                lw,
                format!(
                    "`{name}` is \"{value}\"; expected one of {}",
                    quoted(allowed)
                ),
                span,
            ))
        }
    }

    /// A list of dim expressions as written (`shape=[batch, -1, 64]`).
    pub fn list(
        &mut self,
        lw: &mut Lowerer<'a>,
        name: &str,
        positional: bool,
    ) -> Lowered<(&'a [Expr], Span)> {
        match self.attr(name, positional) {
            Some((Expr::List { items, span }, _)) => Ok((items, *span)),
            Some((_, span)) => {
                Err(self.arg_error(lw, format!("`{name}` must be a list like [a, b]"), span))
            }
            None => Err(self.arg_error(lw, format!("needs `{name}=[...]`"), self.span)),
        }
    }

    /// An expression attribute left to the caller (dims such as `end=seq`).
    pub fn raw(&mut self, name: &str) -> Option<&'a Expr> {
        self.attr(name, false).map(|(e, _)| e)
    }

    pub fn dtype(&mut self, lw: &mut Lowerer<'a>, name: &str) -> Lowered<DType> {
        let Some((e, span)) = self.attr(name, true) else {
            return Err(self.arg_error(lw, format!("needs a dtype (`{name}=f32`)"), self.span));
        };
        let word = match e {
            Expr::Name(p) => match p.segments.as_slice() {
                [PathSegment::Name(n)] => Some(n.as_str()),
                _ => None,
            },
            _ => None,
        };
        match word.and_then(|w| w.parse::<DType>().ok()) {
            Some(d) => Ok(d),
            None => Err(lw.error(LowerError::UnknownDType {
                name: word.unwrap_or("?").to_string(),
                span,
            })),
        }
    }

    /// Reports unused keywords and surplus positional arguments.
    pub fn finish(self, lw: &mut Lowerer<'a>) -> Lowered<()> {
        let mut ok = true;
        if self.next < self.positional.len() {
            lw.error(LowerError::Arity {
                func: self.func.clone(),
                expected: format!("{} positional argument(s)", self.next),
                got: self.positional.len(),
                span: self.positional[self.next].span(),
            });
            ok = false;
        }
        let mut unknown: Vec<_> = self.keywords.into_iter().collect();
        unknown.sort_by_key(|(_, (_, span))| span.start);
        for (name, (_, span)) in unknown {
            lw.error(LowerError::Argument {
                func: self.func.clone(),
                message: format!("has no attribute `{name}`"),
                span,
            });
            ok = false;
        }
        if ok {
            Ok(())
        } else {
            Err(Poisoned)
        }
    }
}

/// `"a", "b"`, for messages.
fn quoted(words: &[&str]) -> String {
    words
        .iter()
        .map(|w| format!("\"{w}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Matches a block call's arguments to the block's parameters (positional
/// first, then by keyword) and checks each one's kind.
pub(super) fn bind_block_args<'a>(
    lw: &mut Lowerer<'a>,
    block: &'a ast::BlockDef,
    args: &'a [ast::Arg],
    span: Span,
) -> Lowered<Vec<Value>> {
    let name = &block.name.name;
    let mut slots: Vec<Option<(Value, Span)>> = vec![None; block.params.len()];
    let mut position = 0;
    let mut failed = false;
    for arg in args {
        let (slot, expr) = match arg {
            ast::Arg::Positional(e) => {
                position += 1;
                if position > block.params.len() {
                    lw.error(LowerError::Arity {
                        func: format!("block `{name}`"),
                        expected: format!("{} argument(s)", block.params.len()),
                        got: args.len(),
                        span: e.span(),
                    });
                    return Err(Poisoned);
                }
                (position - 1, e)
            }
            ast::Arg::Keyword { name: kw, value } => {
                match block.params.iter().position(|p| p.name.name == kw.name) {
                    Some(i) => (i, value),
                    None => {
                        lw.error(LowerError::Argument {
                            func: format!("block `{name}`"),
                            message: format!("has no parameter `{}`", kw.name),
                            span: kw.span,
                        });
                        failed = true;
                        continue;
                    }
                }
            }
        };
        let param = &block.params[slot];
        let Ok(v) = lw.expr(expr) else {
            failed = true;
            continue;
        };
        let v = match (param.kind, v) {
            (BlockParamKind::Tensor, v) => lw.tensor_value(v, expr.span()).map(Value::Tensor),
            (BlockParamKind::Int, Value::Int(i)) => Ok(Value::Int(i)),
            (BlockParamKind::Float, Value::Int(i)) => Ok(Value::Float(i as f64)),
            (BlockParamKind::Float, Value::Float(f)) => Ok(Value::Float(f)),
            (kind, _) => Err(lw.error(LowerError::Argument {
                func: format!("block `{name}`"),
                message: format!("argument `{}` must be {}", param.name.name, kind.describe()),
                span: expr.span(),
            })),
        };
        match v {
            Ok(v) => {
                if slots[slot].replace((v, expr.span())).is_some() {
                    lw.error(LowerError::Argument {
                        func: format!("block `{name}`"),
                        message: format!("argument `{}` is given twice", param.name.name),
                        span: expr.span(),
                    });
                    failed = true;
                }
            }
            Err(_) => failed = true,
        }
    }
    if failed {
        return Err(Poisoned);
    }
    let missing: Vec<&str> = block
        .params
        .iter()
        .zip(&slots)
        .filter(|(_, s)| s.is_none())
        .map(|(p, _)| p.name.name.as_str())
        .collect();
    if !missing.is_empty() {
        return Err(lw.error(LowerError::Arity {
            func: format!("block `{name}`"),
            expected: format!(
                "{} argument(s), missing `{}`",
                block.params.len(),
                missing.join("`, `")
            ),
            got: args.len(),
            span,
        }));
    }
    Ok(slots
        .into_iter()
        .map(|s| s.expect("checked above").0)
        .collect())
}
