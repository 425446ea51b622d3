//! `lamina import` end to end: the bench models benches/peers builds as ONNX
//! files, imported and run on both backends against a float64 numpy
//! reference, and what the importer refuses (nothing is written then).

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use lamina::onnx::proto::{
    tensor_proto, tensor_shape_proto, type_proto, AttributeProto, GraphProto, ModelProto,
    NodeProto, OperatorSetIdProto, TensorShapeProto, TypeProto, ValueInfoProto,
};
use prost::Message;

fn lamina() -> Command {
    Command::new(env!("CARGO_BIN_EXE_lamina"))
}

fn value(name: &str, dims: &[&str]) -> ValueInfoProto {
    use tensor_shape_proto::dimension::Value as D;
    let dim = dims
        .iter()
        .map(|d| tensor_shape_proto::Dimension {
            value: Some(match d.parse::<i64>() {
                Ok(v) => D::DimValue(v),
                Err(_) => D::DimParam(d.to_string()),
            }),
            ..Default::default()
        })
        .collect();
    ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(tensor_proto::DataType::Float as i32),
                shape: Some(TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn node(op: &str, name: &str, ins: &[&str], outs: &[&str]) -> NodeProto {
    NodeProto {
        op_type: Some(op.into()),
        name: Some(name.into()),
        input: ins.iter().map(|s| s.to_string()).collect(),
        output: outs.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

fn model(
    nodes: Vec<NodeProto>,
    inputs: Vec<ValueInfoProto>,
    outputs: Vec<ValueInfoProto>,
) -> Vec<u8> {
    ModelProto {
        ir_version: Some(8),
        opset_import: vec![OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(17),
        }],
        graph: Some(GraphProto {
            name: Some("g".into()),
            node: nodes,
            input: inputs,
            output: outputs,
            ..Default::default()
        }),
        ..Default::default()
    }
    .encode_to_vec()
}

#[test]
fn an_unsupported_op_is_reported_once_with_its_nodes_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let onnx = dir.path().join("m.onnx");
    let bytes = model(
        vec![
            node("Relu", "first", &["x"], &["a"]),
            node("TopKish", "odd_1", &["a"], &["b"]),
            node("TopKish", "odd_2", &["b"], &["y"]),
        ],
        vec![value("x", &["batch", "4"])],
        vec![value("y", &["batch", "4"])],
    );
    std::fs::write(&onnx, bytes).unwrap();
    let out = lamina().arg("import").arg(&onnx).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.matches("unsupported op `TopKish`").count(), 1, "{err}");
    assert!(err.contains("`odd_1`") && err.contains("`odd_2`"), "{err}");
    assert!(err.contains("m.onnx: error"), "{err}");
    assert!(!dir.path().join("m.lam").exists());
    assert!(!dir.path().join("m.safetensors").exists());
}

#[test]
fn control_flow_is_named() {
    let mut if_node = node("If", "branch", &["c"], &["y"]);
    if_node.attribute.push(AttributeProto {
        name: Some("then_branch".into()),
        g: Some(GraphProto::default()),
        ..Default::default()
    });
    let bytes = model(
        vec![if_node],
        vec![value("c", &["1"])],
        vec![value("y", &["1"])],
    );
    let err = lamina::onnx::import_bytes(&bytes, "m", "m.onnx", "m.safetensors", &HashMap::new())
        .unwrap_err()
        .to_string();
    assert!(err.contains("control flow: `If` (nodes `branch`)"), "{err}");
}

#[test]
fn names_are_sanitized_and_symbolic_dims_kept() {
    let bytes = model(
        vec![node(
            "Relu",
            "/layer.0/Relu",
            &["input:0"],
            &["/layer.0/Relu_output_0"],
        )],
        vec![value("input:0", &["batch size", "4"])],
        vec![value("/layer.0/Relu_output_0", &["batch size", "4"])],
    );
    let imported =
        lamina::onnx::import_bytes(&bytes, "m", "m.onnx", "m.safetensors", &HashMap::new())
            .unwrap();
    assert!(
        imported
            .source
            .contains("input input_0: f32[batch_size, 4]"),
        "{}",
        imported.source
    );
    assert!(
        imported
            .source
            .contains("layer_0_Relu_output_0 = relu(input_0)"),
        "{}",
        imported.source
    );
    assert_eq!(imported.outputs[0].1, "layer_0_Relu_output_0");
}

#[test]
fn a_file_that_is_not_onnx_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let onnx = dir.path().join("bad.onnx");
    std::fs::write(&onnx, b"\xff\xff\xff not protobuf").unwrap();
    let out = lamina().arg("import").arg(&onnx).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.onnx: error: not a valid ONNX model"),
        "{err}"
    );
}

/// benches/peers builds the ONNX files; numpy computes the float64 reference.
fn peer_files(dir: &Path) -> Result<(), String> {
    let script = format!(
        r#"
import sys, numpy as np
sys.path.insert(0, {peers:?})
import run_peers as rp
for kind, size in (("mlp", 4), ("encoder", 2)):
    w = rp.weights_for(np, kind, size)
    open(f"{{kind}}.onnx", "wb").write(rp.onnx_model(kind, size, w))
    x = rp.input_for(np, kind, size)
    np.save(f"{{kind}}_x.npy", x)
    np.save(f"{{kind}}_ref.npy", rp.reference(np, kind, w, x).astype(np.float32))
"#,
        peers = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("benches/peers")
            .display()
            .to_string()
    );
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(())
}

#[test]
#[cfg_attr(
    lamina_skip_onnx_tests,
    ignore = "needs python3 with numpy and onnx: pip install numpy onnx==1.22.0"
)]
fn peer_models_import_and_match_the_reference_on_both_backends() {
    let dir = tempfile::tempdir().unwrap();
    peer_files(dir.path()).expect("building the ONNX files (pip install numpy onnx==1.22.0)");
    for kind in ["mlp", "encoder"] {
        let onnx = dir.path().join(format!("{kind}.onnx"));
        let lam = dir.path().join(format!("{kind}_imported.lam"));
        let out = lamina()
            .arg("import")
            .arg(&onnx)
            .arg("-o")
            .arg(&lam)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(dir
            .path()
            .join(format!("{kind}_imported.safetensors"))
            .is_file());
        let text = std::fs::read_to_string(&lam).unwrap();
        assert!(
            text.contains("input x: f32[batch, "),
            "symbolic batch kept:\n{text}"
        );
        let check = lamina().arg("check").arg(&lam).output().unwrap();
        assert!(
            check.status.success(),
            "{}",
            String::from_utf8_lossy(&check.stderr)
        );
        let reference =
            lamina::runtime::read_npy(&dir.path().join(format!("{kind}_ref.npy"))).unwrap();
        let want = reference.to_f64_vec();
        for backend in ["jit", "interp"] {
            let result = dir.path().join(format!("{kind}_{backend}.npy"));
            let run = lamina()
                .arg("run")
                .arg(&lam)
                .arg("--input")
                .arg(format!(
                    "x={}",
                    dir.path().join(format!("{kind}_x.npy")).display()
                ))
                .arg("--backend")
                .arg(backend)
                .arg("--output")
                .arg(&result)
                .output()
                .unwrap();
            assert!(
                run.status.success(),
                "{}",
                String::from_utf8_lossy(&run.stderr)
            );
            let got = lamina::runtime::read_npy(&result).unwrap();
            assert_eq!(got.shape(), reference.shape());
            let worst = got
                .to_f64_vec()
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f64::max);
            assert!(
                worst < 1e-4,
                "{kind} on {backend}: max error {worst} against float64 numpy"
            );
        }
    }
}
