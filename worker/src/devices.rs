//! Device inventory: CUDA devices through cudarc (when a driver is present); the CPU and its NUMA
//! nodes come from `modelhost_node::cpu`.
//!
//! cudarc panics on its first call when libcuda cannot be loaded, so every CUDA path checks
//! `is_culib_present()` first and turns a missing driver into [`DeviceError::NoCudaDriver`].

use modelhost_node::cpu::{self, CpuError};
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
    #[error(transparent)]
    Cpu(#[from] CpuError),
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
        DeviceKind::Cpu => Ok(cpu::inventory(id)?),
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

#[cfg(test)]
mod tests {
    use super::*;

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
