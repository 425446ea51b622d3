//! Tensor files in and out (`.npy`, safetensors) and parameter binding.

use lamina::ir::ops::{Input, MatMul, Param, Softmax};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use lamina::ir::{Bindings, DType, Dim, Graph, Init, NodeId, Op, TensorType, UnaryOp};
use lamina::runtime::{
    bind_params, bind_params_owned, read_npy, write_npy, NpyError, ParamError, WeightError,
    WeightFile,
};
use lamina::span::Span;
use lamina::tensor::{Tensor, TensorData};
use safetensors::tensor::TensorView;
use safetensors::Dtype;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/npy")
        .join(name)
}

fn digits_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("models/digits")
        .join(name)
}

// ---------------------------------------------------------------- .npy

#[test]
fn npy_round_trips_every_dtype() {
    let dir = tempfile::tempdir().unwrap();
    let tensors = [
        Tensor::f32(
            vec![2, 3],
            vec![0.5, -1.0, f32::MAX, f32::MIN_POSITIVE, -0.0, 1e-30],
        ),
        Tensor::i64(vec![3], vec![i64::MIN, 0, i64::MAX]),
        Tensor::new(vec![2, 2], TensorData::I32(vec![i32::MIN, -1, 1, i32::MAX])),
        Tensor::new(vec![1, 3, 1], TensorData::Bool(vec![true, false, true])),
        Tensor::scalar(7.25),
        Tensor::zeros(DType::F32, vec![0, 4]),
    ];
    for (i, t) in tensors.iter().enumerate() {
        let path = dir.path().join(format!("t{i}.npy"));
        write_npy(&path, t).unwrap();
        let back = read_npy(&path).unwrap();
        assert_eq!(&back, t, "round trip of {:?} {:?}", t.dtype(), t.shape());
    }
}

