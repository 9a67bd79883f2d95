//! The CUDA backend: weights copied into device buffers asynchronously on one stream, either
//! double-buffered through two pinned staging buffers or straight from the shared mapping
//! registered read-only with the driver (no staging); the KV cache and scratch in device memory.
//!
//! Every path starts from [`CudaBackend::new`], which checks for the driver library before any
//! cudarc call (cudarc panics when libcuda is missing).

use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaEvent, CudaSlice, CudaStream, DriverError, PinnedHostSlice};
use modelhost_protocol::placement::DeviceId;
use modelhost_protocol::wire::WorkerOptions;

use super::{Backend, BackendError};
use crate::devices;

/// Bytes per staging buffer: large enough for full-speed transfers, small enough to overlap.
const STAGE: usize = 16 << 20;

/// Bytes of KV cache cleared per step between progress reports.
const KV_STEP: usize = 1 << 30;

/// Bytes per copy on the registered path. Each copy completes as an event, so progress is
/// reported as bytes land, many times a second even for a piece of gigabytes.
const REGISTERED_STEP: usize = 64 << 20;

fn cuda(e: DriverError) -> BackendError {
    BackendError::Driver(e.to_string())
}

/// An allocation's failure: a full device is `OutOfMemory`, which the host reports as such;
/// anything else (a lost context, a bad value) keeps the driver's own word.
fn allocation_failed(what: &'static str, bytes: u64) -> impl Fn(DriverError) -> BackendError {
    move |e| {
        if e.0 == cudarc::driver::sys::cudaError_enum::CUDA_ERROR_OUT_OF_MEMORY {
            BackendError::OutOfMemory { what, bytes }
        } else {
            BackendError::Driver(format!("allocating {bytes} bytes of {what}: {e}"))
        }
    }
}

pub struct CudaBackend {
    stream: Arc<CudaStream>,
    staging: [PinnedHostSlice<u8>; 2],
    /// One device buffer per placed piece, in placement order.
    buffers: Vec<CudaSlice<u8>>,
    kv: Option<CudaSlice<u8>>,
    scratch: Option<CudaSlice<u8>>,
    weights: u64,
}

impl CudaBackend {
    /// Opens device `id` (cuda:N). Fails clearly, without touching cudarc, when there is no driver.
    pub fn new(id: DeviceId) -> Result<CudaBackend, BackendError> {
        if !devices::cuda_driver_present() {
            return Err(devices::DeviceError::NoCudaDriver { device: id }.into());
        }
        let context = CudaContext::new(id.index.unwrap_or(0) as usize).map_err(cuda)?;
        let stream = context.new_stream().map_err(cuda)?;
        // SAFETY: staging buffers are always filled from the mapping before a copy reads them.
        let staging = unsafe {
            [
                context.alloc_pinned::<u8>(STAGE).map_err(cuda)?,
                context.alloc_pinned::<u8>(STAGE).map_err(cuda)?,
            ]
        };
        Ok(CudaBackend {
            stream,
            staging,
            buffers: Vec::new(),
            kv: None,
            scratch: None,
            weights: 0,
        })
    }

    /// Copies `bytes` to `device` through the two pinned buffers: while one buffer's copy runs on
    /// the stream, the CPU fills the other. Progress counts the bytes whose copy has completed.
    fn upload_staged(
        &mut self,
        bytes: &[u8],
        device: &mut CudaSlice<u8>,
        progress: &mut dyn FnMut(u64),
    ) -> Result<(), BackendError> {
        // The copy last issued from each staging buffer, and its length.
        let mut pending: [Option<(CudaEvent, usize)>; 2] = [None, None];
        for (i, chunk) in bytes.chunks(STAGE).enumerate() {
            let slot = i % 2;
            let offset = i * STAGE;
            if let Some((done, len)) = pending[slot].take() {
                done.synchronize().map_err(cuda)?;
                progress(len as u64);
            }
            let mut view = device.slice_mut(offset..offset + chunk.len());
            if chunk.len() == STAGE {
                self.staging[slot]
                    .as_mut_slice()
                    .map_err(cuda)?
                    .copy_from_slice(chunk);
                self.stream
                    .memcpy_htod(&self.staging[slot], &mut view)
                    .map_err(cuda)?;
            } else {
                // The short last piece: the driver stages pageable memory itself.
                self.stream.memcpy_htod(chunk, &mut view).map_err(cuda)?;
            }
            pending[slot] = Some((self.stream.record_event(None).map_err(cuda)?, chunk.len()));
        }
        self.stream.synchronize().map_err(cuda)?;
        let rest: usize = pending.iter().flatten().map(|(_, len)| len).sum();
        progress(rest as u64);
        Ok(())
    }

