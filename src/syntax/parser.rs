//! Text to AST: the pest grammar in `grammar/lamina.pest`, folded into
//! `ast` nodes with byte spans into the source.
//!
//! The grammar keeps each precedence level as a flat list of operands and
//! operators; this module does the folding (left for `+ - * / @`, right for
//! `**`), checks literals (integer overflow, malformed numbers, loop bounds),
//! bounds the nesting depth, and turns pest's rule-name errors into messages
//! that speak the user's language.

use pest::error::{ErrorVariant, InputLocation};
use pest::iterators::{Pair, Pairs};
use pest::Parser as _;

use super::ast::{
    Arg, BinOp, BlockDef, BlockParam, BlockParamKind, Expr, File, Ident, Item, ModelDef, Path,
    PathSegment, Stmt, TypeExpr,
};
use crate::span::{line_col, Span};

/// The pest-generated parser lives in its own private module so that its
/// `Rule` enum does not leak into the public API.
mod grammar {
    #[derive(pest_derive::Parser)]
    #[grammar = "../grammar/lamina.pest"]
    pub(super) struct LaminaParser;
}

use grammar::{LaminaParser, Rule};

/// How deeply expressions (and `for` loops) may nest. An expression tree is
/// walked recursively by every later stage, so an absurdly deep one (a
/// generated file with a 10 000-term sum, say) is refused here with a
/// message rather than overflowing a stack somewhere downstream.
pub const MAX_NESTING: usize = 256;

/// Operators of one flat chain (`a + b - c + ...`, `a * b / c`) that cost
/// one level of `MAX_NESTING`, so that a long generated sum parses.
pub const CHAIN_TERMS_PER_LEVEL: usize = 16;

/// A syntax error: where it is and what went wrong, in words.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ParseError {
    pub span: Span,
    pub message: String,
}

impl ParseError {
    fn new(span: Span, message: impl Into<String>) -> ParseError {
        ParseError {
            span,
            message: message.into(),
        }
    }

    /// The pest tree did not have the shape the grammar promises. Only a
    /// bug in this module (grammar and builder out of step) can cause it.
    fn internal(span: Span) -> ParseError {
        ParseError::new(
            span,
            "internal parser error: unexpected syntax tree shape here (this is a bug in lamina)",
        )
    }
}

/// Parses a whole `.lam` file. Stops at the first syntax error.
pub fn parse(source: &str) -> Result<File, ParseError> {
    let mut pairs =
        LaminaParser::parse(Rule::file, source).map_err(|err| syntax_error(source, err))?;
    let whole = Span::new(0, source.len());
    let file = pairs.next().ok_or_else(|| ParseError::internal(whole))?;
    build_file(file)
}

// ------------------------------------------------------------------ builder

/// The span of a node's text. pest skips whitespace and comments *before*
/// trying an optional or repeated part, so a rule ending in one (`x` in
/// `x + y`'s `(add_op ~ ...)*`) also ends after any whitespace and comment
/// that follow it. The true end is that of the last token inside, found by
/// descending through last non-empty children down to a leaf (an atomic
/// rule or punctuation, whose span is exact).
fn span_of(pair: &Pair<'_, Rule>) -> Span {
    let start = pair.as_span().start();
    let mut last = pair.clone();
    while let Some(child) = last
        .clone()
        .into_inner()
        .rev()
        .find(|p| p.as_span().start() < p.as_span().end())
    {
        last = child;
    }
    Span::new(start, last.as_span().end())
}

/// Tokens that only delimit: their presence is implied by the node they sit
/// in, so the builder steps over them.
fn is_punctuation(rule: Rule) -> bool {
    matches!(
        rule,
        Rule::kw_weights
            | Rule::kw_block
            | Rule::kw_model
            | Rule::kw_input
            | Rule::kw_param
            | Rule::kw_output
            | Rule::kw_return
            | Rule::kw_for
            | Rule::kw_in
            | Rule::lparen
            | Rule::rparen
            | Rule::lbrack
            | Rule::rbrack
            | Rule::lbrace
            | Rule::rbrace
            | Rule::comma
            | Rule::colon
            | Rule::assign
            | Rule::range_op
            | Rule::output_end
    )
}

/// The meaningful children of a pair, punctuation skipped.
struct Children<'i> {
    inner: Pairs<'i, Rule>,
    parent: Span,
}