#[test]
#[cfg_attr(
    lamina_skip_numpy_tests,
    ignore = "needs python3 with numpy: pip install numpy"
)]
fn npy_written_files_load_in_numpy() {
    assert!(
        python_has_numpy(),
        "python3 with numpy not found: pip install numpy"
    );
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("f.npy");
    let b = dir.path().join("b.npy");
    write_npy(&f, &Tensor::f32(vec![2, 2], vec![1.0, 2.5, -3.0, 4.0])).unwrap();
    write_npy(
        &b,
        &Tensor::new(vec![3], TensorData::Bool(vec![false, true, true])),
    )
    .unwrap();
    let script = format!(
        "import numpy as np\n\
         f = np.load(r'{}'); b = np.load(r'{}')\n\
         assert f.dtype == np.float32 and f.shape == (2, 2), (f.dtype, f.shape)\n\
         assert f.tolist() == [[1.0, 2.5], [-3.0, 4.0]], f\n\
         assert b.dtype == np.bool_ and b.tolist() == [False, True, True], b\n",
        f.display(),
        b.display()
    );
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn python_has_numpy() -> bool {
    Command::new("python3")
        .args(["-c", "import numpy"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

#[test]
fn npy_reads_files_numpy_wrote() {
    // Values as in tests/fixtures/npy/make_fixtures.py.
    let f = read_npy(&fixture("f32_2x3.npy")).unwrap();
    assert_eq!(
        f,
        Tensor::f32(vec![2, 3], vec![-1.0, -0.5, 0.0, 0.5, 1.0, 1.5])
    );
    let i = read_npy(&fixture("i64_4.npy")).unwrap();
    assert_eq!(i, Tensor::i64(vec![4], vec![-3, 0, 7, 1 << 40]));
    let i32s = read_npy(&fixture("i32_2x2.npy")).unwrap();
    assert_eq!(
        i32s,
        Tensor::new(vec![2, 2], TensorData::I32(vec![1, -2, 3, -4]))
    );
    let b = read_npy(&fixture("bool_3.npy")).unwrap();
    assert_eq!(
        b,
        Tensor::new(vec![3], TensorData::Bool(vec![true, false, true]))
    );
    let s = read_npy(&fixture("f32_scalar.npy")).unwrap();
    assert_eq!(s, Tensor::scalar(2.5));
}

#[test]
fn npy_fortran_order_and_big_endian_come_out_row_major() {
    let f = read_npy(&fixture("f32_fortran_2x3.npy")).unwrap();
    assert_eq!(
        f,
        Tensor::f32(vec![2, 3], vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0])
    );
    let cube = read_npy(&fixture("i64_fortran_2x3x4.npy")).unwrap();
    assert_eq!(cube, Tensor::i64(vec![2, 3, 4], (0..24).collect()));
    let be = read_npy(&fixture("f32_bigendian_3.npy")).unwrap();
    assert_eq!(be, Tensor::f32(vec![3], vec![1.5, -2.0, 3.25]));
}

#[test]
fn npy_float64_is_rejected_with_the_conversion_to_apply() {
    let path = fixture("f64_2.npy");
    let err = read_npy(&path).unwrap_err();
    assert!(matches!(err, NpyError::UnsupportedDType { .. }), "{err:?}");
    let message = err.to_string();
    assert_eq!(
        message,
        format!(
            "`{}` holds float64; lamina reads float32, int64, int32, bool: save with .astype(np.float32)",
            path.display()
        )
    );
    let err = read_npy(&fixture("u8_2.npy")).unwrap_err().to_string();
    assert!(
        err.contains("holds uint8") && err.contains(".astype(np.int64)"),
        "{err}"
    );
}

#[test]
fn npy_damaged_files_name_their_path() {
    let truncated = fixture("f32_2x3_truncated.npy");
    let err = read_npy(&truncated).unwrap_err();
    assert!(
        matches!(
            err,
            NpyError::Truncated {
                expected: 24,
                found: 19,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains(&truncated.display().to_string()));

    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.npy");
    std::fs::write(&garbage, b"this is not numpy").unwrap();
    let err = read_npy(&garbage).unwrap_err();
    assert!(matches!(err, NpyError::Corrupt { .. }), "{err:?}");
    assert!(err.to_string().contains("garbage.npy"), "{err}");

    // A valid header followed by more bytes than it announces.
    let padded = dir.path().join("padded.npy");
    let mut bytes = std::fs::read(fixture("f32_2x3.npy")).unwrap();
    bytes.extend_from_slice(&[0; 4]);
    std::fs::write(&padded, bytes).unwrap();
    let err = read_npy(&padded).unwrap_err().to_string();
    assert!(
        err.contains("padded.npy") && err.contains("4 bytes follow"),
        "{err}"
    );

    let absent = dir.path().join("absent.npy");
    let err = read_npy(&absent).unwrap_err();
    assert!(matches!(err, NpyError::Read { .. }));
    assert!(err.to_string().contains("absent.npy"));
}

#[test]
fn npy_write_to_a_missing_directory_names_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("no/such/dir/out.npy");
    let err = write_npy(&path, &Tensor::scalar(1.0)).unwrap_err();
    assert!(matches!(err, NpyError::Write { .. }));
    assert!(err.to_string().contains("out.npy"), "{err}");
}

// ---------------------------------------------------------- safetensors

fn le_bytes<T: Copy, const N: usize>(values: &[T], to_bytes: impl Fn(T) -> [u8; N]) -> Vec<u8> {
    values.iter().flat_map(|&v| to_bytes(v)).collect()
}

/// Serializes `(name, dtype, shape, bytes)` entries with the safetensors crate.
fn safetensors_image(entries: &[(&str, Dtype, Vec<usize>, Vec<u8>)]) -> Vec<u8> {
    let views: Vec<(String, TensorView)> = entries
        .iter()
        .map(|(name, dtype, shape, bytes)| {
            (
                name.to_string(),
                TensorView::new(*dtype, shape.clone(), bytes).unwrap(),
            )
        })
        .collect();
    safetensors::serialize(views, None).unwrap()
}

fn write_safetensors(
    dir: &Path,
    file: &str,
    entries: &[(&str, Dtype, Vec<usize>, Vec<u8>)],
) -> PathBuf {
    let path = dir.join(file);
    std::fs::write(&path, safetensors_image(entries)).unwrap();
    path
}

fn f32_entry<'a>(
    name: &'a str,
    shape: Vec<usize>,
    values: &[f32],
) -> (&'a str, Dtype, Vec<usize>, Vec<u8>) {
    (name, Dtype::F32, shape, le_bytes(values, f32::to_le_bytes))
}

#[test]
fn safetensors_widens_half_precision_and_keeps_integers() {
    let dir = tempfile::tempdir().unwrap();
    // Values exact in f16 and bf16, so the widened f32 must equal them.
    let halves = [0.5f32, -2.0, 1024.0, 0.0];
    let path = write_safetensors(
        dir.path(),
        "mixed.safetensors",
        &[
            f32_entry("w", vec![2, 2], &[1.0, 2.0, 3.0, 4.0]),
            (
                "h",
                Dtype::F16,
                vec![4],
                le_bytes(&halves, |v| half::f16::from_f32(v).to_le_bytes()),
            ),
            (
                "bh",
                Dtype::BF16,
                vec![2, 2],
                le_bytes(&halves, |v| half::bf16::from_f32(v).to_le_bytes()),
            ),
            (
                "ids",
                Dtype::I64,
                vec![3],
                le_bytes(&[5i64, -1, 1 << 40], i64::to_le_bytes),
            ),
            (
                "pos",
                Dtype::I32,
                vec![2],
                le_bytes(&[7i32, -7], i32::to_le_bytes),
            ),
            ("mask", Dtype::BOOL, vec![2], vec![1, 0]),
        ],
    );
    let file = WeightFile::load(&path).unwrap();
    assert_eq!(file.path, path);
    assert_eq!(
        file.names().collect::<Vec<_>>(),
        ["bh", "h", "ids", "mask", "pos", "w"]
    );
    assert_eq!(
        file.tensors["w"],
        Tensor::f32(vec![2, 2], vec![1.0, 2.0, 3.0, 4.0])
    );
    assert_eq!(file.tensors["h"], Tensor::f32(vec![4], halves.to_vec()));
    assert_eq!(file.tensors["bh"], Tensor::f32(vec![2, 2], halves.to_vec()));
    assert_eq!(
        file.tensors["ids"],
        Tensor::i64(vec![3], vec![5, -1, 1 << 40])
    );
    assert_eq!(
        file.tensors["pos"],
        Tensor::new(vec![2], TensorData::I32(vec![7, -7]))
    );
    assert_eq!(
        file.tensors["mask"],
        Tensor::new(vec![2], TensorData::Bool(vec![true, false]))
    );
}

#[test]
fn safetensors_large_and_small_tensors_in_any_order_read_to_their_values() {
    // Large f32 tensors are read straight into their buffers in parts (on
    // several threads), small ones and other dtypes in batches: every
    // value must be the file's, whichever way it came, from a file or from
    // bytes in memory.
    let dir = tempfile::tempdir().unwrap();
    let values = |n: usize, seed: f32| -> Vec<f32> {
        (0..n)
            .map(|i| seed + i as f32 * 0.25 - (i % 7) as f32)
            .collect()
    };
    let big = values(300_001, 1.0);
    let mid = values(20_000, -3.0);
    let small = values(5, 9.0);
    let ids: Vec<i64> = (0..40_000).map(|i| i * 3 - 7).collect();
    let entries = [
        f32_entry("a.small", vec![5], &small),
        f32_entry("b.big", vec![300_001], &big),
        (
            "c.ids",
            Dtype::I64,
            vec![40_000],
            le_bytes(&ids, i64::to_le_bytes),
        ),
        f32_entry("d.mid", vec![100, 200], &mid),
        ("e.mask", Dtype::BOOL, vec![3], vec![1, 0, 1]),
        f32_entry("f.empty", vec![0, 4], &[]),
        f32_entry("g.small", vec![2], &[7.5, -1.0]),
    ];
    let path = write_safetensors(dir.path(), "parts.safetensors", &entries);
    let bytes = std::fs::read(&path).unwrap();
    for file in [
        WeightFile::load(&path).unwrap(),
        WeightFile::from_bytes(&path, &bytes).unwrap(),
    ] {
        assert_eq!(file.tensors["a.small"], Tensor::f32(vec![5], small.clone()));
        assert_eq!(
            file.tensors["b.big"],
            Tensor::f32(vec![300_001], big.clone())
        );
        assert_eq!(
            file.tensors["c.ids"],
            Tensor::i64(vec![40_000], ids.clone())
        );
        assert_eq!(
            file.tensors["d.mid"],
            Tensor::f32(vec![100, 200], mid.clone())
        );
        assert_eq!(
            file.tensors["e.mask"],
            Tensor::new(vec![3], TensorData::Bool(vec![true, false, true]))
        );
        assert_eq!(file.tensors["f.empty"], Tensor::f32(vec![0, 4], vec![]));
        assert_eq!(
            file.tensors["g.small"],
            Tensor::f32(vec![2], vec![7.5, -1.0])
        );
        assert_eq!(file.tensors.len(), 7);
    }
    // Cut anywhere in the data, the file is still a located error.
    for cut in [bytes.len() - 1, bytes.len() - 500_000, bytes.len() / 2] {
        let short = dir.path().join("short.safetensors");
        std::fs::write(&short, &bytes[..cut]).unwrap();
        let err = WeightFile::load(&short).unwrap_err();
        assert!(matches!(err, WeightError::Corrupt { .. }), "{err:?}");
        assert!(err.to_string().contains("short.safetensors"), "{err}");
    }
}

#[test]
fn safetensors_rounds_f16_like_numpy_would() {
    // 0.1 is not exact in f16: the loaded value is f16's nearest, not 0.1.
    let dir = tempfile::tempdir().unwrap();
    let bits = half::f16::from_f32(0.1).to_le_bytes().to_vec();
    let path = write_safetensors(
        dir.path(),
        "h.safetensors",
        &[("x", Dtype::F16, vec![1], bits)],
    );
    let value = WeightFile::load(&path).unwrap().tensors["x"]
        .as_f32()
        .unwrap()[0];
    assert_eq!(value, 0.099975586);
}

#[test]
fn safetensors_unsupported_dtype_names_the_tensor_and_dtype() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_safetensors(
        dir.path(),
        "f64.safetensors",
        &[
            f32_entry("ok", vec![1], &[1.0]),
            (
                "scores",
                Dtype::F64,
                vec![2],
                le_bytes(&[1.0f64, 2.0], f64::to_le_bytes),
            ),
        ],
    );
    // An unsupported tensor does not stop the file from loading (a model
    // may not use it); binding a parameter to it is the error.
    let file = WeightFile::load(&path).unwrap();
    assert!(file.get("ok").is_some());
    let message = file.unreadable("scores").unwrap().to_string();
    assert!(
        message.contains("`scores`")
            && message.contains("F64")
            && message.contains("f64.safetensors"),
        "{message}"
    );
}

#[test]
fn safetensors_damaged_or_absent_files_name_their_path() {
    let dir = tempfile::tempdir().unwrap();
    let image = safetensors_image(&[f32_entry("w", vec![4], &[1.0, 2.0, 3.0, 4.0])]);
    let cut = dir.path().join("cut.safetensors");
    std::fs::write(&cut, &image[..image.len() - 3]).unwrap();
    let err = WeightFile::load(&cut).unwrap_err();
    assert!(matches!(err, WeightError::Corrupt { .. }), "{err:?}");
    assert!(err.to_string().contains("cut.safetensors"), "{err}");

    let junk = dir.path().join("junk.safetensors");
    std::fs::write(&junk, b"\xff\xff\xff\xff\xff\xff\xff\x7fnot a header").unwrap();
    let err = WeightFile::load(&junk).unwrap_err();
    assert!(err.to_string().contains("junk.safetensors"), "{err}");

    let absent = dir.path().join("absent.safetensors");
    let err = WeightFile::load(&absent).unwrap_err();
    assert!(matches!(err, WeightError::Read { .. }));
    assert!(err.to_string().contains("absent.safetensors"), "{err}");

    let bad_bool = dir.path().join("bool.safetensors");
    std::fs::write(
        &bad_bool,
        safetensors_image(&[("m", Dtype::BOOL, vec![2], vec![1, 7])]),
    )
    .unwrap();
    let file = WeightFile::load(&bad_bool).unwrap();
    let err = file.unreadable("m").unwrap();
    assert!(err.contains("`m`") && err.contains("byte 7"), "{err}");
}

// ------------------------------------------------------- parameter binding

fn dims(spec: &[&str]) -> Vec<Dim> {
    spec.iter()
        .map(|d| match d.parse::<usize>() {
            Ok(n) => Dim::known(n),
            Err(_) => Dim::symbol(d),
        })
        .collect()
}

fn ty(dtype: DType, spec: &[&str]) -> TensorType {
    TensorType::new(dtype, dims(spec))
}

/// Adds a parameter whose span is its index, so tests can check the
/// error-to-declaration lookup.
fn param(g: &mut Graph, name: &str, t: TensorType, init: Option<Init>) -> NodeId {
    let at = g.node_count();
    g.add_node(
        Op::Param(Param {
            name: name.to_string(),
            init,
        }),
        &[],
        t,
        Some(Span::new(at, at + 1)),
    )
}

/// A graph that reads every parameter in `params`: x @ p0 + p1 ... is not
/// needed for binding, so each param feeds a trivial output.
fn graph_of(params: &[(&str, TensorType, Option<Init>)]) -> Graph {
    let mut g = Graph::new("test");
    for (name, t, init) in params {
        let id = param(&mut g, name, t.clone(), init.clone());
        g.outputs.push((name.to_string(), id));
    }
    g
}

fn weight_file(dir: &Path, entries: &[(&str, Dtype, Vec<usize>, Vec<u8>)]) -> WeightFile {
    WeightFile::load(write_safetensors(dir, "model.safetensors", entries)).unwrap()
}

fn zeros_f32(name: &str, shape: Vec<usize>) -> (&str, Dtype, Vec<usize>, Vec<u8>) {
    let n = shape.iter().product();
    f32_entry(name, shape, &vec![0.0; n])
}

#[test]
fn binding_takes_file_tensors_initializers_and_learns_symbols() {
    let dir = tempfile::tempdir().unwrap();
    let file = weight_file(
        dir.path(),
        &[
            f32_entry("fc.weight", vec![2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]),
            (
                "fc.half",
                Dtype::F16,
                vec![3],
                le_bytes(&[1.0f32, 2.0, 4.0], |v| {
                    half::f16::from_f32(v).to_le_bytes()
                }),
            ),
            (
                "pooler.dense.weight",
                Dtype::F32,
                vec![1],
                le_bytes(&[9.0f32], f32::to_le_bytes),
            ),
            (
                "embeddings.position_ids",
                Dtype::I64,
                vec![2],
                le_bytes(&[0i64, 1], i64::to_le_bytes),
            ),
        ],
    );
    let g = graph_of(&[
        // `hidden` is fixed by this weight's shape...
        (
            "fc.weight",
            ty(DType::F32, &["2", "hidden"]),
            Some(Init::Xavier { seed: 1 }),
        ),
        // ... and used by an initialized parameter declared after it.
        ("fc.bias", ty(DType::F32, &["hidden"]), Some(Init::Ones)),
        ("fc.half", ty(DType::F32, &["hidden"]), None),
        (
            "fc.extra",
            ty(DType::F32, &["batch", "hidden"]),
            Some(Init::He { seed: 4 }),
        ),
        ("fc.counts", ty(DType::I64, &["hidden"]), Some(Init::Zeros)),
    ]);
    let mut given = Bindings::new();
    given.insert("batch".to_string(), 5);
    let bound = bind_params(&g, Some(&file), &given).unwrap();

    // The file wins over the initializer when it has the tensor.
    assert_eq!(bound.values["fc.weight"], file.tensors["fc.weight"]);
    assert_eq!(bound.values["fc.bias"], Tensor::f32(vec![3], vec![1.0; 3]));
    assert_eq!(
        bound.values["fc.half"],
        Tensor::f32(vec![3], vec![1.0, 2.0, 4.0])
    );
    assert_eq!(bound.values["fc.extra"].shape(), &[5, 3]);
    assert_eq!(bound.values["fc.counts"], Tensor::i64(vec![3], vec![0; 3]));
    assert_eq!(bound.values.len(), 5);
    assert_eq!(bound.bindings.get("hidden"), Some(&3));
    assert_eq!(bound.bindings.get("batch"), Some(&5));
    assert_eq!(
        bound.unused,
        vec!["embeddings.position_ids", "pooler.dense.weight"]
    );

    // Moving the tensors out gives the same values.
    let owned = bind_params_owned(&g, Some(file.clone()), &given).unwrap();
    assert_eq!(owned.values, bound.values);
    assert_eq!(owned.unused, bound.unused);
}

#[test]
fn binding_reports_the_shape_mismatch_in_the_declared_type() {
    let dir = tempfile::tempdir().unwrap();
    let file = weight_file(dir.path(), &[zeros_f32("fc1.weight", vec![64, 31])]);
    let g = graph_of(&[("fc1.weight", ty(DType::F32, &["64", "32"]), None)]);
    let errors = bind_params(&g, Some(&file), &Bindings::new()).unwrap_err();
    assert_eq!(errors.len(), 1);
    assert_eq!(
        errors[0].to_string(),
        "weight `fc1.weight` has shape [64, 31], the model declares f32[64, 32]"
    );

    let file = weight_file(dir.path(), &[zeros_f32("flat", vec![6])]);
    let g = graph_of(&[("flat", ty(DType::F32, &["2", "3"]), None)]);
    let errors = bind_params(&g, Some(&file), &Bindings::new()).unwrap_err();
    assert_eq!(
        errors[0].to_string(),
        "weight `flat` has shape [6], the model declares f32[2, 3] (rank 1 vs 2)"
    );
}

#[test]
fn binding_reports_conflicting_symbols_between_weights() {
    let dir = tempfile::tempdir().unwrap();
    let file = weight_file(
        dir.path(),
        &[zeros_f32("a", vec![4, 64]), zeros_f32("b", vec![63])],
    );
    let g = graph_of(&[
        ("a", ty(DType::F32, &["4", "hidden"]), None),
        ("b", ty(DType::F32, &["hidden"]), None),
    ]);
    let errors = bind_params(&g, Some(&file), &Bindings::new()).unwrap_err();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(
        errors[0].to_string(),
        "weight `b` has shape [63], the model declares f32[hidden] (hidden is already 64, here 63)"
    );
}

#[test]
fn binding_rechecks_products_once_a_later_weight_fixes_their_symbol() {
    let dir = tempfile::tempdir().unwrap();
    // `2*h` cannot be checked when `a` is seen; `b` then fixes h = 3.
    let file = weight_file(
        dir.path(),
        &[zeros_f32("a", vec![8]), zeros_f32("b", vec![3])],
    );
    let mut g = Graph::new("products");
    let two_h = Dim::known(2).checked_mul(&Dim::symbol("h")).unwrap();
    param(&mut g, "a", TensorType::new(DType::F32, vec![two_h]), None);
    param(&mut g, "b", ty(DType::F32, &["h"]), None);
    let errors = bind_params(&g, Some(&file), &Bindings::new()).unwrap_err();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].param_name(), "a");
    assert!(errors[0]
        .to_string()
        .contains("has shape [8], the model declares f32[2*h] (axis 0 must be 2*h = 6, got 8)"));
}

