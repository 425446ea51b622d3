//! The language reference's examples, checked against the parser: every
//! `lamina` code block in docs/language.md parses, and the syntax error it
//! shows is the one the parser really reports.

use lamina::span::line_col;
use lamina::syntax::ast::Item;
use lamina::syntax::parser::parse;

fn language_doc() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/language.md");
    std::fs::read_to_string(path).expect("docs/language.md is readable")
}

/// The bodies of the fenced code blocks tagged `tag`, in order.
fn code_blocks(doc: &str, tag: &str) -> Vec<String> {
    let opening = format!("```{tag}\n");
    let mut blocks = Vec::new();
    let mut rest = doc;
    while let Some(start) = rest.find(&opening) {
        let body = &rest[start + opening.len()..];
        let end = body.find("```").expect("every code block is closed");
        blocks.push(body[..end].to_string());
        rest = &body[end + 3..];
    }
    blocks
}

#[test]
fn every_lamina_example_in_the_reference_parses() {
    let doc = language_doc();
    let blocks = code_blocks(&doc, "lamina");
    assert!(blocks.len() >= 10, "only {} examples found", blocks.len());
    for block in &blocks {
        let file = parse(block).unwrap_or_else(|e| {
            let (line, col) = line_col(block, e.span.start);
            panic!("{line}:{col}: {}\n{block}", e.message)
        });
        let models = file
            .items
            .iter()
            .filter(|item| matches!(item, Item::Model(_)))
            .count();
        let only_weights = file
            .items
            .iter()
            .all(|item| matches!(item, Item::Weights { .. }));
        assert!(
            models == 1 || only_weights,
            "an example should be a whole file with one model:\n{block}"
        );
    }
}

#[test]
fn the_complete_example_at_the_top_is_the_mlp() {
    let doc = language_doc();
    let first = code_blocks(&doc, "lamina").remove(0);
    let file = parse(&first).expect("the MLP parses");
    let names: Vec<&str> = file
        .items
        .iter()
        .map(|item| match item {
            Item::Weights { .. } => "weights",
            Item::Block(b) => b.name.name.as_str(),
            Item::Model(m) => m.name.name.as_str(),
        })
        .collect();
    assert_eq!(names, ["weights", "dense", "mlp"]);
}

#[test]
fn the_documented_syntax_error_is_the_real_one() {
    let doc = language_doc();
    let texts = code_blocks(&doc, "text");
    let broken = texts
        .iter()
        .find(|t| t.starts_with("model m {") && t.contains("output y relu(x)"))
        .expect("the syntax error example is in the reference");
    let error = parse(broken).expect_err("the example is broken on purpose");
    let (line, col) = line_col(broken, error.span.start);
    let rendered = format!("m.lam:{line}:{col}: error: syntax error: {}", error.message);
    assert!(
        doc.contains(&rendered),
        "the reference should show:\n{rendered}"
    );
}

#[test]
fn every_model_example_in_the_reference_lowers_and_type_checks() {
    let doc = language_doc();
    for block in code_blocks(&doc, "lamina") {
        let file = parse(&block).unwrap();
        if !file.items.iter().any(|item| matches!(item, Item::Model(_))) {
            continue;
        }
        if let Err(failure) =
            lamina::model::load_source(std::path::Path::new("example.lam"), block.clone())
        {
            let text = lamina::diagnostics::render_all(&failure.diagnostics, Some(&failure.source));
            panic!("a documented example does not compile:\n{text}");
        }
    }
}
