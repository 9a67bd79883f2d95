//! Memory figures from /proc: fields of meminfo-style files, and a process's RSS and PSS.

use std::io;

use serde::{Deserialize, Serialize};

/// The `Name:   1234 kB` field called `name` in /proc/meminfo, smaps_rollup or a NUMA node's
/// meminfo (whose lines start `Node 0`), in kB; 0 when absent.
pub fn kb_field(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|line| {
            let (label, value) = line.split_once(':')?;
            // The label's last word, so that `Pss` is not found in `SwapPss`.
            (label.split_whitespace().last() == Some(name)).then_some(value)
        })
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// A process's memory, from /proc/PID/smaps_rollup.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessMemory {
    /// Resident set size: pages mapped into this process and in RAM.
    pub rss_bytes: u64,
    /// Proportional set size: shared pages counted once across the processes sharing them.
    pub pss_bytes: u64,
}

/// RSS and PSS of process `pid` (`None` reads this process).
pub fn process_memory(pid: Option<u32>) -> io::Result<ProcessMemory> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/smaps_rollup"),
        None => "/proc/self/smaps_rollup".into(),
    };
    Ok(parse_smaps_rollup(&std::fs::read_to_string(path)?))
}

fn parse_smaps_rollup(text: &str) -> ProcessMemory {
    ProcessMemory {
        rss_bytes: kb_field(text, "Rss") * 1024,
        pss_bytes: kb_field(text, "Pss") * 1024,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smaps_rollup_fields_are_read_in_bytes() {
        let text = "55d0-7ffd ---p 00000000 00:00 0  [rollup]\nRss:              20480 kB\nPss:               8192 kB\nPss_Anon:  100 kB\nSwapPss:  1 kB\n";
        assert_eq!(
            parse_smaps_rollup(text),
            ProcessMemory {
                rss_bytes: 20480 * 1024,
                pss_bytes: 8192 * 1024
            }
        );
    }

    #[test]
    fn node_meminfo_lines_have_a_prefix() {
        let text = "Node 0 MemTotal:       16384 kB\nNode 0 MemFree:  100 kB\n";
        assert_eq!(kb_field(text, "MemTotal"), 16384);
        assert_eq!(kb_field(text, "MemFree"), 100);
        assert_eq!(kb_field(text, "FilePages"), 0);
        // A longer label that ends in the name is another field.
        assert_eq!(kb_field("SwapPss:  9 kB\nPss:  3 kB\n", "Pss"), 3);
    }

    #[test]
    fn this_process_has_memory() {
        let m = process_memory(None).unwrap();
        assert!(m.rss_bytes > 0 && m.pss_bytes > 0);
    }
}