#[test]
fn binding_reports_wrong_dtype() {
    let dir = tempfile::tempdir().unwrap();
    let file = weight_file(
        dir.path(),
        &[(
            "embed.ids",
            Dtype::I64,
            vec![2],
            le_bytes(&[0i64, 1], i64::to_le_bytes),
        )],
    );
    let g = graph_of(&[("embed.ids", ty(DType::F32, &["2"]), None)]);
    let errors = bind_params(&g, Some(&file), &Bindings::new()).unwrap_err();
    assert_eq!(
        errors.iter().map(ToString::to_string).collect::<Vec<_>>(),
        ["weight `embed.ids` has dtype i64, the model declares f32[2]"]
    );
}

#[test]
fn binding_suggests_close_names_for_a_missing_weight() {
    let dir = tempfile::tempdir().unwrap();
    let file = weight_file(
        dir.path(),
        &[
            zeros_f32("head.weights", vec![4]),
            zeros_f32("head.bias", vec![4]),
            zeros_f32("encoder.layer.0.attention.self.query.weight", vec![1]),
        ],
    );
    let g = graph_of(&[
        ("head.weight", ty(DType::F32, &["4"]), None),
        ("head.bias", ty(DType::F32, &["4"]), None),
    ]);
    let errors = bind_params(&g, Some(&file), &Bindings::new()).unwrap_err();
    assert_eq!(errors.len(), 1);
    // `head.bias` is claimed by its own parameter, so it is not suggested;
    // the unrelated long name is too far away to be.
    assert_eq!(
        errors[0],
        ParamError::Missing {
            name: "head.weight".to_string(),
            declared: ty(DType::F32, &["4"]),
            file: Some(file.path.clone()),
            suggestions: vec!["head.weights".to_string()],
        }
    );
    assert_eq!(
        errors[0].to_string(),
        format!(
            "parameter `head.weight` (f32[4]) has no initializer and `{}` has no tensor of that name; did you mean `head.weights`?",
            file.path.display()
        )
    );
}

