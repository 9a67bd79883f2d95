//! Opening model files: map each file read-only and shared, parse it, and find the other shards
//! of a split model next to the first. This is the only code that opens model files.
//!
//! Two ways to hold a file:
//! - **mapped** (default): the file itself, mapped `PROT_READ`/`MAP_SHARED`. Every process that
//!   maps the same file shares its page-cache pages. If someone truncates the file on disk,
//!   touching the lost pages raises SIGBUS.
//! - **copied**: the bytes copied into a memfd sealed against shrink, grow and write, then mapped.
//!   Nothing done to the file on disk afterwards can reach the mapping.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use modelhost_protocol::gguf::{
    shard_file_name, shard_prefix, split_info, GgufError, GgufFile, GgufModel, ModelError, Shard,
};
use nix::fcntl::{fcntl, FcntlArg, SealFlag};
use nix::sys::memfd::{memfd_create, MFdFlags};

/// Why a model could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a regular file")]
    NotAFile { path: PathBuf },
    #[error("{path}: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: GgufError,
    },
    #[error("{path} is shard {no} of {count}, but its name does not end in -NNNNN-of-NNNNN.gguf, so the other shards cannot be found")]
    UnnamedShard { path: PathBuf, no: u16, count: u16 },
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("{path}: copying into memory: {source}")]
    Copy {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: the copy was cancelled")]
    Cancelled { path: PathBuf },
}

/// Which file a mapping came from: device and inode, as `stat` reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub struct FileIdentity {
    pub dev: u64,
    pub ino: u64,
}

/// One model's files, mapped read-only. Parse with [`MappedModel::model`].
pub struct MappedModel {
    files: Vec<MappedFile>,
}

