//! Kernel library tests: every kernel against a plain f64 reference, error
//! bounds of the vector math, thread-count determinism, and the bounds
//! checks at the Rust boundary.

use lamina::codegen::*;
use lamina::ir::{BinaryOp, CompareOp, ElementwiseExpr, ExprStep, Float, ReduceOp, UnaryOp};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

fn random_vec(rng: &mut ChaCha8Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

fn two_threads() -> Threads {
    Threads::new(2).expect("thread pool")
}

/// Every GEMM tier this CPU runs, best first. A tier the CPU lacks is
/// reported on stderr, never skipped silently; `wide_tiers_are_tested_where_the_cpu_has_them`
/// fails if detection loses a tier the CPU has.
fn tiers() -> Vec<Isa> {
    let supported = Target::detected().supported_isas();
    for isa in Isa::ALL {
        if !supported.contains(&isa) {
            eprintln!("GEMM tests: this CPU lacks the {isa} tier, not testing it");
        }
    }
    supported
}

fn builder_for(isa: Isa) -> KernelLibraryBuilder {
    let builder = KernelLibraryBuilder::with_options(&CodegenOptions {
        isa: Some(isa),
        ..CodegenOptions::default()
    })
    .unwrap();
    assert_eq!(builder.isa(), isa);
    builder
}

#[test]
fn wide_tiers_are_tested_where_the_cpu_has_them() {
    let t = tiers();
    assert_eq!(t.last(), Some(&Isa::Baseline));
    #[cfg(target_arch = "x86_64")]
    {
        let fma = is_x86_feature_detected!("avx") && is_x86_feature_detected!("fma");
        assert_eq!(
            t.contains(&Isa::Avx512),
            fma && is_x86_feature_detected!("avx512f")
        );
        assert_eq!(
            t.contains(&Isa::Avx2),
            fma && is_x86_feature_detected!("avx2")
        );
    }
}

// ---------------------------------------------------------------- f64 math

fn erf64(x: f64) -> f64 {
    if x < 0.0 {
        return -erf64(-x);
    }
    if x < 2.5 {
        // Maclaurin series; at x = 2.5 the largest term is ~500, so about
        // 13 significant digits survive.
        let mut term = x;
        let mut sum = x;
        let x2 = x * x;
        let mut n = 0.0;
        while term.abs() > 1e-17 * sum.abs() {
            n += 1.0;
            term *= -x2 / n;
            sum += term / (2.0 * n + 1.0);
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    } else {
        1.0 - erfc64(x)
    }
}

fn erfc64(x: f64) -> f64 {
    if x < 2.5 {
        return 1.0 - erf64(x);
    }
    // Continued fraction erfc(x) = e^{-x^2}/sqrt(pi) / (x + (1/2)/(x + 1/(x + (3/2)/(x + ...)))).
    let mut f = x;
    for n in (1..80).rev() {
        f = x + (n as f64 / 2.0) / f;
    }
    (-x * x).exp() / std::f64::consts::PI.sqrt() / f
}

fn gelu64(x: f64) -> f64 {
    0.5 * x * erfc64(-x / std::f64::consts::SQRT_2)
}

fn gelu_tanh64(x: f64) -> f64 {
    let u = (2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x * x * x);
    // 0.5 x (1 + tanh u) = x sigmoid(2u), without cancellation for x < 0.
    x / (1.0 + (-2.0 * u).exp())
}

fn sigmoid64(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

#[test]
fn f64_reference_erf_matches_known_values() {
    // Values from Python's math.erf / math.erfc.
    for (x, v) in [
        (0.1, 0.1124629160182849),
        (0.5, 0.5204998778130465),
        (1.0, 0.8427007929497149),
        (2.0, 0.9953222650189527),
        (3.0, 0.9999779095030014),
    ] {
        assert!((erf64(x) - v).abs() < 1e-15, "erf({x})");
    }
    for (x, v) in [
        (2.5, 0.0004069520174449589),
        (3.0, 2.2090496998585438e-05),
        (5.0, 1.5374597944280351e-12),
        (8.0, 1.1224297172982928e-29),
    ] {
        assert!(((erfc64(x) - v) / v).abs() < 1e-13, "erfc({x})");
    }
}

// ---------------------------------------------------------------- GEMM

struct Problem {
    m: usize,
    k: usize,
    n: usize,
    a: Vec<f32>,
    lda: usize,
    a_transposed: bool,
    b: Vec<f32>,
    b_transposed: bool,
}

impl Problem {
    fn new(seed: u64, m: usize, k: usize, n: usize) -> Problem {
        let mut r = rng(seed);
        Problem {
            m,
            k,
            n,
            a: random_vec(&mut r, m * k),
            lda: k,
            a_transposed: false,
            b: random_vec(&mut r, k * n),
            b_transposed: false,
        }
    }

    fn a_at(&self, i: usize, p: usize) -> f32 {
        if self.a_transposed {
            self.a[p * self.lda + i]
        } else {
            self.a[i * self.lda + p]
        }
    }

    fn b_at(&self, p: usize, j: usize) -> f32 {
        if self.b_transposed {
            self.b[j * self.k + p]
        } else {
            self.b[p * self.n + j]
        }
    }

    fn a_view(&self) -> MatrixRef<'_> {
        MatrixRef::strided(&self.a, self.m, self.k, self.lda, self.a_transposed).unwrap()
    }

    fn packed_b(&self, layout: PackLayout) -> PackedB {
        let view = if self.b_transposed {
            MatrixRef::transposed(&self.b, self.k, self.n)
        } else {
            MatrixRef::row_major(&self.b, self.k, self.n)
        };
        PackedB::pack_for(&view.unwrap(), layout)
    }

    /// (exact product in f64, sum of |a||b| for the error scale).
    fn reference(&self, i: usize, j: usize) -> (f64, f64) {
        let mut dot = 0.0f64;
        let mut scale = 0.0f64;
        for p in 0..self.k {
            let t = self.a_at(i, p) as f64 * self.b_at(p, j) as f64;
            dot += t;
            scale += t.abs();
        }
        (dot, scale)
    }

    /// Error allowed for a length-k f32 dot product.
    fn tolerance(&self, scale: f64) -> f64 {
        2.0 * f32::EPSILON as f64 * (self.k as f64).sqrt().max(1.0) * scale + 1e-30
    }
}

fn activation64(act: Option<Activation>, x: f64) -> f64 {
    match act {
        None => x,
        Some(Activation::Relu) => x.max(0.0),
        Some(Activation::Sigmoid) => sigmoid64(x),
        Some(Activation::Tanh) => x.tanh(),
        Some(Activation::Gelu) => gelu64(x),
        Some(Activation::GeluTanh) => gelu_tanh64(x),
        Some(Activation::Relu6) => x.clamp(0.0, 6.0),
        Some(Activation::HardSigmoid) => (x + 3.0).clamp(0.0, 6.0) / 6.0,
        Some(Activation::HardSwish) => x * (x + 3.0).clamp(0.0, 6.0) / 6.0,
    }
}

fn run_gemm(
    lib: &KernelLibrary,
    id: GemmId,
    p: &Problem,
    bias: Option<&[f32]>,
    residual: Option<&[f32]>,
    threads: &Threads,
) -> Vec<f32> {
    let packed = p.packed_b(lib.pack_layout());
    let mut c = vec![f32::NAN; p.m * p.n];
    lib.gemm(
        id,
        GemmArgs {
            a: p.a_view(),
            b: packed.as_ref(),
            bias,
            residual,
            c: &mut c,
        },
        threads,
    )
    .unwrap();
    c
}

fn check_gemm(
    p: &Problem,
    c: &[f32],
    epilogue: Epilogue,
    bias: Option<&[f32]>,
    residual: Option<&[f32]>,
    what: &str,
) {
    for i in 0..p.m {
        for j in 0..p.n {
            let (dot, scale) = p.reference(i, j);
            let pre = dot + bias.map_or(0.0, |b| b[j] as f64);
            let mut expected = activation64(epilogue.activation, pre);
            // All activations have |f'| <= 1.5 (hard_swish at 3), plus
            // their own rounding.
            let mut tol = 1.5 * p.tolerance(scale + bias.map_or(0.0, |b| b[j].abs() as f64))
                + 1e-6 * expected.abs()
                + if epilogue.activation.is_some() {
                    1e-7
                } else {
                    0.0
                };
            if let Some(r) = residual {
                let r = r[i * p.n + j] as f64;
                expected += r;
                tol += f32::EPSILON as f64 * expected.abs().max(r.abs());
            }
            let got = c[i * p.n + j] as f64;
            assert!(
                (got - expected).abs() <= tol,
                "{what}: {}x{}x{} C[{i},{j}] = {got}, expected {expected} (tolerance {tol:e})",
                p.m,
                p.k,
                p.n
            );
        }
    }
}

#[test]
fn gemm_matches_reference_across_shapes() {
    for isa in tiers() {
        gemm_matches_reference_across_shapes_on(isa);
    }
}

fn gemm_matches_reference_across_shapes_on(isa: Isa) {
    let mut builder = builder_for(isa);
    let id = builder.add_gemm(Epilogue::none()).unwrap();
    let lib = builder.finish().unwrap();
    let dims = [1usize, 3, 4, 12, 13, 17, 64, 127, 255, 300];
    let mut pick = rng(7);
    let mut shapes: Vec<(usize, usize, usize)> = Vec::new();
    // Every combination of the small sizes, a sample of the rest.
    for &m in &dims[..6] {
        for &k in &dims[..6] {
            for &n in &dims[..6] {
                shapes.push((m, k, n));
            }
        }
    }
    for _ in 0..40 {
        let d = |r: &mut ChaCha8Rng| dims[r.random_range(0..dims.len())];
        shapes.push((d(&mut pick), d(&mut pick), d(&mut pick)));
    }
    shapes.extend([
        (300, 300, 300),
        (255, 513, 127),
        (1, 784, 512),
        (12, 256, 4),
        (12, 257, 4),
    ]);
    let single = Threads::single();
    for (seed, &(m, k, n)) in shapes.iter().enumerate() {
        let p = Problem::new(seed as u64, m, k, n);
        let c = run_gemm(&lib, id, &p, None, None, &single);
        check_gemm(
            &p,
            &c,
            Epilogue::none(),
            None,
            None,
            &format!("{isa} plain"),
        );
    }
}

#[test]
fn gemm_strided_and_transposed_operands() {
    for isa in tiers() {
        gemm_strided_and_transposed_operands_on(isa);
    }
}

fn gemm_strided_and_transposed_operands_on(isa: Isa) {
    let mut builder = builder_for(isa);
    let id = builder.add_gemm(Epilogue::none()).unwrap();
    let lib = builder.finish().unwrap();
    for (seed, &(m, k, n)) in [(13, 17, 9), (1, 300, 3), (127, 64, 255), (4, 1, 1)]
        .iter()
        .enumerate()
    {
        for (a_t, b_t, pad) in [
            (false, true, 0),
            (true, false, 0),
            (true, true, 3),
            (false, false, 5),
        ] {
            let mut p = Problem::new(100 + seed as u64, m, k, n);
            let stored_cols = if a_t { m } else { k };
            let stored_rows = if a_t { k } else { m };
            p.lda = stored_cols + pad;
            let mut r = rng(seed as u64);
            p.a = random_vec(&mut r, (stored_rows - 1) * p.lda + stored_cols);
            p.a_transposed = a_t;
            p.b_transposed = b_t;
            let c = run_gemm(&lib, id, &p, None, None, &Threads::single());
            check_gemm(
                &p,
                &c,
                Epilogue::none(),
                None,
                None,
                &format!("{isa} a_t={a_t} b_t={b_t} pad={pad}"),
            );
        }
    }
}

fn all_epilogues() -> Vec<Epilogue> {
    let activations = std::iter::once(None).chain(Activation::ALL.map(Some));
    let mut all = Vec::new();
    for bias in [false, true] {
        for activation in activations.clone() {
            for residual in [false, true] {
                all.push(Epilogue {
                    bias,
                    activation,
                    residual,
                });
            }
        }
    }
    all
}

#[test]
fn gemm_every_epilogue_combination() {
    for isa in tiers() {
        gemm_every_epilogue_combination_on(isa);
    }
}

fn gemm_every_epilogue_combination_on(isa: Isa) {
    let mut builder = builder_for(isa);
    let epilogues = all_epilogues();
    let ids: Vec<GemmId> = epilogues
        .iter()
        .map(|&e| builder.add_gemm(e).unwrap())
        .collect();
    let lib = builder.finish().unwrap();
    let threads = two_threads();
    // k = 300 gives two K blocks (the epilogue must apply once, on the
    // last); n = 19 has a partial last panel; m = 13 a partial row panel.
    for (&epilogue, &id) in epilogues.iter().zip(&ids) {
        assert_eq!(lib.gemm_epilogue(id).unwrap(), epilogue);
        for &(m, k, n) in &[(13, 300, 19), (1, 5, 6), (64, 64, 64)] {
            let p = Problem::new(m as u64 * 31 + n as u64, m, k, n);
            let mut r = rng(99);
            let bias: Vec<f32> = random_vec(&mut r, n);
            let residual: Vec<f32> = random_vec(&mut r, m * n);
            let bias = epilogue.bias.then_some(bias.as_slice());
            let residual = epilogue.residual.then_some(residual.as_slice());
            let c1 = run_gemm(&lib, id, &p, bias, residual, &Threads::single());
            check_gemm(
                &p,
                &c1,
                epilogue,
                bias,
                residual,
                &format!("{isa} {epilogue:?}"),
            );
            let c2 = run_gemm(&lib, id, &p, bias, residual, &threads);
            assert!(
                bits_equal(&c1, &c2),
                "{isa} {epilogue:?}: 1 vs 2 threads differ"
            );
        }
    }
}

fn bits_equal(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

#[test]
fn gemm_thread_count_does_not_change_bits() {
    for isa in tiers() {
        gemm_thread_count_does_not_change_bits_on(isa);
    }
}

fn gemm_thread_count_does_not_change_bits_on(isa: Isa) {
    let mut builder = builder_for(isa);
    let epilogue = Epilogue {
        bias: true,
        activation: Some(Activation::Gelu),
        residual: false,
    };
    let id = builder.add_gemm(epilogue).unwrap();
    let lib = builder.finish().unwrap();
    let pools = [Threads::single(), two_threads(), Threads::new(3).unwrap()];
    for &(m, k, n) in &[
        (257, 300, 513),
        (1, 784, 512),
        (37, 1000, 130),
        (500, 64, 7),
    ] {
        let p = Problem::new(5, m, k, n);
        let bias = random_vec(&mut rng(6), n);
        let results: Vec<Vec<f32>> = pools
            .iter()
            .map(|t| run_gemm(&lib, id, &p, Some(&bias), None, t))
            .collect();
        for r in &results[1..] {
            assert!(bits_equal(&results[0], r), "{isa} {m}x{k}x{n}");
        }
    }
}

/// A library asked for GEMMs of M rows assembles only the micro-kernels
/// M calls (`mr`-row panels and the `m mod mr` edge), fewer than a library
/// for any M; its GEMMs give the same bits as the full library's for that
/// M, and for any other M too (row counts without a kernel run on a larger
/// one over zero-padded rows), on 1 and 2 threads, with every epilogue
/// part (bias, a tile-pass activation, residual), N edges and several K
/// blocks.
#[test]
fn gemm_row_kernels_for_m_only() {
    for isa in tiers() {
        gemm_row_kernels_for_m_only_on(isa);
    }
}

fn gemm_row_kernels_for_m_only_on(isa: Isa) {
    let mr = match isa {
        Isa::Avx2 => 6,
        _ => 12,
    };
    let epilogues = [
        Epilogue::none(),
        Epilogue {
            bias: true,
            activation: Some(Activation::Relu),
            residual: true,
        },
        Epilogue {
            bias: true,
            activation: Some(Activation::Gelu),
            residual: true,
        },
    ];
    let mut full = builder_for(isa);
    let full_ids: Vec<GemmId> = epilogues
        .iter()
        .map(|&e| full.add_gemm(e).unwrap())
        .collect();
    assert_eq!(full.gemm_rows(), (1 << mr) - 1, "{isa}");
    let full = full.finish().unwrap();
    let pools = [Threads::single(), two_threads()];
    let ms = [1, mr - 1, mr, mr + 1, 2 * mr + 3];
    for &m in &ms {
        let mut builder = builder_for(isa);
        let ids: Vec<GemmId> = epilogues
            .iter()
            .map(|&e| builder.add_gemm_for(e, Some(m)).unwrap())
            .collect();
        let edge = if m % mr == 0 { 0 } else { 1 << (m % mr - 1) };
        assert_eq!(
            builder.gemm_rows(),
            (1 << (m.min(mr) - 1)) | edge,
            "{isa}: m = {m}"
        );
        let lib = builder.finish().unwrap();
        assert!(
            lib.kernels().len() < full.kernels().len(),
            "{isa}: m = {m}: {} kernels, {} for any M",
            lib.kernels().len(),
            full.kernels().len()
        );
        // This M, and every other one (on the fallback).
        for &rows in &ms {
            for &(k, n) in &[(300, 70), (40, 5), (16, 96)] {
                let p = Problem::new(rows as u64 * 31 + k as u64, rows, k, n);
                let bias = random_vec(&mut rng(7), n);
                let residual = random_vec(&mut rng(8), rows * n);
                for (e, (&id, &full_id)) in epilogues.iter().zip(ids.iter().zip(&full_ids)) {
                    let bias = e.bias.then_some(bias.as_slice());
                    let residual = e.residual.then_some(residual.as_slice());
                    let expected = run_gemm(&full, full_id, &p, bias, residual, &pools[0]);
                    for threads in &pools {
                        let got = run_gemm(&lib, id, &p, bias, residual, threads);
                        assert!(
                            bits_equal(&expected, &got),
                            "{isa}: library for m = {m}, {rows}x{k}x{n}, {e:?}, {} threads",
                            threads.count()
                        );
                    }
                }
            }
        }
    }
    // The set for one row: the 1-row kernels (one panel, several, and on
    // AVX-512 the two N-edge ones) and the mr-row fallback.
    let mut one = builder_for(isa);
    one.add_gemm_for(Epilogue::none(), Some(1)).unwrap();
    let one = one.finish().unwrap();
    assert!(
        one.kernels().len() <= 5,
        "{isa}: {:?}",
        one.kernels().iter().map(|k| &k.name).collect::<Vec<_>>()
    );
    // Built for an N of whole panels: no N-edge kernels; an N edge still
    // runs (through the tile copy), with the same bits.
    let mut whole = builder_for(isa);
    let id = whole
        .add_gemm_for_shape(Epilogue::none(), Some(1), Some(64))
        .unwrap();
    let whole = whole.finish().unwrap();
    assert!(
        whole.kernels().len() <= 3,
        "{isa}: {:?}",
        whole.kernels().iter().map(|k| &k.name).collect::<Vec<_>>()
    );
    for &(m, n) in &[(1, 70), (1, 10), (13, 45)] {
        let p = Problem::new(99 + m as u64, m, 40, n);
        let expected = run_gemm(&full, full_ids[0], &p, None, None, &pools[0]);
        let got = run_gemm(&whole, id, &p, None, None, &pools[0]);
        assert!(bits_equal(&expected, &got), "{isa}: {m}x40x{n}");
    }
}

/// Every tier computes each output as the same sequential FMA chain and
/// the wide tiers' activation epilogues (assembled at full width) repeat
/// the baseline's f32x4 operation sequence, so on an FMA machine whole
/// fused GEMMs agree bit for bit across tiers, including at the
/// activations' edges (clamps, underflow to -0, inf, NaN, subnormals).
/// The values reach the epilogue exactly: C = x * 1 (k = 1).
#[test]
fn gemm_epilogues_agree_bit_for_bit_across_tiers() {
    let tiers = tiers();
    let mut xs: Vec<f32> = (-4000..=4000).map(|i| i as f32 * 0.005).collect();
    xs.extend([
        f32::NAN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::MAX,
        -f32::MAX,
        f32::MIN_POSITIVE,
        -f32::MIN_POSITIVE,
        1e-40,
        -1e-40,
        1e-8,
        -1e-8,
        13.999,
        -13.999,
        14.001,
        -14.001,
        -19.999,
        -20.001,
        -30.0,
        44.0,
        -44.0,
        88.9,
        -88.9,
        104.1,
        -104.1,
        0.6249,
        0.6251,
        -0.6251,
        // relu6, hard_sigmoid and hard_swish clamp at x = 0, 6 and x + 3 = 0, 6.
        -0.0,
        6.0,
        5.999_999_5,
        6.000_000_5,
        -3.0,
        3.0,
        -3.000_000_2,
        2.999_999_8,
    ]);
    let mut r = rng(41);
    xs.extend((0..997).map(|_| r.random_range(-40.0f32..40.0)));
    // n = 40: one full AVX-512 panel and a partial one (two full AVX2
    // panels and a partial one), so both the in-place and the tile-copy
    // epilogue paths run.
    let (m, n) = (xs.len(), 40);
    let b = vec![1.0f32; n];
    let residual = random_vec(&mut rng(42), m * n);
    let mut epilogues = Vec::new();
    for activation in Activation::ALL {
        for residual in [false, true] {
            epilogues.push(Epilogue {
                bias: false,
                activation: Some(activation),
                residual,
            });
        }
    }
    let outputs: Vec<Vec<Vec<f32>>> = tiers
        .iter()
        .map(|&isa| {
            let mut builder = builder_for(isa);
            let ids: Vec<GemmId> = epilogues
                .iter()
                .map(|&e| builder.add_gemm(e).unwrap())
                .collect();
            let lib = builder.finish().unwrap();
            let packed =
                PackedB::pack_for(&MatrixRef::row_major(&b, 1, n).unwrap(), lib.pack_layout());
            epilogues
                .iter()
                .zip(&ids)
                .map(|(e, &id)| {
                    let mut c = vec![0.0f32; m * n];
                    lib.gemm(
                        id,
                        GemmArgs {
                            a: MatrixRef::row_major(&xs, m, 1).unwrap(),
                            b: packed.as_ref(),
                            bias: None,
                            residual: e.residual.then_some(residual.as_slice()),
                            c: &mut c,
                        },
                        &Threads::single(),
                    )
                    .unwrap();
                    c
                })
                .collect()
        })
        .collect();
    let baseline = tiers.iter().position(|&t| t == Isa::Baseline).unwrap();
    for (t, &isa) in tiers.iter().enumerate() {
        for (e, epilogue) in epilogues.iter().enumerate() {
            for (i, (&got, &want)) in outputs[t][e].iter().zip(&outputs[baseline][e]).enumerate() {
                assert!(
                    got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
                    "{isa} {epilogue:?}: x = {:e} (column {}): {got:e} vs baseline {want:e}",
                    xs[i / n],
                    i % n
                );
            }
        }
    }
}

#[test]
fn gemm_large_square_sampled() {
    for isa in tiers() {
        gemm_large_square_sampled_on(isa);
    }
}

fn gemm_large_square_sampled_on(isa: Isa) {
    let mut builder = builder_for(isa);
    let id = builder.add_gemm(Epilogue::none()).unwrap();
    let lib = builder.finish().unwrap();
    let (m, k, n) = (1000, 1000, 1003);
    let p = Problem::new(11, m, k, n);
    let threads = two_threads();
    let c = run_gemm(&lib, id, &p, None, None, &threads);
    let mut pick = rng(12);
    for _ in 0..3000 {
        let (i, j) = (pick.random_range(0..m), pick.random_range(0..n));
        let (dot, scale) = p.reference(i, j);
        let got = c[i * n + j] as f64;
        assert!(
            (got - dot).abs() <= p.tolerance(scale),
            "{isa}: C[{i},{j}] = {got}, expected {dot}"
        );
    }
    let single = run_gemm(&lib, id, &p, None, None, &Threads::single());
    assert!(bits_equal(&c, &single));
}

#[test]
fn gemm_runtime_packing_into_scratch() {
    // The host-default layout functions and the default builder agree.
    let mut builder = KernelLibraryBuilder::new().unwrap();
    let id = builder.add_gemm(Epilogue::none()).unwrap();
    let lib = builder.finish().unwrap();
    let p = Problem::new(3, 20, 33, 10);
    let mut scratch = vec![0.0f32; packed_b_len(33, 10) + 7];
    let packed =
        PackedBRef::pack_into(&MatrixRef::row_major(&p.b, 33, 10).unwrap(), &mut scratch).unwrap();
    let mut c = vec![0.0; 200];
    lib.gemm(
        id,
        GemmArgs {
            a: p.a_view(),
            b: packed,
            bias: None,
            residual: None,
            c: &mut c,
        },
        &Threads::single(),
    )
    .unwrap();
    check_gemm(&p, &c, Epilogue::none(), None, None, "scratch-packed");
}

#[test]
fn gemm_zero_sized_dims() {
    for isa in tiers() {
        gemm_zero_sized_dims_on(isa);
    }
}

fn gemm_zero_sized_dims_on(isa: Isa) {
    let mut builder = builder_for(isa);
    let epilogue = Epilogue {
        bias: true,
        activation: Some(Activation::Sigmoid),
        residual: false,
    };
    let id = builder.add_gemm(epilogue).unwrap();
    let lib = builder.finish().unwrap();
    // k = 0: the product is empty, the epilogue still applies: sigmoid(bias).
    let a: Vec<f32> = vec![];
    let bias = vec![0.0f32, 1.0, -1.0];
    let layout = lib.pack_layout();
    let packed = PackedB::pack_for(&MatrixRef::row_major(&[], 0, 3).unwrap(), layout);
    let mut c = vec![f32::NAN; 6];
    lib.gemm(
        id,
        GemmArgs {
            a: MatrixRef::row_major(&a, 2, 0).unwrap(),
            b: packed.as_ref(),
            bias: Some(&bias),
            residual: None,
            c: &mut c,
        },
        &Threads::single(),
    )
    .unwrap();
    for (i, &v) in c.iter().enumerate() {
        let expected = sigmoid64(bias[i % 3] as f64);
        assert!((v as f64 - expected).abs() < 1e-7, "{isa} {i}: {v}");
    }
    // m = 0 and n = 0: nothing to do, no error.
    let packed = PackedB::pack_for(&MatrixRef::row_major(&[], 4, 0).unwrap(), layout);
    lib.gemm(
        id,
        GemmArgs {
            a: MatrixRef::row_major(&[0.0; 12], 3, 4).unwrap(),
            b: packed.as_ref(),
            bias: Some(&[]),
            residual: None,
            c: &mut [],
        },
        &Threads::single(),
    )
    .unwrap();
}

/// The conformance suite every GEMM candidate passes: edge shapes
/// (m, n, k in {1, 3, 17, 127, 1000}: single rows and columns, partial row
/// panels and B panels of every tier, one and several K blocks) and every
/// epilogue, on every tier the CPU runs, against an f64 reference, with 1
/// and 2 threads bitwise equal.
#[test]
fn gemm_conformance_edge_shapes_every_tier() {
    let dims = [1usize, 3, 17, 127, 1000];
    // At most one dimension of 1000 keeps the f64 reference cheap.
    let mut shapes = Vec::new();
    for &m in &dims {
        for &k in &dims {
            for &n in &dims {
                if [m, k, n].iter().filter(|&&d| d == 1000).count() <= 1 {
                    shapes.push((m, k, n));
                }
            }
        }
    }
    let epilogue_shapes = [
        (17, 127, 3),
        (3, 1000, 17),
        (127, 17, 127),
        (1, 1000, 127),
        (1000, 3, 17),
        (127, 300, 33),
    ];
    let epilogues = all_epilogues();
    let two = two_threads();
    for isa in tiers() {
        let mut builder = builder_for(isa);
        let ids: Vec<GemmId> = epilogues
            .iter()
            .map(|&e| builder.add_gemm(e).unwrap())
            .collect();
        let lib = builder.finish().unwrap();
        assert_eq!(lib.isa(), isa);
        let plain = ids[0];
        assert!(epilogues[0].is_identity());
        for (seed, &(m, k, n)) in shapes.iter().enumerate() {
            let p = Problem::new(1000 + seed as u64, m, k, n);
            let c1 = run_gemm(&lib, plain, &p, None, None, &Threads::single());
            check_gemm(&p, &c1, Epilogue::none(), None, None, &format!("{isa}"));
            let c2 = run_gemm(&lib, plain, &p, None, None, &two);
            assert!(bits_equal(&c1, &c2), "{isa} {m}x{k}x{n}: 1 vs 2 threads");
        }
        for (&epilogue, &id) in epilogues.iter().zip(&ids) {
            for &(m, k, n) in &epilogue_shapes {
                let p = Problem::new((m * 7 + k * 5 + n) as u64, m, k, n);
                let mut r = rng(m as u64 + n as u64);
                // Large enough that relu and the activations see both signs.
                let bias: Vec<f32> = random_vec(&mut r, n).iter().map(|x| 4.0 * x).collect();
                let residual: Vec<f32> = random_vec(&mut r, m * n);
                let bias = epilogue.bias.then_some(bias.as_slice());
                let residual = epilogue.residual.then_some(residual.as_slice());
                let c1 = run_gemm(&lib, id, &p, bias, residual, &Threads::single());
                let what = format!("{isa} {epilogue:?}");
                check_gemm(&p, &c1, epilogue, bias, residual, &what);
                let c2 = run_gemm(&lib, id, &p, bias, residual, &two);
                assert!(bits_equal(&c1, &c2), "{what} {m}x{k}x{n}: 1 vs 2 threads");
            }
        }
    }
}

/// The GEMV path (1-row products on a kernel assembled per shape): the
/// same bits as the micro-kernel path of the same tier, on every epilogue,
/// for depths of one and several K blocks (even and odd), widths of
/// whole groups, group tails and a partial last panel, contiguous and
/// strided A rows; 1, 2 and 3 threads agree; against the f64 reference.
#[test]
fn gemv_matches_the_gemm_path_bit_for_bit() {
    let dims_k = [1usize, 3, 17, 127, 300, 1000];
    let dims_n = [1usize, 3, 17, 31, 32, 33, 127, 160, 229, 1000];
    let epilogues = all_epilogues();
    let pools = [Threads::single(), two_threads(), Threads::new(3).unwrap()];
    for isa in tiers() {
        let pw = PackLayout::for_isa(isa).panel_width();
        let mut with = builder_for(isa);
        let mut without = builder_for(isa);
        let ids: Vec<(GemmId, GemmId)> = epilogues
            .iter()
            .map(|&e| (with.add_gemm(e).unwrap(), without.add_gemm(e).unwrap()))
            .collect();
        let mut shapes = Vec::new();
        for &k in &dims_k {
            for &n in &dims_n {
                let has = with.add_gemv(k, n).unwrap();
                assert_eq!(has, isa != Isa::Baseline && n >= pw, "{isa} k={k} n={n}");
                shapes.push((k, n, has));
            }
        }
        let with = with.finish().unwrap();
        let without = without.finish().unwrap();
        for &(k, n, has) in &shapes {
            let name = format!("gemv_{isa}_{k}x{n}");
            assert_eq!(
                with.kernels().iter().any(|info| info.name == name),
                has,
                "{name}"
            );
        }
        for (seed, &(k, n, _)) in shapes.iter().enumerate() {
            // A stored transposed with a leading dimension of 3: its row is
            // not contiguous, so the driver copies it first.
            for strided in [false, true] {
                let mut p = Problem::new(3000 + seed as u64, 1, k, n);
                if strided {
                    p.a_transposed = true;
                    p.lda = 3;
                    p.a = random_vec(&mut rng(seed as u64), (k - 1) * 3 + 1);
                }
                let mut r = rng(7 * seed as u64 + 1);
                let bias: Vec<f32> = random_vec(&mut r, n).iter().map(|x| 4.0 * x).collect();
                let residual = random_vec(&mut r, n);
                for (e, &(id, plain_id)) in epilogues.iter().zip(&ids) {
                    let bias = e.bias.then_some(bias.as_slice());
                    let residual = e.residual.then_some(residual.as_slice());
                    let what = format!("{isa} {e:?} 1x{k}x{n} strided A {strided}");
                    let reference =
                        run_gemm(&without, plain_id, &p, bias, residual, &Threads::single());
                    for threads in &pools {
                        let c = run_gemm(&with, id, &p, bias, residual, threads);
                        assert!(
                            bits_equal(&c, &reference),
                            "{what}, {} threads: GEMV differs from the micro-kernels",
                            threads.count()
                        );
                    }
                    check_gemm(&p, &reference, *e, bias, residual, &what);
                }
            }
        }
    }
}

#[test]
fn gemm_rejects_b_packed_for_another_tier() {
    let t = tiers();
    for &isa in &t {
        let mut builder = builder_for(isa);
        let id = builder.add_gemm(Epilogue::none()).unwrap();
        let lib = builder.finish().unwrap();
        let p = Problem::new(1, 5, 7, 40);
        for &other in &t {
            let packed = p.packed_b(PackLayout::for_isa(other));
            let mut c = vec![0.0f32; 5 * 40];
            let result = lib.gemm(
                id,
                GemmArgs {
                    a: p.a_view(),
                    b: packed.as_ref(),
                    bias: None,
                    residual: None,
                    c: &mut c,
                },
                &Threads::single(),
            );
            let same = PackLayout::for_isa(other) == lib.pack_layout();
            assert_eq!(result.is_ok(), same, "{isa} kernels, B packed for {other}");
        }
    }
}

// ---------------------------------------------------------------- batched

fn batched_reference(
    a: &[f32],
    a_shape: &[usize],
    ta: bool,
    b: &[f32],
    b_shape: &[usize],
    tb: bool,
) -> (Vec<usize>, Vec<f64>) {
    let (ab, am) = a_shape.split_at(a_shape.len() - 2);
    let (bb, bm) = b_shape.split_at(b_shape.len() - 2);
    let (m, k) = if ta { (am[1], am[0]) } else { (am[0], am[1]) };
    let n = if tb { bm[0] } else { bm[1] };
    let rank = ab.len().max(bb.len());
    let dim = |s: &[usize], i: usize| (i + s.len()).checked_sub(rank).map_or(1, |j| s[j]);
    let batch: Vec<usize> = (0..rank).map(|i| dim(ab, i).max(dim(bb, i))).collect();
    let count: usize = batch.iter().product();
    let mut out = vec![0.0f64; count * m * n];
    for idx in 0..count {
        // Index into each operand, treating size-1 dims as broadcast.
        let mut rem = idx;
        let (mut ai, mut bi) = (0usize, 0usize);
        let (mut a_mul, mut b_mul) = (1usize, 1usize);
        for d in (0..rank).rev() {
            let i = rem % batch[d];
            rem /= batch[d];
            let (da, db) = (dim(ab, d), dim(bb, d));
            ai += if da == 1 { 0 } else { i * a_mul };
            bi += if db == 1 { 0 } else { i * b_mul };
            a_mul *= da;
            b_mul *= db;
        }
        let a0 = ai * m * k;
        let b0 = bi * k * n;
        for i in 0..m {
            for j in 0..n {
                let mut s = 0.0;
                for p in 0..k {
                    let av = if ta {
                        a[a0 + p * m + i]
                    } else {
                        a[a0 + i * k + p]
                    };
                    let bv = if tb {
                        b[b0 + j * k + p]
                    } else {
                        b[b0 + p * n + j]
                    };
                    s += av as f64 * bv as f64;
                }
                out[idx * m * n + i * n + j] = s;
            }
        }
    }
    (batch, out)
}

#[test]
fn batched_matmul_with_broadcast_and_transposes() {
    for isa in tiers() {
        batched_matmul_with_broadcast_and_transposes_on(isa);
    }
}

fn batched_matmul_with_broadcast_and_transposes_on(isa: Isa) {
    let mut builder = builder_for(isa);
    let id = builder.add_gemm(Epilogue::none()).unwrap();
    let lib = builder.finish().unwrap();
    let cases: Vec<(Vec<usize>, bool, Vec<usize>, bool)> = vec![
        // attention scores: q [b, h, s, d] @ k^T with k [b, h, s, d]
        (vec![2, 3, 17, 8], false, vec![2, 3, 17, 8], true),
        // longer heads: full 32-column panels of k^T and 16-deep blocks
        // (AVX-512 packs those with its assembled transpose), plus tails
        (vec![2, 2, 70, 40], false, vec![2, 2, 70, 40], true),
        (vec![1, 2, 64, 64], false, vec![1, 2, 64, 64], true),
        // probabilities @ v
        (vec![2, 3, 17, 17], false, vec![2, 3, 17, 8], false),
        // broadcast batch dims on both sides
        (vec![2, 1, 5, 6], false, vec![4, 6, 7], false),
        (vec![1, 5, 6], true, vec![3, 5, 7], false),
        // shared B: folded into one GEMM
        (vec![3, 4, 13, 9], false, vec![9, 11], false),
        (vec![3, 4, 13, 9], false, vec![11, 9], true),
        // no batch dims at all
        (vec![13, 9], true, vec![13, 5], false),
    ];
    let threads = two_threads();
    for (seed, (a_shape, ta, b_shape, tb)) in cases.into_iter().enumerate() {
        let mut r = rng(seed as u64 + 50);
        let a = random_vec(&mut r, a_shape.iter().product());
        let b = random_vec(&mut r, b_shape.iter().product());
        let (_, expected) = batched_reference(&a, &a_shape, ta, &b, &b_shape, tb);
        let k = if ta {
            a_shape[a_shape.len() - 2]
        } else {
            a_shape[a_shape.len() - 1]
        };
        let mut outs = Vec::new();
        for t in [&Threads::single(), &threads] {
            let mut c = vec![f32::NAN; expected.len()];
            lib.batched_matmul(
                id,
                BatchedMatmulArgs {
                    a: &a,
                    a_shape: &a_shape,
                    transpose_a: ta,
                    b: &b,
                    b_shape: &b_shape,
                    transpose_b: tb,
                    c: &mut c,
                },
                t,
            )
            .unwrap();
            for (i, (&got, &want)) in c.iter().zip(&expected).enumerate() {
                let tol = 4.0 * f32::EPSILON as f64 * (k as f64).sqrt() * k as f64;
                assert!(
                    (got as f64 - want).abs() <= tol,
                    "{a_shape:?}{ta} @ {b_shape:?}{tb}: [{i}] {got} vs {want}"
                );
            }
            outs.push(c);
        }
        assert!(bits_equal(&outs[0], &outs[1]));
    }
}

#[test]
fn batched_matmul_rejects_bad_shapes() {
    let mut builder = KernelLibraryBuilder::new().unwrap();
    let id = builder.add_gemm(Epilogue::none()).unwrap();
    let with_bias = builder
        .add_gemm(Epilogue {
            bias: true,
            ..Epilogue::none()
        })
        .unwrap();
    let lib = builder.finish().unwrap();
    let a = vec![0.0f32; 2 * 3 * 4];
    let b = vec![0.0f32; 3 * 4 * 5];
    let mut c = vec![0.0f32; 2 * 3 * 3 * 5];
    let call = |id, a_shape: &[usize], b_shape: &[usize], c: &mut [f32]| {
        lib.batched_matmul(
            id,
            BatchedMatmulArgs {
                a: &a,
                a_shape,
                transpose_a: false,
                b: &b,
                b_shape,
                transpose_b: false,
                c,
            },
            &Threads::single(),
        )
    };
    assert!(call(id, &[2, 1, 3, 4], &[3, 4, 5], &mut c).is_ok());
    assert!(call(with_bias, &[2, 1, 3, 4], &[3, 4, 5], &mut c).is_err());
    assert!(
        call(id, &[2, 3, 4], &[3, 4, 5], &mut c).is_err(),
        "batch 2 vs 3"
    );
    assert!(
        call(id, &[2, 1, 4, 3], &[3, 4, 5], &mut c).is_err(),
        "inner dims"
    );
    assert!(
        call(id, &[2, 1, 3, 4], &[3, 4, 5], &mut c[1..]).is_err(),
        "short C"
    );
    assert!(
        call(id, &[4, 1, 3, 4], &[3, 4, 5], &mut c).is_err(),
        "A shape vs data"
    );
    assert!(call(id, &[24], &[3, 4, 5], &mut c).is_err(), "rank 1");
}

// ---------------------------------------------------------------- bounds

#[test]
fn wrong_lengths_are_errors_not_undefined_behaviour() {
    let mut builder = KernelLibraryBuilder::new().unwrap();
    let full = builder
        .add_gemm(Epilogue {
            bias: true,
            activation: None,
            residual: true,
        })
        .unwrap();
    let plain = builder.add_gemm(Epilogue::none()).unwrap();
    let add = builder
        .add_elementwise(
            &ElementwiseExpr {
                steps: vec![
                    ExprStep::Input(0),
                    ExprStep::Input(1),
                    ExprStep::Binary(BinaryOp::Add, 0, 1),
                ],
            },
            &[InnerStride::Contiguous, InnerStride::Contiguous],
        )
        .unwrap();
    let ln = builder
        .add_row_kernel(RowOp::LayerNorm { eps: 1e-5 })
        .unwrap();
    let sum = builder
        .add_row_kernel(RowOp::Reduce(ReduceOp::Sum))
        .unwrap();
    let lib = builder.finish().unwrap();
    let t = Threads::single();
    let (m, k, n) = (5, 6, 7);
    let a = vec![1.0f32; m * k];
    let b = vec![1.0f32; k * n];
    let packed = PackedB::pack(&MatrixRef::row_major(&b, k, n).unwrap());
    let other_packed = PackedB::pack(&MatrixRef::row_major(&b, n, k).unwrap());
    let bias = vec![0.0f32; n];
    let residual = vec![0.0f32; m * n];
    let gemm = |id,
                a: MatrixRef<'_>,
                b: PackedBRef<'_>,
                bias: Option<&[f32]>,
                residual: Option<&[f32]>,
                c_len: usize| {
        let mut c = vec![0.0f32; c_len];
        lib.gemm(
            id,
            GemmArgs {
                a,
                b,
                bias,
                residual,
                c: &mut c,
            },
            &t,
        )
    };
    let a_view = MatrixRef::row_major(&a, m, k).unwrap();
    assert!(gemm(
        full,
        a_view,
        packed.as_ref(),
        Some(&bias),
        Some(&residual),
        m * n
    )
    .is_ok());
    assert!(gemm(
        full,
        a_view,
        packed.as_ref(),
        Some(&bias),
        Some(&residual),
        m * n - 1
    )
    .is_err());
    assert!(gemm(
        full,
        a_view,
        packed.as_ref(),
        Some(&bias),
        Some(&residual),
        m * n + 1
    )
    .is_err());
    assert!(gemm(
        full,
        a_view,
        packed.as_ref(),
        Some(&bias[1..]),
        Some(&residual),
        m * n
    )
    .is_err());
    assert!(gemm(
        full,
        a_view,
        packed.as_ref(),
        Some(&bias),
        Some(&residual[1..]),
        m * n
    )
    .is_err());
    assert!(gemm(full, a_view, packed.as_ref(), None, Some(&residual), m * n).is_err());
    assert!(gemm(full, a_view, packed.as_ref(), Some(&bias), None, m * n).is_err());
    assert!(gemm(plain, a_view, packed.as_ref(), Some(&bias), None, m * n).is_err());
    assert!(
        gemm(plain, a_view, other_packed.as_ref(), None, None, m * n).is_err(),
        "k mismatch"
    );
    assert!(MatrixRef::row_major(&a, m + 1, k).is_err());
    assert!(MatrixRef::strided(&a, m, k, k - 1, false).is_err());

    let x = vec![1.0f32; 12];
    let mut out = vec![0.0f32; 12];
    let ew = |out: &mut [f32], out_shape: &[usize], inputs: &[TensorView<'_>]| {
        lib.elementwise(
            add,
            ElementwiseArgs {
                out,
                out_shape,
                inputs,
            },
            &t,
        )
    };
    let view = |shape| TensorView { data: &x, shape };
    assert!(ew(&mut out, &[3, 4], &[view(&[3, 4]), view(&[3, 4])]).is_ok());
    assert!(
        ew(&mut out, &[3, 4], &[view(&[3, 4])]).is_err(),
        "input count"
    );
    assert!(
        ew(&mut out[1..], &[3, 4], &[view(&[3, 4]), view(&[3, 4])]).is_err(),
        "short out"
    );
    assert!(
        ew(&mut out, &[3, 4], &[view(&[4, 3]), view(&[3, 4])]).is_err(),
        "no broadcast"
    );
    assert!(ew(&mut out, &[3, 4], &[view(&[2, 6]), view(&[3, 4])]).is_err());
    assert!(
        ew(
            &mut out,
            &[3, 4],
            &[
                TensorView {
                    data: &x[1..],
                    shape: &[3, 4]
                },
                view(&[3, 4])
            ]
        )
        .is_err(),
        "short input"
    );
    assert!(
        ew(&mut out, &[3, 4], &[view(&[1, 3, 4]), view(&[3, 4])]).is_err(),
        "input rank above output"
    );
    assert!(ew(&mut out, &[1, 3, 4], &[view(&[3, 4]), view(&[1, 3, 4])]).is_ok());
    assert!(
        ew(&mut out, &[3, 4], &[view(&[2, 3, 4]), view(&[3, 4])]).is_err(),
        "input rank"
    );
    // A compiled-contiguous input cannot be fed as a broadcast one.
    let col = vec![1.0f32; 3];
    assert!(ew(
        &mut out,
        &[3, 4],
        &[
            TensorView {
                data: &col,
                shape: &[3, 1]
            },
            view(&[3, 4])
        ]
    )
    .is_err());

    let gain = vec![1.0f32; 4];
    let rows = |id,
                x: &[f32],
                rows: usize,
                len: usize,
                out: &mut [f32],
                gain: Option<&[f32]>,
                bias: Option<&[f32]>| {
        lib.row_kernel(
            id,
            RowArgs {
                x,
                rows,
                row_len: len,
                out,
                gain,
                bias,
            },
            &t,
        )
    };
    assert!(rows(ln, &x, 3, 4, &mut out, Some(&gain), Some(&gain)).is_ok());
    assert!(rows(ln, &x, 3, 4, &mut out, Some(&gain[1..]), Some(&gain)).is_err());
    assert!(rows(ln, &x, 3, 4, &mut out, None, Some(&gain)).is_err());
    assert!(rows(ln, &x, 4, 4, &mut out, Some(&gain), Some(&gain)).is_err());
    assert!(rows(ln, &x, 3, 4, &mut out[..11], Some(&gain), Some(&gain)).is_err());
    assert!(rows(sum, &x, 3, 4, &mut out[..3], None, None).is_ok());
    assert!(
        rows(sum, &x, 3, 4, &mut out, None, None).is_err(),
        "reduction out is one per row"
    );
    assert!(rows(sum, &x, 3, 4, &mut out[..3], Some(&gain), None).is_err());

    // Ids of another library are rejected.
    let mut other = KernelLibraryBuilder::new().unwrap();
    let foreign = other.add_gemm(Epilogue::none()).unwrap();
    drop(other);
    assert!(matches!(
        gemm(foreign, a_view, packed.as_ref(), None, None, m * n),
        Err(CodegenError::ForeignKernel)
    ));
}

// ---------------------------------------------------------------- elementwise

fn unary_expr(op: UnaryOp) -> ElementwiseExpr {
    ElementwiseExpr {
        steps: vec![ExprStep::Input(0), ExprStep::Unary(op, 0)],
    }
}

fn apply_unary(lib: &KernelLibrary, id: ElementwiseId, xs: &[f32]) -> Vec<f32> {
    let mut out = vec![f32::NAN; xs.len()];
    lib.elementwise(
        id,
        ElementwiseArgs {
            out: &mut out,
            out_shape: &[xs.len()],
            inputs: &[TensorView {
                data: xs,
                shape: &[xs.len()],
            }],
        },
        &Threads::single(),
    )
    .unwrap();
    out
}

/// Inputs spanning `lo..hi`: a dense grid plus random points.
fn sweep(lo: f32, hi: f32, seed: u64) -> Vec<f32> {
    let mut xs: Vec<f32> = (0..=200_000)
        .map(|i| lo + (hi - lo) * (i as f32 / 200_000.0))
        .collect();
    let mut r = rng(seed);
    xs.extend((0..100_000).map(|_| r.random_range(lo..hi)));
    xs
}

/// Max error over `xs`: relative where |ref| >= `abs_below`, absolute
/// (divided by `abs_below`, so both compare to one bound) elsewhere.
fn max_error(
    got: &[f32],
    xs: &[f32],
    reference: impl Fn(f64) -> f64,
    abs_below: f64,
) -> (f64, f32) {
    let mut worst = (0.0f64, 0.0f32);
    for (&y, &x) in got.iter().zip(xs) {
        let want = reference(x as f64);
        let err = if y as f64 == want {
            0.0
        } else if want.abs() >= abs_below && want != 0.0 {
            ((y as f64 - want) / want).abs()
        } else {
            (y as f64 - want).abs() / abs_below.max(f64::MIN_POSITIVE)
        };
        if err.is_nan() || err > worst.0 {
            worst = (err, x);
        }
    }
    worst
}

struct MathCase {
    op: UnaryOp,
    lo: f32,
    hi: f32,
    reference: fn(f64) -> f64,
    /// Below this |reference| the error is absolute.
    abs_below: f64,
    bound: f64,
}

/// The documented accuracy of the vector math (the bounds in the
/// `codegen` module docs). Relative error unless the reference is below
/// `abs_below`, where the error is absolute (scaled by `abs_below`).
/// Measured maxima with FMA on this machine: exp 8.3e-8, log 7.9e-8, tanh
/// 1.35e-7, sigmoid 1.5e-7, erf 1.8e-7, gelu 4.8e-7, gelu_tanh 7.4e-7
/// (9.2e-6 on [-9, -3]), sqrt/recip 6e-8 (correctly rounded), rsqrt 8.8e-8.
fn math_cases() -> Vec<MathCase> {
    vec![
        // exp: relative over the whole normal-result range.
        MathCase {
            op: UnaryOp::Exp,
            lo: -87.0,
            hi: 88.5,
            reference: f64::exp,
            abs_below: 0.0,
            bound: 2e-7,
        },
        // log: relative; near x = 1 (|log x| < 1e-3) absolute 1e-10.
        MathCase {
            op: UnaryOp::Log,
            lo: 1e-30,
            hi: 10.0,
            reference: f64::ln,
            abs_below: 1e-3,
            bound: 2e-7,
        },
        MathCase {
            op: UnaryOp::Log,
            lo: 0.5,
            hi: 1e30,
            reference: f64::ln,
            abs_below: 1e-3,
            bound: 2e-7,
        },
        MathCase {
            op: UnaryOp::Tanh,
            lo: -12.0,
            hi: 12.0,
            reference: f64::tanh,
            abs_below: 0.0,
            bound: 3e-7,
        },
        MathCase {
            op: UnaryOp::Sigmoid,
            lo: -87.0,
            hi: 30.0,
            reference: sigmoid64,
            abs_below: 0.0,
            bound: 3e-7,
        },
        MathCase {
            op: UnaryOp::Erf,
            lo: -6.0,
            hi: 6.0,
            reference: erf64,
            abs_below: 0.0,
            bound: 3e-7,
        },
        // gelu: relative down to x = -10 (gelu(-10) = -7.6e-23).
        MathCase {
            op: UnaryOp::Gelu,
            lo: -10.0,
            hi: 12.0,
            reference: gelu64,
            abs_below: 0.0,
            bound: 8e-7,
        },
        // gelu_tanh: x sigmoid(2u) has relative condition number ~2|u| in
        // u = 0.798 (x + 0.044715 x^3), which carries ~1e-7 rounding: the
        // relative error grows in the negative tail (results < 1e-36 there).
        MathCase {
            op: UnaryOp::GeluTanh,
            lo: -3.0,
            hi: 12.0,
            reference: gelu_tanh64,
            abs_below: 0.0,
            bound: 1e-6,
        },
        MathCase {
            op: UnaryOp::GeluTanh,
            lo: -9.0,
            hi: -3.0,
            reference: gelu_tanh64,
            abs_below: 0.0,
            bound: 1.5e-5,
        },
        MathCase {
            op: UnaryOp::Sqrt,
            lo: 0.0,
            hi: 1e6,
            reference: f64::sqrt,
            abs_below: 0.0,
            bound: 6e-8,
        },
        MathCase {
            op: UnaryOp::Rsqrt,
            lo: 1e-6,
            hi: 1e6,
            reference: |x| 1.0 / x.sqrt(),
            abs_below: 0.0,
            bound: 1.2e-7,
        },
        MathCase {
            op: UnaryOp::Recip,
            lo: -1e6,
            hi: 1e6,
            reference: |x| 1.0 / x,
            abs_below: 0.0,
            bound: 6e-8,
        },
    ]
}

fn check_math_bounds(options: &CodegenOptions, slack: f64) {
    let mut builder = KernelLibraryBuilder::with_options(options).unwrap();
    let cases = math_cases();
    let ids: Vec<ElementwiseId> = cases
        .iter()
        .map(|c| {
            builder
                .add_elementwise(&unary_expr(c.op), &[InnerStride::Contiguous])
                .unwrap()
        })
        .collect();
    let lib = builder.finish().unwrap();
    let mut report = String::new();
    let mut failures = Vec::new();
    for (i, (case, &id)) in cases.iter().zip(&ids).enumerate() {
        let xs = sweep(case.lo, case.hi, i as u64);
        let got = apply_unary(&lib, id, &xs);
        let (err, at) = max_error(&got, &xs, case.reference, case.abs_below);
        report.push_str(&format!(
            "{:>9} on [{}, {}]: max error {err:.3e} at x = {at}\n",
            case.op.name(),
            case.lo,
            case.hi
        ));
        if err.is_nan() || err > case.bound * slack {
            failures.push(format!(
                "{} error {err:e} at {at} exceeds {:e}",
                case.op.name(),
                case.bound * slack
            ));
        }
    }
    println!("{report}");
    assert!(failures.is_empty(), "{failures:#?}\n{report}");
}

#[test]
fn vector_math_error_bounds() {
    check_math_bounds(&CodegenOptions::default(), 1.0);
}

#[test]
fn vector_math_without_fma_or_avx() {
    // Multiply-adds round twice without FMA: allow twice the error.
    check_math_bounds(
        &CodegenOptions {
            use_fma: false,
            use_avx: false,
            ..CodegenOptions::default()
        },
        2.0,
    );
}

#[test]
fn vector_math_special_values() {
    let ops = [
        UnaryOp::Exp,
        UnaryOp::Log,
        UnaryOp::Tanh,
        UnaryOp::Sigmoid,
        UnaryOp::Erf,
        UnaryOp::Gelu,
        UnaryOp::GeluTanh,
        UnaryOp::Relu,
    ];
    let mut builder = KernelLibraryBuilder::new().unwrap();
    let ids: Vec<ElementwiseId> = ops
        .iter()
        .map(|&op| {
            builder
                .add_elementwise(&unary_expr(op), &[InnerStride::Contiguous])
                .unwrap()
        })
        .collect();
    let lib = builder.finish().unwrap();
    let inf = f32::INFINITY;
    let xs = [f32::NAN, inf, -inf, 0.0, -0.0, 1e-40, -1e-40, 100.0, -100.0];
    let run = |i: usize| apply_unary(&lib, ids[i], &xs);
    let exp = run(0);
    assert!(exp[0].is_nan());
    assert_eq!(&exp[1..8], &[inf, 0.0, 1.0, 1.0, 1.0, 1.0, inf]);
    // e^-100 = 3.72e-44 is subnormal: within two subnormal steps.
    assert!(
        (exp[8] as f64 - (-100.0f64).exp()).abs() <= 2.0 * 1.4e-45,
        "{}",
        exp[8]
    );
    let log = run(1);
    assert!(log[0].is_nan() && log[2].is_nan() && log[6].is_nan());
    assert_eq!((log[1], log[3], log[4]), (inf, -inf, -inf));
    assert!(
        ((log[5] as f64 - (1e-40f32 as f64).ln()) / 92.1).abs() < 1e-6,
        "subnormal log: {}",
        log[5]
    );
    let tanh = run(2);
    assert!(tanh[0].is_nan());
    assert_eq!((tanh[1], tanh[2], tanh[7], tanh[8]), (1.0, -1.0, 1.0, -1.0));
    let sigmoid = run(3);
    assert!(sigmoid[0].is_nan());
    assert_eq!(
        (sigmoid[1], sigmoid[2], sigmoid[3], sigmoid[7]),
        (1.0, 0.0, 0.5, 1.0)
    );
    let erf = run(4);
    assert!(erf[0].is_nan());
    assert_eq!(
        (erf[1], erf[2], erf[3], erf[7], erf[8]),
        (1.0, -1.0, 0.0, 1.0, -1.0)
    );
    for (i, op) in [(5, "gelu"), (6, "gelu_tanh")] {
        let g = run(i);
        assert!(g[0].is_nan(), "{op}(nan)");
        assert_eq!(
            (g[1], g[2], g[3], g[7], g[8]),
            (inf, 0.0, 0.0, 100.0, 0.0),
            "{op}"
        );
    }
    let relu = run(7);
    assert!(relu[0].is_nan(), "relu propagates NaN");
    assert_eq!((relu[1], relu[2], relu[7], relu[8]), (inf, 0.0, 100.0, 0.0));
}

/// Scalar evaluation of an expression in f64 (the elementwise oracle).
fn eval_scalar(expr: &ElementwiseExpr, inputs: &[f64]) -> f64 {
    let mut v: Vec<f64> = Vec::new();
    for step in &expr.steps {
        let x = match *step {
            ExprStep::Input(i) => inputs[i],
            ExprStep::Const(c) => c.0 as f64,
            ExprStep::Unary(op, a) => {
                let a = v[a];
                match op {
                    UnaryOp::Neg => -a,
                    UnaryOp::Relu => a.max(0.0),
                    UnaryOp::Sigmoid => sigmoid64(a),
                    UnaryOp::Tanh => a.tanh(),
                    UnaryOp::Gelu => gelu64(a),
                    UnaryOp::GeluTanh => gelu_tanh64(a),
                    UnaryOp::Exp => a.exp(),
                    UnaryOp::Log => a.ln(),
                    UnaryOp::Sqrt => a.sqrt(),
                    UnaryOp::Rsqrt => 1.0 / a.sqrt(),
                    UnaryOp::Erf => erf64(a),
                    UnaryOp::Abs => a.abs(),
                    UnaryOp::Recip => 1.0 / a,
                    UnaryOp::Sin => a.sin(),
                    UnaryOp::Cos => a.cos(),
                    UnaryOp::Relu6 => a.clamp(0.0, 6.0),
                    UnaryOp::HardSigmoid => (a + 3.0).clamp(0.0, 6.0) / 6.0,
                    UnaryOp::HardSwish => a * (a + 3.0).clamp(0.0, 6.0) / 6.0,
                }
            }
            ExprStep::Binary(op, a, b) => {
                let (a, b) = (v[a], v[b]);
                match op {
                    BinaryOp::Add => a + b,
                    BinaryOp::Sub => a - b,
                    BinaryOp::Mul => a * b,
                    BinaryOp::Div => a / b,
                    BinaryOp::Pow => a.powf(b),
                    BinaryOp::Max => a.max(b),
                    BinaryOp::Min => a.min(b),
                }
            }
            ExprStep::Compare(op, a, b) => {
                let (a, b) = (v[a], v[b]);
                let r = match op {
                    CompareOp::Lt => a < b,
                    CompareOp::Le => a <= b,
                    CompareOp::Gt => a > b,
                    CompareOp::Ge => a >= b,
                    CompareOp::Eq => a == b,
                    CompareOp::Ne => a != b,
                };
                if r {
                    1.0
                } else {
                    0.0
                }
            }
            ExprStep::Where(c, a, b) => {
                if v[c] != 0.0 {
                    v[a]
                } else {
                    v[b]
                }
            }
        };
        v.push(x);
    }
    *v.last().unwrap()
}

fn c(x: f32) -> ExprStep {
    ExprStep::Const(Float(x))
}

struct ExprCase {
    name: &'static str,
    expr: ElementwiseExpr,
    /// Input shapes; the output shape is their broadcast.
    shapes: Vec<Vec<usize>>,
    out_shape: Vec<usize>,
    /// Relative tolerance (absolute below 1).
    tol: f64,
}

fn expr_cases() -> Vec<ExprCase> {
    use ExprStep::*;
    vec![
        ExprCase {
            name: "x * bias + y broadcast over rows",
            expr: ElementwiseExpr {
                steps: vec![
                    Input(0),
                    Input(1),
                    Binary(BinaryOp::Mul, 0, 1),
                    Input(2),
                    Binary(BinaryOp::Add, 2, 3),
                ],
            },
            shapes: vec![vec![2, 3, 7], vec![7], vec![3, 1]],
            out_shape: vec![2, 3, 7],
            tol: 1e-7,
        },
        ExprCase {
            name: "where(x > y, exp(x) * 2, -y)",
            expr: ElementwiseExpr {
                steps: vec![
                    Input(0),
                    Input(1),
                    Compare(CompareOp::Gt, 0, 1),
                    Unary(UnaryOp::Exp, 0),
                    c(2.0),
                    Binary(BinaryOp::Mul, 3, 4),
                    Unary(UnaryOp::Neg, 1),
                    Where(2, 5, 6),
                ],
            },
            shapes: vec![vec![4, 1, 9], vec![5, 1]],
            out_shape: vec![4, 5, 9],
            tol: 4e-7,
        },
        ExprCase {
            name: "variance-style (x - m) ** 2 / s + eps, rsqrt",
            expr: ElementwiseExpr {
                steps: vec![
                    Input(0),
                    Input(1),
                    Binary(BinaryOp::Sub, 0, 1),
                    c(2.0),
                    Binary(BinaryOp::Pow, 2, 3),
                    Input(2),
                    Binary(BinaryOp::Div, 4, 5),
                    c(1e-5),
                    Binary(BinaryOp::Add, 6, 7),
                    Unary(UnaryOp::Rsqrt, 8),
                ],
            },
            shapes: vec![vec![3, 10], vec![3, 1], vec![]],
            out_shape: vec![3, 10],
            tol: 1e-6,
        },
        ExprCase {
            name: "gelu(x) + tanh(x) * sigmoid(y) - erf(x) + log(abs(y) + 1)",
            expr: ElementwiseExpr {
                steps: vec![
                    Input(0),
                    Input(1),
                    Unary(UnaryOp::Gelu, 0),
                    Unary(UnaryOp::Tanh, 0),
                    Unary(UnaryOp::Sigmoid, 1),
                    Binary(BinaryOp::Mul, 3, 4),
                    Binary(BinaryOp::Add, 2, 5),
                    Unary(UnaryOp::Erf, 0),
                    Binary(BinaryOp::Sub, 6, 7),
                    Unary(UnaryOp::Abs, 1),
                    c(1.0),
                    Binary(BinaryOp::Add, 9, 10),
                    Unary(UnaryOp::Log, 11),
                    Binary(BinaryOp::Add, 8, 12),
                ],
            },
            shapes: vec![vec![1000], vec![1000]],
            out_shape: vec![1000],
            tol: 2e-6,
        },
        ExprCase {
            name: "maximum/minimum/relu/gelu_tanh/recip/sqrt chain",
            expr: ElementwiseExpr {
                steps: vec![
                    Input(0),
                    Input(1),
                    Binary(BinaryOp::Max, 0, 1),
                    Binary(BinaryOp::Min, 0, 1),
                    Unary(UnaryOp::Relu, 3),
                    Unary(UnaryOp::GeluTanh, 2),
                    Binary(BinaryOp::Add, 4, 5),
                    Unary(UnaryOp::Abs, 0),
                    c(0.5),
                    Binary(BinaryOp::Add, 7, 8),
                    Unary(UnaryOp::Sqrt, 9),
                    Unary(UnaryOp::Recip, 10),
                    Binary(BinaryOp::Mul, 6, 11),
                ],
            },
            shapes: vec![vec![2, 1, 5], vec![3, 1]],
            out_shape: vec![2, 3, 5],
            tol: 1e-6,
        },
        ExprCase {
            name: "pow with variable and odd/even/fractional constant exponents",
            expr: ElementwiseExpr {
                steps: vec![
                    Input(0),
                    Input(1),
                    Unary(UnaryOp::Abs, 0),
                    c(0.1),
                    Binary(BinaryOp::Add, 2, 3),
                    Binary(BinaryOp::Pow, 4, 1),
                    c(3.0),
                    Binary(BinaryOp::Pow, 0, 6),
                    Binary(BinaryOp::Add, 5, 7),
                    c(1.7),
                    Binary(BinaryOp::Pow, 4, 9),
                    Binary(BinaryOp::Add, 8, 10),
                    c(-0.5),
                    Binary(BinaryOp::Pow, 4, 12),
                    Binary(BinaryOp::Add, 11, 13),
                ],
            },
            shapes: vec![vec![6, 7], vec![7]],
            out_shape: vec![6, 7],
            tol: 2e-6,
        },
        ExprCase {
            name: "where on an f32 condition input and every comparison",
            expr: ElementwiseExpr {
                steps: vec![
                    Input(0),
                    Input(1),
                    Input(2),
                    Where(2, 0, 1),
                    Compare(CompareOp::Lt, 0, 1),
                    Compare(CompareOp::Le, 0, 1),
                    Compare(CompareOp::Ge, 0, 1),
                    Compare(CompareOp::Eq, 0, 0),
                    Compare(CompareOp::Ne, 0, 1),
                    Where(4, 0, 3),
                    Where(5, 9, 1),
                    Where(6, 10, 0),
                    Where(7, 11, 2),
                    Where(8, 12, 1),
                    Binary(BinaryOp::Add, 13, 4),
                ],
            },
            shapes: vec![vec![5, 3], vec![5, 3], vec![3]],
            out_shape: vec![5, 3],
            tol: 1e-7,
        },
    ]
}

fn broadcast_index(shape: &[usize], out_shape: &[usize], flat: usize) -> usize {
    let mut rem = flat;
    let mut index = 0;
    let mut stride = 1;
    for d in (0..out_shape.len()).rev() {
        let i = rem % out_shape[d];
        rem /= out_shape[d];
        let o = d as isize - (out_shape.len() - shape.len()) as isize;
        if o >= 0 {
            let dim = shape[o as usize];
            if dim != 1 {
                index += i * stride;
            }
            stride *= dim;
        }
    }
    index
}

#[test]
fn elementwise_expressions_with_broadcasting() {
    let cases = expr_cases();
    let mut builder = KernelLibraryBuilder::new().unwrap();
    let ids: Vec<ElementwiseId> = cases
        .iter()
        .map(|case| {
            let last = *case.out_shape.last().unwrap();
            let strides: Vec<InnerStride> = case
                .shapes
                .iter()
                .map(|s| InnerStride::for_shape(s, last))
                .collect();
            builder.add_elementwise(&case.expr, &strides).unwrap()
        })
        .collect();
    let lib = builder.finish().unwrap();
    let threads = two_threads();
    for (n, (case, &id)) in cases.iter().zip(&ids).enumerate() {
        let mut r = rng(200 + n as u64);
        let inputs: Vec<Vec<f32>> = case
            .shapes
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let len = s.iter().product();
                if case.name.starts_with("where on an f32") && i == 2 {
                    // a 0/1 condition plus one NaN-free odd value
                    (0..len).map(|j| [0.0, 1.0, -2.5][j % 3]).collect()
                } else {
                    (0..len).map(|_| r.random_range(-3.0f32..3.0)).collect()
                }
            })
            .collect();
        let views: Vec<TensorView<'_>> = inputs
            .iter()
            .zip(&case.shapes)
            .map(|(d, s)| TensorView { data: d, shape: s })
            .collect();
        let total: usize = case.out_shape.iter().product();
        let mut outs = Vec::new();
        for t in [&Threads::single(), &threads] {
            let mut out = vec![f32::NAN; total];
            lib.elementwise(
                id,
                ElementwiseArgs {
                    out: &mut out,
                    out_shape: &case.out_shape,
                    inputs: &views,
                },
                t,
            )
            .unwrap();
            outs.push(out);
        }
        assert!(bits_equal(&outs[0], &outs[1]), "{}: threads", case.name);
        for (flat, &got) in outs[0].iter().enumerate() {
            let xs: Vec<f64> = inputs
                .iter()
                .zip(&case.shapes)
                .map(|(d, s)| d[broadcast_index(s, &case.out_shape, flat)] as f64)
                .collect();
            let want = eval_scalar(&case.expr, &xs);
            let err = (got as f64 - want).abs() / want.abs().max(1.0);
            assert!(
                err <= case.tol || (got.is_nan() && want.is_nan()),
                "{}: element {flat} inputs {xs:?}: got {got}, want {want}",
                case.name
            );
        }
    }
}

#[test]
fn elementwise_tails_and_threads_on_long_runs() {
    let expr = ElementwiseExpr {
        steps: vec![
            ExprStep::Input(0),
            ExprStep::Unary(UnaryOp::Gelu, 0),
            ExprStep::Input(1),
            ExprStep::Binary(BinaryOp::Mul, 1, 2),
        ],
    };
    let mut builder = KernelLibraryBuilder::new().unwrap();
    let id = builder
        .add_elementwise(&expr, &[InnerStride::Contiguous, InnerStride::Broadcast])
        .unwrap();
    let lib = builder.finish().unwrap();
    let threads = two_threads();
    let mut r = rng(77);
    for len in (1..=9).chain([63, 64, 65, 100_003, 262_147]) {
        let x = random_vec(&mut r, len);
        let s = [1.5f32];
        let mut results = Vec::new();
        for t in [&Threads::single(), &threads] {
            let mut out = vec![f32::NAN; len];
            lib.elementwise(
                id,
                ElementwiseArgs {
                    out: &mut out,
                    out_shape: &[len],
                    inputs: &[
                        TensorView {
                            data: &x,
                            shape: &[len],
                        },
                        TensorView {
                            data: &s,
                            shape: &[1],
                        },
                    ],
                },
                t,
            )
            .unwrap();
            results.push(out);
        }
        assert!(bits_equal(&results[0], &results[1]), "len {len}");
        for (i, &y) in results[0].iter().enumerate() {
            let want = gelu64(x[i] as f64) * 1.5;
            assert!(
                (y as f64 - want).abs() <= 2e-6 * want.abs().max(1e-3),
                "len {len} [{i}]"
            );
        }
        // The vector lanes and the scalar tail compute identical bits: the
        // same value at different positions gives the same result.
        let same = vec![0.3141f32; len];
        let mut out = vec![0.0f32; len];
        lib.elementwise(
            id,
            ElementwiseArgs {
                out: &mut out,
                out_shape: &[len],
                inputs: &[
                    TensorView {
                        data: &same,
                        shape: &[len],
                    },
                    TensorView {
                        data: &s,
                        shape: &[],
                    },
                ],
            },
            &Threads::single(),
        )
        .unwrap();
        assert!(out.iter().all(|v| v.to_bits() == out[0].to_bits()));
    }
}

#[test]
fn elementwise_rejects_boolean_results_and_bad_steps() {
    let mut builder = KernelLibraryBuilder::new().unwrap();
    let boolean = ElementwiseExpr {
        steps: vec![
            ExprStep::Input(0),
            ExprStep::Input(1),
            ExprStep::Compare(CompareOp::Lt, 0, 1),
        ],
    };
    assert!(matches!(
        builder.add_elementwise(&boolean, &[InnerStride::Contiguous; 2]),
        Err(CodegenError::Unsupported(_))
    ));
    let dangling = ElementwiseExpr {
        steps: vec![ExprStep::Input(0), ExprStep::Unary(UnaryOp::Exp, 5)],
    };
    assert!(matches!(
        builder.add_elementwise(&dangling, &[InnerStride::Contiguous]),
        Err(CodegenError::InvalidExpr(_))
    ));
    // The builder stays usable after a rejected kernel.
    let ok = builder
        .add_elementwise(&unary_expr(UnaryOp::Abs), &[InnerStride::Contiguous])
        .unwrap();
    let lib = builder.finish().unwrap();
    assert_eq!(apply_unary(&lib, ok, &[-2.0, 3.0]), vec![2.0, 3.0]);
}

// ---------------------------------------------------------------- rows

fn row_reference(op: RowOp, row: &[f32], gain: &[f32], bias: &[f32]) -> Vec<f64> {
    let x: Vec<f64> = row.iter().map(|&v| v as f64).collect();
    let n = x.len() as f64;
    match op {
        RowOp::Softmax | RowOp::LogSoftmax => {
            let m = x.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let s: f64 = x.iter().map(|v| (v - m).exp()).sum();
            if op == RowOp::Softmax {
                x.iter().map(|v| (v - m).exp() / s).collect()
            } else {
                x.iter().map(|v| v - m - s.ln()).collect()
            }
        }
        RowOp::LayerNorm { eps } => {
            let mean = x.iter().sum::<f64>() / n;
            let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
            let rstd = 1.0 / (var + eps as f64).sqrt();
            x.iter()
                .enumerate()
                .map(|(i, v)| (v - mean) * rstd * gain[i] as f64 + bias[i] as f64)
                .collect()
        }
        RowOp::Reduce(ReduceOp::Sum) => vec![x.iter().sum()],
        RowOp::Reduce(ReduceOp::Mean) => vec![x.iter().sum::<f64>() / n],
        RowOp::Reduce(ReduceOp::Max) => vec![x.iter().cloned().fold(f64::NEG_INFINITY, f64::max)],
    }
}

#[test]
fn row_kernels_match_reference() {
    for isa in tiers() {
        row_kernels_match_reference_on(isa);
    }
}

fn row_kernels_match_reference_on(isa: Isa) {
    let ops = [
        RowOp::Softmax,
        RowOp::LogSoftmax,
        RowOp::LayerNorm { eps: 1e-5 },
        RowOp::Reduce(ReduceOp::Sum),
        RowOp::Reduce(ReduceOp::Mean),
        RowOp::Reduce(ReduceOp::Max),
    ];
    let mut builder = builder_for(isa);
    let ids: Vec<RowKernelId> = ops
        .iter()
        .map(|&op| builder.add_row_kernel(op).unwrap())
        .collect();
    let lib = builder.finish().unwrap();
    let threads = two_threads();
    for (&op, &id) in ops.iter().zip(&ids) {
        assert_eq!(lib.row_op(id).unwrap(), op);
        for &(rows, len) in &[
            (1, 1),
            (3, 3),
            (2, 4),
            (5, 5),
            (4, 8),
            (7, 17),
            (3, 100),
            (9, 384),
            (2, 1000),
            (200, 257),
        ] {
            let mut r = rng((rows * 1000 + len) as u64);
            let x: Vec<f32> = (0..rows * len)
                .map(|_| r.random_range(-8.0f32..8.0))
                .collect();
            let gain = random_vec(&mut r, len);
            let bias = random_vec(&mut r, len);
            let is_ln = matches!(op, RowOp::LayerNorm { .. });
            let out_len = if op.reduces() { rows } else { rows * len };
            let mut outs = Vec::new();
            for t in [&Threads::single(), &threads] {
                let mut out = vec![f32::NAN; out_len];
                lib.row_kernel(
                    id,
                    RowArgs {
                        x: &x,
                        rows,
                        row_len: len,
                        out: &mut out,
                        gain: is_ln.then_some(gain.as_slice()),
                        bias: is_ln.then_some(bias.as_slice()),
                    },
                    t,
                )
                .unwrap();
                outs.push(out);
            }
            assert!(bits_equal(&outs[0], &outs[1]), "{isa} {op:?} {rows}x{len}");
            let per_row = if op.reduces() { 1 } else { len };
            for row in 0..rows {
                let want = row_reference(op, &x[row * len..(row + 1) * len], &gain, &bias);
                let got = &outs[0][row * per_row..(row + 1) * per_row];
                let scale = match op {
                    RowOp::Reduce(ReduceOp::Sum) => 8.0 * len as f64,
                    RowOp::Reduce(ReduceOp::Mean) => 8.0,
                    _ => 1.0,
                };
                for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
                    let tol =
                        4e-7 * (len as f64).sqrt().max(1.0) * w.abs().max(scale) + 1e-7 * scale;
                    assert!(
                        (g as f64 - w).abs() <= tol,
                        "{isa} {op:?} {rows}x{len} row {row} [{i}]: {g} vs {w} (tol {tol:e})"
                    );
                }
            }
        }
    }
}

