//! Seeded parameter initializers.
//!
//! Every random initializer draws from a ChaCha8 stream keyed by the
//! declared seed *and* a hash of the parameter's full name, so `fc1.weight`
//! and `fc2.weight` declared with the same `xavier(seed=7)` in a shared block
//! get different values, and a given (seed, name, shape) gives the same
//! values on every run and platform.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;

use crate::ir::Init;
use crate::tensor::Tensor;

/// FNV-1a, 64 bit. Used instead of std's hasher because its output is
/// specified, so generated values cannot change with the Rust version.
pub fn fnv1a_64(bytes: &[u8]) -> u64 {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes.iter().fold(OFFSET_BASIS, |hash, &b| {
        (hash ^ b as u64).wrapping_mul(PRIME)
    })
}

/// The random stream for one parameter: the seed and the name hash fill
/// separate halves of the key, so distinct (seed, name hash) pairs never
/// share a stream.
fn stream(seed: u64, param_name: &str) -> ChaCha8Rng {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    key[8..16].copy_from_slice(&fnv1a_64(param_name.as_bytes()).to_le_bytes());
    ChaCha8Rng::from_seed(key)
}

/// (fan_in, fan_out) for an `x @ W` weight of shape `[.., in, out]`, or
/// for a rank-4 weight, a `conv2d` kernel `[out, in, kh, kw]` (PyTorch's
/// layout: each output sums `in * kh * kw` products); a vector counts as
/// both; never 0, so scales stay finite for empty shapes.
pub fn fans(shape: &[usize]) -> (usize, usize) {
    let (fan_in, fan_out) = match shape {
        [] => (1, 1),
        [n] => (*n, *n),
        [out, inp, kh, kw] => {
            let taps = kh.saturating_mul(*kw);
            (inp.saturating_mul(taps), out.saturating_mul(taps))
        }
        [.., fan_in, fan_out] => (*fan_in, *fan_out),
    };
    (fan_in.max(1), fan_out.max(1))
}

/// The values of a parameter declared `param <param_name>: f32[shape] = <init>`.
pub fn materialize(init: &Init, param_name: &str, shape: &[usize]) -> Tensor {
    let count: usize = shape.iter().product();
    let (fan_in, fan_out) = fans(shape);
    let values = match init {
        Init::Zeros => vec![0.0; count],
        Init::Ones => vec![1.0; count],
        Init::Uniform { low, high, seed } => uniform(
            stream(*seed, param_name),
            low.0 as f64,
            high.0 as f64,
            count,
        ),
        Init::Normal { mean, std, seed } => normal(
            stream(*seed, param_name),
            mean.0 as f64,
            std.0 as f64,
            count,
        ),
        Init::Xavier { seed } => {
            let bound = (6.0 / (fan_in + fan_out) as f64).sqrt();
            uniform(stream(*seed, param_name), -bound, bound, count)
        }
        Init::He { seed } => {
            let std = (2.0 / fan_in as f64).sqrt();
            normal(stream(*seed, param_name), 0.0, std, count)
        }
    };
    Tensor::f32(shape.to_vec(), values)
}

/// `low + (high - low) * u` with u in [0, 1): written out rather than using
/// `rand::distr::Uniform`, which rejects `low >= high`; an initializer
/// never fails at run time.
fn uniform(mut rng: ChaCha8Rng, low: f64, high: f64, count: usize) -> Vec<f32> {
    (0..count)
        .map(|_| (low + (high - low) * rng.random::<f64>()) as f32)
        .collect()
}