#[test]
fn binding_without_a_weight_file_says_so() {
    let g = graph_of(&[
        (
            "w",
            ty(DType::F32, &["2", "2"]),
            Some(Init::Xavier { seed: 1 }),
        ),
        ("b", ty(DType::F32, &["2"]), None),
    ]);
    let errors = bind_params(&g, None, &Bindings::new()).unwrap_err();
    assert_eq!(errors.len(), 1);
    let message = errors[0].to_string();
    assert!(
        message
            .starts_with("parameter `b` (f32[2]) has no initializer and no weight file was given"),
        "{message}"
    );

    // With every parameter initialized, no file is needed at all.
    let g = graph_of(&[(
        "w",
        ty(DType::F32, &["2", "2"]),
        Some(Init::Xavier { seed: 1 }),
    )]);
    let bound = bind_params(&g, None, &Bindings::new()).unwrap();
    assert_eq!(bound.values["w"].shape(), &[2, 2]);
    assert!(bound.unused.is_empty());
}

#[test]
fn binding_an_initializer_needs_every_symbol() {
    let g = graph_of(&[("pos", ty(DType::F32, &["seq", "8"]), Some(Init::Zeros))]);
    let errors = bind_params(&g, None, &Bindings::new()).unwrap_err();
    assert_eq!(
        errors[0].to_string(),
        "parameter `pos` (f32[seq, 8]) needs symbol `seq`, which no input, weight or --bind fixes: pass --bind seq=N"
    );
    let mut given = Bindings::new();
    given.insert("seq".to_string(), 3);
    assert_eq!(
        bind_params(&g, None, &given).unwrap().values["pos"].shape(),
        &[3, 8]
    );
}

