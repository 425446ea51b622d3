//! The memory budget: how many bytes one model may hold at once.
//!
//! Sizes come from outside (declared shapes, `--bind` values, file
//! headers), so a model can ask for more memory than the machine has; the
//! allocator then aborts the process or the OOM killer ends it. Every place
//! that is about to allocate for a model (parameter initializers, the JIT's
//! arena, the interpreter's live values) first checks the total against a
//! budget and reports what needs the memory instead.

use crate::ir::ops::{Input, Param};
use std::collections::HashMap;
use std::sync::OnceLock;

use crate::ir::dim::checked_bytes;
use crate::ir::{Graph, NodeId, Op};

/// A limit in bytes, and where it came from (for the message).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryBudget {
    bytes: usize,
    origin: Origin,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Origin {
    /// A fraction of physical RAM, read from the OS.
    Machine,
    /// Given by the caller (`--max-memory`).
    Given,
    /// The OS did not say how much RAM there is.
    Unknown,
}

/// The share of physical RAM a model may use by default: the rest is left
/// for the OS, other processes and the allocator's slack.
const RAM_SHARE: (usize, usize) = (3, 4);

impl MemoryBudget {
    /// A budget of exactly `bytes`.
    pub fn new(bytes: usize) -> MemoryBudget {
        MemoryBudget {
            bytes,
            origin: Origin::Given,
        }
    }

    /// No limit beyond what can be addressed.
    pub fn unlimited() -> MemoryBudget {
        MemoryBudget {
            bytes: usize::MAX,
            origin: Origin::Unknown,
        }
    }

    /// Three quarters of the RAM this process may use (read once per
    /// process: /proc/meminfo, lowered by a cgroup memory limit, as a
    /// container sets); unlimited where the OS does not say.
    pub fn from_machine() -> MemoryBudget {
        static RAM: OnceLock<Option<usize>> = OnceLock::new();
        match *RAM.get_or_init(usable_ram) {
            Some(ram) => MemoryBudget {
                bytes: ram / RAM_SHARE.1 * RAM_SHARE.0,
                origin: Origin::Machine,
            },
            None => MemoryBudget::unlimited(),
        }
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Checks that holding all of `tensors` at once fits. `what` says what
    /// needs them ("the parameters", "running the model"); each tensor is
    /// a description and its size in bytes.
    pub fn check(&self, what: &str, tensors: &[(String, usize)]) -> Result<(), BudgetError> {
        let needed = tensors
            .iter()
            .fold(0usize, |acc, (_, b)| acc.saturating_add(*b));
        self.check_total(what, needed, tensors)
    }

    /// Like [`check`](Self::check) when the total is known otherwise (buffers
    /// that share memory): `tensors` only names the largest contributors.
    pub fn check_total(
        &self,
        what: &str,
        needed: usize,
        tensors: &[(String, usize)],
    ) -> Result<(), BudgetError> {
        if needed <= self.bytes {
            return Ok(());
        }
        let mut largest: Vec<(String, usize)> = tensors.to_vec();
        largest.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        largest.truncate(3);
        Err(BudgetError {
            what: what.to_string(),
            needed,
            budget: self.clone(),
            largest,
        })
    }

    fn describe(&self) -> String {
        match self.origin {
            Origin::Machine => {
                format!(
                "the memory budget of {} ({} of the RAM this process may use; change it with --max-memory)",
                format_bytes(self.bytes),
                if RAM_SHARE == (3, 4) { "3/4" } else { "a share" }
            )
            }
            Origin::Given => format!(
                "the memory budget of {} (--max-memory)",
                format_bytes(self.bytes)
            ),
            Origin::Unknown => "the memory this process can address".to_string(),
        }
    }
}

impl Default for MemoryBudget {
    fn default() -> MemoryBudget {
        MemoryBudget::from_machine()
    }
}

/// A model needs more memory than its budget allows.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "{what} needs {} of memory, more than {}; the largest tensors: {}",
    format_bytes(*.needed),
    .budget.describe(),
    .largest.iter().map(|(t, b)| format!("{t} ({})", format_bytes(*b))).collect::<Vec<_>>().join(", ")
)]
pub struct BudgetError {
    pub what: String,
    pub needed: usize,
    pub budget: MemoryBudget,
    /// The biggest contributors, largest first (at most three).
    pub largest: Vec<(String, usize)>,
}

