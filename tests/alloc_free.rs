//! After the first call for a shape, `CompiledModel::run_into` with
//! preallocated outputs and one kernel thread allocates nothing: plans,
//! arenas, packed weights and outputs are all reused. Checked on the MLP
//! (models/mlp/mlp.lam, batch 1 and 8), the bench encoder
//! (models/bench/encoder.lam), the digits CNN (convolutions, pooling) and
//! a small transformer block (batched-matmul attention, softmax, layer
//! norm).
//!
//! A counting global allocator counts the allocations of the thread that
//! asked for counting (the test harness runs tests on several threads).
//! Each counted allocation is attributed by its backtrace: to the kernel
//! library (`lamina::codegen`) or to everything else (the executor). The
//! executor must allocate nothing, and neither may the whole call.
//! Set `LAMINA_ALLOC_TRACE=1` to print every counted allocation's backtrace.

mod jit_support;

use lamina::ir::ops::Reshape;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

use lamina::ir::{Bindings, Dim, Graph, Op, UnaryOp};
use lamina::runtime::exec::CompiledModel;
use lamina::tensor::Tensor;

struct Counting;

/// Attribute allocations by backtrace (set before counting starts).
static ATTRIBUTE: AtomicBool = AtomicBool::new(false);
/// Print each allocation's backtrace (`LAMINA_ALLOC_TRACE`).
static PRINT: AtomicBool = AtomicBool::new(false);

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static TOTAL: Cell<usize> = const { Cell::new(0) };
    static IN_CODEGEN: Cell<usize> = const { Cell::new(0) };
}

fn note_allocation() {
    // `try_with`: thread-local storage may be gone while a thread exits.
    if !COUNTING.try_with(|c| c.get()).unwrap_or(false) {
        return;
    }
    TOTAL.with(|c| c.set(c.get() + 1));
    if ATTRIBUTE.load(Ordering::Relaxed) {
        // Capturing and formatting allocate: stop counting meanwhile.
        COUNTING.with(|c| c.set(false));
        let trace = std::backtrace::Backtrace::force_capture().to_string();
        if trace.contains("lamina::codegen::") {
            IN_CODEGEN.with(|c| c.set(c.get() + 1));
        }
        if PRINT.load(Ordering::Relaxed) {
            eprintln!("allocation:\n{trace}");
        }
        COUNTING.with(|c| c.set(true));
    }
}

// SAFETY: forwards every call to the system allocator unchanged; the
// bookkeeping touches only const-initialised thread-locals (and, while
// counting is switched off, allocates through this same allocator).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note_allocation();
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note_allocation();
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note_allocation();
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Allocations {
    total: usize,
    in_codegen: usize,
}

impl Allocations {
    fn in_executor(&self) -> usize {
        self.total - self.in_codegen
    }
}

/// Allocations made by `f` on this thread; attributed when `attribute`.
fn allocations_in(attribute: bool, f: impl FnOnce()) -> Allocations {
    ATTRIBUTE.store(attribute, Ordering::Relaxed);
    PRINT.store(
        attribute && std::env::var_os("LAMINA_ALLOC_TRACE").is_some(),
        Ordering::Relaxed,
    );
    TOTAL.with(|c| c.set(0));
    IN_CODEGEN.with(|c| c.set(0));
    COUNTING.with(|c| c.set(true));
    f();
    COUNTING.with(|c| c.set(false));
    Allocations {
        total: TOTAL.with(|c| c.get()),
        in_codegen: IN_CODEGEN.with(|c| c.get()),
    }
}

/// Allocations of `calls` calls after the first, each counted alone.
fn after_the_first_call(
    model: &CompiledModel,
    inputs: &[&Tensor],
    calls: usize,
    attribute: bool,
) -> Vec<Allocations> {
    let fixed = Bindings::new();
    let mut outputs: Vec<Tensor> = Vec::new();
    let first = allocations_in(false, || {
        model
            .run_into(inputs, &fixed, &mut outputs)
            .expect("first run")
    });
    assert!(
        first.total > 0,
        "the first call plans and allocates (the counter works)"
    );
    let expected = outputs.clone();
    let counts = (0..calls)
        .map(|_| {
            allocations_in(attribute, || {
                model.run_into(inputs, &fixed, &mut outputs).expect("run")
            })
        })
        .collect();
    // The reused outputs hold this call's results.
    assert_eq!(outputs, expected);
    counts
}

