//! Device backends behind one small trait: place a layer's bytes, allocate the KV cache and
//! scratch, and say what is held.

use modelhost_node::pages::PopulateError;
use modelhost_protocol::wire::WorkerOptions;

use crate::devices::DeviceError;

pub mod cpu;
pub mod cuda;

/// Why a backend could not do its work.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The device cannot be used at all: no driver, no such device.
    #[error(transparent)]
    Unavailable(#[from] DeviceError),
    /// The device's driver refused a call; the text is the driver's own.
    #[error("CUDA: {0}")]
    Driver(String),
    /// The shared pages cannot be read: the model file shrank or was replaced on disk.
    #[error("the model's pages cannot be read ({0}); reload the model")]
    Pages(#[from] PopulateError),
    #[error(
        "locking {bytes} bytes failed ({source}); raise RLIMIT_MEMLOCK or attach without mlock"
    )]
    Lock {
        bytes: u64,
        #[source]
        source: std::io::Error,
    },
    #[error("out of memory allocating {bytes} bytes for the {what}")]
    OutOfMemory { what: &'static str, bytes: u64 },
}

impl BackendError {
    /// `bytes` as a length this process can allocate, or the out-of-memory error for `what`.
    pub fn len_for(what: &'static str, bytes: u64) -> Result<usize, BackendError> {
        usize::try_from(bytes).map_err(|_| BackendError::OutOfMemory { what, bytes })
    }
}

/// One device's side of an attach.
pub trait Backend {
    /// Places one piece of a layer (a page-aligned slice of the shared mapping). `progress`
    /// receives bytes as they are done.
    fn place(
        &mut self,
        bytes: &[u8],
        options: &WorkerOptions,
        progress: &mut dyn FnMut(u64),
    ) -> Result<(), BackendError>;

    /// Allocates the KV cache, zeroed. `progress` receives bytes as they are done: a device
    /// cache of tens of GiB takes seconds to clear. (The CPU backend's comes zeroed from the
    /// allocator and is reported at once; its `idle_step` faults it in later.)
    fn allocate_kv(
        &mut self,
        bytes: u64,
        progress: &mut dyn FnMut(u64),
    ) -> Result<(), BackendError>;

    /// Reserves scratch space.
    fn reserve_scratch(&mut self, bytes: u64) -> Result<(), BackendError>;

    /// Bytes of weights now held for the device (for the CPU: used in place).
    fn weights_bytes(&self) -> u64;

    /// One short step of work that waits until the worker has nothing else to do (the CPU
    /// backend faults its KV cache in this way); whether more is left.
    fn idle_step(&mut self) -> bool {
        false
    }
}