#[test]
fn row_kernels_edge_cases() {
    for isa in tiers() {
        row_kernels_edge_cases_on(isa);
    }
}

fn row_kernels_edge_cases_on(isa: Isa) {
    let mut builder = builder_for(isa);
    let max = builder
        .add_row_kernel(RowOp::Reduce(ReduceOp::Max))
        .unwrap();
    let mean = builder
        .add_row_kernel(RowOp::Reduce(ReduceOp::Mean))
        .unwrap();
    let softmax = builder.add_row_kernel(RowOp::Softmax).unwrap();
    assert!(builder
        .add_row_kernel(RowOp::LayerNorm { eps: f32::NAN })
        .is_err());
    let lib = builder.finish().unwrap();
    let t = Threads::single();
    let run = |id, x: &[f32], rows, len, out: &mut [f32]| {
        lib.row_kernel(
            id,
            RowArgs {
                x,
                rows,
                row_len: len,
                out,
                gain: None,
                bias: None,
            },
            &t,
        )
    };
    // max propagates NaN anywhere in the row (numpy semantics).
    let mut out = [0.0f32; 2];
    run(
        max,
        &[1.0, f32::NAN, 3.0, 0.0, 5.0, 2.0, 7.0, 1.0, 9.0, 4.0],
        2,
        5,
        &mut out,
    )
    .unwrap();
    assert!(out[0].is_nan());
    assert_eq!(out[1], 9.0);
    // Empty rows: mean is NaN, max is an error.
    let mut out = [0.0f32; 3];
    run(mean, &[], 3, 0, &mut out).unwrap();
    assert!(out.iter().all(|v| v.is_nan()));
    assert!(run(max, &[], 3, 0, &mut out).is_err());
    // Large logits do not overflow softmax.
    let mut out = [0.0f32; 3];
    run(softmax, &[1000.0, 1000.0, -1000.0], 1, 3, &mut out).unwrap();
    assert_eq!(out, [0.5, 0.5, 0.0]);
    // A NaN anywhere in a row makes that whole row NaN, and only that row.
    for len in [3usize, 16, 37] {
        for at in [0, len / 2, len - 1] {
            let mut x: Vec<f32> = (0..2 * len).map(|i| (i % 7) as f32).collect();
            x[at] = f32::NAN;
            let mut out = vec![0.0f32; 2 * len];
            run(softmax, &x, 2, len, &mut out).unwrap();
            assert!(out[..len].iter().all(|v| v.is_nan()), "{isa} {len} {at}");
            assert!(out[len..].iter().all(|v| v.is_finite()), "{isa} {len} {at}");
        }
    }
    // Rows of every length up to three vectors and a half: nothing past the
    // rows is read (a NaN there would poison the last row) or written.
    for len in 1..=56usize {
        let rows = 3;
        let total = rows * len;
        let mut x: Vec<f32> = (0..total).map(|i| ((i * 7) % 11) as f32 - 5.0).collect();
        x.extend([f32::NAN; 16]);
        let mut out = vec![f32::NAN; total];
        out.extend([-7.0f32; 16]);
        let (head, guard) = out.split_at_mut(total);
        run(softmax, &x[..total], rows, len, head).unwrap();
        assert!(
            guard.iter().all(|&v| v == -7.0),
            "{isa} len {len}: wrote past the rows"
        );
        for row in head.chunks(len) {
            let sum: f32 = row.iter().sum();
            assert!(
                row.iter().all(|v| v.is_finite()),
                "{isa} len {len}: {row:?}"
            );
            assert!((sum - 1.0).abs() < 1e-5, "{isa} len {len}: sum {sum}");
        }
    }
}