impl<'i> Children<'i> {
    fn of(pair: Pair<'i, Rule>) -> Children<'i> {
        // Only internal errors use it, so the untrimmed span will do.
        let parent = Span::new(pair.as_span().start(), pair.as_span().end());
        Children {
            inner: pair.into_inner(),
            parent,
        }
    }

    fn next(&mut self) -> Option<Pair<'i, Rule>> {
        self.inner.by_ref().find(|p| !is_punctuation(p.as_rule()))
    }

    fn peek_rule(&self) -> Option<Rule> {
        self.inner
            .clone()
            .find(|p| !is_punctuation(p.as_rule()))
            .map(|p| p.as_rule())
    }

    fn expect(&mut self, rule: Rule) -> Result<Pair<'i, Rule>, ParseError> {
        match self.next() {
            Some(pair) if pair.as_rule() == rule => Ok(pair),
            Some(pair) => Err(ParseError::internal(span_of(&pair))),
            None => Err(ParseError::internal(self.parent)),
        }
    }

    fn next_if(&mut self, rule: Rule) -> Option<Pair<'i, Rule>> {
        if self.peek_rule() == Some(rule) {
            self.next()
        } else {
            None
        }
    }

    fn finish(mut self) -> Result<(), ParseError> {
        match self.next() {
            None => Ok(()),
            Some(extra) => Err(ParseError::internal(span_of(&extra))),
        }
    }
}

fn too_deep(span: Span) -> ParseError {
    ParseError::new(
        span,
        format!(
            "this is nested too deeply (more than {MAX_NESTING} levels); \
             split it into several statements"
        ),
    )
}

fn build_file(pair: Pair<'_, Rule>) -> Result<File, ParseError> {
    let mut items = Vec::new();
    for child in pair.into_inner() {
        match child.as_rule() {
            Rule::item => items.push(build_item(child)?),
            Rule::EOI => {}
            _ => return Err(ParseError::internal(span_of(&child))),
        }
    }
    Ok(File { items })
}

fn build_item(pair: Pair<'_, Rule>) -> Result<Item, ParseError> {
    let mut children = Children::of(pair);
    let inner = children
        .next()
        .ok_or_else(|| ParseError::internal(children.parent))?;
    children.finish()?;
    match inner.as_rule() {
        Rule::weights_item => {
            let span = span_of(&inner);
            let mut parts = Children::of(inner);
            let string = parts.expect(Rule::string)?;
            parts.finish()?;
            Ok(Item::Weights {
                path: unquote(&string)?,
                span,
            })
        }
        Rule::block_def => build_block(inner).map(Item::Block),
        Rule::model_def => build_model(inner).map(Item::Model),
        _ => Err(ParseError::internal(span_of(&inner))),
    }
}

fn build_ident(pair: Pair<'_, Rule>) -> Ident {
    Ident {
        name: pair.as_str().to_string(),
        span: span_of(&pair),
    }
}

fn build_block(pair: Pair<'_, Rule>) -> Result<BlockDef, ParseError> {
    let span = span_of(&pair);
    let mut children = Children::of(pair);
    let name = build_ident(children.expect(Rule::ident)?);
    let mut params = Vec::new();
    let mut body = Vec::new();
    let mut ret = None;
    while let Some(child) = children.next() {
        match child.as_rule() {
            Rule::block_param => params.push(build_block_param(child)?),
            Rule::stmt => body.push(build_stmt(child, 0)?),
            Rule::block_return => {
                let mut parts = Children::of(child);
                ret = Some(build_expr(parts.expect(Rule::expr)?, 0)?);
                parts.finish()?;
            }
            _ => return Err(ParseError::internal(span_of(&child))),
        }
    }
    let ret = ret.ok_or_else(|| ParseError::internal(span))?;
    Ok(BlockDef {
        name,
        params,
        body,
        ret,
        span,
    })
}

fn build_block_param(pair: Pair<'_, Rule>) -> Result<BlockParam, ParseError> {
    let mut children = Children::of(pair);
    let name = build_ident(children.expect(Rule::ident)?);
    let kind = match children.next() {
        None => BlockParamKind::Tensor,
        Some(kind) => match kind.as_rule() {
            Rule::kw_int => BlockParamKind::Int,
            Rule::kw_float => BlockParamKind::Float,
            _ => return Err(ParseError::internal(span_of(&kind))),
        },
    };
    children.finish()?;
    Ok(BlockParam { name, kind })
}

