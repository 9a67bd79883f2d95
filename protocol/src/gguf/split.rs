//! Split-model metadata (`split.no`, `split.count`, `split.tensors.count`) and shard file naming,
//! as written by llama.cpp's `gguf-split`.

use serde::{Deserialize, Serialize};

use super::file::GgufFile;
use super::metadata::MetadataError;

pub const SPLIT_NO_KEY: &str = "split.no";
pub const SPLIT_COUNT_KEY: &str = "split.count";
pub const SPLIT_TENSORS_COUNT_KEY: &str = "split.tensors.count";

/// Where one shard sits in a split model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitInfo {
    /// This shard's number, from 0.
    pub no: u16,
    /// How many shards the model has.
    pub count: u16,
    /// How many tensors all shards hold together.
    pub tensors_count: u64,
}

/// Reads a file's split keys. `None` when the file does not declare `split.count`.
pub fn split_info(file: &GgufFile<'_>) -> Result<Option<SplitInfo>, MetadataError> {
    if file.entry(SPLIT_COUNT_KEY).is_none() {
        return Ok(None);
    }
    Ok(Some(SplitInfo {
        no: file.u16(SPLIT_NO_KEY)?,
        count: file.u16(SPLIT_COUNT_KEY)?,
        tensors_count: file.u64(SPLIT_TENSORS_COUNT_KEY)?,
    }))
}

/// The file name of shard `no` (from 0): `{prefix}-{no+1:05}-of-{count:05}.gguf`.
pub fn shard_file_name(prefix: &str, no: u16, count: u16) -> String {
    format!("{prefix}-{:05}-of-{count:05}.gguf", u32::from(no) + 1)
}

/// The prefix of a shard's file name, when the name follows the shard naming scheme for `no`
/// and `count`.
pub fn shard_prefix(file_name: &str, no: u16, count: u16) -> Option<&str> {
    let suffix = format!("-{:05}-of-{count:05}.gguf", u32::from(no) + 1);
    file_name.strip_suffix(&suffix)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_names_round_trip() {
        let name = shard_file_name("models/big", 2, 3);
        assert_eq!(name, "models/big-00003-of-00003.gguf");
        assert_eq!(shard_prefix(&name, 2, 3), Some("models/big"));
        assert_eq!(shard_prefix(&name, 1, 3), None);
        assert_eq!(shard_prefix("plain.gguf", 0, 1), None);
    }
}
