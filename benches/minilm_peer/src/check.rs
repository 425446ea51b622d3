//! Do both engines compute the same embeddings? candle against lamina's JIT,
//! lamina's interpreter and the float64 numpy reference, batched and alone.

use crate::candle_side::CandleMiniLm;
use crate::inputs::{Files, Tokens};
use crate::lamina_side::{run_jit, LaminaMiniLm};
use crate::BenchError;

const DIM: usize = 384;

/// Largest |a - b| and smallest per-row cosine of two `[rows, 384]` sets.
#[derive(Clone, Copy, Debug)]
pub struct Agreement {
    pub max_abs_diff: f64,
    pub min_cosine: f64,
}

pub fn agreement(a: &[f64], b: &[f64]) -> Result<Agreement, BenchError> {
    if a.len() != b.len() || a.len() % DIM != 0 {
        return Err(BenchError::Shape(format!(
            "comparing {} values with {}",
            a.len(),
            b.len()
        )));
    }
    let mut max_abs_diff: f64 = 0.0;
    let mut min_cosine = f64::INFINITY;
    for (ra, rb) in a.chunks(DIM).zip(b.chunks(DIM)) {
        let dot: f64 = ra.iter().zip(rb).map(|(x, y)| x * y).sum();
        let na = ra.iter().map(|x| x * x).sum::<f64>().sqrt();
        let nb = rb.iter().map(|x| x * x).sum::<f64>().sqrt();
        min_cosine = min_cosine.min(dot / (na * nb));
        max_abs_diff = ra
            .iter()
            .zip(rb)
            .map(|(x, y)| (x - y).abs())
            .fold(max_abs_diff, f64::max);
    }
    Ok(Agreement {
        max_abs_diff,
        min_cosine,
    })
}

fn widen(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| f64::from(x)).collect()
}

/// Prints the agreement table; fails if candle and lamina disagree beyond
/// the bars (cosine >= 0.99999, max |diff| <= 1e-4).
pub fn check(files: &Files) -> Result<(), BenchError> {
    let sentences = files.sentences()?;
    let twelve = sentences
        .get(..12)
        .ok_or(BenchError::TooFewSentences(sentences.len()))?;
    let tokens = Tokens::encode(&files.tokenizer, twelve)?;
    let inputs = tokens.lamina_inputs();

    let candle = CandleMiniLm::load(&files.weights)?;
    let lamina = LaminaMiniLm::load(files)?;
    let jit = lamina.jit(1)?;

    let candle_batch = widen(&candle.embed(&candle.batch(&tokens)?)?);
    let jit_batch = widen(&run_jit(&jit, &inputs)?);
    let interp_batch = widen(&lamina.interpret(&inputs)?);
    let reference = lamina::runtime::read_npy(&files.reference_embeddings)?.to_f64_vec();

    // Each sentence alone: no padding, a plan of its own length.
    let mut candle_alone = Vec::new();
    let mut jit_alone = Vec::new();
    for text in twelve {
        let one = Tokens::encode(&files.tokenizer, std::slice::from_ref(text))?;
        candle_alone.extend(widen(&candle.embed(&candle.batch(&one)?)?));
        jit_alone.extend(widen(&run_jit(&jit, &one.lamina_inputs())?));
    }

    let rows = [
        (
            "candle vs lamina JIT, batch of 12",
            &candle_batch,
            &jit_batch,
        ),
        (
            "candle vs lamina interpreter, batch of 12",
            &candle_batch,
            &interp_batch,
        ),
        (
            "candle vs lamina JIT, each sentence alone",
            &candle_alone,
            &jit_alone,
        ),
        (
            "candle vs numpy float64 reference, batch of 12",
            &candle_batch,
            &reference,
        ),
        (
            "lamina JIT vs numpy float64 reference, batch of 12",
            &jit_batch,
            &reference,
        ),
        (
            "candle batch of 12 vs candle alone",
            &candle_batch,
            &candle_alone,
        ),
    ];
    println!("| comparison | max abs diff | min cosine |");
    println!("| --- | --- | --- |");
    let mut worst_candle_lamina: f64 = 0.0;
    for (i, (what, a, b)) in rows.iter().enumerate() {
        let ag = agreement(a, b)?;
        println!(
            "| {what} | {:.2e} | {:.9} |",
            ag.max_abs_diff, ag.min_cosine
        );
        if i < 3 {
            worst_candle_lamina = worst_candle_lamina.max(ag.max_abs_diff);
            if ag.min_cosine < 0.99999 {
                return Err(BenchError::Disagree(format!(
                    "{what}: cosine {}",
                    ag.min_cosine
                )));
            }
        }
    }
    if worst_candle_lamina > 1e-4 {
        return Err(BenchError::Disagree(format!(
            "candle and lamina differ by {worst_candle_lamina:e}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agreement_finds_the_largest_difference_and_the_worst_row() {
        let mut a = vec![0.0; 2 * DIM];
        a[0] = 1.0;
        a[DIM + 1] = 1.0;
        let mut b = a.clone();
        b[DIM] = 1.0; // second row now at 45 degrees to a's
        let ag = agreement(&a, &b).unwrap();
        assert_eq!(ag.max_abs_diff, 1.0);
        assert!((ag.min_cosine - std::f64::consts::FRAC_1_SQRT_2).abs() < 1e-12);
    }

    #[test]
    fn agreement_refuses_mismatched_lengths() {
        assert!(agreement(&[0.0; DIM], &[0.0; 2 * DIM]).is_err());
    }
}
