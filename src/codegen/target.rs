//! The CPU kernels are generated for: its ISA features, detected once, and
//! the kernel tier chosen from them.
//!
//! Tiers, best first: `avx512` (zmm GEMM micro-kernels assembled at model
//! compile time), `avx2` (ymm micro-kernels), `baseline` (Cranelift's f32x4
//! kernels, which run on any host Cranelift supports). The best tier the
//! CPU has is the default; `LAMINA_ISA` (or an explicit request, e.g. the
//! CLI's `--isa`) may lower it, never raise it past what the CPU runs.

use std::fmt;
use std::str::FromStr;
use std::sync::OnceLock;

/// The environment variable that lowers the default tier.
pub const ISA_ENV: &str = "LAMINA_ISA";

/// A kernel tier. Ordered: `Baseline < Avx2 < Avx512`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Isa {
    /// Cranelift f32x4 kernels (SSE/AVX-128 on x86-64, NEON on aarch64).
    Baseline,
    /// 256-bit AVX2 + FMA micro-kernels.
    Avx2,
    /// 512-bit AVX-512F micro-kernels.
    Avx512,
}

impl Isa {
    /// Every tier, best first.
    pub const ALL: [Isa; 3] = [Isa::Avx512, Isa::Avx2, Isa::Baseline];

    pub fn name(self) -> &'static str {
        match self {
            Isa::Baseline => "baseline",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
        }
    }

    /// Bits of one vector register the tier's GEMM kernels use.
    pub fn vector_bits(self) -> usize {
        match self {
            Isa::Baseline => 128,
            Isa::Avx2 => 256,
            Isa::Avx512 => 512,
        }
    }
}

impl fmt::Display for Isa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a tier cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("unknown ISA tier `{0}` (expected avx512, avx2 or baseline)")]
    UnknownIsa(String),
    #[error("this CPU cannot run the `{requested}` tier (best available: {best})")]
    NotSupported { requested: Isa, best: Isa },
}

impl FromStr for Isa {
    type Err = TargetError;

    fn from_str(s: &str) -> Result<Isa, TargetError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "avx512" | "avx-512" => Ok(Isa::Avx512),
            "avx2" => Ok(Isa::Avx2),
            "baseline" | "cranelift" => Ok(Isa::Baseline),
            _ => Err(TargetError::UnknownIsa(s.to_string())),
        }
    }
}

/// Who made the CPU and its family number: the FMA width behind AVX-512
/// differs by both (below).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Vendor {
    Intel,
    /// AMD, with its `cpu family` (25: Zen 3/4, 26: Zen 5).
    Amd {
        family: u32,
    },
    #[default]
    Other,
}

impl Vendor {
    /// From Linux's /proc/cpuinfo (`Other` where that is absent).
    fn detect() -> Vendor {
        let Ok(text) = std::fs::read_to_string("/proc/cpuinfo") else {
            return Vendor::Other;
        };
        Vendor::parse(&text)
    }

    /// The first processor's `vendor_id` and `cpu family` lines.
    fn parse(cpuinfo: &str) -> Vendor {
        let field = |name: &str| {
            cpuinfo.lines().find_map(|l| {
                let (key, value) = l.split_once(':')?;
                (key.trim() == name).then(|| value.trim())
            })
        };
        match field("vendor_id") {
            Some("GenuineIntel") => Vendor::Intel,
            Some("AuthenticAMD") => Vendor::Amd {
                family: field("cpu family")
                    .and_then(|f| f.parse().ok())
                    .unwrap_or(0),
            },
            _ => Vendor::Other,
        }
    }
}

/// ISA extensions the tiers depend on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuFeatures {
    pub avx: bool,
    pub avx2: bool,
    pub fma: bool,
    pub avx512f: bool,
    pub avx512bw: bool,
    pub avx512dq: bool,
    pub avx512vl: bool,
    pub vendor: Vendor,
}

impl CpuFeatures {
    #[cfg(target_arch = "x86_64")]
    fn detect() -> CpuFeatures {
        CpuFeatures {
            avx: std::is_x86_feature_detected!("avx"),
            avx2: std::is_x86_feature_detected!("avx2"),
            fma: std::is_x86_feature_detected!("fma"),
            avx512f: std::is_x86_feature_detected!("avx512f"),
            avx512bw: std::is_x86_feature_detected!("avx512bw"),
            avx512dq: std::is_x86_feature_detected!("avx512dq"),
            avx512vl: std::is_x86_feature_detected!("avx512vl"),
            vendor: Vendor::detect(),
        }
    }

