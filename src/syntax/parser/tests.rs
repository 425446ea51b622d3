use super::*;
use crate::syntax::ast::{Arg, BlockParamKind, Expr, Item, PathSegment, Stmt};

/// The example from the language design, verbatim.
const DESIGN_EXAMPLE: &str = r#"
# Comments run from '#' to the end of the line. Newlines are ordinary whitespace;
# statements are self-delimiting (an optional ';' may separate them).

weights "digits.safetensors"      # top level, optional: the weight file, relative to the model file

# A block is a reusable layer with its own parameters. Arguments are tensors unless
# annotated `: int` or `: float` (static values usable in shapes and attributes).
block dense(x, in: int, out: int) {
  param weight: f32[in, out] = xavier(seed=7)   # named <prefix>.weight when instantiated
  param bias: f32[out] = zeros
  return relu(x @ weight + bias)                # `return expr` is the last statement of a block
}

model mlp {
  input x: f32[batch, 784]                      # dims: integers or symbols bound at run time
  h1 = dense(x, 784, 512) as fc1                # instantiate a block under the name prefix `fc1`
  h2 = dense(h1, in=512, out=512) as fc2
  param head.weight: f32[512, 10] = xavier(seed=3)   # dotted parameter names, as checkpoints spell them
  param head.bias: f32[10]                           # no initializer: taken from the weight file
  logits = h2 @ head.weight + head.bias
  output probs = softmax(logits, axis=-1)       # also `output probs: f32[batch, 10] = ...` or `output h2`
}
"#;

// ------------------------------------------------------------------ helpers

fn parse_ok(source: &str) -> File {
    match parse(source) {
        Ok(file) => file,
        Err(e) => panic!(
            "{source:?} failed at {}..{}: {}",
            e.span.start, e.span.end, e.message
        ),
    }
}

fn parse_err(source: &str) -> ParseError {
    match parse(source) {
        Ok(file) => panic!("{source:?} parsed, expected an error: {file:?}"),
        Err(e) => e,
    }
}

fn model_body(source: &str) -> Vec<Stmt> {
    let file = parse_ok(source);
    match file.items.as_slice() {
        [Item::Model(m)] => m.body.clone(),
        other => panic!("expected one model, got {other:?}"),
    }
}

/// The source `model m { e = <expr> }` and the parsed expression.
fn expr_of(expr: &str) -> (String, Expr) {
    let source = format!("model m {{ e = {expr} }}");
    let body = model_body(&source);
    match body.as_slice() {
        [Stmt::Let { value, .. }] => (source, value.clone()),
        other => panic!("expected one let, got {other:?}"),
    }
}

fn path_text(path: &Path) -> String {
    path.to_string()
}

/// A span-free rendering: `(op lhs rhs)`, `(neg x)`, `(call f args as p)`.
fn sexpr(e: &Expr) -> String {
    match e {
        Expr::Int { value, .. } => value.to_string(),
        Expr::Float { value, .. } => format!("{value:?}"),
        Expr::Bool { value, .. } => value.to_string(),
        Expr::Str { value, .. } => format!("{value:?}"),
        Expr::Name(p) => path_text(p),
        Expr::List { items, .. } => {
            format!(
                "[{}]",
                items.iter().map(sexpr).collect::<Vec<_>>().join(" ")
            )
        }
        Expr::Neg { operand, .. } => format!("(neg {})", sexpr(operand)),
        Expr::Binary { op, lhs, rhs, .. } => {
            format!("({} {} {})", op.symbol(), sexpr(lhs), sexpr(rhs))
        }
        Expr::Call {
            func, args, prefix, ..
        } => {
            let mut s = format!("(call {}", func.name);
            for arg in args {
                match arg {
                    Arg::Positional(e) => s.push_str(&format!(" {}", sexpr(e))),
                    Arg::Keyword { name, value } => {
                        s.push_str(&format!(" {}={}", name.name, sexpr(value)))
                    }
                }
            }
            if let Some(p) = prefix {
                s.push_str(&format!(" as {}", path_text(p)));
            }
            s.push(')');
            s
        }
    }
}

fn sexpr_of(expr: &str) -> String {
    sexpr(&expr_of(expr).1)
}

fn text(source: &str, span: Span) -> &str {
    &source[span.start..span.end]
}

// ------------------------------------------- span invariants, whole-tree walk

/// Checks that every node's span covers exactly its own text: leaves match
/// what they hold, composite nodes contain their children and end with
/// their last token, and no span starts or ends in whitespace.
struct SpanChecker<'s> {
    source: &'s str,
    checked: usize,
}