fn normal(mut rng: ChaCha8Rng, mean: f64, std: f64, count: usize) -> Vec<f32> {
    (0..count)
        .map(|_| (mean + std * rng.sample::<f64, _>(StandardNormal)) as f32)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::Float;

    fn mean_std(v: &[f32]) -> (f64, f64) {
        let n = v.len() as f64;
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
        let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
        (mean, var.sqrt())
    }

    #[test]
    fn fnv1a_matches_the_published_test_vectors() {
        assert_eq!(fnv1a_64(b""), 0xcbf29ce484222325);
        assert_eq!(fnv1a_64(b"a"), 0xaf63dc4c8601ec8c);
        assert_eq!(fnv1a_64(b"foobar"), 0x85944171f73967e8);
    }

    #[test]
    fn fans_follow_the_x_at_w_layout() {
        assert_eq!(fans(&[64, 32]), (64, 32));
        assert_eq!(fans(&[4, 64, 32]), (64, 32));
        assert_eq!(fans(&[16, 8, 3, 3]), (72, 144));
        assert_eq!(fans(&[10]), (10, 10));
        assert_eq!(fans(&[]), (1, 1));
        assert_eq!(fans(&[0, 5]), (1, 5));
    }

    #[test]
    fn same_seed_and_name_repeat_different_names_differ() {
        let init = Init::Xavier { seed: 7 };
        let a = materialize(&init, "fc1.weight", &[16, 8]);
        let again = materialize(&init, "fc1.weight", &[16, 8]);
        let other = materialize(&init, "fc2.weight", &[16, 8]);
        let reseeded = materialize(&Init::Xavier { seed: 8 }, "fc1.weight", &[16, 8]);
        assert_eq!(a, again);
        assert_ne!(a.as_f32(), other.as_f32());
        assert_ne!(a.as_f32(), reseeded.as_f32());
    }

    #[test]
    fn values_are_pinned_across_runs_and_platforms() {
        // If this fails, the generator, key layout or hash changed: every
        // model initialised from a seed would silently produce new values.
        let t = materialize(
            &Init::Uniform {
                low: Float(0.0),
                high: Float(1.0),
                seed: 1,
            },
            "w",
            &[4],
        );
        assert_eq!(
            t.as_f32().unwrap(),
            [0.2728846, 0.2682062, 0.7729886, 0.45261136]
        );
        let t = materialize(
            &Init::Normal {
                mean: Float(0.0),
                std: Float(1.0),
                seed: 1,
            },
            "w",
            &[3],
        );
        assert_eq!(t.as_f32().unwrap(), [-0.5752189, -0.41768095, 0.56936926]);
    }

    #[test]
    fn xavier_is_uniform_with_the_glorot_bound() {
        let (fan_in, fan_out) = (300, 200);
        let t = materialize(
            &Init::Xavier { seed: 3 },
            "layer.weight",
            &[fan_in, fan_out],
        );
        let v = t.as_f32().unwrap();
        let bound = (6.0 / (fan_in + fan_out) as f64).sqrt();
        assert!(v.iter().all(|&x| (x as f64).abs() <= bound));
        let (mean, std) = mean_std(v);
        // U(-a, a) has std a / sqrt(3).
        assert!(mean.abs() < 0.01 * bound, "mean {mean}");
        assert!(
            (std - bound / 3f64.sqrt()).abs() < 0.01 * bound,
            "std {std}"
        );
        // Both ends of the interval are reached, not only the middle.
        let max = v.iter().cloned().fold(f32::MIN, f32::max) as f64;
        assert!(max > 0.99 * bound);
    }

    #[test]
    fn he_is_normal_with_the_kaiming_std() {
        let t = materialize(&Init::He { seed: 5 }, "conv.weight", &[512, 256]);
        let (mean, std) = mean_std(t.as_f32().unwrap());
        let target = (2.0f64 / 512.0).sqrt();
        assert!(mean.abs() < 0.01 * target, "mean {mean}");
        assert!((std / target - 1.0).abs() < 0.01, "std {std} vs {target}");
    }

    #[test]
    fn uniform_and_normal_honour_their_parameters() {
        let init = Init::Uniform {
            low: Float(2.0),
            high: Float(4.0),
            seed: 1,
        };
        let v = materialize(&init, "u", &[100_000]);
        let v = v.as_f32().unwrap();
        assert!(v.iter().all(|&x| (2.0..4.0).contains(&x)));
        let (mean, _) = mean_std(v);
        assert!((mean - 3.0).abs() < 0.01);

        let init = Init::Normal {
            mean: Float(-1.0),
            std: Float(0.5),
            seed: 1,
        };
        let n = materialize(&init, "n", &[100_000]);
        let (mean, std) = mean_std(n.as_f32().unwrap());
        assert!((mean + 1.0).abs() < 0.01, "mean {mean}");
        assert!((std - 0.5).abs() < 0.01, "std {std}");
    }

    #[test]
    fn constant_initializers_fill_the_shape() {
        let z = materialize(&Init::Zeros, "b", &[2, 3]);
        assert_eq!(z.shape(), &[2, 3]);
        assert!(z.as_f32().unwrap().iter().all(|&x| x == 0.0));
        let o = materialize(&Init::Ones, "g", &[5]);
        assert!(o.as_f32().unwrap().iter().all(|&x| x == 1.0));
        assert_eq!(materialize(&Init::He { seed: 1 }, "s", &[]).len(), 1);
    }
}
