//! One logical model from one GGUF file or from all the shards of a split model.

use serde::{Deserialize, Serialize};

use super::file::{GgufFile, TensorInfo};
use super::metadata::MetadataError;
use super::split::{split_info, SplitInfo};

/// Why a set of files does not form one model.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ModelError {
    /// A split key is present but unusable.
    #[error("{shard}: {source}")]
    SplitKey {
        shard: String,
        #[source]
        source: MetadataError,
    },
    /// A single file was given, but it is one shard of several.
    #[error("{shard} is shard {no} of {count}; load the whole split model")]
    NeedsAllShards { shard: String, no: u16, count: u16 },
    /// Several files were given, and this one has no split keys.
    #[error("{shard} is not a shard of a split model (no split.count)")]
    NotAShard { shard: String },
    /// `split.count` is zero.
    #[error("{shard}: split.count is 0")]
    ZeroShardCount { shard: String },
    /// `split.no` is not below `split.count`.
    #[error("{shard}: split.no {no} is out of range for split.count {count}")]
    ShardNumberOutOfRange { shard: String, no: u16, count: u16 },
    /// Shards disagree on `split.count` or `split.tensors.count`.
    #[error("{shard}: {key} is {found}, but the first shard says {expected}")]
    ShardsDisagree {
        shard: String,
        key: &'static str,
        expected: u64,
        found: u64,
    },
    /// Two files claim the same shard number.
    #[error("shard {no} appears twice: {first} and {second}")]
    DuplicateShard {
        no: u16,
        first: String,
        second: String,
    },
    /// A shard number between 0 and `split.count` has no file.
    #[error("shard {no} of {count} is missing")]
    MissingShard { no: u16, count: u16 },
    /// The shards hold a different number of tensors than `split.tensors.count` declares.
    #[error("the shards hold {found} tensors, but split.tensors.count is {declared}")]
    TensorCountMismatch { declared: u64, found: u64 },
    /// Two shards hold a tensor with the same name.
    #[error("tensor {name:?} appears in both {first} and {second}")]
    DuplicateTensor {
        name: String,
        first: String,
        second: String,
    },
}

/// One file of a model, with a label (usually its path) for messages.
#[derive(Debug, Clone)]
pub struct Shard<'a> {
    pub label: String,
    pub file: GgufFile<'a>,
}

/// A whole model: one file, or every shard of a split model in shard order.
#[derive(Debug, Clone)]
pub struct GgufModel<'a> {
    shards: Vec<Shard<'a>>,
    split: Option<SplitInfo>,
}

/// A summary of the split layout, for display.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitSummary {
    pub count: u16,
    pub tensors_count: u64,
    /// Tensors per shard, in shard order.
    pub tensors_per_shard: Vec<u64>,
}

impl<'a> GgufModel<'a> {
    /// A model in one file. A file that declares itself one shard of several is refused.
    pub fn single(label: impl Into<String>, file: GgufFile<'a>) -> Result<Self, ModelError> {
        let label = label.into();
        let split = split_info(&file).map_err(|source| ModelError::SplitKey {
            shard: label.clone(),
            source,
        })?;
        match split {
            Some(info) if info.count > 1 => Err(ModelError::NeedsAllShards {
                shard: label,
                no: info.no,
                count: info.count,
            }),
            _ => Self::from_shards(vec![Shard { label, file }]),
        }
    }

