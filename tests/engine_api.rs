//! The engine API end to end: a session shared by threads, weights from
//! every source, and run-time errors that point at the failing node's line.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use lamina::engine::{Backend, ErrorKind, Model, Options, Session, Weights};
use lamina::tensor::Tensor;

fn repo(relative: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

fn options(backend: Backend, threads: usize) -> Options {
    Options {
        backend,
        threads,
        ..Options::default()
    }
}

fn mlp_input(batch: usize, seed: f32) -> HashMap<String, Tensor> {
    let x: Vec<f32> = (0..batch * 784)
        .map(|i| (i as f32 * 0.37 + seed).sin())
        .collect();
    HashMap::from([("x".to_string(), Tensor::f32(vec![batch, 784], x))])
}

#[test]
fn one_session_runs_from_many_threads_with_the_answers_of_one() {
    let model = Model::load(repo("models/bench/mlp.lam")).unwrap_or_else(|e| panic!("{e}"));
    let session = Arc::new(
        model
            .compile(Weights::Conventional, &options(Backend::Jit, 2))
            .unwrap_or_else(|e| panic!("{e}")),
    );
    let expected: Vec<Vec<(String, Tensor)>> = (0..4)
        .map(|seed| session.run(&mlp_input(1 + seed, seed as f32)).unwrap())
        .collect();
    let handles: Vec<_> = (0..4)
        .map(|seed| {
            let session = Arc::clone(&session);
            std::thread::spawn(move || {
                let input = mlp_input(1 + seed, seed as f32);
                let first = session.run(&input).unwrap();
                for _ in 0..4 {
                    assert_eq!(session.run(&input).unwrap(), first);
                }
                first
            })
        })
        .collect();
    for (seed, handle) in handles.into_iter().enumerate() {
        assert_eq!(handle.join().unwrap(), expected[seed], "thread {seed}");
    }
}

#[test]
fn session_is_send_and_sync() {
    fn shareable<T: Send + Sync + 'static>() {}
    shareable::<Session>();
    shareable::<Model>();
}

#[test]
fn jit_and_interpreter_sessions_agree() {
    let model = Model::load(repo("models/bench/mlp.lam")).unwrap_or_else(|e| panic!("{e}"));
    let input = mlp_input(3, 0.5);
    let run = |backend| {
        let session = model
            .clone()
            .compile(Weights::Conventional, &options(backend, 1))
            .unwrap_or_else(|e| panic!("{e}"));
        session.run(&input).unwrap_or_else(|e| panic!("{e}"))
    };
    let (jit, interp) = (run(Backend::Jit), run(Backend::Interp));
    let (jit, interp) = (jit[0].1.as_f32().unwrap(), interp[0].1.as_f32().unwrap());
    assert_eq!(jit.len(), 30);
    for (a, b) in jit.iter().zip(interp) {
        assert!((a - b).abs() <= 1e-4 * b.abs().max(1.0), "{a} vs {b}");
    }
}

#[test]
fn weights_from_a_file_from_bytes_and_as_tensors_give_the_same_answer() {
    let model = Model::load(repo("tests/cases/runtime/tiny.lam")).unwrap_or_else(|e| panic!("{e}"));
    let file = repo("tests/cases/runtime/good.safetensors");
    let bytes = std::fs::read(&file).unwrap();
    let tensors: HashMap<String, Tensor> = lamina::runtime::WeightFile::load(&file)
        .unwrap()
        .tensors
        .into_iter()
        .collect();
    let x = lamina::runtime::read_npy(&repo("tests/cases/runtime/x.npy")).unwrap();
    let inputs = HashMap::from([("x".to_string(), x)]);
    let sources = [
        Weights::File(file.clone()),
        Weights::Bytes {
            name: "good".into(),
            bytes,
        },
        Weights::Tensors(tensors),
    ];
    let results: Vec<Vec<(String, Tensor)>> = sources
        .into_iter()
        .map(|w| {
            let session = model
                .clone()
                .compile(w, &options(Backend::Jit, 1))
                .unwrap_or_else(|e| panic!("{e}"));
            session.run(&inputs).unwrap_or_else(|e| panic!("{e}"))
        })
        .collect();
    let expected = lamina::runtime::read_npy(&repo("tests/cases/runtime/expected_y.npy")).unwrap();
    let (got, want) = (
        results[0][0].1.as_f32().unwrap(),
        expected.as_f32().unwrap(),
    );
    for (a, b) in got.iter().zip(want) {
        assert!((a - b).abs() <= 1e-5 * b.abs().max(1.0), "{a} vs {b}");
    }
    assert_eq!(results[0], results[1]);
    assert_eq!(results[0], results[2]);
}

const GATHER: &str = "model lookup {\n  input ids: i64[n]\n  param table: f32[4, 2] = ones\n  output rows = gather(table, ids, axis=0)\n}\n";

#[test]
fn a_run_time_error_names_the_node_and_its_line_on_both_backends() {
    let model = Model::from_source("lookup.lam", GATHER).unwrap();
    let ids = HashMap::from([("ids".to_string(), Tensor::i64(vec![2], vec![1, 9]))]);
    for backend in [Backend::Jit, Backend::Interp] {
        let session = model
            .clone()
            .compile(Weights::None, &options(backend, 1))
            .unwrap();
        let err = session.run(&ids).unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("lookup.lam:4:") && text.contains(": error: gather: id 9"),
            "{backend:?}: {text}"
        );
        assert!(
            text.contains("4 |   output rows = gather(table, ids, axis=0)"),
            "{backend:?}: {text}"
        );
        assert!(text.contains('^'), "{backend:?}: {text}");
        let at_node = match err.kind() {
            ErrorKind::Exec(lamina::runtime::exec::ExecError::AtNode { op, .. }) => *op,
            ErrorKind::Interp(lamina::interp::InterpError::AtNode { op, .. }) => *op,
            other => panic!("{backend:?}: not located: {other:?}"),
        };
        assert_eq!(at_node, "gather");
    }
}

/// README's library example, as written there (paths from the crate root).
#[test]
fn the_readme_library_example_runs() -> Result<(), Box<dyn std::error::Error>> {
    let model = Model::load(repo("models/digits/digits.lam"))?;
    let session = model.compile(Weights::Conventional, &Options::default())?;
    let x: Tensor = lamina::runtime::read_npy(&repo("models/digits/x.npy"))?;
    let outputs = session.run(&HashMap::from([("x".to_string(), x)]))?;
    assert_eq!(outputs[0].0, "probs");
    assert_eq!(outputs[0].1.shape(), [450, 10]);
    Ok(())
}
