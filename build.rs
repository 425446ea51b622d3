//! Decides which resource-bound tests are skipped.
//!
//! A few tests need numpy or the fetched MiniLM checkpoint. Locally, when one
//! is missing, those tests are marked ignored (cargo's summary counts them,
//! with the reason); under CI (`CI` set to anything but `false`/`0`) they are
//! never ignored, so a missing resource fails them loudly instead of letting
//! them pass without running.
//!
//! The cfgs set here: `lamina_skip_numpy_tests`, `lamina_skip_minilm_tests`,
//! `lamina_skip_efficientnet_tests` (the EfficientNet-Lite0 weights and
//! photos of models/efficientnet_lite0/fetch.sh; its reference also needs
//! numpy and safetensors).
//! Installing numpy later is not noticed until this script runs again
//! (`touch build.rs`); fetching the checkpoint is.
//!
//! It also generates the ONNX protobuf messages (`$OUT_DIR/onnx.rs`) from the
//! vendored `proto/onnx.proto`, with protox as the protobuf compiler so that
//! no system `protoc` is needed. The `onnx` Python package the node-suite test
//! reads is one more resource: `lamina_skip_onnx_tests` when it is missing.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    generate_onnx_messages();
    println!("cargo::rustc-check-cfg=cfg(lamina_skip_numpy_tests)");
    println!("cargo::rustc-check-cfg=cfg(lamina_skip_onnx_tests)");
    println!("cargo::rustc-check-cfg=cfg(lamina_skip_minilm_tests)");
    println!("cargo::rustc-check-cfg=cfg(lamina_skip_efficientnet_tests)");
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-env-changed=CI");
    println!("cargo::rerun-if-env-changed=LAMINA_CACHE");
    // The checkpoint lands in models/minilm/cache; a directory is watched
    // as a whole, so fetching it reruns this script.
    println!("cargo::rerun-if-changed=models/minilm");
    println!("cargo::rerun-if-changed=models/efficientnet_lite0");

    let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0");
    if ci {
        return;
    }
    let has_numpy = Command::new("python3")
        .args(["-c", "import numpy"])
        .output()
        .is_ok_and(|out| out.status.success());
    if !has_numpy {
        println!("cargo::rustc-cfg=lamina_skip_numpy_tests");
    }
    let has_onnx = Command::new("python3")
        .args(["-c", "import onnx, numpy"])
        .output()
        .is_ok_and(|out| out.status.success());
    if !has_onnx {
        println!("cargo::rustc-cfg=lamina_skip_onnx_tests");
    }
    let cache = match std::env::var_os("LAMINA_CACHE") {
        Some(dir) => {
            let dir = PathBuf::from(dir);
            if dir.exists() {
                println!("cargo::rerun-if-changed={}", dir.display());
            }
            dir
        }
        None => PathBuf::from("models/minilm/cache"),
    };
    let fetched = ["model.safetensors", "tokenizer.json"]
        .iter()
        .all(|file| cache.join(file).is_file());
    if !fetched {
        println!("cargo::rustc-cfg=lamina_skip_minilm_tests");
    }
    let vision_cache = match std::env::var_os("LAMINA_CACHE") {
        Some(dir) => PathBuf::from(dir).join("efficientnet_lite0"),
        None => PathBuf::from("models/efficientnet_lite0/cache"),
    };
    let vision_fetched = [
        "efficientnet_lite0.safetensors",
        "chelsea.png",
        "coffee.png",
    ]
    .iter()
    .all(|file| vision_cache.join(file).is_file());
    let has_safetensors = Command::new("python3")
        .args(["-c", "import numpy, safetensors"])
        .output()
        .is_ok_and(|out| out.status.success());
    if !vision_fetched || !has_safetensors {
        println!("cargo::rustc-cfg=lamina_skip_efficientnet_tests");
    }
}

fn generate_onnx_messages() {
    println!("cargo::rerun-if-changed=proto/onnx.proto");
    let descriptors = protox::compile(["onnx.proto"], ["proto"])
        .unwrap_or_else(|e| panic!("proto/onnx.proto does not compile: {e}"));
    prost_build::Config::new()
        .compile_fds(descriptors)
        .unwrap_or_else(|e| panic!("generating the ONNX messages failed: {e}"));
}