/// Physical RAM, or less where a cgroup (a container, a systemd slice)
/// limits this process: exceeding that limit gets the process killed, not
/// an error.
fn usable_ram() -> Option<usize> {
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let limit = cgroup_limit_files(&cgroups)
        .iter()
        .filter_map(|file| std::fs::read_to_string(file).ok())
        .filter_map(|text| parse_cgroup_limit(&text))
        .min();
    match (physical_ram(), limit) {
        (Some(ram), Some(limit)) => Some(ram.min(limit)),
        (ram, limit) => ram.or(limit),
    }
}

/// The files that may hold this process's memory limit, from the lines of
/// /proc/self/cgroup (`ID:CONTROLLERS:PATH`): cgroup v2's `memory.max`
/// (empty controller list) and v1's `memory.limit_in_bytes`, each at the
/// process's own group and at the root a container shows it.
fn cgroup_limit_files(proc_self_cgroup: &str) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for line in proc_self_cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let path = path.trim_start_matches('/');
        let (root, file) = if controllers.is_empty() {
            ("/sys/fs/cgroup", "memory.max")
        } else if controllers.split(',').any(|c| c == "memory") {
            ("/sys/fs/cgroup/memory", "memory.limit_in_bytes")
        } else {
            continue;
        };
        let root = std::path::Path::new(root);
        files.push(root.join(path).join(file));
        files.push(root.join(file));
    }
    files
}

/// A cgroup limit in bytes; `max` (v2) and v1's "no limit" (a value near
/// `i64::MAX`) are no limit.
fn parse_cgroup_limit(text: &str) -> Option<usize> {
    let bytes: u64 = text.trim().parse().ok()?;
    (bytes < 1 << 60)
        .then(|| usize::try_from(bytes).ok())
        .flatten()
}

fn physical_ram() -> Option<usize> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: usize = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// Parses a size like `512M`, `8G`, `1.5G`, `64KiB` or `1000` (bytes).
/// Suffixes are binary (K = 1024); a trailing `B` or `iB` is allowed.
pub fn parse_size(text: &str) -> Result<usize, String> {
    let t = text.trim();
    let bad = || {
        format!("`{text}` is not a size: give bytes, or a number with K, M, G or T (e.g. 512M, 8G)")
    };
    let upper = t.to_ascii_uppercase();
    let upper = upper
        .strip_suffix("IB")
        .or_else(|| upper.strip_suffix('B'))
        .unwrap_or(&upper);
    let (number, shift) = match upper.chars().last() {
        Some('K') => (&upper[..upper.len() - 1], 10),
        Some('M') => (&upper[..upper.len() - 1], 20),
        Some('G') => (&upper[..upper.len() - 1], 30),
        Some('T') => (&upper[..upper.len() - 1], 40),
        _ => (upper, 0),
    };
    let value: f64 = number.trim().parse().map_err(|_| bad())?;
    if !value.is_finite() || value < 0.0 {
        return Err(bad());
    }
    let bytes = value * (1u64 << shift) as f64;
    if bytes >= usize::MAX as f64 {
        return Err(format!("`{text}` is larger than this machine can address"));
    }
    Ok(bytes as usize)
}