    /// A model from all of its shards, in any order.
    pub fn from_shards(shards: Vec<Shard<'a>>) -> Result<Self, ModelError> {
        let mut infos = Vec::with_capacity(shards.len());
        for shard in &shards {
            let info = split_info(&shard.file).map_err(|source| ModelError::SplitKey {
                shard: shard.label.clone(),
                source,
            })?;
            infos.push(info);
        }
        if shards.len() == 1 && infos[0].is_none_or(|i| i.count == 1) {
            let split = infos[0];
            if let Some(info) = split {
                check_single_shard(&shards[0], info)?;
            }
            return Ok(GgufModel { shards, split });
        }

        let mut placed: Vec<Option<Shard<'a>>> = Vec::new();
        let mut first: Option<SplitInfo> = None;
        for (shard, info) in shards.into_iter().zip(infos) {
            let info = info.ok_or_else(|| ModelError::NotAShard {
                shard: shard.label.clone(),
            })?;
            let expected = *first.get_or_insert(info);
            check_agreement(&shard, expected, info)?;
            if placed.is_empty() {
                placed.resize_with(usize::from(info.count), || None);
            }
            let slot = &mut placed[usize::from(info.no)];
            if let Some(existing) = slot {
                return Err(ModelError::DuplicateShard {
                    no: info.no,
                    first: existing.label.clone(),
                    second: shard.label,
                });
            }
            *slot = Some(shard);
        }
        let split = first.map(|f| SplitInfo { no: 0, ..f });
        let count = placed.len() as u16;
        let shards = placed
            .into_iter()
            .enumerate()
            .map(|(no, s)| {
                s.ok_or(ModelError::MissingShard {
                    no: no as u16,
                    count,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let model = GgufModel { shards, split };
        model.check_tensors()?;
        Ok(model)
    }

    fn check_tensors(&self) -> Result<(), ModelError> {
        let found: u64 = self
            .shards
            .iter()
            .map(|s| s.file.tensors().len() as u64)
            .sum();
        if let Some(split) = self.split {
            if found != split.tensors_count {
                return Err(ModelError::TensorCountMismatch {
                    declared: split.tensors_count,
                    found,
                });
            }
        }
        // Each shard has unique names already; look for names shared between shards.
        let mut names: Vec<(&str, usize)> = self
            .tensors()
            .map(|(shard, t)| (t.name(), usize::from(shard)))
            .collect();
        names.sort_unstable();
        for pair in names.windows(2) {
            if pair[0].0 == pair[1].0 {
                return Err(ModelError::DuplicateTensor {
                    name: pair[0].0.to_owned(),
                    first: self.shards[pair[0].1].label.clone(),
                    second: self.shards[pair[1].1].label.clone(),
                });
            }
        }
        Ok(())
    }

    /// The file that carries the model's metadata: the only file, or shard 0.
    pub fn metadata(&self) -> &GgufFile<'a> {
        &self.shards[0].file
    }

    /// The files, in shard order.
    pub fn shards(&self) -> &[Shard<'a>] {
        &self.shards
    }

    /// The split keys, when the model declares them.
    pub fn split(&self) -> Option<SplitInfo> {
        self.split
    }

    /// A summary of the split, when the model has more than one shard.
    pub fn split_summary(&self) -> Option<SplitSummary> {
        let split = self.split?;
        Some(SplitSummary {
            count: split.count,
            tensors_count: split.tensors_count,
            tensors_per_shard: self
                .shards
                .iter()
                .map(|s| s.file.tensors().len() as u64)
                .collect(),
        })
    }

    /// Every tensor with the number of the shard that holds it.
    pub fn tensors(&self) -> impl Iterator<Item = (u16, &TensorInfo<'a>)> + '_ {
        self.shards
            .iter()
            .enumerate()
            .flat_map(|(no, s)| s.file.tensors().iter().map(move |t| (no as u16, t)))
    }

    pub fn tensor_count(&self) -> u64 {
        self.shards
            .iter()
            .map(|s| s.file.tensors().len() as u64)
            .sum()
    }

    /// Total bytes of tensor data, without padding.
    pub fn tensor_bytes(&self) -> u64 {
        self.tensors().map(|(_, t)| t.size()).sum()
    }

    /// Total bytes of all files.
    pub fn file_bytes(&self) -> u64 {
        self.shards.iter().map(|s| s.file.file_len()).sum()
    }
}

fn check_single_shard(shard: &Shard<'_>, info: SplitInfo) -> Result<(), ModelError> {
    if info.no != 0 {
        return Err(ModelError::ShardNumberOutOfRange {
            shard: shard.label.clone(),
            no: info.no,
            count: info.count,
        });
    }
    let found = shard.file.tensors().len() as u64;
    if found != info.tensors_count {
        return Err(ModelError::TensorCountMismatch {
            declared: info.tensors_count,
            found,
        });
    }
    Ok(())
}

fn check_agreement(
    shard: &Shard<'_>,
    expected: SplitInfo,
    info: SplitInfo,
) -> Result<(), ModelError> {
    let label = || shard.label.clone();
    if info.count == 0 {
        return Err(ModelError::ZeroShardCount { shard: label() });
    }
    if info.count != expected.count {
        return Err(ModelError::ShardsDisagree {
            shard: label(),
            key: super::split::SPLIT_COUNT_KEY,
            expected: expected.count.into(),
            found: info.count.into(),
        });
    }
    if info.tensors_count != expected.tensors_count {
        return Err(ModelError::ShardsDisagree {
            shard: label(),
            key: super::split::SPLIT_TENSORS_COUNT_KEY,
            expected: expected.tensors_count,
            found: info.tensors_count,
        });
    }
    if info.no >= info.count {
        return Err(ModelError::ShardNumberOutOfRange {
            shard: label(),
            no: info.no,
            count: info.count,
        });
    }
    Ok(())
}