#[test]
fn binding_rejects_random_initializers_for_integer_params() {
    let g = graph_of(&[(
        "ids",
        ty(DType::I32, &["4"]),
        Some(Init::Normal {
            mean: lamina::ir::Float(0.0),
            std: lamina::ir::Float(1.0),
            seed: 2,
        }),
    )]);
    let errors = bind_params(&g, None, &Bindings::new()).unwrap_err();
    assert!(matches!(errors[0], ParamError::InitDType { .. }));
    assert!(
        errors[0]
            .to_string()
            .contains("`normal(mean=0.0, std=1.0, seed=2)` makes f32 values"),
        "{}",
        errors[0]
    );
}

#[test]
fn binding_reports_every_problem_at_once_with_its_parameter() {
    let dir = tempfile::tempdir().unwrap();
    let file = weight_file(
        dir.path(),
        &[
            zeros_f32("fc1.weight", vec![64, 31]),
            (
                "fc1.bias",
                Dtype::I32,
                vec![32],
                le_bytes(&[0i32; 32], i32::to_le_bytes),
            ),
            zeros_f32("fc2.wieght", vec![32, 10]),
            zeros_f32("fc2.bias", vec![10]),
        ],
    );
    let g = graph_of(&[
        ("fc1.weight", ty(DType::F32, &["64", "32"]), None),
        ("fc1.bias", ty(DType::F32, &["32"]), None),
        ("fc2.weight", ty(DType::F32, &["32", "10"]), None),
        ("fc2.bias", ty(DType::F32, &["10"]), None),
        ("pos", ty(DType::F32, &["seq"]), Some(Init::Zeros)),
    ]);
    let errors = bind_params(&g, Some(&file), &Bindings::new()).unwrap_err();
    let names: Vec<&str> = errors.iter().map(ParamError::param_name).collect();
    assert_eq!(
        names,
        ["fc1.weight", "fc1.bias", "fc2.weight", "pos"],
        "{errors:#?}"
    );
    assert!(matches!(errors[0], ParamError::Shape { .. }));
    assert!(matches!(
        errors[1],
        ParamError::DType {
            actual: DType::I32,
            ..
        }
    ));
    assert!(
        matches!(&errors[2], ParamError::Missing { suggestions, .. } if suggestions == &["fc2.wieght"])
    );
    assert!(matches!(errors[3], ParamError::Unbound { .. }));

    // Each error leads back to its declaration.
    let spans: HashMap<String, Span> = g
        .params()
        .into_iter()
        .map(|(name, id)| (name, g.node(id).span.unwrap()))
        .collect();
    assert_eq!(spans[errors[2].param_name()], Span::new(2, 3));
}

