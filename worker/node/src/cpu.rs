//! The CPU side of the device inventory: host memory, NUMA nodes and their CPUs, and pinning a
//! process to a node. CUDA devices are the worker's business (`modelhost_worker::devices`): the
//! host never loads the driver.

use std::path::Path;

use modelhost_protocol::placement::{DeviceId, DeviceSpec};

use crate::memory::kb_field;

/// Why the CPU or a NUMA node could not be inventoried or used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CpuError {
    #[error("{device}: no NUMA node {node} (nodes: {known})")]
    NoSuchNumaNode {
        device: DeviceId,
        node: u32,
        known: String,
    },
    #[error("{device}: reading {path}: {message}")]
    Read {
        device: DeviceId,
        path: String,
        message: String,
    },
    #[error("{device}: {path} lists no CPUs this process can use: {list:?}")]
    BadCpuList {
        device: DeviceId,
        path: String,
        list: String,
    },
    #[error("{device}: {call}: {message}")]
    Pin {
        device: DeviceId,
        call: &'static str,
        message: String,
    },
}

/// NUMA node numbers on this machine.
pub fn numa_nodes() -> Vec<u32> {
    let mut nodes: Vec<u32> = std::fs::read_dir("/sys/devices/system/node")
        .map(|dir| {
            dir.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().to_str()?.strip_prefix("node")?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    nodes.sort_unstable();
    nodes
}

fn read(device: DeviceId, path: &str) -> Result<String, CpuError> {
    std::fs::read_to_string(path).map_err(|e| CpuError::Read {
        device,
        path: path.to_owned(),
        message: e.to_string(),
    })
}

fn check_node(device: DeviceId, node: u32) -> Result<(), CpuError> {
    if Path::new(&format!("/sys/devices/system/node/node{node}")).exists() {
        return Ok(());
    }
    let known = numa_nodes()
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    Err(CpuError::NoSuchNumaNode {
        device,
        node,
        known,
    })
}

/// The inventory of `cpu` (all host memory) or `cpu:N` (NUMA node N).
pub fn inventory(id: DeviceId) -> Result<DeviceSpec, CpuError> {
    match id.index {
        None => {
            let meminfo = read(id, "/proc/meminfo")?;
            Ok(DeviceSpec {
                id,
                name: "host memory".into(),
                total_bytes: kb_field(&meminfo, "MemTotal") * 1024,
                free_bytes: kb_field(&meminfo, "MemAvailable") * 1024,
                limit_bytes: None,
            })
        }
        Some(node) => {
            check_node(id, node)?;
            let meminfo = read(id, &format!("/sys/devices/system/node/node{node}/meminfo"))?;
            let field = |name| kb_field(&meminfo, name) * 1024;
            Ok(DeviceSpec {
                id,
                name: format!("NUMA node {node}"),
                total_bytes: field("MemTotal"),
                // Free plus file pages (reclaimable cache), as MemAvailable estimates it.
                free_bytes: field("MemFree") + field("FilePages"),
                limit_bytes: None,
            })
        }
    }
}

/// The CPUs of NUMA node `node`.
pub fn node_cpus(device: DeviceId, node: u32) -> Result<Vec<usize>, CpuError> {
    check_node(device, node)?;
    let path = format!("/sys/devices/system/node/node{node}/cpulist");
    let list = read(device, &path)?;
    parse_cpulist(list.trim())
        .filter(|cpus| !cpus.is_empty())
        .ok_or_else(|| CpuError::BadCpuList {
            device,
            path,
            list: list.trim().to_owned(),
        })
}

/// How many CPUs this process may run on (its affinity mask), at least 1.
pub fn usable_cpus() -> usize {
    nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0))
        .map(|set| {
            (0..nix::sched::CpuSet::count())
                .filter(|&i| set.is_set(i).unwrap_or(false))
                .count()
        })
        .unwrap_or(0)
        .max(1)
}

/// Pins this process to NUMA node `node`: its CPUs only, and its memory preferably there (for
/// a `cpu:N` worker, whose KV cache and scratch should sit next to the cores that use them).
/// Returns the node's CPUs.
pub fn pin_to_numa_node(device: DeviceId, node: u32) -> Result<Vec<usize>, CpuError> {
    let cpus = node_cpus(device, node)?;
    let pin = |call, e: &dyn std::fmt::Display| CpuError::Pin {
        device,
        call,
        message: e.to_string(),
    };
    let mut set = nix::sched::CpuSet::new();
    for &cpu in &cpus {
        set.set(cpu).map_err(|e| pin("CPU_SET", &e))?;
    }
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
        .map_err(|e| pin("sched_setaffinity", &e))?;
    // MPOL_PREFERRED (1): allocate on this node when it has room, elsewhere rather than fail.
    let mask: [libc::c_ulong; 16] = {
        let mut m = [0; 16];
        let bits = libc::c_ulong::BITS;
        if let Some(word) = m.get_mut((node / bits) as usize) {
            *word = 1 << (node % bits);
        }
        m
    };
    // SAFETY: set_mempolicy reads `mask` (16 words, maxnode bits) and changes only this
    // process's allocation policy.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_set_mempolicy,
            1,
            mask.as_ptr(),
            (mask.len() as u64) * u64::from(libc::c_ulong::BITS),
        )
    };
    if rc != 0 {
        return Err(pin("set_mempolicy", &std::io::Error::last_os_error()));
    }
    Ok(cpus)
}

/// Parses a kernel CPU list such as `0-3,8,10-11`.
pub fn parse_cpulist(text: &str) -> Option<Vec<usize>> {
    let mut cpus = Vec::new();
    for part in text.split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) = (a.parse().ok()?, b.parse().ok()?);
                if b < a || b - a > 4096 {
                    return None;
                }
                cpus.extend(a..=b);
            }
            None => cpus.push(part.parse().ok()?),
        }
    }
    Some(cpus)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpulists_parse() {
        assert_eq!(
            parse_cpulist("0-3,8,10-11"),
            Some(vec![0, 1, 2, 3, 8, 10, 11])
        );
        assert_eq!(parse_cpulist("5"), Some(vec![5]));
        assert_eq!(parse_cpulist("3-1"), None);
        assert_eq!(parse_cpulist("x"), None);
    }

    #[test]
    fn the_host_has_memory_and_node_zero() {
        let host = inventory(DeviceId::cpu()).unwrap();
        assert!(host.total_bytes > 0 && host.free_bytes > 0 && host.free_bytes <= host.total_bytes);
        if numa_nodes().contains(&0) {
            let node: DeviceId = "cpu:0".parse().unwrap();
            assert!(inventory(node).unwrap().total_bytes > 0);
            assert!(!node_cpus(node, 0).unwrap().is_empty());
        }
        let missing: DeviceId = "cpu:999".parse().unwrap();
        assert!(matches!(
            inventory(missing),
            Err(CpuError::NoSuchNumaNode { node: 999, .. })
        ));
        assert!(usable_cpus() >= 1);
    }
}