// ---------------------------------------------------------------- library

#[test]
fn no_fma_no_avx_gemm_is_correct() {
    let options = CodegenOptions {
        use_fma: false,
        use_avx: false,
        ..CodegenOptions::default()
    };
    let mut builder = KernelLibraryBuilder::with_options(&options).unwrap();
    assert!(!builder.features().fma && !builder.features().avx);
    let epilogue = Epilogue {
        bias: true,
        activation: Some(Activation::Gelu),
        residual: true,
    };
    let id = builder.add_gemm(epilogue).unwrap();
    let lib = builder.finish().unwrap();
    let p = Problem::new(4, 29, 301, 18);
    let mut r = rng(5);
    let bias = random_vec(&mut r, 18);
    let residual = random_vec(&mut r, 29 * 18);
    let c = run_gemm(&lib, id, &p, Some(&bias), Some(&residual), &two_threads());
    check_gemm(&p, &c, epilogue, Some(&bias), Some(&residual), "no fma");
}

#[test]
fn clif_text_is_deterministic() {
    let build = || {
        let mut builder = KernelLibraryBuilder::new().unwrap();
        builder
            .add_gemm(Epilogue {
                bias: true,
                activation: Some(Activation::Tanh),
                residual: false,
            })
            .unwrap();
        builder
            .add_elementwise(&unary_expr(UnaryOp::Erf), &[InnerStride::Contiguous])
            .unwrap();
        builder
            .add_row_kernel(RowOp::LayerNorm { eps: 1e-5 })
            .unwrap();
        builder.finish().unwrap()
    };
    let (a, b) = (build(), build());
    assert_eq!(a.clif_text(), b.clif_text());
    // The full-height micro-kernel of the tier the host runs by default.
    let full = match a.isa() {
        Isa::Baseline => "gemm_12x1",
        Isa::Avx2 => "gemm_avx2_6x1",
        Isa::Avx512 => "gemm_avx512_12x1",
    };
    assert!(a.clif_text().contains(&format!("; kernel {full}\n")));
    let tanh_pass = match a.isa() {
        Isa::Baseline => "gemm_epilogue_tanh".to_string(),
        isa => format!("gemm_{isa}_epilogue_tanh"),
    };
    assert!(a.clif_text().contains(&format!("; kernel {tanh_pass}\n")));
    assert!(a.kernels().iter().any(|k| k.name == "layer_norm_eps1e-5"));
}