/// `1.5 GiB`, `512 B`: sizes for messages.
pub fn format_bytes(bytes: usize) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_suffixes() {
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("8G"), Ok(8 << 30));
        assert_eq!(parse_size("8GiB"), Ok(8 << 30));
        assert_eq!(parse_size("1.5g"), Ok(3 << 29));
        assert_eq!(parse_size("1000"), Ok(1000));
        assert_eq!(parse_size("64kb"), Ok(64 << 10));
        for bad in ["", "G", "-1G", "8X", "nanG", "1e30T"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn over_budget_names_the_largest_tensors() {
        let budget = MemoryBudget::new(1000);
        let tensors = vec![
            ("a".to_string(), 600),
            ("b".to_string(), 300),
            ("c".to_string(), 200),
            ("d".to_string(), 10),
        ];
        assert!(budget.check("x", &tensors[1..]).is_ok());
        let e = budget.check("running the model", &tensors).unwrap_err();
        assert_eq!(e.needed, 1110);
        assert_eq!(
            e.to_string(),
            "running the model needs 1.1 KiB of memory, more than the memory budget of 1000 B \
             (--max-memory); the largest tensors: a (600 B), b (300 B), c (200 B)"
        );
        let huge = vec![("w".to_string(), usize::MAX), ("v".to_string(), usize::MAX)];
        assert_eq!(budget.check("x", &huge).unwrap_err().needed, usize::MAX);
    }

    #[test]
    fn cgroup_limits_are_found_for_v1_and_v2_and_unlimited_is_none() {
        let files = cgroup_limit_files("4:memory:/job/7\n2:cpu:/\n0::/user.slice/app\n");
        let files: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
        assert_eq!(
            files,
            [
                "/sys/fs/cgroup/memory/job/7/memory.limit_in_bytes",
                "/sys/fs/cgroup/memory/memory.limit_in_bytes",
                "/sys/fs/cgroup/user.slice/app/memory.max",
                "/sys/fs/cgroup/memory.max",
            ]
        );
        assert_eq!(parse_cgroup_limit("536870912\n"), Some(512 << 20));
        assert_eq!(parse_cgroup_limit("max\n"), None);
        assert_eq!(parse_cgroup_limit("9223372036854771712\n"), None);
        assert_eq!(parse_cgroup_limit("garbage"), None);
    }

    #[test]
    fn the_machine_budget_is_positive() {
        assert!(MemoryBudget::from_machine().bytes() > 0);
    }
}

/// Every tensor of a concrete graph with its size in bytes, described for
/// messages (inputs, parameters and outputs by name, others by op and type).
pub fn tensor_sizes(graph: &Graph) -> Vec<(NodeId, String, usize)> {
    graph
        .node_ids()
        .map(|id| {
            let node = graph.node(id);
            let bytes = node
                .ty
                .known_shape()
                .and_then(|s| checked_bytes(&s, node.ty.dtype.size_bytes()))
                .unwrap_or(usize::MAX);
            let what = match &node.op {
                Op::Input(Input { name }) => format!("input `{name}` {}", node.ty),
                Op::Param(Param { name, .. }) => format!("parameter `{name}` {}", node.ty),
                op => match graph.outputs.iter().find(|(_, o)| *o == id) {
                    Some((name, _)) => format!("output `{name}` {}", node.ty),
                    None => format!("{} result {}", op.name(), node.ty),
                },
            };
            (id, what, bytes)
        })
        .collect()
}

/// The most memory the interpreter holds at once on a concrete graph:
/// inputs, parameters and constants throughout, plus each value from the
/// step that computes it to its last reader (outputs to the end), the way
/// `interp::run` keeps them.
pub fn interpreter_peak(graph: &Graph) -> usize {
    let sizes: HashMap<NodeId, usize> = tensor_sizes(graph)
        .into_iter()
        .map(|(id, _, b)| (id, b))
        .collect();
    let mut readers: HashMap<NodeId, usize> = graph
        .node_ids()
        .map(|id| (id, graph.users(id).len()))
        .collect();
    let mut live = 0usize;
    let mut peak = 0usize;
    for id in graph.topo_order() {
        live = live.saturating_add(sizes[&id]);
        peak = peak.max(live);
        if graph.node(id).op.is_source() {
            continue;
        }
        let mut operands = graph.inputs(id);
        operands.sort_unstable();
        operands.dedup();
        for o in operands {
            let left = readers.get_mut(&o).expect("operand in graph");
            *left = left.saturating_sub(1);
            if *left == 0 && !graph.node(o).op.is_source() && !graph.is_output(o) {
                live = live.saturating_sub(sizes[&o]);
            }
        }
    }
    peak
}
