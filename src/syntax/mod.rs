//! Text to AST. Knows nothing of graphs or tensors.

pub mod ast;
pub mod parser;
