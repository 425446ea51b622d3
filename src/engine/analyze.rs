//! Linear-algebra views of a model: the singular values of its weight
//! matrices and the principal components of a batch of its outputs.
//!
//! Definitions (also in `lamina analyze --help` and docs/views.md), with
//! σ1 >= σ2 >= ... >= σr >= 0 the r = min(rows, cols) singular values:
//! - spectral norm: σ1, the most the matrix stretches a vector (L2);
//! - condition number: σ1 / σr (infinite when σr = 0);
//! - effective rank (Roy & Vetterli, 2007): exp(-Σ p_i ln p_i) with
//!   p_i = σ_i / Σ_j σ_j, between 1 (one direction) and r (all equal);
//! - stable rank: ‖W‖_F² / σ1² = Σ σ_i² / σ1².
//!
//! The product of the spectral norms of the matrices the model multiplies
//! by (`matmul` operands) bounds the L2 Lipschitz constant of a chain of
//! those linear maps joined by 1-Lipschitz activations (relu, tanh,
//! sigmoid, softmax): the bound holds for an MLP, not through residual
//! additions, attention or normalisation. SVD and eigen-decompositions are
//! faer's, in f64.

use faer::Mat;

use super::{Error, ErrorKind, Model, Options, Weights};
use crate::ir::{DType, Op};
use crate::tensor::Tensor;

/// Why an analysis cannot be made.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum AnalyzeError {
    #[error("the model has no weight matrices (parameters of rank 2 or more)")]
    NoMatrices,
    #[error("the singular value decomposition of `{name}` did not converge")]
    NoConvergence { name: String },
    #[error("`{name}` has a value that is not finite: its singular values are undefined")]
    NotFinite { name: String },
    #[error("PCA needs f32 outputs with at least one row and one column, got {shape:?} ({dtype})")]
    BadOutputs { shape: Vec<usize>, dtype: String },
    #[error("PCA onto {k} components needs at least {k} rows and {k} features; the outputs are {rows} x {cols}")]
    TooFewRows { k: usize, rows: usize, cols: usize },
}

/// One weight matrix's singular-value summary.
#[derive(Clone, Debug, PartialEq)]
pub struct MatrixStats {
    pub name: String,
    /// The parameter's shape; a tensor of rank > 2 is analysed as the
    /// matrix [shape[0], product of the rest] (a conv kernel per output channel).
    pub shape: Vec<usize>,
    pub rows: usize,
    pub cols: usize,
    /// Whether the model multiplies by it with a `matmul` (such matrices
    /// make up the Lipschitz bound).
    pub multiplied: bool,
    /// All min(rows, cols) singular values, largest first.
    pub singular_values: Vec<f64>,
    pub spectral_norm: f64,
    pub condition_number: f64,
    pub effective_rank: f64,
    pub stable_rank: f64,
}

/// The weight matrices of a model and the Lipschitz bound.
#[derive(Clone, Debug, PartialEq)]
pub struct WeightAnalysis {
    pub matrices: Vec<MatrixStats>,
    /// The product of the spectral norms of the `multiplied` matrices
    /// (None when there are none).
    pub lipschitz_bound: Option<f64>,
}

/// The singular values of the `rows` x `cols` row-major matrix `values`,
/// largest first.
pub fn singular_values(
    name: &str,
    rows: usize,
    cols: usize,
    values: &[f32],
) -> Result<Vec<f64>, AnalyzeError> {
    if values.iter().any(|v| !v.is_finite()) {
        return Err(AnalyzeError::NotFinite {
            name: name.to_string(),
        });
    }
    let m = Mat::<f64>::from_fn(rows, cols, |i, j| f64::from(values[i * cols + j]));
    let mut s = m
        .singular_values()
        .map_err(|_| AnalyzeError::NoConvergence {
            name: name.to_string(),
        })?;
    s.sort_by(|a, b| b.total_cmp(a));
    Ok(s)
}

/// Spectral norm, condition number, effective rank and stable rank of a
/// matrix with singular values `s` (largest first).
pub fn matrix_stats(name: &str, shape: &[usize], multiplied: bool, s: Vec<f64>) -> MatrixStats {
    let rows = shape.first().copied().unwrap_or(1);
    let cols = shape.iter().skip(1).product();
    let largest = s.first().copied().unwrap_or(0.0);
    let smallest = s.last().copied().unwrap_or(0.0);
    let condition_number = if smallest > 0.0 {
        largest / smallest
    } else {
        f64::INFINITY
    };
    let total: f64 = s.iter().sum();
    let effective_rank = if total > 0.0 {
        let entropy: f64 = s
            .iter()
            .map(|&v| v / total)
            .filter(|&p| p > 0.0)
            .map(|p| -p * p.ln())
            .sum();
        entropy.exp()
    } else {
        0.0
    };
    let stable_rank = if largest > 0.0 {
        s.iter().map(|v| v * v).sum::<f64>() / (largest * largest)
    } else {
        0.0
    };
    MatrixStats {
        name: name.to_string(),
        shape: shape.to_vec(),
        rows,
        cols,
        multiplied,
        spectral_norm: largest,
        condition_number,
        effective_rank,
        stable_rank,
        singular_values: s,
    }
}