/// The listing of an assembled wide-tier kernel, as `--dump-clif` prints
/// it: a change to kernel generation shows here as a reviewable diff.
#[test]
fn asm_snapshot_of_an_avx2_micro_kernel() {
    if !tiers().contains(&Isa::Avx2) {
        eprintln!("this CPU lacks the avx2 tier: no snapshot to compare");
        return;
    }
    let mut builder = builder_for(Isa::Avx2);
    builder.add_gemm(Epilogue::none()).unwrap();
    let lib = builder.finish().unwrap();
    let kernel = lib
        .kernels()
        .iter()
        .find(|k| k.name == "gemm_avx2_6x1")
        .expect("the 6-row AVX2 kernel");
    insta::assert_snapshot!(kernel.text());
}

/// The full-width erf-GELU epilogue (the tile pass) as assembled for AVX2:
/// the listing stops where the constant table starts.
#[test]
fn asm_snapshot_of_the_avx2_gelu_epilogue() {
    if !tiers().contains(&Isa::Avx2) {
        eprintln!("this CPU lacks the avx2 tier: no snapshot to compare");
        return;
    }
    let mut builder = builder_for(Isa::Avx2);
    builder
        .add_gemm(Epilogue {
            bias: true,
            activation: Some(Activation::Gelu),
            residual: true,
        })
        .unwrap();
    let lib = builder.finish().unwrap();
    let kernel = lib
        .kernels()
        .iter()
        .find(|k| k.name == "gemm_avx2_epilogue_gelu")
        .expect("the AVX2 GELU epilogue");
    insta::assert_snapshot!(kernel.text());
}