fn build_model(pair: Pair<'_, Rule>) -> Result<ModelDef, ParseError> {
    let span = span_of(&pair);
    let mut children = Children::of(pair);
    let name = build_ident(children.expect(Rule::ident)?);
    let mut body = Vec::new();
    while let Some(child) = children.next() {
        match child.as_rule() {
            Rule::stmt => body.push(build_stmt(child, 0)?),
            _ => return Err(ParseError::internal(span_of(&child))),
        }
    }
    Ok(ModelDef { name, body, span })
}

/// `depth` counts enclosing `for` loops (they share the nesting budget
/// with expressions, since both recurse in every later stage).
fn build_stmt(pair: Pair<'_, Rule>, depth: usize) -> Result<Stmt, ParseError> {
    let mut outer = Children::of(pair);
    let stmt = outer
        .next()
        .ok_or_else(|| ParseError::internal(outer.parent))?;
    outer.finish()?;
    let span = span_of(&stmt);
    let rule = stmt.as_rule();
    let mut children = Children::of(stmt);
    let built = match rule {
        Rule::input_stmt => Stmt::Input {
            name: build_ident(children.expect(Rule::ident)?),
            ty: build_type(children.expect(Rule::type_expr)?, depth)?,
            preprocess: match children.next_if(Rule::expr) {
                Some(e) => Some(build_expr(e, depth)?),
                None => None,
            },
            span,
        },
        Rule::param_stmt => Stmt::Param {
            name: build_path(children.expect(Rule::path)?)?,
            ty: build_type(children.expect(Rule::type_expr)?, depth)?,
            init: match children.next_if(Rule::expr) {
                Some(init) => Some(build_expr(init, depth)?),
                None => None,
            },
            span,
        },
        Rule::output_stmt => Stmt::Output {
            name: build_ident(children.expect(Rule::ident)?),
            ty: match children.next_if(Rule::type_expr) {
                Some(ty) => Some(build_type(ty, depth)?),
                None => None,
            },
            value: match children.next_if(Rule::expr) {
                Some(value) => Some(build_expr(value, depth)?),
                None => None,
            },
            span,
        },
        Rule::let_stmt => Stmt::Let {
            name: build_ident(children.expect(Rule::ident)?),
            value: build_expr(children.expect(Rule::expr)?, depth)?,
            span,
        },
        Rule::for_stmt => {
            if depth >= MAX_NESTING {
                return Err(too_deep(span));
            }
            let var = build_ident(children.expect(Rule::ident)?);
            let start_pair = children.expect(Rule::number)?;
            let end_pair = children.expect(Rule::number)?;
            let range = span_of(&start_pair).to(span_of(&end_pair));
            let start = loop_bound(start_pair)?;
            let end = loop_bound(end_pair)?;
            if start > end {
                return Err(ParseError::new(
                    range,
                    format!(
                        "the loop range {start}..{end} runs backwards: \
                         the start must not be greater than the end"
                    ),
                ));
            }
            let mut body = Vec::new();
            while let Some(child) = children.next() {
                match child.as_rule() {
                    Rule::stmt => body.push(build_stmt(child, depth + 1)?),
                    _ => return Err(ParseError::internal(span_of(&child))),
                }
            }
            Stmt::For {
                var,
                start,
                end,
                body,
                span,
            }
        }
        _ => return Err(ParseError::internal(span)),
    };
    children.finish()?;
    Ok(built)
}

fn loop_bound(pair: Pair<'_, Rule>) -> Result<i64, ParseError> {
    let span = span_of(&pair);
    match number_literal(pair.as_str(), span)? {
        Expr::Int { value, .. } => Ok(value),
        _ => Err(ParseError::new(
            span,
            format!("loop bounds must be integers, found `{}`", pair.as_str()),
        )),
    }
}

fn build_type(pair: Pair<'_, Rule>, depth: usize) -> Result<TypeExpr, ParseError> {
    let span = span_of(&pair);
    let mut children = Children::of(pair);
    let dtype = build_ident(children.expect(Rule::ident)?);
    let mut dims = Vec::new();
    while let Some(dim) = children.next() {
        dims.push(build_expr(dim, depth + 1)?);
    }
    Ok(TypeExpr { dtype, dims, span })
}