    #[cfg(not(target_arch = "x86_64"))]
    fn detect() -> CpuFeatures {
        CpuFeatures::default()
    }

    /// Peak f32 flop/cycle of one core (two FMA pipes): 64 with two
    /// 512-bit FMA units (Intel server cores with AVX-512, a few Intel parts
    /// have one, and then this overstates; AMD Zen 5, family 26, whose
    /// server and desktop parts have full-width pipes: the mobile ones do
    /// not), 32 with 256-bit FMAs (AVX2, and AMD Zen 4, which runs a zmm FMA
    /// as two halves), 16 without.
    pub fn peak_flops_per_cycle(&self) -> f64 {
        let full_width_avx512 = match self.vendor {
            Vendor::Intel => true,
            Vendor::Amd { family } => family >= 26,
            Vendor::Other => false,
        };
        if self.avx512f && self.fma && full_width_avx512 {
            64.0
        } else if self.fma && (self.avx2 || self.avx512f) {
            32.0
        } else {
            16.0
        }
    }

    /// The best tier these features run. The wide kernels are x86-64
    /// machine code and use FMA in every tier.
    pub fn best_isa(&self) -> Isa {
        if !cfg!(target_arch = "x86_64") || !(self.avx && self.fma) {
            Isa::Baseline
        } else if self.avx512f {
            Isa::Avx512
        } else if self.avx2 {
            Isa::Avx2
        } else {
            Isa::Baseline
        }
    }
}

/// Data cache sizes in bytes (per core for L1/L2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheSizes {
    pub l1d: usize,
    pub l2: usize,
    pub l3: usize,
}

impl CacheSizes {
    /// Zen 4 / recent Intel sizes: used when the OS does not say.
    const FALLBACK: CacheSizes = CacheSizes {
        l1d: 32 * 1024,
        l2: 1024 * 1024,
        l3: 32 * 1024 * 1024,
    };

    /// From Linux's sysfs cache description of CPU 0, each level falling
    /// back to `FALLBACK` when absent or unreadable.
    fn detect() -> CacheSizes {
        let mut sizes = Self::FALLBACK;
        for index in 0..8 {
            let dir = format!("/sys/devices/system/cpu/cpu0/cache/index{index}");
            let read = |name: &str| std::fs::read_to_string(format!("{dir}/{name}")).ok();
            let (Some(level), Some(kind), Some(size)) = (read("level"), read("type"), read("size"))
            else {
                continue;
            };
            let Some(bytes) = parse_cache_size(&size) else {
                continue;
            };
            match (level.trim(), kind.trim()) {
                ("1", "Data") => sizes.l1d = bytes,
                ("2", _) => sizes.l2 = bytes,
                ("3", _) => sizes.l3 = bytes,
                _ => {}
            }
        }
        sizes
    }
}

/// `"32K"`, `"1024K"`, `"32M"` or a plain byte count.
fn parse_cache_size(text: &str) -> Option<usize> {
    let text = text.trim();
    let (digits, scale) = match text.as_bytes().last()? {
        b'K' | b'k' => (&text[..text.len() - 1], 1024),
        b'M' | b'm' => (&text[..text.len() - 1], 1024 * 1024),
        _ => (text, 1),
    };
    digits.parse::<usize>().ok()?.checked_mul(scale)
}

/// The CPU kernels are generated for, and the tier chosen for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Target {
    pub features: CpuFeatures,
    pub caches: CacheSizes,
    /// The tier kernels are generated for (at most `features.best_isa()`).
    pub isa: Isa,
}

impl Target {
    /// The host as detected (once per process), at its best tier; the
    /// environment is not consulted.
    pub fn detected() -> Target {
        static HOST: OnceLock<Target> = OnceLock::new();
        *HOST.get_or_init(|| {
            let features = CpuFeatures::detect();
            Target {
                features,
                caches: CacheSizes::detect(),
                isa: features.best_isa(),
            }
        })
    }

