//! `lamina analyze`: singular values, condition numbers, effective ranks and
//! PCA (faer, f64) equal numpy's on the digits model's weights and outputs;
//! the CLI prints them, the Lipschitz bound, and plots the projection.

#[path = "common/mod.rs"]
mod common;

use std::process::Command;

use common::lamina;
use lamina::engine::analyze::{analyze_weights, pca};
use lamina::engine::{Model, Options, Weights};
use lamina::runtime::npy::{read_npy, write_npy};
use lamina::tensor::Tensor;

const DIGITS: &str = "models/digits/digits.lam";

fn numpy(script: &str, args: &[&str]) -> Vec<Vec<f64>> {
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .expect("python3 runs (numpy is needed: pip install numpy)");
    assert!(
        out.status.success(),
        "numpy failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| l.split_whitespace().map(|v| v.parse().unwrap()).collect())
        .collect()
}

fn assert_close(what: &str, got: &[f64], want: &[f64], rel: f64) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-12);
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= rel * scale,
            "{what}[{i}]: faer {g}, numpy {w}"
        );
    }
}

#[test]
#[cfg_attr(
    lamina_skip_numpy_tests,
    ignore = "needs python3 with numpy: pip install numpy"
)]
fn weight_statistics_match_numpy() {
    let model = Model::load(DIGITS).unwrap();
    let analysis = analyze_weights(&model, Weights::Conventional, &Options::default()).unwrap();
    let names: Vec<&str> = analysis.matrices.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["fc1.weight", "fc2.weight"]);
    let params = model
        .parameters(Weights::Conventional, &Options::default())
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    for m in &analysis.matrices {
        let value = &params.iter().find(|(n, _)| *n == m.name).unwrap().1;
        let path = dir.path().join(format!("{}.npy", m.name));
        write_npy(&path, value).unwrap();
        let rows = numpy(
            "import sys, numpy as np\n\
             w = np.load(sys.argv[1]).astype(np.float64)\n\
             s = np.linalg.svd(w, compute_uv=False)\n\
             p = s / s.sum()\n\
             print(' '.join(repr(float(v)) for v in s))\n\
             print(s[0], s[0] / s[-1], np.exp(-(p * np.log(p)).sum()), (s ** 2).sum() / s[0] ** 2)",
            &[path.to_str().unwrap()],
        );
        assert_close(&m.name, &m.singular_values, &rows[0], 1e-10);
        let stats = [
            m.spectral_norm,
            m.condition_number,
            m.effective_rank,
            m.stable_rank,
        ];
        for (what, (g, w)) in [
            "spectral norm",
            "condition number",
            "effective rank",
            "stable rank",
        ]
        .iter()
        .zip(stats.iter().zip(&rows[1]))
        {
            assert!(
                (g - w).abs() <= 1e-9 * w.abs(),
                "{}: {what}: faer {g}, numpy {w}",
                m.name
            );
        }
    }
    let product: f64 = analysis.matrices.iter().map(|m| m.spectral_norm).product();
    assert_eq!(analysis.lipschitz_bound, Some(product));
}

#[test]
#[cfg_attr(
    lamina_skip_numpy_tests,
    ignore = "needs python3 with numpy: pip install numpy"
)]
fn pca_matches_numpy() {
    // The digits' hidden pixels: 450 rows of 64 features.
    let x = read_npy("models/digits/x.npy".as_ref()).unwrap();
    let result = pca(&x, 3).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.npy");
    write_npy(&path, &x).unwrap();
    let rows = numpy(
        "import sys, numpy as np\n\
         x = np.load(sys.argv[1]).astype(np.float64)\n\
         c = x - x.mean(axis=0)\n\
         u, s, vt = np.linalg.svd(c, full_matrices=False)\n\
         v = vt[:3]\n\
         sign = np.sign(v[np.arange(3), np.abs(v).argmax(axis=1)])\n\
         v = v * sign[:, None]\n\
         print(' '.join(repr(float(r)) for r in (s[:3] ** 2 / (s ** 2).sum())))\n\
         print(' '.join(repr(float(r)) for r in (s[:3] ** 2 / (len(x) - 1))))\n\
         for row in v: print(' '.join(repr(float(r)) for r in row))\n\
         for row in c @ v.T: print(' '.join(repr(float(r)) for r in row))",
        &[path.to_str().unwrap()],
    );
    assert_close("variance ratio", &result.variance_ratio, &rows[0], 1e-9);
    assert_close("variance", &result.variance, &rows[1], 1e-9);
    for c in 0..3 {
        assert_close(
            &format!("component {c}"),
            &result.components[c],
            &rows[2 + c],
            1e-7,
        );
    }
    for (i, p) in result.projected.iter().enumerate() {
        assert_close(&format!("row {i}"), p, &rows[5 + i], 1e-7);
    }
}

#[test]
fn pca_rejects_what_it_cannot_project() {
    let one_row = Tensor::f32(vec![1, 4], vec![1.0, 2.0, 3.0, 4.0]);
    assert!(pca(&one_row, 2)
        .unwrap_err()
        .to_string()
        .contains("at least 2 rows"));
    let ids = Tensor::i64(vec![3, 2], vec![1, 2, 3, 4, 5, 6]);
    assert!(pca(&ids, 2)
        .unwrap_err()
        .to_string()
        .contains("f32 outputs"));
    let nan = Tensor::f32(vec![3, 2], vec![1.0, f32::NAN, 3.0, 4.0, 5.0, 6.0]);
    assert!(pca(&nan, 2).unwrap_err().to_string().contains("not finite"));
}

#[test]
fn cli_prints_the_table_and_plots_the_projection() {
    let dir = tempfile::tempdir().unwrap();
    let plot = dir.path().join("pca.png");
    let (code, stdout, stderr) = lamina(&[
        "analyze",
        DIGITS,
        "--pca",
        "2",
        "--input",
        "x=models/digits/x.npy",
        "--plot",
        plot.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stderr}");
    let model = Model::load(DIGITS).unwrap();
    let analysis = analyze_weights(&model, Weights::Conventional, &Options::default()).unwrap();
    assert!(
        stdout.contains(&format!("{:.6}", analysis.matrices[0].spectral_norm)),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "2 matrices marked *): {:.6e}",
            analysis.lipschitz_bound.unwrap()
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains("PCA of output `probs` (450 rows x 10 features)"),
        "{stdout}"
    );
    let image = image::open(&plot).unwrap().to_rgb8();
    use lamina::plot::scatter::{HEIGHT, POINT_COLOR, WIDTH};
    assert_eq!(image.dimensions(), (WIDTH, HEIGHT));
    let dots = image
        .pixels()
        .filter(|p| p.0 == [POINT_COLOR.0, POINT_COLOR.1, POINT_COLOR.2])
        .count();
    assert!(dots > 450, "{dots} point pixels");
}

#[test]
fn cli_reports_bad_flags_together() {
    let (code, _, stderr) = lamina(&["analyze", DIGITS, "--pca", "1", "--threads", "0"]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("--pca 1: at least 2 components"),
        "{stderr}"
    );
    assert!(stderr.contains("--pca needs a batch"), "{stderr}");
    assert!(stderr.contains("--threads"), "{stderr}");
    let (code, _, stderr) = lamina(&["analyze", "models/digits/missing.lam"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("missing.lam"), "{stderr}");
}