fn build_path(pair: Pair<'_, Rule>) -> Result<Path, ParseError> {
    let span = span_of(&pair);
    let mut segments = Vec::new();
    let mut children = Children::of(pair);
    while let Some(segment) = children.next() {
        let segment = match segment.as_rule() {
            Rule::ident | Rule::word | Rule::reserved_head => {
                PathSegment::Name(segment.as_str().to_string())
            }
            Rule::index => {
                let text = segment.as_str();
                let index = text.parse::<u64>().map_err(|_| {
                    ParseError::new(
                        span_of(&segment),
                        format!("path index `{text}` does not fit in 64 bits"),
                    )
                })?;
                PathSegment::Index(index)
            }
            Rule::interp => {
                let mut parts = Children::of(segment);
                let var = parts.expect(Rule::ident)?;
                parts.finish()?;
                PathSegment::Interpolate(var.as_str().to_string())
            }
            _ => return Err(ParseError::internal(span_of(&segment))),
        };
        segments.push(segment);
    }
    if segments.is_empty() {
        return Err(ParseError::internal(span));
    }
    Ok(Path { segments, span })
}

/// Builds any expression-level pair. `depth` is the number of AST nodes
/// that will enclose the result; checking it on the way down bounds both
/// this recursion and the height of the tree handed to later stages.
///
/// Precedence levels with a single operand (`expr` -> `additive` -> ... ->
/// `primary` for a plain name) and parentheses are stepped through in a loop
/// rather than by recursion, so the builder's stack use grows with the
/// depth of the AST, not with the number of grammar levels.
fn build_expr(pair: Pair<'_, Rule>, depth: usize) -> Result<Expr, ParseError> {
    if depth > MAX_NESTING {
        return Err(too_deep(span_of(&pair)));
    }
    let mut pair = pair;
    loop {
        match pair.as_rule() {
            Rule::expr | Rule::additive | Rule::multiplicative | Rule::unary => {
                let mut inner = pair.clone().into_inner();
                let only_child = match (inner.next(), inner.next()) {
                    (Some(child), None) => Some(child),
                    _ => None,
                };
                match only_child {
                    // A lone power operand may still carry minus signs.
                    Some(child)
                        if child.as_rule() != Rule::power_operand
                            || child.clone().into_inner().count() == 1 =>
                    {
                        pair = child;
                    }
                    _ => {
                        return match pair.as_rule() {
                            Rule::expr => build_comparison(pair, depth),
                            Rule::unary => build_power_chain(pair, depth),
                            _ => build_left_chain(pair, depth),
                        };
                    }
                }
            }
            Rule::power_operand | Rule::primary | Rule::paren_expr => {
                let mut children = Children::of(pair);
                let inner = children
                    .next()
                    .ok_or_else(|| ParseError::internal(children.parent))?;
                children.finish()?;
                pair = inner;
            }
            Rule::list => {
                let span = span_of(&pair);
                let mut items = Vec::new();
                let mut children = Children::of(pair);
                while let Some(item) = children.next() {
                    items.push(build_expr(item, depth + 1)?);
                }
                return Ok(Expr::List { items, span });
            }
            Rule::call => return build_call(pair, depth),
            Rule::number => return number_literal(pair.as_str(), span_of(&pair)),
            Rule::boolean => {
                return Ok(Expr::Bool {
                    value: pair.as_str() == "true",
                    span: span_of(&pair),
                })
            }
            Rule::string => {
                return Ok(Expr::Str {
                    value: unquote(&pair)?,
                    span: span_of(&pair),
                })
            }
            Rule::path => return build_path(pair).map(Expr::Name),
            _ => return Err(ParseError::internal(span_of(&pair))),
        }
    }
}

/// The text between a string's quotes (the grammar guarantees ASCII quotes at both ends).
fn unquote(string: &Pair<'_, Rule>) -> Result<String, ParseError> {
    string
        .as_str()
        .strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .map(str::to_string)
        .ok_or_else(|| ParseError::internal(span_of(string)))
}

/// `a < b`; comparisons do not chain, since `a < b < c` would compare a
/// bool tensor with `c`, which is never what was meant.
fn build_comparison(pair: Pair<'_, Rule>, depth: usize) -> Result<Expr, ParseError> {
    let span = span_of(&pair);
    let parts: Vec<Pair<'_, Rule>> = pair.into_inner().collect();
    match parts.as_slice() {
        [single] => build_expr(single.clone(), depth),
        [lhs, op, rhs] => Ok(Expr::Binary {
            op: binary_op(op)?,
            lhs: Box::new(build_expr(lhs.clone(), depth + 1)?),
            rhs: Box::new(build_expr(rhs.clone(), depth + 1)?),
            span,
        }),
        [_, _, _, second_op, ..] => Err(ParseError::new(
            span_of(second_op),
            format!(
                "comparisons cannot be chained; add parentheses around the \
                 comparison that comes first, before this `{}`",
                second_op.as_str()
            ),
        )),
        _ => Err(ParseError::internal(span)),
    }
}

