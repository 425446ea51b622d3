//! The driver that runs a fuzz target without libFuzzer (`cargo build
//! --no-default-features`): the same check function, fed first every file of
//! the corpus directories given, then random mutations of them until the
//! time budget runs out. No coverage feedback, so it finds less than
//! libFuzzer; it exists so the targets run where libFuzzer cannot be built.
//!
//! Usage: `TARGET [--seconds N] [--seed S] DIR...` (N = 0: corpus only).
//! A panicking input is written to `artifacts/TARGET/crash-<hash>` before
//! the process aborts, as libFuzzer does, so the same file reproduces it:
//! `TARGET --seconds 0 artifacts/TARGET/crash-<hash>`.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

static CURRENT: Mutex<Vec<u8>> = Mutex::new(Vec::new());

fn collect(path: &Path, out: &mut Vec<Vec<u8>>) {
    if path.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        entries.sort();
        for entry in entries {
            collect(&entry, out);
        }
    } else if let Ok(bytes) = std::fs::read(path) {
        out.push(bytes);
    }
}

/// Model-text-shaped edits: byte flips, deletions, duplicated ranges and
/// splices from another corpus file, so most mutants stay near valid text.
fn mutate(rng: &mut ChaCha8Rng, corpus: &[Vec<u8>]) -> Vec<u8> {
    let mut data = corpus.choose(rng).cloned().unwrap_or_default();
    for _ in 0..rng.random_range(1..=4) {
        let len = data.len();
        match rng.random_range(0..6) {
            0 if len > 0 => {
                let i = rng.random_range(0..len);
                data[i] = *b" \n{}()[],=:.-+*/@#0123456789abxyz_\""
                    .choose(rng)
                    .unwrap();
            }
            1 if len > 0 => {
                let i = rng.random_range(0..len);
                let j = (i + rng.random_range(1..16)).min(len);
                data.drain(i..j);
            }
            2 if len > 0 => {
                let i = rng.random_range(0..len);
                let j = (i + rng.random_range(1..64)).min(len);
                let piece = data[i..j].to_vec();
                let at = rng.random_range(0..=len);
                data.splice(at..at, piece);
            }
            3 => {
                let other = corpus.choose(rng).cloned().unwrap_or_default();
                if !other.is_empty() {
                    let i = rng.random_range(0..other.len());
                    let j = (i + rng.random_range(1..128)).min(other.len());
                    let at = rng.random_range(0..=len);
                    data.splice(at..at, other[i..j].iter().copied());
                }
            }
            4 if len > 0 => {
                let i = rng.random_range(0..len);
                data[i] = rng.random();
            }
            _ => {
                let number = ["0", "1", "-1", "65536", "4294967296", "1e38", "nan"]
                    .choose(rng)
                    .unwrap();
                let at = rng.random_range(0..=len);
                data.splice(at..at, number.bytes());
            }
        }
    }
    data
}

/// Runs `check` as described in the module comment.
pub fn standalone(target: &str, check: fn(&[u8])) {
    let mut seconds = 60u64;
    let mut seed = 1u64;
    let mut dirs = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--seconds" => {
                seconds = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--seconds N")
            }
            "--seed" => seed = args.next().and_then(|v| v.parse().ok()).expect("--seed S"),
            _ => dirs.push(PathBuf::from(arg)),
        }
    }
    let mut corpus = Vec::new();
    for dir in &dirs {
        collect(dir, &mut corpus);
    }
    let artifacts = PathBuf::from("artifacts").join(target);
    let hook_dir = artifacts.clone();
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        previous(info);
        let data = CURRENT.lock().map(|d| d.clone()).unwrap_or_default();
        let mut h = std::collections::hash_map::DefaultHasher::new();
        data.hash(&mut h);
        let path = hook_dir.join(format!("crash-{:016x}", h.finish()));
        let _ = std::fs::create_dir_all(&hook_dir);
        let _ = std::fs::write(&path, &data);
        eprintln!("the failing input is in {}", path.display());
        std::process::abort();
    }));
    let run = |data: &[u8]| {
        *CURRENT.lock().unwrap() = data.to_vec();
        check(data);
    };
    for input in &corpus {
        run(input);
    }
    eprintln!("{target}: {} corpus inputs ok", corpus.len());
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let start = Instant::now();
    let mut runs = 0u64;
    while start.elapsed() < Duration::from_secs(seconds) {
        let data = mutate(&mut rng, &corpus);
        run(&data);
        runs += 1;
    }
    eprintln!(
        "{target}: {runs} mutated inputs ok in {:.0} s (seed {seed})",
        start.elapsed().as_secs_f64()
    );
}

/// The main function of a target in both builds.
#[macro_export]
macro_rules! target {
    ($name:literal, $check:path) => {
        #[cfg(feature = "libfuzzer")]
        libfuzzer_sys::fuzz_target!(|data: &[u8]| $check(data));

        #[cfg(not(feature = "libfuzzer"))]
        fn main() {
            lamina_fuzz::standalone($name, $check);
        }
    };
}