/// One mapped file (or its sealed copy).
pub struct MappedFile {
    path: PathBuf,
    /// Kept open: it pins the inode, and it is the descriptor handed to workers.
    file: File,
    identity: FileIdentity,
    map: Option<Mmap>,
    copied: bool,
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> OpenError + '_ {
    move |source| OpenError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Maps all of `file` read-only and shared; `None` for an empty file.
fn map_file(file: &File, len: u64, path: &Path) -> Result<Option<Mmap>, OpenError> {
    // A zero-length mapping is an error on Linux; an empty file simply has no bytes.
    if len == 0 {
        return Ok(None);
    }
    // SAFETY: the mapping is read-only (PROT_READ, MAP_SHARED) and nothing in this process
    // writes the file. Another process truncating the file would make touching the lost pages
    // raise SIGBUS: that is the documented risk of the default mode, and `copy` mode (a sealed
    // memfd that cannot shrink) exists to remove it.
    let map = unsafe { Mmap::map(file) }.map_err(io_error(path))?;
    modelhost_node::pages::prefer_huge_pages(&map);
    Ok(Some(map))
}

impl MappedFile {
    fn open(path: &Path) -> Result<MappedFile, OpenError> {
        let file = File::open(path).map_err(io_error(path))?;
        let meta = file.metadata().map_err(io_error(path))?;
        if !meta.is_file() {
            return Err(OpenError::NotAFile {
                path: path.to_owned(),
            });
        }
        let map = map_file(&file, meta.len(), path)?;
        Ok(MappedFile {
            path: path.to_owned(),
            identity: FileIdentity {
                dev: meta.dev(),
                ino: meta.ino(),
            },
            file,
            map,
            copied: false,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The mapped bytes.
    pub fn bytes(&self) -> &[u8] {
        self.map.as_deref().unwrap_or(&[])
    }

    /// The mapping itself, for page-level operations; `None` for an empty file.
    pub fn mapping(&self) -> Option<&Mmap> {
        self.map.as_ref()
    }

    /// The open descriptor behind the mapping (the file, or the sealed memfd).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }

    /// The file on disk this mapping came from (for a copy, the original file).
    pub fn identity(&self) -> FileIdentity {
        self.identity
    }

    pub fn is_copy(&self) -> bool {
        self.copied
    }

    fn parse(&self) -> Result<GgufFile<'_>, OpenError> {
        GgufFile::parse(self.bytes()).map_err(|source| OpenError::Parse {
            path: self.path.clone(),
            source,
        })
    }

    /// Copies the mapped bytes into a sealed memfd and maps that instead. `progress` gets the
    /// bytes copied so far and returns false to cancel.
    fn copy_sealed(&self, progress: &mut dyn FnMut(u64) -> bool) -> Result<MappedFile, OpenError> {
        let copy_err = |source| OpenError::Copy {
            path: self.path.clone(),
            source,
        };
        let memfd = memfd_create(
            "modelhost-model",
            MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
        )
        .map_err(|e| copy_err(e.into()))?;
        let mut dst = File::from(memfd);
        let len = self.bytes().len() as u64;
        dst.set_len(len).map_err(copy_err)?;
        // Read from our own open descriptor, not the path: the copy is of the file we validated.
        let mut src = &self.file;
        let mut buf = vec![0u8; 8 << 20];
        let mut done = 0u64;
        while done < len {
            let want = buf.len().min((len - done) as usize);
            let n = src.read(&mut buf[..want]).map_err(copy_err)?;
            if n == 0 {
                // The file shrank under us; the copy would not match what was validated.
                return Err(copy_err(std::io::ErrorKind::UnexpectedEof.into()));
            }
            dst.write_all(&buf[..n]).map_err(copy_err)?;
            done += n as u64;
            if !progress(done) {
                return Err(OpenError::Cancelled {
                    path: self.path.clone(),
                });
            }
        }
        let seals = SealFlag::F_SEAL_SHRINK
            | SealFlag::F_SEAL_GROW
            | SealFlag::F_SEAL_WRITE
            | SealFlag::F_SEAL_SEAL;
        fcntl(&dst, FcntlArg::F_ADD_SEALS(seals)).map_err(|e| copy_err(e.into()))?;
        let map = map_file(&dst, len, &self.path)?;
        Ok(MappedFile {
            path: self.path.clone(),
            file: dst,
            identity: self.identity,
            map,
            copied: true,
        })
    }
}

impl MappedModel {
    /// Maps `path` and, when it is the first shard of a split model, every other shard.
    pub fn open(path: &Path) -> Result<MappedModel, OpenError> {
        let first = MappedFile::open(path)?;
        let info = {
            let parsed = first.parse()?;
            split_info(&parsed).map_err(|source| ModelError::SplitKey {
                shard: path.display().to_string(),
                source,
            })?
        };
        let mut files = vec![first];
        if let Some(info) = info.filter(|i| i.count > 1) {
            let unnamed = || OpenError::UnnamedShard {
                path: path.to_owned(),
                no: info.no,
                count: info.count,
            };
            let file_name = path
                .file_name()
                .and_then(|n| n.to_str())
                .ok_or_else(unnamed)?;
            let prefix = shard_prefix(file_name, info.no, info.count).ok_or_else(unnamed)?;
            let dir = path.parent().unwrap_or(Path::new("."));
            for no in (0..info.count).filter(|&no| no != info.no) {
                files.push(MappedFile::open(
                    &dir.join(shard_file_name(prefix, no, info.count)),
                )?);
            }
        }
        Ok(MappedModel { files })
    }

    /// Parses the mapped files into one model.
    pub fn model(&self) -> Result<GgufModel<'_>, OpenError> {
        if let [only] = self.files.as_slice() {
            return Ok(GgufModel::single(
                only.path.display().to_string(),
                only.parse()?,
            )?);
        }
        let shards = self
            .files
            .iter()
            .map(|f| {
                Ok(Shard {
                    label: f.path.display().to_string(),
                    file: f.parse()?,
                })
            })
            .collect::<Result<Vec<_>, OpenError>>()?;
        Ok(GgufModel::from_shards(shards)?)
    }

    /// Copies every file into a sealed memfd. `progress` gets the bytes copied so far over all
    /// files and returns false to cancel. Parse the result again: the copy is what will be served.
    pub fn copy_sealed(
        &self,
        progress: &mut dyn FnMut(u64) -> bool,
    ) -> Result<MappedModel, OpenError> {
        let mut base = 0u64;
        let mut files = Vec::with_capacity(self.files.len());
        for f in &self.files {
            files.push(f.copy_sealed(&mut |done| progress(base + done))?);
            base += f.bytes().len() as u64;
        }
        Ok(MappedModel { files })
    }

    /// The mapped files, the one asked for first.
    pub fn files(&self) -> &[MappedFile] {
        &self.files
    }

    /// The paths of the mapped files, the one asked for first.
    pub fn paths(&self) -> impl Iterator<Item = &Path> {
        self.files.iter().map(|f| f.path.as_path())
    }

    /// Total mapped bytes over all files.
    pub fn total_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.bytes().len() as u64).sum()
    }
}