// ------------------------------------------------------------ the digits model

/// The graph `models/digits/digits.lam` lowers to, built by hand.
fn digits_graph() -> Graph {
    let mut g = Graph::new("digits");
    let f32t = |spec: &[&str]| ty(DType::F32, spec);
    let x = g.add_node(
        Op::Input(Input { name: "x".into() }),
        &[],
        f32t(&["batch", "64"]),
        None,
    );
    g.inputs.push(x);
    let w1 = param(&mut g, "fc1.weight", f32t(&["64", "32"]), None);
    let b1 = param(&mut g, "fc1.bias", f32t(&["32"]), None);
    let w2 = param(&mut g, "fc2.weight", f32t(&["32", "10"]), None);
    let b2 = param(&mut g, "fc2.bias", f32t(&["10"]), None);
    let matmul = Op::MatMul(MatMul {
        transpose_a: false,
        transpose_b: false,
    });
    let h = g.add_node(matmul.clone(), &[x, w1], f32t(&["batch", "32"]), None);
    let h = g.add_node(
        Op::Binary(lamina::ir::BinaryOp::Add),
        &[h, b1],
        f32t(&["batch", "32"]),
        None,
    );
    let h = g.add_node(Op::Unary(UnaryOp::Relu), &[h], f32t(&["batch", "32"]), None);
    let logits = g.add_node(matmul, &[h, w2], f32t(&["batch", "10"]), None);
    let logits = g.add_node(
        Op::Binary(lamina::ir::BinaryOp::Add),
        &[logits, b2],
        f32t(&["batch", "10"]),
        None,
    );
    let probs = g.add_node(
        Op::Softmax(Softmax { axis: 1 }),
        &[logits],
        f32t(&["batch", "10"]),
        None,
    );
    g.outputs.push(("probs".into(), probs));
    g
}

