//! `--isa` and `LAMINA_ISA`: unknown tiers are user errors (exit 1), every
//! tier the CPU runs gives the same answers within tolerance.

use std::process::Command;

use lamina::codegen::{Isa, Target};

const SGEMM: &str = "models/bench/sgemm.lam";
const DIGITS: &str = "models/digits/digits.lam";

fn lamina_env(args: &[&str], env: Option<(&str, &str)>) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lamina"));
    cmd.args(args).current_dir(env!("CARGO_MANIFEST_DIR"));
    cmd.env_remove("LAMINA_ISA");
    if let Some((k, v)) = env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("the lamina binary runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const BENCH: [&str; 12] = [
    "bench",
    SGEMM,
    "--bind",
    "m=5",
    "--bind",
    "k=7",
    "--bind",
    "n=9",
    "--runs",
    "1",
    "--min-time",
    "0",
];

#[test]
fn unknown_tiers_are_user_errors() {
    for sub in [&["run", DIGITS][..], &BENCH[..]] {
        let mut args = sub.to_vec();
        args.extend(["--isa", "sse9"]);
        let (code, _, stderr) = lamina_env(&args, None);
        assert_eq!(code, 1, "{args:?}: {stderr}");
        assert!(
            stderr.contains("--isa: unknown ISA tier `sse9`"),
            "{stderr}"
        );
        let (code, _, stderr) = lamina_env(sub, Some(("LAMINA_ISA", "avx1024")));
        assert_eq!(code, 1, "{sub:?}: {stderr}");
        assert!(stderr.contains("LAMINA_ISA: unknown ISA tier"), "{stderr}");
    }
}

#[test]
fn bench_runs_on_every_tier_the_cpu_has_and_names_it() {
    let supported = Target::detected().supported_isas();
    for isa in Isa::ALL {
        let mut args = BENCH.to_vec();
        args.extend(["--isa", isa.name()]);
        let (code, stdout, stderr) = lamina_env(&args, None);
        if supported.contains(&isa) {
            assert_eq!(code, 0, "{isa}: {stderr}");
            assert!(stdout.contains(&format!("({isa} kernels)")), "{stdout}");
            // The environment chooses the same tier.
            let (code, stdout, stderr) = lamina_env(&BENCH, Some(("LAMINA_ISA", isa.name())));
            assert_eq!(code, 0, "{isa}: {stderr}");
            assert!(stdout.contains(&format!("({isa} kernels)")), "{stdout}");
            // `run` takes the flag too, and every tier gives the same digits.
            let (code, stdout, stderr) = lamina_env(&["run", DIGITS, "--isa", isa.name()], None);
            assert_eq!(code, 0, "{isa}: {stderr}");
            let (_, best, _) = lamina_env(&["run", DIGITS], None);
            assert_eq!(stdout, best, "{isa} vs the default tier");
        } else {
            assert_eq!(code, 1, "{isa} is above this CPU: {stderr}");
            assert!(stderr.contains("cannot run"), "{stderr}");
        }
    }
}

#[test]
fn dump_asm_lists_the_assembled_kernels_of_the_tier() {
    let supported = Target::detected().supported_isas();
    for isa in supported {
        let (code, stdout, stderr) =
            lamina_env(&["run", DIGITS, "--isa", isa.name(), "--dump-asm"], None);
        assert_eq!(code, 0, "{isa}: {stderr}");
        let listing = stdout
            .lines()
            .filter(|line| line.contains("vfmadd231ps"))
            .count();
        match isa {
            // The GEMM micro-kernels of the wide tiers are assembled: their
            // multiply-adds are in the listing, each kernel also in
            // `--dump-clif`'s list (which has Cranelift's besides).
            Isa::Avx512 | Isa::Avx2 => {
                assert!(stdout.contains("; kernel gemm_"), "{isa}: {stdout}");
                assert!(listing > 0, "{isa}: no vfmadd231ps in {stdout}");
                let (_, clif, _) =
                    lamina_env(&["run", DIGITS, "--isa", isa.name(), "--dump-clif"], None);
                for kernel in stdout.lines().filter(|l| l.starts_with("; kernel ")) {
                    assert!(clif.contains(kernel), "{isa}: {kernel} not in --dump-clif");
                }
            }
            Isa::Baseline => assert!(!stdout.contains("; kernel"), "{isa}: {stdout}"),
        }
        // The outputs follow, as without the flag.
        let (_, plain, _) = lamina_env(&["run", DIGITS, "--isa", isa.name()], None);
        assert!(
            stdout.ends_with(&plain),
            "{isa}: outputs differ after the listing"
        );
    }
}