/// A model file of the repository with its weight file (else its
/// initializers).
fn model_from_file(model: &str, weights: Option<&str>) -> (Graph, HashMap<String, Tensor>) {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let graph = lamina::model::load(&root.join(model))
        .unwrap_or_else(|f| panic!("{model} does not load: {:?}", f.diagnostics))
        .graph;
    let weights = weights.map(|w| {
        lamina::runtime::WeightFile::load(root.join(w)).unwrap_or_else(|e| panic!("{w}: {e}"))
    });
    let params = lamina::runtime::bind_params(&graph, weights.as_ref(), &Bindings::new())
        .unwrap_or_else(|e| panic!("{model} parameters: {e:?}"))
        .values;
    (graph, params)
}

/// (name, compiled model with one kernel thread, inputs) for every case.
fn cases() -> Vec<(String, CompiledModel, Tensor)> {
    let compile = |g: &Graph, p: &HashMap<String, Tensor>| jit_support::compile_all_passes(g, p, 1);
    let mut rng = jit_support::rng(5);
    let mut cases = Vec::new();
    let (graph, params) = jit_support::mlp();
    for batch in [1, 8] {
        let x = jit_support::random_f32(&mut rng, vec![batch, 784], 0.0, 1.0);
        cases.push((format!("mlp batch {batch}"), compile(&graph, &params), x));
    }
    // Outputs that are an input, a view of it and a weight: copied into
    // the caller's tensors, not cloned.
    let mut b = jit_support::Builder::new("views");
    let x = b.input("x", "f32[batch, 4]");
    let view = b.op(
        Op::Reshape(Reshape {
            shape: vec![Dim::symbol("batch"), 2.into(), 2.into()],
        }),
        &[x],
    );
    let w = b.param("w", Tensor::f32(vec![3], vec![1.0, 2.0, 3.0]));
    let y = b.op(Op::Unary(UnaryOp::Tanh), &[x]);
    for (name, id) in [("x", x), ("view", view), ("w", w), ("y", y)] {
        b.output(name, id);
    }
    let (graph, params) = b.finish();
    let x = jit_support::random_f32(&mut rng, vec![3, 4], -1.0, 1.0);
    cases.push(("views".to_string(), compile(&graph, &params), x));
    // The bench encoder (models/bench/, seeded parameters) and a CNN with
    // its trained weights: convolutions, pooling, layer norm, GELU and
    // attention on the paths `lamina bench` and `lamina run` take.
    for (model, weights, shape) in [
        ("models/bench/encoder.lam", None, vec![1, 128, 256]),
        (
            "models/digits_cnn/digits_cnn.lam",
            Some("models/digits_cnn/digits_cnn.safetensors"),
            vec![2, 64],
        ),
    ] {
        let (graph, params) = model_from_file(model, weights);
        let x = jit_support::random_f32(&mut rng, shape, -1.0, 1.0);
        cases.push((model.to_string(), compile(&graph, &params), x));
    }
    let (graph, params) = jit_support::transformer_block(3);
    for (batch, seq) in [(1, 8), (2, 16)] {
        let x = jit_support::random_f32(&mut rng, vec![batch, seq, 32], -1.0, 1.0);
        cases.push((
            format!("transformer block batch {batch} seq {seq}"),
            compile(&graph, &params),
            x,
        ));
    }
    cases
}

#[test]
fn the_executor_allocates_nothing_after_the_first_call() {
    let mut report = Vec::new();
    for (name, model, x) in cases() {
        let counts = after_the_first_call(&model, &[&x], 2, true);
        assert!(
            counts.iter().all(|c| c.in_executor() == 0),
            "{name}: the executor allocates per call: {counts:?} (LAMINA_ALLOC_TRACE=1 shows where)"
        );
        assert_eq!(
            counts[0], counts[1],
            "{name}: every call allocates the same"
        );
        report.push(format!(
            "{name}: {} allocations per call, all in codegen",
            counts[0].total
        ));
    }
    eprintln!("{}", report.join("\n"));
}

/// The whole call, kernel library included: on one thread the GEMM runs
/// without a task list, batched matmul packs B into a per-thread scratch
/// and keeps its batch dims inline, and the elementwise driver keeps
/// strides, layout and per-input runs inline (up to the executor's rank
/// and operand limits).
#[test]
fn run_into_allocates_nothing_after_the_first_call() {
    for (name, model, x) in cases() {
        let counts = after_the_first_call(&model, &[&x], 5, false);
        assert!(
            counts.iter().all(|c| c.total == 0),
            "{name}: allocations per call {counts:?}"
        );
    }
}
