//! Device inventory: CUDA devices through cudarc (when a driver is present), and the CPU with its
//! NUMA nodes from /proc and /sys.
//!
//! cudarc panics on its first call when libcuda cannot be loaded, so every CUDA path checks
//! `is_culib_present()` first and turns a missing driver into [`DeviceError::NoCudaDriver`].

use std::path::Path;

use modelhost_protocol::placement::{DeviceId, DeviceKind, DeviceSpec};

/// Why a device could not be inventoried.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceError {
    #[error("{device}: no CUDA driver on this machine (libcuda could not be loaded); install the NVIDIA driver or use cpu devices")]
    NoCudaDriver { device: DeviceId },
    #[error("{device}: this machine has {count} CUDA device(s)")]
    NoSuchCudaDevice { device: DeviceId, count: u32 },
    #[error("{device}: CUDA driver error: {message}")]
    Cuda { device: DeviceId, message: String },
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
}

/// Whether a CUDA driver library can be loaded.
pub fn cuda_driver_present() -> bool {
    // SAFETY: is_culib_present only tries to dlopen the driver library by its usual names and
    // drops the handle; it calls nothing inside it.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

/// The inventory of one device.
pub fn inventory(id: DeviceId) -> Result<DeviceSpec, DeviceError> {
    match id.kind {
        DeviceKind::Cuda => cuda_device(id),
        DeviceKind::Cpu => cpu_device(id),
    }
}

/// Every CUDA device, or none when there is no driver.
pub fn cuda_devices() -> Vec<DeviceSpec> {
    if !cuda_driver_present() {
        return Vec::new();
    }
    let count = match cudarc::driver::result::init()
        .and_then(|()| cudarc::driver::result::device::get_count())
    {
        Ok(n) => n.max(0) as u32,
        Err(_) => return Vec::new(),
    };
    (0..count)
        .filter_map(|i| cuda_device(DeviceId::cuda(i)).ok())
        .collect()
}

fn cuda_device(id: DeviceId) -> Result<DeviceSpec, DeviceError> {
    if !cuda_driver_present() {
        return Err(DeviceError::NoCudaDriver { device: id });
    }
    let cuda = |e: cudarc::driver::DriverError| DeviceError::Cuda {
        device: id,
        message: e.to_string(),
    };
    cudarc::driver::result::init().map_err(cuda)?;
    let count = cudarc::driver::result::device::get_count()
        .map_err(cuda)?
        .max(0) as u32;
    let ordinal = id.index.unwrap_or(0);
    if ordinal >= count {
        return Err(DeviceError::NoSuchCudaDevice { device: id, count });
    }
    // Free memory needs a context; the primary context is released when `context` drops.
    let context = cudarc::driver::CudaContext::new(ordinal as usize).map_err(cuda)?;
    let name = context.name().map_err(cuda)?;
    let (free, total) = context.mem_get_info().map_err(cuda)?;
    Ok(DeviceSpec {
        id,
        name,
        total_bytes: total as u64,
        free_bytes: free as u64,
        limit_bytes: None,
    })
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

fn cpu_device(id: DeviceId) -> Result<DeviceSpec, DeviceError> {
    let read = |path: &str| {
        std::fs::read_to_string(path).map_err(|e| DeviceError::Read {
            device: id,
            path: path.to_owned(),
            message: e.to_string(),
        })
    };
    match id.index {
        None => {
            let meminfo = read("/proc/meminfo")?;
            Ok(DeviceSpec {
                id,
                name: "host memory".into(),
                total_bytes: meminfo_kb(&meminfo, "MemTotal:") * 1024,
                free_bytes: meminfo_kb(&meminfo, "MemAvailable:") * 1024,
                limit_bytes: None,
            })
        }
        Some(node) => {
            let path = format!("/sys/devices/system/node/node{node}/meminfo");
            if !Path::new(&path).exists() {
                let known = numa_nodes()
                    .iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
                    .join(", ");
                return Err(DeviceError::NoSuchNumaNode {
                    device: id,
                    node,
                    known,
                });
            }
            let meminfo = read(&path)?;
            // Lines read "Node 0 MemTotal:  16384 kB".
            let field = |name: &str| {
                meminfo
                    .lines()
                    .find_map(|l| l.split_once(name).map(|(_, rest)| rest))
                    .and_then(|rest| {
                        rest.trim()
                            .trim_end_matches("kB")
                            .trim()
                            .parse::<u64>()
                            .ok()
                    })
                    .unwrap_or(0)
                    * 1024
            };
            Ok(DeviceSpec {
                id,
                name: format!("NUMA node {node}"),
                total_bytes: field("MemTotal:"),
                // Free plus file pages (reclaimable cache), as MemAvailable estimates it.
                free_bytes: field("MemFree:") + field("FilePages:"),
                limit_bytes: None,
            })
        }
    }
}

/// Pins this process to NUMA node `node`: its CPUs only, and its memory preferably there (for
/// a `cpu:N` worker, whose KV cache and scratch should sit next to the cores that use them).
pub fn pin_to_numa_node(node: u32) -> Result<Vec<usize>, String> {
    let path = format!("/sys/devices/system/node/node{node}/cpulist");
    let list = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    let cpus = parse_cpulist(list.trim()).ok_or_else(|| format!("{path}: cannot read {list:?}"))?;
    let mut set = nix::sched::CpuSet::new();
    for &cpu in &cpus {
        set.set(cpu).map_err(|e| format!("cpu {cpu}: {e}"))?;
    }
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
        .map_err(|e| format!("sched_setaffinity: {e}"))?;
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
        return Err(format!(
            "set_mempolicy: {}",
            std::io::Error::last_os_error()
        ));
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

/// A `/proc/meminfo` field in kB.
pub fn meminfo_kb(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
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
        }
        let missing: DeviceId = "cpu:999".parse().unwrap();
        assert!(matches!(
            inventory(missing),
            Err(DeviceError::NoSuchNumaNode { node: 999, .. })
        ));
    }

    /// On a machine without a driver (CI), asking for a GPU is a clear error, not a panic.
    #[test]
    fn cuda_without_a_driver_is_a_clear_error() {
        if cuda_driver_present() {
            return; // a GPU machine: the GPU tests cover this path
        }
        let err = inventory(DeviceId::cuda(0)).unwrap_err();
        assert_eq!(
            err,
            DeviceError::NoCudaDriver {
                device: DeviceId::cuda(0)
            }
        );
        assert!(err.to_string().contains("no CUDA driver"));
        assert!(cuda_devices().is_empty());
    }
}