/// Every f32 parameter of rank >= 2 of `model`, with `weights`, analysed.
pub fn analyze_weights(
    model: &Model,
    weights: Weights,
    options: &Options,
) -> Result<WeightAnalysis, Error> {
    let fail = |e: AnalyzeError| Error::new(ErrorKind::Analyze(e), None, None);
    let graph = model.graph();
    let params = model.parameters(weights, options)?;
    let ids: std::collections::HashMap<String, _> = graph.params().into_iter().collect();
    let mut matrices = Vec::new();
    for (name, value) in &params {
        let shape = value.shape();
        if shape.len() < 2 || value.dtype() != DType::F32 {
            continue;
        }
        let multiplied = shape.len() == 2 && ids.get(name).is_some_and(|&id| multiplies(graph, id));
        let rows = shape[0];
        let cols: usize = shape[1..].iter().product();
        let values = value.as_f32().expect("an f32 parameter");
        let s = singular_values(name, rows, cols, values).map_err(fail)?;
        matrices.push(matrix_stats(name, shape, multiplied, s));
    }
    if matrices.is_empty() {
        return Err(fail(AnalyzeError::NoMatrices));
    }
    let norms: Vec<f64> = matrices
        .iter()
        .filter(|m| m.multiplied)
        .map(|m| m.spectral_norm)
        .collect();
    let lipschitz_bound = (!norms.is_empty()).then(|| norms.iter().product());
    Ok(WeightAnalysis {
        matrices,
        lipschitz_bound,
    })
}

/// Whether the model multiplies by `id` (directly or transposed).
fn multiplies(graph: &crate::ir::Graph, id: crate::ir::NodeId) -> bool {
    graph.users(id).into_iter().any(|u| match graph.node(u).op {
        Op::MatMul(_) | Op::FusedLinear(_) => true,
        Op::Permute(_) => multiplies(graph, u),
        _ => false,
    })
}

/// Principal components of a batch of outputs.
#[derive(Clone, Debug, PartialEq)]
pub struct Pca {
    /// The mean row that was subtracted.
    pub mean: Vec<f64>,
    /// The first k principal directions (unit vectors, one per entry), each
    /// signed so that its entry of largest magnitude is positive.
    pub components: Vec<Vec<f64>>,
    /// The variance along each (squared singular value / (rows - 1)).
    pub variance: Vec<f64>,
    /// Each one's share of the total variance.
    pub variance_ratio: Vec<f64>,
    /// Each row's coordinates on the k components.
    pub projected: Vec<Vec<f64>>,
}

/// The first `k` principal components of the rows of `outputs` (`[rows,
/// ...]`, everything after the first axis is one row's features), from the
/// thin SVD of the centred rows.
pub fn pca(outputs: &Tensor, k: usize) -> Result<Pca, AnalyzeError> {
    let shape = outputs.shape();
    let (rows, cols) = match (shape.first(), outputs.as_f32()) {
        (Some(&rows), Some(_)) if rows > 0 => (rows, shape[1..].iter().product::<usize>()),
        _ => {
            return Err(AnalyzeError::BadOutputs {
                shape: shape.to_vec(),
                dtype: outputs.dtype().to_string(),
            })
        }
    };
    if k == 0 || rows < k.max(2) || cols < k {
        return Err(AnalyzeError::TooFewRows { k, rows, cols });
    }
    let values = outputs.as_f32().expect("f32 outputs");
    if values.iter().any(|v| !v.is_finite()) {
        return Err(AnalyzeError::NotFinite {
            name: "the outputs".into(),
        });
    }
    let mean: Vec<f64> = (0..cols)
        .map(|j| {
            (0..rows)
                .map(|i| f64::from(values[i * cols + j]))
                .sum::<f64>()
                / rows as f64
        })
        .collect();
    let centred = Mat::<f64>::from_fn(rows, cols, |i, j| f64::from(values[i * cols + j]) - mean[j]);
    let svd = centred
        .thin_svd()
        .map_err(|_| AnalyzeError::NoConvergence {
            name: "the centred outputs".into(),
        })?;
    let s: Vec<f64> = svd.S().column_vector().iter().copied().collect();
    let total: f64 = s.iter().map(|v| v * v).sum();
    let (u, v) = (svd.U(), svd.V());
    let mut components = Vec::with_capacity(k);
    let mut projected = vec![Vec::with_capacity(k); rows];
    for c in 0..k {
        let direction: Vec<f64> = (0..cols).map(|j| v[(j, c)]).collect();
        let largest =
            direction.iter().copied().fold(
                0.0f64,
                |best, x| if x.abs() > best.abs() { x } else { best },
            );
        let sign = if largest < 0.0 { -1.0 } else { 1.0 };
        for (i, row) in projected.iter_mut().enumerate() {
            row.push(sign * u[(i, c)] * s[c]);
        }
        components.push(direction.into_iter().map(|x| sign * x).collect());
    }
    let variance: Vec<f64> = s[..k].iter().map(|v| v * v / (rows - 1) as f64).collect();
    let variance_ratio = s[..k]
        .iter()
        .map(|v| if total > 0.0 { v * v / total } else { 0.0 })
        .collect();
    Ok(Pca {
        mean,
        components,
        variance,
        variance_ratio,
        projected,
    })
}