#[test]
fn clif_snapshot_of_a_select_kernel() {
    // No multiply-add in this expression, so its CLIF is the same with or
    // without FMA.
    let expr = ElementwiseExpr {
        steps: vec![
            ExprStep::Input(0),
            ExprStep::Input(1),
            ExprStep::Compare(CompareOp::Lt, 0, 1),
            ExprStep::Unary(UnaryOp::Neg, 1),
            ExprStep::Where(2, 0, 3),
        ],
    };
    let mut builder = KernelLibraryBuilder::new().unwrap();
    builder
        .add_elementwise(&expr, &[InnerStride::Contiguous, InnerStride::Broadcast])
        .unwrap();
    let lib = builder.finish().unwrap();
    insta::assert_snapshot!(lib.clif_text());
}

#[test]
fn library_can_be_shared_across_threads_and_dropped() {
    let mut builder = KernelLibraryBuilder::new().unwrap();
    let id = builder
        .add_elementwise(&unary_expr(UnaryOp::Exp), &[InnerStride::Contiguous])
        .unwrap();
    let lib = std::sync::Arc::new(builder.finish().unwrap());
    let handles: Vec<_> = (0..4)
        .map(|i| {
            let lib = lib.clone();
            std::thread::spawn(move || apply_unary(&lib, id, &[i as f32]))
        })
        .collect();
    for (i, h) in handles.into_iter().enumerate() {
        let y = h.join().unwrap()[0] as f64;
        assert!((y - (i as f64).exp()).abs() <= 3e-7 * (i as f64).exp());
    }
    // Build and drop many libraries: code memory is freed each time.
    for _ in 0..50 {
        let mut builder = KernelLibraryBuilder::new().unwrap();
        builder
            .add_elementwise(&unary_expr(UnaryOp::Exp), &[InnerStride::Contiguous])
            .unwrap();
        drop(builder.finish().unwrap());
    }
}

