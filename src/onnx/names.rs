//! ONNX value names to lamina identifiers: valid, unique, and as close to the
//! original as the language allows (`/encoder/layer.0/Add_output_0` becomes
//! `encoder_layer_0_Add_output_0`).

use std::collections::HashSet;

/// Words a lamina name must not be: reserved words, words with a meaning in
/// one place, dtype names, built-in functions and initializers.
const AVOID: &[&str] = &[
    "model",
    "block",
    "input",
    "param",
    "output",
    "return",
    "for",
    "weights",
    "as",
    "true",
    "false",
    "in",
    "int",
    "float",
    "f32",
    "i64",
    "i32",
    "bool",
    "neg",
    "relu",
    "sigmoid",
    "tanh",
    "gelu",
    "gelu_tanh",
    "exp",
    "log",
    "sqrt",
    "rsqrt",
    "erf",
    "abs",
    "recip",
    "sin",
    "cos",
    "matmul",
    "maximum",
    "minimum",
    "pow",
    "where",
    "softmax",
    "log_softmax",
    "layer_norm",
    "sum",
    "mean",
    "max",
    "min",
    "transpose",
    "permute",
    "reshape",
    "concat",
    "slice",
    "gather",
    "embedding",
    "cast",
    "zeros",
    "ones",
    "uniform",
    "normal",
    "xavier",
    "he",
];

/// `[A-Za-z_][A-Za-z0-9_]*`, not an avoided word.
pub fn sanitize(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut last_underscore = false;
    for c in raw.chars() {
        let c = if c.is_ascii_alphanumeric() { c } else { '_' };
        // Runs of separators (`/`, `.`, `:`) collapse to one underscore.
        if c == '_' && last_underscore {
            continue;
        }
        last_underscore = c == '_';
        out.push(c);
    }
    let trimmed = out.trim_matches('_');
    let mut name = if trimmed.is_empty() {
        "v".to_string()
    } else {
        trimmed.to_string()
    };
    if name.starts_with(|c: char| c.is_ascii_digit()) {
        name.insert_str(0, "v");
    }
    if AVOID.contains(&name.as_str()) || crate::ir::ops::builtin(&name).is_some() {
        name.push('_');
    }
    name
}

/// `raw` as a lamina parameter path when it already is one: identifier
/// segments joined by dots, segments after the first also plain indices
/// (PyTorch's `encoder.layer.0.weight`). `None` for anything else.
fn as_path(raw: &str) -> Option<&str> {
    let mut segments = raw.split('.');
    let head = segments.next()?;
    let word = |s: &str| {
        s.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    };
    let mut dotted = false;
    for s in segments {
        dotted = true;
        if !(word(s) || (!s.is_empty() && s.chars().all(|c| c.is_ascii_digit()))) {
            return None;
        }
    }
    (dotted && word(head)).then_some(raw)
}

/// Hands out unique names.
#[derive(Default)]
pub struct Names {
    used: HashSet<String>,
}

impl Names {
    /// A parameter's name: `raw` itself when it is a dotted path lamina
    /// takes as it is (`encoder.layer.0.weight`) and not taken, else as
    /// [`Names::fresh`].
    pub fn fresh_param(&mut self, raw: &str) -> String {
        if let Some(path) = as_path(raw) {
            if self.used.insert(path.to_string()) {
                return path.to_string();
            }
        }
        self.fresh(raw)
    }

    /// A fresh name derived from `raw`: `raw` sanitized, with `_2`, `_3`, ...
    /// appended when taken.
    pub fn fresh(&mut self, raw: &str) -> String {
        let base = sanitize(raw);
        if self.used.insert(base.clone()) {
            return base;
        }
        for k in 2.. {
            let candidate = format!("{base}_{k}");
            if self.used.insert(candidate.clone()) {
                return candidate;
            }
        }
        unreachable!("some suffix is free")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitizes_exporter_names() {
        assert_eq!(
            sanitize("/encoder/layer.0/Add_output_0"),
            "encoder_layer_0_Add_output_0"
        );
        assert_eq!(sanitize("onnx::MatMul_123"), "onnx_MatMul_123");
        assert_eq!(sanitize("0"), "v0");
        assert_eq!(sanitize("output"), "output_");
        assert_eq!(sanitize(""), "v");
    }

    #[test]
    fn dotted_parameter_names_are_kept_as_paths() {
        let mut n = Names::default();
        assert_eq!(
            n.fresh_param("encoder.layer.0.weight"),
            "encoder.layer.0.weight"
        );
        assert_eq!(n.fresh_param("model.norm.weight"), "model.norm.weight");
        assert_eq!(
            n.fresh_param("encoder.layer.0.weight"),
            "encoder_layer_0_weight"
        );
        assert_eq!(
            n.fresh_param("/layer.0/Constant_output_0"),
            "layer_0_Constant_output_0"
        );
        assert_eq!(n.fresh_param("a..b"), "a_b");
        assert_eq!(n.fresh_param("0.weight"), "v0_weight");
        assert_eq!(n.fresh_param("plain"), "plain");
        assert_eq!(sanitize("topk"), "topk_");
        assert_eq!(sanitize("conv2d"), "conv2d_");
    }

    #[test]
    fn fresh_names_are_unique() {
        let mut n = Names::default();
        assert_eq!(n.fresh("x"), "x");
        assert_eq!(n.fresh("x"), "x_2");
        assert_eq!(n.fresh("x:0"), "x_0");
        assert_eq!(n.fresh("x.0"), "x_0_2");
    }
}