    /// The host at the tier `LAMINA_ISA` asks for (when set), else at its
    /// best tier. A value the CPU cannot run, or an unknown name, is an error.
    pub fn from_env() -> Result<Target, TargetError> {
        match std::env::var(ISA_ENV) {
            Ok(value) if !value.trim().is_empty() => Target::detected().with_isa(value.parse()?),
            _ => Ok(Target::detected()),
        }
    }

    /// `from_env`, or the detected best tier when `LAMINA_ISA` is invalid
    /// (for infallible defaults; fallible entry points report the error).
    pub(crate) fn from_env_or_detected() -> Target {
        Target::from_env().unwrap_or_else(|_| Target::detected())
    }

    /// The same CPU at a lower (or equal) tier.
    pub fn with_isa(&self, isa: Isa) -> Result<Target, TargetError> {
        let best = self.features.best_isa();
        if isa > best {
            return Err(TargetError::NotSupported {
                requested: isa,
                best,
            });
        }
        Ok(Target { isa, ..*self })
    }

    /// Every tier this CPU runs, best first (always ends with `Baseline`).
    pub fn supported_isas(&self) -> Vec<Isa> {
        let best = self.features.best_isa();
        Isa::ALL.into_iter().filter(|&i| i <= best).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tiers_and_rejects_others() {
        assert_eq!("avx512".parse::<Isa>(), Ok(Isa::Avx512));
        assert_eq!("AVX2".parse::<Isa>(), Ok(Isa::Avx2));
        assert_eq!("baseline".parse::<Isa>(), Ok(Isa::Baseline));
        assert_eq!(
            "sse9".parse::<Isa>(),
            Err(TargetError::UnknownIsa("sse9".into()))
        );
        for isa in Isa::ALL {
            assert_eq!(isa.name().parse::<Isa>(), Ok(isa));
        }
    }

    #[test]
    fn tiers_lower_but_never_raise() {
        let baseline_only = Target {
            features: CpuFeatures {
                avx: true,
                fma: true,
                ..CpuFeatures::default()
            },
            caches: CacheSizes::FALLBACK,
            isa: Isa::Baseline,
        };
        assert_eq!(baseline_only.supported_isas(), vec![Isa::Baseline]);
        assert_eq!(
            baseline_only.with_isa(Isa::Avx2),
            Err(TargetError::NotSupported {
                requested: Isa::Avx2,
                best: Isa::Baseline
            })
        );
        let host = Target::detected();
        for isa in host.supported_isas() {
            assert_eq!(host.with_isa(isa).map(|t| t.isa), Ok(isa));
        }
        assert_eq!(host.supported_isas().last(), Some(&Isa::Baseline));
        assert_eq!(host.supported_isas()[0], host.isa);
    }

    #[test]
    fn vendor_and_family_parse_from_cpuinfo() {
        let zen5 = "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 26\nmodel\t\t: 2\n";
        assert_eq!(Vendor::parse(zen5), Vendor::Amd { family: 26 });
        let intel = "processor\t: 0\nvendor_id\t: GenuineIntel\ncpu family\t: 6\n";
        assert_eq!(Vendor::parse(intel), Vendor::Intel);
        assert_eq!(Vendor::parse(""), Vendor::Other);
        let with = |vendor| CpuFeatures {
            avx: true,
            avx2: true,
            fma: true,
            avx512f: true,
            vendor,
            ..CpuFeatures::default()
        };
        assert_eq!(
            with(Vendor::Amd { family: 26 }).peak_flops_per_cycle(),
            64.0
        );
        assert_eq!(
            with(Vendor::Amd { family: 25 }).peak_flops_per_cycle(),
            32.0
        );
        assert_eq!(with(Vendor::Intel).peak_flops_per_cycle(), 64.0);
    }

    #[test]
    fn cache_sizes_parse() {
        assert_eq!(parse_cache_size("32K\n"), Some(32 * 1024));
        assert_eq!(parse_cache_size("1024K"), Some(1024 * 1024));
        assert_eq!(parse_cache_size("32M"), Some(32 * 1024 * 1024));
        assert_eq!(parse_cache_size("512"), Some(512));
        assert_eq!(parse_cache_size("x"), None);
        let c = Target::detected().caches;
        assert!(c.l1d >= 4096 && c.l2 >= c.l1d, "{c:?}");
    }
}