    /// Copies straight from the shared mapping, registered read-only with the driver for the
    /// duration of the copy: no staging buffer, no CPU copy. The copies go in steps of
    /// [`REGISTERED_STEP`], each followed by an event, and progress counts the steps completed.
    fn upload_registered(
        &mut self,
        bytes: &[u8],
        device: &mut CudaSlice<u8>,
        progress: &mut dyn FnMut(u64),
    ) -> Result<(), BackendError> {
        let ptr = bytes.as_ptr() as *mut std::ffi::c_void;
        // SAFETY: `bytes` is a live, page-aligned range of a read-only mapping that outlives this
        // call; READ_ONLY tells the driver it will never write to it; it is unregistered below.
        unsafe {
            cudarc::driver::sys::cuMemHostRegister_v2(
                ptr,
                bytes.len(),
                cudarc::driver::sys::CU_MEMHOSTREGISTER_READ_ONLY,
            )
            .result()
            .map_err(|e| {
                BackendError::Driver(format!(
                    "registering {} bytes of the mapping read-only: {e}",
                    bytes.len()
                ))
            })?;
        }
        let mut copy = || -> Result<(), DriverError> {
            let mut steps = Vec::with_capacity(bytes.len().div_ceil(REGISTERED_STEP));
            for (i, chunk) in bytes.chunks(REGISTERED_STEP).enumerate() {
                let offset = i * REGISTERED_STEP;
                let mut view = device.slice_mut(offset..offset + chunk.len());
                self.stream.memcpy_htod(chunk, &mut view)?;
                steps.push((self.stream.record_event(None)?, chunk.len()));
            }
            for (done, len) in steps {
                done.synchronize()?;
                progress(len as u64);
            }
            Ok(())
        };
        let copied = copy();
        // Whatever happened, no copy may still be reading the range when it is unregistered.
        let drained = self.stream.synchronize();
        // SAFETY: unregisters exactly the range registered above, with the stream drained.
        let unregistered = unsafe { cudarc::driver::sys::cuMemHostUnregister(ptr).result() };
        copied.and(drained).map_err(cuda)?;
        unregistered.map_err(cuda)
    }

    /// Copies every placed buffer back to the host, for checking an upload.
    pub fn read_back(&self) -> Result<Vec<Vec<u8>>, BackendError> {
        self.buffers
            .iter()
            .map(|b| self.stream.clone_dtoh(b).map_err(cuda))
            .collect()
    }
}

impl Backend for CudaBackend {
    fn place(
        &mut self,
        bytes: &[u8],
        options: &WorkerOptions,
        progress: &mut dyn FnMut(u64),
    ) -> Result<(), BackendError> {
        if bytes.is_empty() {
            return Ok(()); // the driver refuses zero-byte allocations; there is nothing to copy
        }
        // SAFETY: every byte of the buffer is written by the copy below before anything reads it.
        let mut device = unsafe { self.stream.alloc::<u8>(bytes.len()) }
            .map_err(allocation_failed("weights", bytes.len() as u64))?;
        if options.registered_upload {
            self.upload_registered(bytes, &mut device, progress)?;
        } else {
            self.upload_staged(bytes, &mut device, progress)?;
        }
        self.buffers.push(device);
        self.weights += bytes.len() as u64;
        Ok(())
    }

    fn allocate_kv(
        &mut self,
        bytes: u64,
        progress: &mut dyn FnMut(u64),
    ) -> Result<(), BackendError> {
        let len = BackendError::len_for("KV cache", bytes)?;
        if len == 0 {
            self.kv = None;
            return Ok(());
        }
        // SAFETY: every byte is cleared below before the buffer is kept.
        let mut kv = unsafe { self.stream.alloc::<u8>(len) }
            .map_err(allocation_failed("KV cache", bytes))?;
        // Cleared in steps, each followed by an event, and progress counts the steps completed.
        let mut steps = Vec::with_capacity(len.div_ceil(KV_STEP));
        for start in (0..len).step_by(KV_STEP) {
            let end = (start + KV_STEP).min(len);
            self.stream
                .memset_zeros(&mut kv.slice_mut(start..end))
                .map_err(cuda)?;
            steps.push((self.stream.record_event(None).map_err(cuda)?, end - start));
        }
        for (done, step) in steps {
            done.synchronize().map_err(cuda)?;
            progress(step as u64);
        }
        self.kv = Some(kv);
        Ok(())
    }

    fn reserve_scratch(&mut self, bytes: u64) -> Result<(), BackendError> {
        let len = BackendError::len_for("scratch", bytes)?;
        self.scratch = match len {
            0 => None,
            // SAFETY: scratch is working memory an engine writes before it reads.
            _ => Some(
                unsafe { self.stream.alloc::<u8>(len) }
                    .map_err(allocation_failed("scratch", bytes))?,
            ),
        };
        Ok(())
    }

    fn weights_bytes(&self) -> u64 {
        self.weights
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Without a driver (CI), opening a CUDA device is an error that says so, not a panic.
    #[test]
    fn no_driver_is_a_clear_error() {
        if devices::cuda_driver_present() {
            return; // a GPU machine: tests/gpu.rs covers the real path
        }
        let err = CudaBackend::new(DeviceId::cuda(0))
            .err()
            .expect("no driver here");
        assert!(
            err.to_string()
                .contains("cuda:0: no CUDA driver on this machine"),
            "{err}"
        );
    }
}
