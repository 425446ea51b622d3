//! lamina: a declarative model-graph compiler.
//!
//! Text (`syntax`) -> graph IR (`ir`) -> optimisation (`passes`) ->
//! native kernels (`codegen`) -> execution (`runtime`), with a reference
//! interpreter (`interp`) as the oracle. See ARCHITECTURE.md.

pub mod autodiff;
pub mod bench;
#[cfg(feature = "cli")]
pub mod cli;
pub mod codegen;
pub mod compile;
pub mod diagnostics;
pub mod dtype;
pub mod engine;
pub mod interp;
pub mod ir;
pub mod model;
pub mod onnx;
pub mod passes;
#[cfg(feature = "plot")]
pub mod plot;
pub mod runtime;
pub mod span;
pub mod syntax;
pub mod tensor;

pub use engine::{Backend, Error, Model, Options, Session, Weights};