impl SpanChecker<'_> {
    fn tight(&mut self, span: Span, what: &str) {
        self.checked += 1;
        let t = text(self.source, span);
        assert!(!t.is_empty(), "{what}: empty span {span:?}");
        assert!(
            !t.starts_with(char::is_whitespace) && !t.ends_with(char::is_whitespace),
            "{what}: span {span:?} has untrimmed whitespace: {t:?}"
        );
    }

    fn inside(&self, inner: Span, outer: Span, what: &str) {
        assert!(
            outer.start <= inner.start && inner.end <= outer.end,
            "{what}: {inner:?} is not inside {outer:?}"
        );
    }

    fn ident(&mut self, ident: &Ident, outer: Span) {
        self.tight(ident.span, "ident");
        self.inside(ident.span, outer, "ident");
        assert_eq!(text(self.source, ident.span), ident.name);
    }

    fn path(&mut self, path: &Path, outer: Span) {
        self.tight(path.span, "path");
        self.inside(path.span, outer, "path");
        assert_eq!(text(self.source, path.span), path_text(path));
    }

    fn ty(&mut self, ty: &TypeExpr, outer: Span) {
        self.tight(ty.span, "type");
        self.inside(ty.span, outer, "type");
        self.ident(&ty.dtype, ty.span);
        assert!(text(self.source, ty.span).ends_with(']'));
        for dim in &ty.dims {
            self.expr(dim, ty.span);
        }
    }

    fn expr(&mut self, e: &Expr, outer: Span) {
        let span = e.span();
        self.tight(span, "expr");
        self.inside(span, outer, "expr");
        let t = text(self.source, span);
        match e {
            Expr::Int { value, .. } => assert_eq!(t.parse::<i64>().ok(), Some(*value)),
            Expr::Float { value, .. } => assert_eq!(t.parse::<f64>().ok(), Some(*value)),
            Expr::Bool { value, .. } => assert_eq!(t, value.to_string()),
            Expr::Str { value, .. } => assert_eq!(t, format!("\"{value}\"")),
            Expr::Name(p) => self.path(p, span),
            Expr::List { items, .. } => {
                assert!(t.starts_with('[') && t.ends_with(']'), "list {t:?}");
                for item in items {
                    self.expr(item, span);
                }
            }
            Expr::Neg { operand, .. } => {
                assert!(t.starts_with('-'), "neg {t:?}");
                self.expr(operand, span);
            }
            Expr::Binary { op, lhs, rhs, .. } => {
                assert!(t.contains(op.symbol()), "binary {t:?}");
                self.expr(lhs, span);
                self.expr(rhs, span);
                assert!(lhs.span().end <= rhs.span().start);
            }
            Expr::Call {
                func, args, prefix, ..
            } => {
                self.ident(func, span);
                assert_eq!(func.span.start, span.start);
                for arg in args {
                    match arg {
                        Arg::Positional(v) => self.expr(v, span),
                        Arg::Keyword { name, value } => {
                            self.ident(name, span);
                            self.expr(value, span);
                        }
                    }
                }
                match prefix {
                    Some(p) => {
                        self.path(p, span);
                        assert_eq!(p.span.end, span.end);
                    }
                    None => assert!(t.ends_with(')'), "call {t:?}"),
                }
            }
        }
    }

    fn stmt(&mut self, stmt: &Stmt, outer: Span) {
        let span = match stmt {
            Stmt::Input { span, .. }
            | Stmt::Param { span, .. }
            | Stmt::Let { span, .. }
            | Stmt::Output { span, .. }
            | Stmt::For { span, .. } => *span,
        };
        self.tight(span, "stmt");
        self.inside(span, outer, "stmt");
        let t = text(self.source, span);
        match stmt {
            Stmt::Input { name, ty, .. } => {
                assert!(t.starts_with("input"));
                self.ident(name, span);
                self.ty(ty, span);
                assert_eq!(ty.span.end, span.end);
            }
            Stmt::Param { name, ty, init, .. } => {
                assert!(t.starts_with("param"));
                self.path(name, span);
                self.ty(ty, span);
                if let Some(init) = init {
                    self.expr(init, span);
                    assert_eq!(init.span().end, span.end);
                }
            }
            Stmt::Let { name, value, .. } => {
                self.ident(name, span);
                assert_eq!(name.span.start, span.start);
                self.expr(value, span);
                assert_eq!(value.span().end, span.end);
            }
            Stmt::Output {
                name, ty, value, ..
            } => {
                assert!(t.starts_with("output"));
                self.ident(name, span);
                if let Some(ty) = ty {
                    self.ty(ty, span);
                }
                if let Some(value) = value {
                    self.expr(value, span);
                }
            }
            Stmt::For { var, body, .. } => {
                assert!(t.starts_with("for") && t.ends_with('}'));
                self.ident(var, span);
                for s in body {
                    self.stmt(s, span);
                }
            }
        }
    }

    fn file(&mut self, file: &File) {
        let whole = Span::new(0, self.source.len());
        for item in &file.items {
            match item {
                Item::Weights { path, span } => {
                    self.tight(*span, "weights");
                    assert_eq!(
                        text(self.source, *span),
                        format!("weights \"{path}\"").as_str()
                    );
                }
                Item::Block(b) => {
                    self.tight(b.span, "block");
                    self.inside(b.span, whole, "block");
                    let t = text(self.source, b.span);
                    assert!(t.starts_with("block") && t.ends_with('}'));
                    self.ident(&b.name, b.span);
                    for p in &b.params {
                        self.ident(&p.name, b.span);
                    }
                    for s in &b.body {
                        self.stmt(s, b.span);
                    }
                    self.expr(&b.ret, b.span);
                }
                Item::Model(m) => {
                    self.tight(m.span, "model");
                    let t = text(self.source, m.span);
                    assert!(t.starts_with("model") && t.ends_with('}'));
                    self.ident(&m.name, m.span);
                    for s in &m.body {
                        self.stmt(s, m.span);
                    }
                }
            }
        }
    }
}

fn check_spans(source: &str) -> usize {
    let file = parse_ok(source);
    let mut checker = SpanChecker { source, checked: 0 };
    checker.file(&file);
    checker.checked
}

// ---------------------------------------------------------- whole files