/// `a + b - c` is `(a + b) - c`. Each node's span runs from the first
/// operand to the end of its right operand, parentheses included.
fn build_left_chain(pair: Pair<'_, Rule>, depth: usize) -> Result<Expr, ParseError> {
    let span = span_of(&pair);
    let mut parts = pair.into_inner();
    let first = parts.next().ok_or_else(|| ParseError::internal(span))?;
    let rest: Vec<Pair<'_, Rule>> = parts.collect();
    if !rest.len().is_multiple_of(2) {
        return Err(ParseError::internal(span));
    }
    let operators = rest.len() / 2;
    // A flat chain is not nesting as the user sees it, but its tree is
    // `operators` levels high and later stages recurse through it; so it
    // spends one level of the budget per CHAIN_TERMS_PER_LEVEL operators.
    // The tree's height then stays under MAX_NESTING * CHAIN_TERMS_PER_LEVEL
    // however chains and brackets are mixed.
    let levels = operators.div_ceil(CHAIN_TERMS_PER_LEVEL);
    if depth + levels > MAX_NESTING {
        return Err(ParseError::new(
            span,
            format!(
                "this chain of {} terms is too long at this nesting depth (a flat chain may \
                 have up to {} terms); split it into several statements",
                operators + 1,
                MAX_NESTING * CHAIN_TERMS_PER_LEVEL
            ),
        ));
    }
    let start = span_of(&first).start;
    let mut acc = build_expr(first, depth + levels)?;
    for op_and_operand in rest.chunks(2) {
        let [op, operand] = op_and_operand else {
            return Err(ParseError::internal(span));
        };
        let end = span_of(operand).end;
        let rhs = build_expr(operand.clone(), depth + levels)?;
        acc = Expr::Binary {
            op: binary_op(op)?,
            lhs: Box::new(acc),
            rhs: Box::new(rhs),
            span: Span::new(start, end),
        };
    }
    Ok(acc)
}

/// `-a ** -b ** c` is `-(a ** (-(b ** c)))`: the minus signs in front of an
/// operand apply to that operand raised to everything on its right.
fn build_power_chain(pair: Pair<'_, Rule>, depth: usize) -> Result<Expr, ParseError> {
    let span = span_of(&pair);
    let chain_end = span.end;

    struct Operand<'i> {
        minus_starts: Vec<usize>,
        primary: Pair<'i, Rule>,
    }
    let mut operands = Vec::new();
    for part in pair.into_inner() {
        match part.as_rule() {
            Rule::pow_op => {}
            Rule::power_operand => {
                let operand_span = span_of(&part);
                let mut minus_starts = Vec::new();
                let mut primary = None;
                for piece in part.into_inner() {
                    match piece.as_rule() {
                        Rule::neg_op => minus_starts.push(span_of(&piece).start),
                        Rule::primary if primary.is_none() => primary = Some(piece),
                        _ => return Err(ParseError::internal(span_of(&piece))),
                    }
                }
                let primary = primary.ok_or_else(|| ParseError::internal(operand_span))?;
                operands.push(Operand {
                    minus_starts,
                    primary,
                });
            }
            _ => return Err(ParseError::internal(span_of(&part))),
        }
    }

    // Nodes enclosing operand i: for each earlier operand j, its minus signs
    // and its `**`; then operand i's own minus signs and (unless it is last)
    // its own `**`.
    let last = operands.len().saturating_sub(1);
    let mut enclosing = Vec::with_capacity(operands.len());
    let mut before = 0usize;
    for (i, operand) in operands.iter().enumerate() {
        let own_pow = usize::from(i < last);
        enclosing.push(before + operand.minus_starts.len() + own_pow);
        before += operand.minus_starts.len() + 1;
    }

    let mut acc: Option<Expr> = None;
    for (operand, enclosing) in operands.into_iter().zip(enclosing).rev() {
        let base_start = span_of(&operand.primary).start;
        let base = build_expr(operand.primary, depth + enclosing)?;
        let mut expr = match acc {
            None => base,
            Some(exponent) => Expr::Binary {
                op: BinOp::Pow,
                lhs: Box::new(base),
                rhs: Box::new(exponent),
                span: Span::new(base_start, chain_end),
            },
        };
        for &minus_start in operand.minus_starts.iter().rev() {
            expr = Expr::Neg {
                operand: Box::new(expr),
                span: Span::new(minus_start, chain_end),
            };
        }
        acc = Some(expr);
    }
    acc.ok_or_else(|| ParseError::internal(span))
}

