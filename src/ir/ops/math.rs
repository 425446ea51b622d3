//! Per-element f64 semantics shared by the op files: the special functions
//! (erf, gelu), numpy's NaN-propagating max/min, and the binary and
//! comparison ops, used by the plain elementwise nodes and `FusedElementwise`
//! alike, so that a fused expression gives bit-for-bit the values of the
//! unfused graph.
//!
//! Every f32 op is computed in f64 and rounded once to f32. For `+ - * /`
//! and `sqrt` that is exactly the f32 result; for the transcendental ops it
//! is the correctly rounded value in all but rare ties, which makes the
//! oracle at least as accurate as any f32 fast path.

use super::{BinaryOp, CompareOp};

const FRAC_2_SQRT_PI: f64 = std::f64::consts::FRAC_2_SQRT_PI;
const SQRT_PI: f64 = 1.772_453_850_905_516;

/// Below this |x| the power series for erf is used, above it the continued
/// fraction for erfc; both reach full f64 accuracy on their side.
const SERIES_LIMIT: f64 = 2.5;

/// Depth of the erfc continued fraction. At x = 2.5 it has converged to
/// about 1e-16; larger x converge faster.
const CONTINUED_FRACTION_DEPTH: u32 = 60;

/// erf(x) = 2/sqrt(pi) exp(-x^2) sum_n 2^n x^(2n+1) / (1*3*...*(2n+1)).
///
/// Unlike the alternating Taylor series, every term has the sign of x, so
/// there is no cancellation; for |x| < 2.5 it converges in under 40 terms.
fn erf_series(x: f64) -> f64 {
    let x2 = x * x;
    let mut term = x;
    let mut sum = x;
    let mut n = 0.0;
    // The term ratio 2x^2/(2n+3) is below 1 once n > x^2, after which the
    // terms shrink geometrically; stop when they no longer change the sum.
    while term.abs() > sum.abs() * 1e-17 {
        n += 1.0;
        term *= 2.0 * x2 / (2.0 * n + 1.0);
        sum += term;
    }
    FRAC_2_SQRT_PI * (-x2).exp() * sum
}

/// erfc(x) = exp(-x^2)/sqrt(pi) / (x + (1/2)/(x + 1/(x + (3/2)/(x + ...)))),
/// for x >= SERIES_LIMIT, evaluated from the innermost level out.
fn erfc_continued_fraction(x: f64) -> f64 {
    let mut denominator = x;
    for n in (1..=CONTINUED_FRACTION_DEPTH).rev() {
        denominator = x + (f64::from(n) / 2.0) / denominator;
    }
    (-x * x).exp() / SQRT_PI / denominator
}

/// The error function in double precision (relative error about 1e-15).
pub fn erf(x: f64) -> f64 {
    if x.is_nan() {
        x
    } else if x.abs() < SERIES_LIMIT {
        erf_series(x)
    } else {
        // erfc(|x|) < 4e-4 here, so 1 - erfc loses no relative accuracy.
        (1.0 - erfc_continued_fraction(x.abs())).copysign(x)
    }
}

/// The complementary error function 1 - erf(x), accurate also where it is
/// tiny (large x), which `1 - erf(x)` is not.
pub fn erfc(x: f64) -> f64 {
    if x.is_nan() {
        x
    } else if x >= SERIES_LIMIT {
        erfc_continued_fraction(x)
    } else if x > -SERIES_LIMIT {
        1.0 - erf_series(x)
    } else {
        2.0 - erfc_continued_fraction(-x)
    }
}

/// gelu(x) = 0.5 x (1 + erf(x/sqrt 2)) = 0.5 x erfc(-x/sqrt 2); the erfc
/// form keeps full relative accuracy for very negative x.
pub fn gelu(x: f64) -> f64 {
    if x == f64::NEG_INFINITY {
        // The limit; the formula would give -inf * 0 = NaN.
        return -0.0;
    }
    0.5 * x * erfc(-x / std::f64::consts::SQRT_2)
}

/// 0.5 x (1 + tanh(u)), u = sqrt(2/pi) (x + 0.044715 x^3), computed as
/// x / (1 + e^{-2u}): the same function, but `1 + tanh(u)` cancels to 0
/// once tanh(u) rounds to -1 (x <= -8 in f64) where the true value is still
/// a normal f32 (gelu_tanh(-9) = -1.2e-28).
pub fn gelu_tanh(x: f64) -> f64 {
    if x == f64::NEG_INFINITY {
        // The limit; the formula would give -inf / inf = NaN.
        return -0.0;
    }
    let sqrt_2_over_pi = (2.0 / std::f64::consts::PI).sqrt();
    let u = sqrt_2_over_pi * (x + 0.044715 * x * x * x);
    x / (1.0 + (-2.0 * u).exp())
}

/// numpy's maximum/minimum: NaN in either operand gives NaN (Rust's
/// `f64::max` would drop it).
pub fn nan_max(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else if a >= b {
        a
    } else {
        b
    }
}

fn nan_min(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else if a <= b {
        a
    } else {
        b
    }
}