#[test]
fn disassembly_on_request_and_shared_pools() {
    let options = CodegenOptions {
        keep_disassembly: true,
        ..CodegenOptions::default()
    };
    let mut builder = KernelLibraryBuilder::with_options(&options).unwrap();
    let id = builder.add_gemm(Epilogue::none()).unwrap();
    let lib = builder.finish().unwrap();
    let full = match lib.isa() {
        Isa::Baseline => "gemm_12x1",
        Isa::Avx2 => "gemm_avx2_6x1",
        Isa::Avx512 => "gemm_avx512_12x1",
    };
    let main_kernel = lib.kernels().iter().find(|k| k.name == full).unwrap();
    let asm = main_kernel.disassembly.as_deref().unwrap();
    if lib.features().fma {
        assert!(
            asm.contains("vfmadd"),
            "the micro-kernel uses fused multiply-adds:\n{asm}"
        );
    }
    // A caller-owned rayon pool works like a dedicated one.
    let pool = std::sync::Arc::new(
        rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap(),
    );
    let shared = Threads::from_pool(pool);
    assert_eq!(shared.count(), 2);
    let p = Problem::new(21, 200, 150, 130);
    let a = run_gemm(&lib, id, &p, None, None, &shared);
    let b = run_gemm(&lib, id, &p, None, None, &Threads::single());
    assert!(bits_equal(&a, &b));
    assert!(Threads::new(0).is_err());
    assert_eq!(Threads::new(1).unwrap().count(), 1);
}