fn binary_op(pair: &Pair<'_, Rule>) -> Result<BinOp, ParseError> {
    let op = match pair.as_str() {
        "+" => BinOp::Add,
        "-" => BinOp::Sub,
        "*" => BinOp::Mul,
        "/" => BinOp::Div,
        "@" => BinOp::MatMul,
        "**" => BinOp::Pow,
        "<" => BinOp::Lt,
        "<=" => BinOp::Le,
        ">" => BinOp::Gt,
        ">=" => BinOp::Ge,
        "==" => BinOp::Eq,
        "!=" => BinOp::Ne,
        _ => return Err(ParseError::internal(span_of(pair))),
    };
    Ok(op)
}

fn build_call(pair: Pair<'_, Rule>, depth: usize) -> Result<Expr, ParseError> {
    let span = span_of(&pair);
    let mut children = Children::of(pair);
    let func = build_ident(children.expect(Rule::ident)?);
    let mut args = Vec::new();
    let mut prefix = None;
    while let Some(child) = children.next() {
        match child.as_rule() {
            Rule::expr if prefix.is_none() => {
                args.push(Arg::Positional(build_expr(child, depth + 1)?));
            }
            Rule::keyword_arg if prefix.is_none() => {
                let mut parts = Children::of(child);
                let name = build_ident(parts.expect(Rule::ident)?);
                let value = build_expr(parts.expect(Rule::expr)?, depth + 1)?;
                parts.finish()?;
                args.push(Arg::Keyword { name, value });
            }
            Rule::path if prefix.is_none() => prefix = Some(build_path(child)?),
            _ => return Err(ParseError::internal(span_of(&child))),
        }
    }
    Ok(Expr::Call {
        func,
        args,
        prefix,
        span,
    })
}

/// The grammar accepts any digit-led run of word characters as a number
/// token, so that `1e`, `0x10` or `1.5.2` get a precise message here.
fn number_literal(text: &str, span: Span) -> Result<Expr, ParseError> {
    if text.bytes().all(|b| b.is_ascii_digit()) {
        return text
            .parse::<i64>()
            .map(|value| Expr::Int { value, span })
            .map_err(|_| {
                ParseError::new(
                    span,
                    format!(
                        "integer literal `{text}` is too large (the largest is {})",
                        i64::MAX
                    ),
                )
            });
    }
    if !is_float_syntax(text) {
        return Err(ParseError::new(
            span,
            format!(
                "malformed number `{text}` (write integers as `784` and floats as \
                 `0.5`, `3.`, `1e-5` or `1.0e-5`)"
            ),
        ));
    }
    match text.parse::<f64>() {
        Ok(value) if value.is_finite() => Ok(Expr::Float { value, span }),
        _ => Err(ParseError::new(
            span,
            format!("float literal `{text}` is out of range"),
        )),
    }
}