pub fn binary(op: BinaryOp, a: f32, b: f32) -> f32 {
    let (a, b) = (f64::from(a), f64::from(b));
    let y = match op {
        BinaryOp::Add => a + b,
        BinaryOp::Sub => a - b,
        BinaryOp::Mul => a * b,
        BinaryOp::Div => a / b,
        BinaryOp::Pow => a.powf(b),
        BinaryOp::Max => nan_max(a, b),
        BinaryOp::Min => nan_min(a, b),
    };
    y as f32
}

/// IEEE comparison, as numpy: every comparison with NaN is false except `!=`.
pub fn compare<T: PartialOrd>(op: CompareOp, a: T, b: T) -> bool {
    match op {
        CompareOp::Lt => a < b,
        CompareOp::Le => a <= b,
        CompareOp::Gt => a > b,
        CompareOp::Ge => a >= b,
        CompareOp::Eq => a == b,
        CompareOp::Ne => a != b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values of Python's `math.erf` / `math.erfc` (printed with repr).
    const ERF_REFERENCE: [(f64, f64); 9] = [
        (1e-8, 1.1283791670955126e-08),
        (0.1, 0.1124629160182849),
        (0.5, 0.5204998778130465),
        (1.0, 0.8427007929497149),
        (2.0, 0.9953222650189527),
        (2.4999, 0.9995928300996666),
        (2.5, 0.999593047982555),
        (3.5, 0.9999992569016276),
        (-1.5, -0.9661051464753108),
    ];
    const ERFC_REFERENCE: [(f64, f64); 4] = [
        (3.0, 2.2090496998585438e-05),
        (6.0, 2.1519736712498916e-17),
        (10.0, 2.088487583762545e-45),
        (-3.0, 1.9999779095030015),
    ];

    #[test]
    fn erf_matches_python_math_erf() {
        for (x, expected) in ERF_REFERENCE {
            let rel = (erf(x) - expected).abs() / expected.abs();
            assert!(
                rel < 1e-13,
                "erf({x}) = {} vs {expected} (rel {rel:e})",
                erf(x)
            );
        }
        for (x, expected) in ERFC_REFERENCE {
            let rel = (erfc(x) - expected).abs() / expected.abs();
            assert!(
                rel < 1e-12,
                "erfc({x}) = {} vs {expected} (rel {rel:e})",
                erfc(x)
            );
        }
    }

    #[test]
    fn erf_limits_and_nan() {
        assert_eq!(erf(0.0), 0.0);
        assert_eq!(erf(f64::INFINITY), 1.0);
        assert_eq!(erf(f64::NEG_INFINITY), -1.0);
        assert_eq!(erf(30.0), 1.0);
        assert_eq!(erfc(f64::INFINITY), 0.0);
        assert!(erf(f64::NAN).is_nan());
        assert!(erfc(f64::NAN).is_nan());
    }

    #[test]
    fn erf_is_odd_and_erfc_complements_it() {
        for i in -400..=400 {
            let x = f64::from(i) / 50.0;
            assert_eq!(erf(-x), -erf(x), "oddness at {x}");
            assert!((erf(x) + erfc(x) - 1.0).abs() < 4e-16, "erf + erfc at {x}");
        }
    }

    #[test]
    fn gelu_keeps_relative_accuracy_in_the_far_negative_tail() {
        // 0.5 * -10 * erfc(10 / sqrt 2), from Python's math.erfc.
        let expected = -7.619853024160593e-23;
        assert!((gelu(-10.0) - expected).abs() / expected.abs() < 1e-12);
    }

    #[test]
    fn gelus_at_the_infinities_are_their_limits() {
        for f in [gelu, gelu_tanh] {
            let y = f(f64::NEG_INFINITY);
            assert!(y == 0.0 && y.is_sign_negative(), "{y}");
            assert_eq!(f(f64::INFINITY), f64::INFINITY);
            assert!(f(f64::NAN).is_nan());
        }
    }

    #[test]
    fn gelu_tanh_keeps_relative_accuracy_in_the_far_negative_tail() {
        // 0.5 x (1 + tanh(u)) with 50 digits (mpmath), where f64's
        // 1 + tanh(u) has cancelled to 0.
        for (x, expected) in [
            (-9.0, -1.3364595947348725e-28),
            (-5.0, -2.291796196629506e-7),
            (3.0, 2.996362607918227),
        ] {
            let rel = (gelu_tanh(x) - expected).abs() / expected.abs();
            assert!(
                rel < 1e-12,
                "gelu_tanh({x}) = {} (rel {rel:e})",
                gelu_tanh(x)
            );
        }
    }

    #[test]
    fn relu_max_and_min_propagate_nan() {
        assert!(binary(BinaryOp::Max, f32::NAN, 1.0).is_nan());
        assert!(binary(BinaryOp::Max, 1.0, f32::NAN).is_nan());
        assert!(binary(BinaryOp::Min, 1.0, f32::NAN).is_nan());
        assert!(!compare(CompareOp::Eq, f32::NAN, f32::NAN));
        assert!(compare(CompareOp::Ne, f32::NAN, f32::NAN));
    }
}