/// `relu(x @ w + b)` or `x @ w + b` on row-major data.
fn dense(x: &[f32], rows: usize, w: &Tensor, b: &Tensor, relu: bool) -> Vec<f32> {
    let (inner, cols) = (w.shape()[0], w.shape()[1]);
    let (w, b) = (w.as_f32().unwrap(), b.as_f32().unwrap());
    let mut out = vec![0.0f32; rows * cols];
    for r in 0..rows {
        for c in 0..cols {
            let acc: f32 = (0..inner)
                .map(|k| x[r * inner + k] * w[k * cols + c])
                .sum::<f32>()
                + b[c];
            out[r * cols + c] = if relu { acc.max(0.0) } else { acc };
        }
    }
    out
}

#[test]
fn digits_files_bind_and_classify_the_held_out_images() {
    let x = read_npy(&digits_file("x.npy")).unwrap();
    let labels = read_npy(&digits_file("labels.npy")).unwrap();
    let weights = WeightFile::load(digits_file("digits.safetensors")).unwrap();
    let n = x.shape()[0];
    assert_eq!(x.shape(), &[n, 64]);
    assert_eq!(labels.shape(), &[n]);
    assert_eq!(labels.dtype(), DType::I64);
    let pixels = x.as_f32().unwrap();
    assert!(pixels.iter().all(|p| (0.0..=1.0).contains(p)));

    let g = digits_graph();
    let mut given = Bindings::new();
    given.insert("batch".into(), n);
    let bound = bind_params(&g, Some(&weights), &given).unwrap();
    assert!(bound.unused.is_empty(), "{:?}", bound.unused);

    let p = &bound.values;
    let hidden = dense(pixels, n, &p["fc1.weight"], &p["fc1.bias"], true);
    let logits = dense(&hidden, n, &p["fc2.weight"], &p["fc2.bias"], false);
    let TensorData::I64(labels) = labels.data() else {
        unreachable!("dtype checked above")
    };
    let correct = logits
        .chunks(10)
        .zip(labels)
        .filter(|(row, &label)| {
            let best = (0..10).max_by(|&a, &b| row[a].total_cmp(&row[b])).unwrap();
            best as i64 == label
        })
        .count();
    let accuracy = correct as f64 / n as f64;
    eprintln!("digits accuracy {correct}/{n} = {accuracy:.4}");
    // train.py reports 0.9733 from the same files; argmax of logits equals
    // argmax of the softmax, so the forward pass must agree closely.
    assert!(accuracy > 0.95, "accuracy {accuracy}");
}