/// `digits ('.' digits?)? ([eE] [+-]? digits)?` with a '.' or an exponent.
fn is_float_syntax(text: &str) -> bool {
    let bytes = text.as_bytes();
    let mut i = 0;
    let digits = |i: &mut usize| {
        let start = *i;
        while *i < bytes.len() && bytes[*i].is_ascii_digit() {
            *i += 1;
        }
        *i > start
    };
    if !digits(&mut i) {
        return false;
    }
    let mut has_point = false;
    if bytes.get(i) == Some(&b'.') {
        has_point = true;
        i += 1;
        digits(&mut i);
    }
    let mut has_exponent = false;
    if matches!(bytes.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(bytes.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        if !digits(&mut i) {
            return false;
        }
        has_exponent = true;
    }
    i == bytes.len() && (has_point || has_exponent)
}

// ------------------------------------------------------------------- errors

const RESERVED_WORDS: [&str; 11] = [
    "model", "block", "input", "param", "output", "return", "for", "weights", "as", "true", "false",
];

/// What the user could have written where pest expected `rule`: one or
/// more alternatives, in words.
fn describe(rule: Rule) -> &'static [&'static str] {
    match rule {
        Rule::EOI => &["end of input"],
        Rule::file | Rule::item => &["`weights`", "`block`", "`model`"],
        Rule::weights_item | Rule::kw_weights => &["`weights`"],
        Rule::string => &["a quoted file name"],
        Rule::block_def | Rule::kw_block => &["`block`"],
        Rule::block_param => &["a block argument"],
        Rule::block_return | Rule::kw_return => &["`return`"],
        Rule::model_def | Rule::kw_model => &["`model`"],
        Rule::stmts
        | Rule::stmt
        | Rule::input_stmt
        | Rule::param_stmt
        | Rule::output_stmt
        | Rule::for_stmt
        | Rule::let_stmt => &["a statement"],
        Rule::type_expr => &["a type such as `f32[batch, 784]`"],
        // Only ever fails; `syntax_error` explains it in its own words.
        Rule::output_end | Rule::call_start => &[],
        Rule::expr
        | Rule::additive
        | Rule::multiplicative
        | Rule::unary
        | Rule::power_operand
        | Rule::primary
        | Rule::paren_expr
        | Rule::list
        | Rule::boolean
        | Rule::call
        | Rule::neg_op => &["an expression"],
        Rule::arg | Rule::keyword_arg => &["an argument"],
        Rule::number | Rule::index => &["an integer"],
        Rule::ident
        | Rule::ident_char
        | Rule::reserved
        | Rule::path
        | Rule::reserved_head
        | Rule::word => &["a name"],
        Rule::interp => &["`{loop variable}`"],
        Rule::kw_input => &["`input`"],
        Rule::kw_param => &["`param`"],
        Rule::kw_output => &["`output`"],
        Rule::kw_for => &["`for`"],
        Rule::kw_as => &["`as`"],
        Rule::kw_true => &["`true`"],
        Rule::kw_false => &["`false`"],
        Rule::kw_in => &["`in`"],
        Rule::kw_int | Rule::kw_float => &["`int`", "`float`"],
        Rule::lparen => &["`(`"],
        Rule::rparen => &["`)`"],
        Rule::lbrack => &["`[`"],
        Rule::rbrack => &["`]`"],
        Rule::lbrace => &["`{`"],
        Rule::rbrace => &["`}`"],
        Rule::comma => &["`,`"],
        Rule::colon => &["`:`"],
        Rule::assign => &["`=`"],
        Rule::semi => &["`;`"],
        Rule::range_op => &["`..`"],
        Rule::cmp_op | Rule::add_op | Rule::mul_op | Rule::pow_op => &["an operator"],
        Rule::WHITESPACE | Rule::COMMENT => &["whitespace"],
    }
}

/// Where an alternative goes in an "expected ..." list: what would continue
/// the current construct first, what would start the next one last.
fn listing_rank(description: &str) -> u8 {
    match description {
        "an operator" => 1,
        "a statement" | "`return`" => 2,
        "`}`" | "`weights`" | "`block`" | "`model`" => 3,
        "end of input" => 4,
        _ => 0,
    }
}

/// Rules that a (non-reserved) name could have satisfied.
fn accepts_name(rule: Rule) -> bool {
    matches!(
        rule,
        Rule::stmt
            | Rule::let_stmt
            | Rule::ident
            | Rule::path
            | Rule::block_param
            | Rule::keyword_arg
            | Rule::expr
            | Rule::additive
            | Rule::multiplicative
            | Rule::unary
            | Rule::power_operand
            | Rule::primary
            | Rule::call
    )
}

/// The token found at a failure position, for "found ..." in messages.
struct Found {
    span: Span,
    text: String,
    reserved_word: Option<&'static str>,
}

fn found_at(source: &str, pos: usize) -> Found {
    let pos = pos.min(source.len());
    let rest = source.get(pos..).unwrap_or("");
    let Some(first) = rest.chars().next() else {
        return Found {
            span: Span::new(pos, pos),
            text: "end of input".to_string(),
            reserved_word: None,
        };
    };
    let word_len = rest
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(rest.len());
    let len = if word_len > 0 {
        word_len
    } else if ["**", "==", "!=", "<=", ">=", ".."]
        .iter()
        .any(|op| rest.starts_with(op))
    {
        2
    } else {
        first.len_utf8()
    };
    let token = &rest[..len];
    let text = match first {
        ' ' | '\t' => "a space".to_string(),
        '\n' | '\r' => "a line break".to_string(),
        c if c.is_control() => format!("the control character {}", c.escape_debug()),
        _ => format!("`{token}`"),
    };
    Found {
        span: Span::new(pos, pos + len),
        text,
        reserved_word: RESERVED_WORDS.iter().copied().find(|w| *w == token),
    }
}