#[test]
fn design_example_parses_to_the_expected_tree() {
    let file = parse_ok(DESIGN_EXAMPLE);
    let [Item::Weights { path, .. }, Item::Block(dense), Item::Model(mlp)] = file.items.as_slice()
    else {
        panic!("unexpected items: {:#?}", file.items);
    };
    assert_eq!(path, "digits.safetensors");

    assert_eq!(dense.name.name, "dense");
    let params: Vec<(&str, BlockParamKind)> = dense
        .params
        .iter()
        .map(|p| (p.name.name.as_str(), p.kind))
        .collect();
    assert_eq!(
        params,
        [
            ("x", BlockParamKind::Tensor),
            ("in", BlockParamKind::Int),
            ("out", BlockParamKind::Int)
        ]
    );
    assert_eq!(dense.body.len(), 2);
    let Stmt::Param { name, ty, init, .. } = &dense.body[0] else {
        panic!("{:?}", dense.body[0]);
    };
    assert_eq!(path_text(name), "weight");
    assert_eq!(ty.dtype.name, "f32");
    assert_eq!(ty.dims.iter().map(sexpr).collect::<Vec<_>>(), ["in", "out"]);
    assert_eq!(
        init.as_ref().map(sexpr).as_deref(),
        Some("(call xavier seed=7)")
    );
    let Stmt::Param { init, .. } = &dense.body[1] else {
        panic!("{:?}", dense.body[1]);
    };
    assert_eq!(init.as_ref().map(sexpr).as_deref(), Some("zeros"));
    assert_eq!(sexpr(&dense.ret), "(call relu (+ (@ x weight) bias))");

    assert_eq!(mlp.name.name, "mlp");
    let rendered: Vec<String> = mlp
        .body
        .iter()
        .map(|s| match s {
            Stmt::Input { name, ty, .. } => format!(
                "input {}: {}[{}]",
                name.name,
                ty.dtype.name,
                ty.dims.iter().map(sexpr).collect::<Vec<_>>().join(", ")
            ),
            Stmt::Param { name, ty, init, .. } => format!(
                "param {}: {}[{}] = {}",
                path_text(name),
                ty.dtype.name,
                ty.dims.iter().map(sexpr).collect::<Vec<_>>().join(", "),
                init.as_ref().map(sexpr).unwrap_or_else(|| "<file>".into())
            ),
            Stmt::Let { name, value, .. } => format!("{} = {}", name.name, sexpr(value)),
            Stmt::Output {
                name, ty, value, ..
            } => format!(
                "output {} {:?} = {}",
                name.name,
                ty.is_some(),
                value.as_ref().map(sexpr).unwrap_or_default()
            ),
            Stmt::For { .. } => "for".into(),
        })
        .collect();
    assert_eq!(
        rendered,
        [
            "input x: f32[batch, 784]",
            "h1 = (call dense x 784 512 as fc1)",
            "h2 = (call dense h1 in=512 out=512 as fc2)",
            "param head.weight: f32[512, 10] = (call xavier seed=3)",
            "param head.bias: f32[10] = <file>",
            "logits = (+ (@ h2 head.weight) head.bias)",
            "output probs false = (call softmax logits axis=(neg 1))",
        ]
    );
    assert!(check_spans(DESIGN_EXAMPLE) > 60);
}

#[test]
fn every_span_in_a_busy_file_is_tight() {
    let source = r#"weights "w.safetensors";
block attn(x, heads: int, eps: float,) {
  q = x @ query.weight   # trailing comment
  s = softmax((q @ transpose(q)) / 8.0, axis=-1)
  param gain: f32[] = ones
  return layer_norm(s, gain, gain, eps=eps)
}
model m {
  input x: f32[batch*seq, 384]   ;
  h = x
  for i in 0..6 {
    h = attn(h, 12, 1e-5) as encoder.layer.{i}   # rebinding h
    param encoder.layer.{i}.output.dense.weight: f32[384, 384]
  }
  output y: f32[batch*seq, 384] = -h ** 2.0 + sum(h, axis=[0, 1]) * (h) # comment
  output h
}
"#;
    assert!(check_spans(source) > 80);
}

#[test]
fn empty_file_and_only_comments_parse_to_no_items() {
    assert_eq!(parse_ok("").items, []);
    assert_eq!(parse_ok("  # nothing here\n# at all").items, []);
    assert_eq!(parse_ok(";;").items, []);
}

// ------------------------------------------------------------- statements

#[test]
fn input_statement() {
    let body = model_body("model m { input ids: i64[batch, seq] }");
    let [Stmt::Input { name, ty, .. }] = body.as_slice() else {
        panic!("{body:?}");
    };
    assert_eq!(name.name, "ids");
    assert_eq!(ty.dtype.name, "i64");
    assert_eq!(
        ty.dims.iter().map(sexpr).collect::<Vec<_>>(),
        ["batch", "seq"]
    );
}

