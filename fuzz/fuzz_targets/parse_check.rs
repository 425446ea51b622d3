//! Any bytes as model text: loading (parse, lower, type check) either
//! succeeds or returns diagnostics that render; it never panics, and no
//! diagnostic admits an internal error.
#![cfg_attr(feature = "libfuzzer", no_main)]

fn check(data: &[u8]) {
    let text = String::from_utf8_lossy(data).into_owned();
    match lamina::engine::Model::from_source("fuzz.lam", text) {
        Ok(model) => {
            let _ = lamina::ir::printer::print(model.graph());
        }
        Err(e) => {
            let shown = e.render();
            assert!(!shown.contains("internal error"), "{shown}");
        }
    }
}

lamina_fuzz::target!("parse_check", check);