/// "a", "a or b", "a, b or c".
fn join_alternatives(items: &[&str]) -> String {
    match items {
        [] => String::new(),
        [only] => (*only).to_string(),
        [init @ .., last] => format!("{} or {last}", init.join(", ")),
    }
}

fn syntax_error(source: &str, err: pest::error::Error<Rule>) -> ParseError {
    let pos = match err.location {
        InputLocation::Pos(pos) => pos,
        InputLocation::Span((start, _)) => start,
    };
    let positives = match err.variant {
        ErrorVariant::ParsingError { positives, .. } => positives,
        // pest's guard against runaway recursion (deeply nested brackets).
        ErrorVariant::CustomError { .. } => {
            let found = found_at(source, pos);
            return ParseError::new(
                found.span,
                "the input is nested too deeply to parse; split it into several statements",
            );
        }
    };

    if source.get(pos..).is_some_and(|rest| rest.starts_with('"')) {
        let line_end = source[pos..].find('\n').map_or(source.len(), |i| pos + i);
        if !source[pos + 1..line_end].contains('"') {
            return ParseError::new(
                Span::new(pos, line_end),
                "unterminated string: the closing `\"` is missing on this line",
            );
        }
    }

    let found = found_at(source, pos);
    let mut expected: Vec<&str> = Vec::new();
    for description in positives.iter().flat_map(|rule| describe(*rule)) {
        if !expected.contains(description) {
            expected.push(description);
        }
    }
    expected.sort_by_key(|description| listing_rank(description));
    let mut message = if expected.is_empty() {
        format!("unexpected {}", found.text)
    } else {
        format!(
            "expected {}, found {}",
            join_alternatives(&expected),
            found.text
        )
    };
    if positives.contains(&Rule::output_end) {
        message.push_str(
            " (an output is written `output NAME = EXPR`, `output NAME: TYPE = EXPR` or `output NAME`)",
        );
        return ParseError::new(found.span, message);
    }
    match found.reserved_word {
        Some("return") => {
            message.push_str(" (`return` may only appear once, at the end of a block)")
        }
        Some("as") => message.push_str(
            " (`as` names a block instance and must follow a call, as in `dense(x, 4, 4) as fc1`)",
        ),
        Some(word) if positives.iter().any(|r| accepts_name(*r)) => message.push_str(&format!(
            " (`{word}` is a reserved word and cannot be used as a name)"
        )),
        _ if positives.contains(&Rule::block_return) || positives.contains(&Rule::kw_return) => {
            message.push_str(" (a block ends with `return <expression>`)")
        }
        _ => {}
    }
    if let Some((opener, at)) = innermost_unclosed(source, pos) {
        // A `}` is expected after every statement of a body, so pointing at
        // the body's `{` only helps when the file ends inside it.
        let closer = match opener {
            '(' => Some(Rule::rparen),
            '[' => Some(Rule::rbrack),
            _ if pos >= source.len() => Some(Rule::rbrace),
            _ => None,
        };
        if closer.is_some_and(|closer| positives.contains(&closer)) {
            let (line, column) = line_col(source, at);
            message.push_str(&format!(
                " (to close the `{opener}` at line {line}, column {column})"
            ));
        }
    }
    ParseError::new(found.span, message)
}

/// The innermost bracket still open at `pos`, and its offset, skipping
/// comments and strings. The grammar does not say which bracket an expected
/// `)` would close; this does, which matters when the error shows up lines
/// after a forgotten parenthesis.
fn innermost_unclosed(source: &str, pos: usize) -> Option<(char, usize)> {
    let mut open: Vec<(char, usize)> = Vec::new();
    let mut chars = source.get(..pos)?.char_indices();
    while let Some((at, c)) = chars.next() {
        match c {
            '#' => {
                chars.by_ref().find(|&(_, c)| c == '\n');
            }
            '"' => {
                chars.by_ref().find(|&(_, c)| c == '"' || c == '\n');
            }
            '(' | '[' | '{' => open.push((c, at)),
            ')' | ']' | '}' => {
                let opener = match c {
                    ')' => '(',
                    ']' => '[',
                    _ => '{',
                };
                if open.last().is_some_and(|&(o, _)| o == opener) {
                    open.pop();
                }
            }
            _ => {}
        }
    }
    open.pop()
}

#[cfg(test)]
mod tests;