#[test]
fn types_allow_scalars_products_and_trailing_commas() {
    let body = model_body(
        "model m { input a: f32[] input b: f32[batch*seq, 12, 32,] input c: f32[2 * n] }",
    );
    let dims: Vec<Vec<String>> = body
        .iter()
        .map(|s| match s {
            Stmt::Input { ty, .. } => ty.dims.iter().map(sexpr).collect(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        dims,
        [
            vec![],
            vec!["(* batch seq)".to_string(), "12".into(), "32".into()],
            vec!["(* 2 n)".to_string()],
        ]
    );
}

#[test]
fn param_with_and_without_initializer() {
    let body = model_body(
        "model m {
           param w: f32[4, 4] = xavier(seed=1)
           param encoder.layer.0.output.dense.weight: f32[4]
           param b: f32[4] = zeros
         }",
    );
    let rendered: Vec<(String, Option<String>)> = body
        .iter()
        .map(|s| match s {
            Stmt::Param { name, init, .. } => (path_text(name), init.as_ref().map(sexpr)),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        rendered,
        [
            ("w".to_string(), Some("(call xavier seed=1)".to_string())),
            ("encoder.layer.0.output.dense.weight".to_string(), None),
            ("b".to_string(), Some("zeros".to_string())),
        ]
    );
}

#[test]
fn every_initializer_form_parses() {
    let cases = [
        ("zeros", "zeros"),
        ("ones", "ones"),
        (
            "uniform(low=-0.1, high=0.1, seed=1)",
            "(call uniform low=(neg 0.1) high=0.1 seed=1)",
        ),
        (
            "normal(mean=0.0, std=0.02, seed=1)",
            "(call normal mean=0.0 std=0.02 seed=1)",
        ),
        ("xavier(seed=1)", "(call xavier seed=1)"),
        ("he(seed=1)", "(call he seed=1)"),
        ("he()", "(call he)"),
    ];
    for (init, expected) in cases {
        let body = model_body(&format!("model m {{ param p: f32[3, 3] = {init} }}"));
        let [Stmt::Param { init: Some(e), .. }] = body.as_slice() else {
            panic!("{init}: {body:?}");
        };
        assert_eq!(sexpr(e), expected, "{init}");
    }
}

#[test]
fn output_forms() {
    let body = model_body(
        "model m {
           output a = relu(x)
           output b: f32[batch, 10] = x
           output c
           output d: f32[batch]
         }",
    );
    let rendered: Vec<(String, bool, Option<String>)> = body
        .iter()
        .map(|s| match s {
            Stmt::Output {
                name, ty, value, ..
            } => (name.name.clone(), ty.is_some(), value.as_ref().map(sexpr)),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        rendered,
        [
            ("a".to_string(), false, Some("(call relu x)".to_string())),
            ("b".to_string(), true, Some("x".to_string())),
            ("c".to_string(), false, None),
            ("d".to_string(), true, None),
        ]
    );
}

#[test]
fn output_without_value_followed_by_a_statement() {
    let body = model_body("model m { output h\n z = 1 }");
    assert!(matches!(
        body.as_slice(),
        [Stmt::Output { value: None, .. }, Stmt::Let { .. }]
    ));
}

#[test]
fn for_loop_with_interpolated_prefix() {
    let source = "model m {
      h = x
      for i in 0..6 { h = encoder_layer(h, mask, 384) as encoder.layer.{i} }
    }";
    let body = model_body(source);
    let [Stmt::Let { .. }, Stmt::For {
        var,
        start,
        end,
        body,
        span,
    }] = body.as_slice()
    else {
        panic!("{body:?}");
    };
    assert_eq!((var.name.as_str(), *start, *end), ("i", 0, 6));
    assert!(text(source, *span).starts_with("for i in 0..6 {"));
    let [Stmt::Let { name, value, .. }] = body.as_slice() else {
        panic!("{body:?}");
    };
    assert_eq!(name.name, "h");
    assert_eq!(
        sexpr(value),
        "(call encoder_layer h mask 384 as encoder.layer.{i})"
    );
    let Expr::Call {
        prefix: Some(prefix),
        ..
    } = value
    else {
        panic!("{value:?}");
    };
    assert_eq!(
        prefix.segments,
        [
            PathSegment::Name("encoder".into()),
            PathSegment::Name("layer".into()),
            PathSegment::Interpolate("i".into()),
        ]
    );
}

#[test]
fn nested_and_empty_loops() {
    let body =
        model_body("model m { for i in 0..2 { for j in 3..3 { } y = 1 } for k in 0 .. 1 {} }");
    let [Stmt::For {
        body: outer,
        start: 0,
        end: 2,
        ..
    }, Stmt::For {
        start: 0, end: 1, ..
    }] = body.as_slice()
    else {
        panic!("{body:?}");
    };
    assert!(matches!(
        outer.as_slice(),
        [Stmt::For { start: 3, end: 3, body, .. }, Stmt::Let { .. }] if body.is_empty()
    ));
}

#[test]
fn block_arguments_and_kinds() {
    let file = parse_ok(
        "block a() { return 1 }
         block b(x, in: int, eps: float, y,) { return x }",
    );
    let kinds: Vec<Vec<(String, BlockParamKind)>> = file
        .items
        .iter()
        .map(|item| match item {
            Item::Block(b) => b
                .params
                .iter()
                .map(|p| (p.name.name.clone(), p.kind))
                .collect(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        kinds,
        [
            vec![],
            vec![
                ("x".to_string(), BlockParamKind::Tensor),
                ("in".to_string(), BlockParamKind::Int),
                ("eps".to_string(), BlockParamKind::Float),
                ("y".to_string(), BlockParamKind::Tensor),
            ],
        ]
    );
}

#[test]
fn block_body_statements_then_return() {
    let file = parse_ok(
        "block f(x) {
           param w: f32[2, 2] = he(seed=2)
           h = x @ w;
           return relu(h);
         }",
    );
    let [Item::Block(b)] = file.items.as_slice() else {
        panic!("{file:?}");
    };
    assert_eq!(b.body.len(), 2);
    assert_eq!(sexpr(&b.ret), "(call relu h)");
}

#[test]
fn semicolons_separate_statements_anywhere() {
    let body = model_body("model m { ; a = 1; b = 2;; c = a + b ; }");
    let names: Vec<&str> = body
        .iter()
        .map(|s| match s {
            Stmt::Let { name, .. } => name.name.as_str(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(names, ["a", "b", "c"]);
}

#[test]
fn newlines_are_whitespace_and_statements_self_delimit() {
    let body = model_body("model m { a = 1 b = x +\n 2 c = f(\n a,\n b\n ) }");
    let rendered: Vec<String> = body
        .iter()
        .map(|s| match s {
            Stmt::Let { name, value, .. } => format!("{} = {}", name.name, sexpr(value)),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(rendered, ["a = 1", "b = (+ x 2)", "c = (call f a b)"]);
}

#[test]
fn comments_are_ignored_everywhere_but_strings() {
    let source = "# header
weights \"a#b.safetensors\" # the # inside quotes is part of the path
model m { # after brace
  h = relu( # inside a call
    x # before the paren
  ) # after
  output y = h#no space
}";
    let file = parse_ok(source);
    let [Item::Weights { path, .. }, Item::Model(m)] = file.items.as_slice() else {
        panic!("{file:?}");
    };
    assert_eq!(path, "a#b.safetensors");
    assert_eq!(m.body.len(), 2);
    check_spans(source);
}

#[test]
fn comment_at_end_of_file_without_newline() {
    assert_eq!(parse_ok("model m { } # done").items.len(), 1);
}

// ------------------------------------------------------------ expressions

#[test]
fn unary_minus_binds_looser_than_power() {
    assert_eq!(sexpr_of("-x**2"), "(neg (** x 2))");
    assert_eq!(sexpr_of("-x ** 2.0"), "(neg (** x 2.0))");
    assert_eq!(sexpr_of("(-x) ** 2"), "(** (neg x) 2)");
    assert_eq!(sexpr_of("--x"), "(neg (neg x))");
}

#[test]
fn power_is_right_associative_and_takes_signed_exponents() {
    assert_eq!(sexpr_of("a ** b ** c"), "(** a (** b c))");
    assert_eq!(sexpr_of("2 ** -1"), "(** 2 (neg 1))");
    assert_eq!(sexpr_of("a ** -b ** c"), "(** a (neg (** b c)))");
    assert_eq!(sexpr_of("-a ** -b"), "(neg (** a (neg b)))");
}

#[test]
fn multiplicative_binds_tighter_than_additive() {
    assert_eq!(sexpr_of("a + b @ c * d"), "(+ a (* (@ b c) d))");
    assert_eq!(sexpr_of("a * b + c / d"), "(+ (* a b) (/ c d))");
    assert_eq!(sexpr_of("(a + b) * c"), "(* (+ a b) c)");
}

#[test]
fn binary_operators_are_left_associative() {
    assert_eq!(sexpr_of("a - b - c"), "(- (- a b) c)");
    assert_eq!(sexpr_of("a / b * c @ d"), "(@ (* (/ a b) c) d)");
    assert_eq!(sexpr_of("a - -b"), "(- a (neg b))");
    assert_eq!(sexpr_of("-a * b"), "(* (neg a) b)");
}

#[test]
fn comparisons_are_lowest_and_all_six_exist() {
    assert_eq!(sexpr_of("a < b + c"), "(< a (+ b c))");
    assert_eq!(sexpr_of("a * 2 >= b"), "(>= (* a 2) b)");
    for op in ["<", "<=", ">", ">=", "==", "!="] {
        assert_eq!(sexpr_of(&format!("x {op} 0.0")), format!("({op} x 0.0)"));
    }
    assert_eq!(sexpr_of("(a < b) == c"), "(== (< a b) c)");
}

#[test]
fn chained_comparison_is_an_error_at_the_second_operator() {
    let source = "model m { e = a < b <= c }";
    let err = parse_err(source);
    assert_eq!(text(source, err.span), "<=");
    assert!(err.message.contains("cannot be chained"), "{}", err.message);
}

#[test]
fn numbers_ints_and_floats() {
    assert!(matches!(expr_of("784").1, Expr::Int { value: 784, .. }));
    assert!(matches!(expr_of("0").1, Expr::Int { value: 0, .. }));
    let floats = [
        ("0.5", 0.5),
        ("1e-12", 1e-12),
        ("1.0e-5", 1.0e-5),
        ("3.", 3.0),
        ("2E3", 2000.0),
        ("1.5e+2", 150.0),
        ("7.e1", 70.0),
    ];
    for (written, value) in floats {
        match expr_of(written).1 {
            Expr::Float { value: v, .. } => assert_eq!(v, value, "{written}"),
            other => panic!("{written}: {other:?}"),
        }
    }
    assert!(matches!(
        expr_of(&i64::MAX.to_string()).1,
        Expr::Int {
            value: i64::MAX,
            ..
        }
    ));
}

#[test]
fn booleans_lists_and_names() {
    assert_eq!(sexpr_of("true"), "true");
    assert_eq!(sexpr_of("false"), "false");
    assert_eq!(sexpr_of("[]"), "[]");
    assert_eq!(sexpr_of("[batch, seq, 12, 32]"), "[batch seq 12 32]");
    assert_eq!(sexpr_of("[-1, 4,]"), "[(neg 1) 4]");
    assert_eq!(sexpr_of("[[1], [2, 3]]"), "[[1] [2 3]]");
    // `trueish` and `format` are names, not keywords with a suffix.
    assert_eq!(sexpr_of("trueish + format"), "(+ trueish format)");
}

#[test]
fn paths_with_integers_interpolation_and_reserved_segments() {
    let (_, e) = expr_of("encoder.layer.0.output.dense.weight");
    let Expr::Name(p) = e else { panic!("{e:?}") };
    assert_eq!(
        p.segments,
        [
            PathSegment::Name("encoder".into()),
            PathSegment::Name("layer".into()),
            PathSegment::Index(0),
            PathSegment::Name("output".into()),
            PathSegment::Name("dense".into()),
            PathSegment::Name("weight".into()),
        ]
    );
    let (_, e) = expr_of("{i}.x");
    let Expr::Name(p) = e else { panic!("{e:?}") };
    assert_eq!(
        p.segments,
        [
            PathSegment::Interpolate("i".into()),
            PathSegment::Name("x".into())
        ]
    );
    // A reserved word may start a path when a dot follows, as checkpoints
    // spell `model.norm.weight`.
    let body = model_body("model m { param model.norm.weight: f32[4]  y = model.norm.weight }");
    let [Stmt::Param { name, .. }, Stmt::Let { value, .. }] = body.as_slice() else {
        panic!("{body:?}");
    };
    assert_eq!(path_text(name), "model.norm.weight");
    assert_eq!(sexpr(value), "model.norm.weight");
}

#[test]
fn in_is_not_reserved() {
    assert_eq!(sexpr_of("in * 2"), "(* in 2)");
    let body = model_body("model m { for in in 0..1 { } }");
    assert!(matches!(body.as_slice(), [Stmt::For { var, .. }] if var.name == "in"));
}

#[test]
fn calls_with_positional_and_keyword_arguments() {
    assert_eq!(
        sexpr_of("softmax(logits, axis=-1)"),
        "(call softmax logits axis=(neg 1))"
    );
    assert_eq!(
        sexpr_of("mean(x, axis=[1, 2], keepdims=true)"),
        "(call mean x axis=[1 2] keepdims=true)"
    );
    assert_eq!(sexpr_of("cast(x, f32)"), "(call cast x f32)");
    assert_eq!(sexpr_of("f()"), "(call f)");
    assert_eq!(sexpr_of("f(a=1, b)"), "(call f a=1 b)");
    assert_eq!(sexpr_of("f(x,)"), "(call f x)");
    // `==` in an argument is a comparison, not a keyword.
    assert_eq!(sexpr_of("f(a == b)"), "(call f (== a b))");
    assert_eq!(sexpr_of("f (x)"), "(call f x)");
}

#[test]
fn as_binds_to_the_call_it_follows() {
    assert_eq!(
        sexpr_of("dense(x, 784, 512) as fc1 @ w"),
        "(@ (call dense x 784 512 as fc1) w)"
    );
    assert_eq!(
        sexpr_of("outer(inner(x) as a.{i}) as b.0"),
        "(call outer (call inner x as a.{i}) as b.0)"
    );
    assert_eq!(sexpr_of("-f(x) as p ** 2"), "(neg (** (call f x as p) 2))");
}

#[test]
fn expression_spans_cover_their_text_including_parentheses() {
    let (source, e) = expr_of("(a + b) * c");
    assert_eq!(text(&source, e.span()), "(a + b) * c");
    let Expr::Binary { lhs, .. } = &e else {
        panic!("{e:?}")
    };
    assert_eq!(text(&source, lhs.span()), "a + b");

    let (source, e) = expr_of("-x ** 2");
    assert_eq!(text(&source, e.span()), "-x ** 2");
    let Expr::Neg { operand, .. } = &e else {
        panic!("{e:?}")
    };
    assert_eq!(text(&source, operand.span()), "x ** 2");

    let (source, e) = expr_of("dense(x, 4) as fc1.{i}");
    assert_eq!(text(&source, e.span()), "dense(x, 4) as fc1.{i}");

    let (source, e) = expr_of("a - b   - c # comment\n");
    assert_eq!(text(&source, e.span()), "a - b   - c");
    let Expr::Binary { lhs, .. } = &e else {
        panic!("{e:?}")
    };
    assert_eq!(text(&source, lhs.span()), "a - b");
}

#[test]
fn statement_spans_end_at_their_last_token() {
    let source = "model m {\n  output y   \n  z = 1 ;\n}";
    let body = model_body(source);
    let [Stmt::Output { span: out, .. }, Stmt::Let { span: z, .. }] = body.as_slice() else {
        panic!("{body:?}");
    };
    assert_eq!(text(source, *out), "output y");
    assert_eq!(text(source, *z), "z = 1");
}

// ---------------------------------------------------------------- errors

/// The error's byte offset, and its message for good measure.
fn error_at(source: &str) -> (usize, String) {
    let e = parse_err(source);
    assert!(e.span.start <= e.span.end && e.span.end <= source.len());
    assert!(
        !e.message.contains("Rule::"),
        "raw rule name: {}",
        e.message
    );
    assert!(
        !e.message.contains('_') || e.message.contains('`'),
        "{}",
        e.message
    );
    (e.span.start, e.message)
}

#[test]
fn unclosed_paren_is_reported_where_the_close_was_expected() {
    let source = "model m {\n  h = relu((x + 1.0)\n  output y = h\n}";
    let (at, message) = error_at(source);
    assert_eq!(at, source.find("output").unwrap());
    assert_eq!(
        message,
        "expected `)`, `,` or an operator, found `output` (to close the `(` at line 2, column 11)"
    );
    let source = "model m { h = (a + b";
    let (at, message) = error_at(source);
    assert_eq!(at, source.len());
    assert_eq!(
        message,
        "expected `)` or an operator, found end of input (to close the `(` at line 1, column 15)"
    );
}

#[test]
fn unclosed_brackets_and_bodies_are_pointed_at() {
    let source = "model m {
  h = reshape(x, [b, # ] in a comment
  4)
}";
    let (at, message) = error_at(source);
    assert_eq!(at, source.find(")\n}").unwrap());
    assert!(
        message.ends_with("found `)` (to close the `[` at line 2, column 18)"),
        "{message}"
    );
    let source = "model m {
  h = x
";
    let (at, message) = error_at(source);
    assert_eq!(at, source.len());
    assert!(
        message.ends_with("found end of input (to close the `{` at line 1, column 9)"),
        "{message}"
    );
    // Mid-file, an expected `}` is not blamed on the body's opening brace.
    let (_, message) = error_at("model m { h = x $ }");
    assert!(!message.contains("to close"), "{message}");
}

#[test]
fn missing_equals() {
    let source = "model m { h relu(x) }";
    let (at, message) = error_at(source);
    assert_eq!(at, source.find("relu").unwrap());
    assert_eq!(message, "expected `=`, found `relu`");

    let source = "model m {\n  input x: f32[batch, 4]\n  output y relu(x)\n}";
    let (at, message) = error_at(source);
    assert_eq!(at, source.find("relu").unwrap());
    assert!(
        message.starts_with("expected `:` or `=`, found `relu` (an output is written"),
        "{message}"
    );

    let source = "model m { param w f32[3] }";
    let (at, message) = error_at(source);
    assert_eq!(at, source.find("f32").unwrap());
    assert_eq!(message, "expected `:`, found `f32`");
}

#[test]
fn bad_token() {
    let source = "model m {\n  input x: f32[batch, 4]\n  output y = x $ 2.0\n}";
    let (at, message) = error_at(source);
    assert_eq!(at, source.find('$').unwrap());
    assert_eq!(
        message,
        "expected an operator, a statement or `}`, found `$`"
    );
    let source = "model m { h = é }";
    let e = parse_err(source);
    assert_eq!(text(source, e.span), "é");
}

#[test]
fn missing_expression() {
    for (source, found) in [
        ("model m { h = ) }", ")"),
        ("model m { h = - }", "}"),
        ("model m { h = 2 ** }", "}"),
        ("model m { h = f(a, b=) }", ")"),
        ("model m { h = a + * b }", "*"),
    ] {
        let (at, message) = error_at(source);
        assert_eq!(at, source.rfind(found).unwrap(), "{source}");
        assert_eq!(
            message,
            format!("expected an expression, found `{found}`"),
            "{source}"
        );
    }
}

#[test]
fn reserved_word_as_a_name() {
    for word in [
        "model", "block", "input", "param", "output", "for", "weights", "as", "true", "false",
    ] {
        let source = format!("model m {{ input {word}: f32[3] }}");
        let (at, message) = error_at(&source);
        assert_eq!(at, 16, "{word}");
        assert!(message.starts_with("expected a name"), "{word}: {message}");
        if word != "as" {
            assert!(message.contains("reserved word"), "{word}: {message}");
        }
    }
    let source = "model m { x = 1\n model = relu(x) }";
    let (at, message) = error_at(source);
    assert_eq!(at, source.rfind("model").unwrap());
    assert!(message.contains("`model` is a reserved word"), "{message}");
    let source = "block return(x) { return x }";
    let (at, _) = error_at(source);
    assert_eq!(at, 6);
}

#[test]
fn block_without_return() {
    let source = "block f(x) {\n  h = relu(x)\n}";
    let (at, message) = error_at(source);
    assert_eq!(at, source.rfind('}').unwrap());
    assert!(
        message.contains("`return`") && message.contains("a block ends with"),
        "{message}"
    );
    let source = "model m { return x }";
    let (at, message) = error_at(source);
    assert_eq!(at, source.find("return").unwrap());
    assert!(message.contains("at the end of a block"), "{message}");
    let source = "block f(x) { return x\n y = x }";
    let (at, _) = error_at(source);
    assert_eq!(at, source.find("y =").unwrap());
}

#[test]
fn block_argument_kind_must_be_int_or_float() {
    let source = "block f(x: f32) { return x }";
    let (at, message) = error_at(source);
    assert_eq!(at, source.find("f32").unwrap());
    assert_eq!(message, "expected `int` or `float`, found `f32`");
}

#[test]
fn top_level_errors() {
    let (at, message) = error_at("model m { }\nmodle n { }");
    assert_eq!(at, 12);
    assert_eq!(
        message,
        "expected `weights`, `block`, `model` or end of input, found `modle`"
    );
    let (at, message) = error_at("model m { h = x }}");
    assert_eq!(at, 17);
    assert!(message.ends_with("found `}`"), "{message}");
    let (at, message) = error_at("model");
    assert_eq!(at, 5);
    assert_eq!(message, "expected a name, found end of input");
    let (at, message) = error_at("weights digits.safetensors");
    assert_eq!(at, 8);
    assert_eq!(message, "expected a quoted file name, found `digits`");
}

#[test]
fn unterminated_string() {
    let source = "weights \"abc\nmodel m {}";
    let e = parse_err(source);
    assert_eq!(text(source, e.span), "\"abc");
    assert!(
        e.message.starts_with("unterminated string"),
        "{}",
        e.message
    );
}

#[test]
fn integer_overflow_is_an_error_with_the_literal_span() {
    let source = "model m { h = 9223372036854775808 }";
    let e = parse_err(source);
    assert_eq!(text(source, e.span), "9223372036854775808");
    assert!(e.message.contains("too large"), "{}", e.message);
    let source = "model m { param a.99999999999999999999: f32[1] }";
    let e = parse_err(source);
    assert_eq!(text(source, e.span), "99999999999999999999");
}

#[test]
fn malformed_and_out_of_range_numbers() {
    for bad in ["1e", "1e+", "0x10", "1.5.2", "12abc", "3.x"] {
        let source = format!("model m {{ h = {bad} }}");
        let e = parse_err(&source);
        assert_eq!(text(&source, e.span), bad, "{bad}");
        assert!(
            e.message.starts_with("malformed number"),
            "{bad}: {}",
            e.message
        );
    }
    let source = "model m { h = 1e999 }";
    let e = parse_err(source);
    assert_eq!(text(source, e.span), "1e999");
    assert!(e.message.contains("out of range"), "{}", e.message);
}

#[test]
fn loop_range_errors() {
    let source = "model m { for i in 5..2 { } }";
    let e = parse_err(source);
    assert_eq!(text(source, e.span), "5..2");
    assert!(e.message.contains("backwards"), "{}", e.message);

    let source = "model m { for i in 0.5..2 { } }";
    let e = parse_err(source);
    assert_eq!(text(source, e.span), "0.5");
    assert!(e.message.contains("must be integers"), "{}", e.message);

    let source = "model m { for i in 0..99999999999999999999 { } }";
    let e = parse_err(source);
    assert_eq!(text(source, e.span), "99999999999999999999");

    let source = "model m { for i in -1..2 { } }";
    let (at, message) = error_at(source);
    assert_eq!(at, source.find('-').unwrap());
    assert_eq!(message, "expected an integer, found `-`");

    let source = "model m { for i 0..3 {} }";
    let (at, message) = error_at(source);
    assert_eq!(at, source.find('0').unwrap());
    assert_eq!(message, "expected `in`, found `0`");
}

#[test]
fn as_without_a_call() {
    let source = "model m { h = x as y }";
    let (at, message) = error_at(source);
    assert_eq!(at, source.find("as").unwrap());
    assert!(message.contains("must follow a call"), "{message}");
}

#[test]
fn broken_paths() {
    let source = "model m { h = x. }";
    let (at, message) = error_at(source);
    assert_eq!(at, source.find(". ").unwrap() + 1);
    assert!(
        message.starts_with("expected a name, an integer"),
        "{message}"
    );
    let source = "model m { h = x.{i }";
    let (at, message) = error_at(source);
    assert_eq!(at, source.find("{i").unwrap() + 2);
    assert_eq!(message, "expected `}`, found a space");
}

// --------------------------------------------------------- robustness

#[test]
fn deep_nesting_within_the_limit_parses() {
    let depth = MAX_NESTING - 1;
    let source = format!(
        "model m {{ h = {}x{} }}",
        "(".repeat(depth),
        ")".repeat(depth)
    );
    assert_eq!(
        sexpr_of(&format!("{}x{}", "(".repeat(depth), ")".repeat(depth))),
        "x"
    );
    parse_ok(&source);
    let calls = format!("{}x{}", "f(".repeat(depth), ")".repeat(depth));
    parse_ok(&format!("model m {{ h = {calls} }}"));
    let sum = format!("x{}", " + x".repeat(depth));
    parse_ok(&format!("model m {{ h = {sum} }}"));
    // A flat chain is not nesting: a 257-term sum once hit the limit.
    let long_sum = format!(
        "x{}",
        " + x".repeat(MAX_NESTING * CHAIN_TERMS_PER_LEVEL - 1)
    );
    parse_ok(&format!("model m {{ h = {long_sum} }}"));
}

#[test]
fn a_chain_too_long_is_reported_at_its_start_every_time() {
    let n = MAX_NESTING * CHAIN_TERMS_PER_LEVEL + 1;
    let source = format!("model m {{ h = x{} }}", " + x".repeat(n));
    let first = parse_err(&source);
    assert!(first.message.contains("chain"), "{}", first.message);
    assert_eq!(first.span.start, source.find("x +").unwrap());
    for _ in 0..3 {
        assert_eq!(parse_err(&source), first);
    }
}

#[test]
fn excessive_nesting_is_an_error_not_a_crash() {
    let n = 100_000;
    let cases = [
        format!("{}x{}", "(".repeat(n), ")".repeat(n)),
        format!("{}x{}", "[".repeat(n), "]".repeat(n)),
        format!("{}x{}", "f(".repeat(n), ")".repeat(n)),
        format!("{}x", "-".repeat(n)),
        format!("x{}", " + x".repeat(n)),
        format!("x{}", " ** x".repeat(n)),
        format!(
            "{}x{}",
            "f(".repeat(MAX_NESTING + 1),
            ")".repeat(MAX_NESTING + 1)
        ),
    ];
    for expr in &cases {
        let source = format!("model m {{ h = {expr} }}");
        let e = parse_err(&source);
        assert!(
            e.message.contains("nested too deeply") || e.message.contains("too long"),
            "{}",
            e.message
        );
        assert!(e.span.end <= source.len());
    }
    let loops = "for i in 0..1 {".repeat(MAX_NESTING + 1) + &"}".repeat(MAX_NESTING + 1);
    let e = parse_err(&format!("model m {{ {loops} }}"));
    assert!(e.message.contains("nested too deeply"), "{}", e.message);
}

#[test]
fn no_prefix_of_a_valid_file_panics() {
    let mut failures = 0;
    for end in 0..=DESIGN_EXAMPLE.len() {
        if !DESIGN_EXAMPLE.is_char_boundary(end) {
            continue;
        }
        let prefix = &DESIGN_EXAMPLE[..end];
        if let Err(e) = parse(prefix) {
            failures += 1;
            assert!(e.span.start <= e.span.end && e.span.end <= prefix.len());
            assert!(!e.message.is_empty());
        }
    }
    // Most prefixes cut a construct in half; a few end between items.
    assert!(failures > DESIGN_EXAMPLE.len() / 2, "{failures}");
}

#[test]
fn no_single_character_deletion_or_replacement_panics() {
    let source = "block d(x, n: int) { param w: f32[n, n] = he(seed=1)\n return x @ w }\n\
                  model m { input x: f32[b, 4]; for i in 0..2 { x = d(x, 4) as l.{i} }\n\
                  output y = -x ** 2.0 >= mean(x, axis=[1]) }";
    parse_ok(source);
    for i in 0..source.len() {
        let deleted = format!("{}{}", &source[..i], &source[i + 1..]);
        let _ = parse(&deleted);
        for replacement in ["(", ")", "{", "}", "\"", ".", "-", "#", "é", "9"] {
            let replaced = format!("{}{}{}", &source[..i], replacement, &source[i + 1..]);
            if let Err(e) = parse(&replaced) {
                assert!(e.span.end <= replaced.len());
                assert!(replaced.is_char_boundary(e.span.start));
                assert!(replaced.is_char_boundary(e.span.end));
            }
        }
    }
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    /// Token soup from lamina's own vocabulary, so that the parser gets deep
    /// into its rules instead of failing at the first character.
    fn token() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec![
            "model", "block", "input", "param", "output", "return", "for", "in", "as", "weights",
            "true", "false", "x", "y", "f32", "relu", "{i}", "(", ")", "[", "]", "{", "}", ",",
            ":", "=", "==", ";", ".", "..", "+", "-", "*", "**", "/", "@", "<", "<=", "0", "7",
            "1.5", "1e-3", "3.", "\"w\"", "#c\n", " ", "\n", "é", "\"",
        ])
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn token_soup_never_panics(tokens in prop::collection::vec(token(), 0..40)) {
            let source = tokens.join(" ");
            if let Err(e) = parse(&source) {
                prop_assert!(e.span.start <= e.span.end && e.span.end <= source.len());
                prop_assert!(source.is_char_boundary(e.span.start));
                prop_assert!(!e.message.is_empty());
            }
        }

        #[test]
        fn arbitrary_text_never_panics(source in "\\PC{0,80}") {
            if let Err(e) = parse(&source) {
                prop_assert!(e.span.end <= source.len());
            }
        }

        #[test]
        fn generated_arithmetic_round_trips_through_the_printer(
            ops in prop::collection::vec(prop::sample::select(vec!["+", "-", "*", "/", "@", "**"]), 1..8),
            negate in prop::collection::vec(any::<bool>(), 8),
        ) {
            // Build `a0 op a1 op a2 ...` with some operands negated; the
            // tree must mention every operand once, in order.
            let mut source = String::new();
            for (i, op) in ops.iter().enumerate() {
                if negate[i] { source.push('-'); }
                source.push_str(&format!("a{i} {op} "));
            }
            source.push_str(&format!("a{}", ops.len()));
            let (_, e) = expr_of(&source);
            let rendered = sexpr(&e);
            let mut last = 0;
            for i in 0..=ops.len() {
                let name = format!("a{i}");
                let at = rendered.find(&format!(" {name})")).or_else(|| rendered.find(&format!(" {name} ")));
                prop_assert!(at.is_some(), "{} missing in {}", name, rendered);
                let at = at.unwrap_or(0);
                prop_assert!(at >= last, "{} out of order in {}", name, rendered);
                last = at;
            }
        }
    }
}
