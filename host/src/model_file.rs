//! Opening model files: map each file read-only, parse it, and find the other shards of a split
//! model next to the first.

use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use modelhost_protocol::gguf::{
    shard_file_name, shard_prefix, split_info, GgufError, GgufFile, GgufModel, ModelError, Shard,
};

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
}

/// One model's files, mapped read-only. Parse with [`MappedModel::model`].
pub struct MappedModel {
    files: Vec<MappedFile>,
}

struct MappedFile {
    path: PathBuf,
    map: Option<Mmap>,
}

impl MappedFile {
    fn open(path: &Path) -> Result<MappedFile, OpenError> {
        let io = |source| OpenError::Io {
            path: path.to_owned(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        let meta = file.metadata().map_err(io)?;
        if !meta.is_file() {
            return Err(OpenError::NotAFile {
                path: path.to_owned(),
            });
        }
        // A zero-length mapping is an error on Linux; an empty file simply has no bytes.
        let map = if meta.len() == 0 {
            None
        } else {
            // SAFETY: the mapping is read-only and private to this process. If another process
            // truncates the file while it is mapped, reading the lost pages raises SIGBUS; the
            // host's `copy` load mode exists for files that may change. Nothing here writes.
            Some(unsafe { Mmap::map(&file) }.map_err(io)?)
        };
        Ok(MappedFile {
            path: path.to_owned(),
            map,
        })
    }

    fn bytes(&self) -> &[u8] {
        self.map.as_deref().unwrap_or(&[])
    }

    fn parse(&self) -> Result<GgufFile<'_>, OpenError> {
        GgufFile::parse(self.bytes()).map_err(|source| OpenError::Parse {
            path: self.path.clone(),
            source,
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

    /// The paths of the mapped files, the one asked for first.
    pub fn paths(&self) -> impl Iterator<Item = &Path> {
        self.files.iter().map(|f| f.path.as_path())
    }
}
