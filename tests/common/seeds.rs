//! Seeds for the randomised tests (`tests/jit_graphs.rs`,
//! `tests/passes_differential.rs`).
//!
//! Every run generates the same cases unless asked otherwise, so a failure
//! seen once is seen again:
//!
//! - `LAMINA_TEST_SEED=<u64>` picks another fixed set of cases (explore with
//!   a new number, reproduce with the one a failure printed);
//! - `PROPTEST_CASES=<n>` runs more (or fewer) cases than each test's
//!   default.
//!
//! Each failure message ends with the seed of the run and how to repeat it;
//! proptest also prints the shrunk inputs (generator seed, recipe, ...).
#![allow(dead_code)]

use proptest::test_runner::{Config, RngSeed, TestCaseError};

/// The seed used when `LAMINA_TEST_SEED` is not set.
pub const DEFAULT_SEED: u64 = 0x1a31_7a00_5eed_0001;

/// The seed of this run: `LAMINA_TEST_SEED` or the default. A value that
/// does not parse is a mistake worth stopping for, not a silent default.
pub fn run_seed() -> u64 {
    match std::env::var("LAMINA_TEST_SEED") {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("LAMINA_TEST_SEED={v:?} is not a u64")),
        Err(_) => DEFAULT_SEED,
    }
}

/// `default` cases, or `PROPTEST_CASES` when set.
pub fn cases(default: u32) -> u32 {
    match std::env::var("PROPTEST_CASES") {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("PROPTEST_CASES={v:?} is not a number")),
        Err(_) => default,
    }
}

/// A proptest configuration with the run's fixed seed, `cases(default)`
/// cases, and no regression files written into the source tree (the seed
/// reproduces a failure).
pub fn config(default_cases: u32, max_global_rejects: u32) -> Config {
    Config {
        cases: cases(default_cases),
        max_global_rejects,
        rng_seed: RngSeed::Fixed(run_seed()),
        failure_persistence: None,
        ..Config::default()
    }
}

/// `e` with the run's seed appended, so any failure says how to repeat it.
pub fn with_seed(e: TestCaseError) -> TestCaseError {
    match e {
        TestCaseError::Fail(reason) => TestCaseError::fail(format!(
            "{reason}\n(run seed {seed}: repeat with LAMINA_TEST_SEED={seed})",
            seed = run_seed()
        )),
        reject => reject,
    }
}
