//! Layer regions: which page-aligned byte ranges of the model files hold each layer.
//!
//! This is what the host advertises and what a worker maps, prefaults or uploads. Tensors named
//! `blk.N.*` form layer N; `token_embd.*`, `output_norm.*` and `output.*` form their own groups;
//! any other prefix (`rope_freqs`, `per_layer_token_embd`, ...) forms a group of that name.
//!
//! A region's extents are rounded out to whole pages, so neighbouring layers usually share the
//! page where one ends and the next begins. Extents are coalesced per shard: a layer whose tensors
//! sit together in the file has one extent per shard it touches.

use core::fmt;

use serde::{Deserialize, Serialize};

use crate::ggml_type::GgmlType;
use crate::gguf::GgufModel;

/// A page size: a power of two of at least 512 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageSize(u64);

impl PageSize {
    pub const FOUR_KIB: PageSize = PageSize(4096);

    /// `None` unless `bytes` is a power of two of at least 512.
    pub fn new(bytes: u64) -> Option<PageSize> {
        (bytes.is_power_of_two() && bytes >= 512).then_some(PageSize(bytes))
    }

    pub fn get(self) -> u64 {
        self.0
    }

    fn down(self, x: u64) -> u64 {
        x & !(self.0 - 1)
    }

    fn up(self, x: u64) -> u64 {
        // Tensor ends were checked against the file length, far below u64::MAX - page.
        x.saturating_add(self.0 - 1) & !(self.0 - 1)
    }
}

/// What a group of tensors is in the model.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LayerGroup {
    /// `token_embd.*`
    TokenEmbedding,
    /// `blk.N.*`
    Block(u32),
    /// `output_norm.*`
    OutputNorm,
    /// `output.*`
    Output,
    /// Any other prefix.
    Other(String),
}

impl LayerGroup {
    /// The group a tensor belongs to, from its name.
    pub fn of_tensor(name: &str) -> LayerGroup {
        let (prefix, rest) = name.split_once('.').unwrap_or((name, ""));
        match prefix {
            "token_embd" => LayerGroup::TokenEmbedding,
            "output_norm" => LayerGroup::OutputNorm,
            "output" => LayerGroup::Output,
            "blk" => {
                let index = rest.split('.').next().unwrap_or("");
                match index.parse::<u32>() {
                    Ok(n) if index.bytes().all(|b| b.is_ascii_digit()) => LayerGroup::Block(n),
                    _ => LayerGroup::Other(prefix.to_owned()),
                }
            }
            other => LayerGroup::Other(other.to_owned()),
        }
    }
}

impl fmt::Display for LayerGroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LayerGroup::TokenEmbedding => f.write_str("token_embd"),
            LayerGroup::Block(n) => write!(f, "blk.{n}"),
            LayerGroup::OutputNorm => f.write_str("output_norm"),
            LayerGroup::Output => f.write_str("output"),
            LayerGroup::Other(name) => f.write_str(name),
        }
    }
}

/// A page-aligned byte range `[start, end)` of one shard file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Extent {
    pub shard: u16,
    pub start: u64,
    pub end: u64,
}

impl Extent {
    pub fn len(&self) -> u64 {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }
}

/// One tensor inside a region, located in its shard file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionTensor {
    pub name: String,
    pub ggml_type: GgmlType,
    pub dims: Vec<u64>,
    pub shard: u16,
    /// Absolute offset in the shard file.
    pub offset: u64,
    pub size: u64,
}

/// A layer or group: its tensors, their byte count and the pages that hold them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerRegion {
    pub group: LayerGroup,
    /// Tensors in file order.
    pub tensors: Vec<RegionTensor>,
    /// Sum of the tensors' sizes, without padding.
    pub tensor_bytes: u64,
    /// Page-aligned, coalesced ranges covering every tensor.
    pub extents: Vec<Extent>,
}

impl LayerRegion {
    /// Bytes covered by the extents: what mapping or prefaulting this region touches.
    pub fn mapped_bytes(&self) -> u64 {
        self.extents.iter().map(Extent::len).sum()
    }
}

/// Groups a model's tensors into regions: token embedding, blocks in order, output norm, output,
/// then other groups by name.
pub fn layer_regions(model: &GgufModel<'_>, page: PageSize) -> Vec<LayerRegion> {
    let mut tensors: Vec<(LayerGroup, RegionTensor)> = model
        .tensors()
        .map(|(shard, t)| {
            (
                LayerGroup::of_tensor(t.name()),
                RegionTensor {
                    name: t.name().to_owned(),
                    ggml_type: t.ggml_type(),
                    dims: t.dims().to_vec(),
                    shard,
                    offset: t.absolute_offset(),
                    size: t.size(),
                },
            )
        })
        .collect();
    tensors.sort_by(|(ga, a), (gb, b)| (ga, a.shard, a.offset).cmp(&(gb, b.shard, b.offset)));

    let mut regions: Vec<LayerRegion> = Vec::new();
    for (group, tensor) in tensors {
        match regions.last_mut() {
            Some(region) if region.group == group => region.tensors.push(tensor),
            _ => regions.push(LayerRegion {
                group,
                tensors: vec![tensor],
                tensor_bytes: 0,
                extents: Vec::new(),
            }),
        }
    }
    for region in &mut regions {
        region.tensor_bytes = region.tensors.iter().map(|t| t.size).sum();
        region.extents = extents(&region.tensors, page);
    }
    regions
}

/// Page-rounds each tensor's range and merges ranges that touch, per shard. `tensors` is sorted
/// by (shard, offset).
fn extents(tensors: &[RegionTensor], page: PageSize) -> Vec<Extent> {
    let mut out: Vec<Extent> = Vec::new();
    for t in tensors.iter().filter(|t| t.size > 0) {
        let start = page.down(t.offset);
        let end = page.up(t.offset + t.size);
        match out.last_mut() {
            Some(last) if last.shard == t.shard && start <= last.end => {
                last.end = last.end.max(end);
            }
            _ => out.push(Extent {
                shard: t.shard,
                start,
                end,
            }),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_come_from_names() {
        assert_eq!(
            LayerGroup::of_tensor("blk.17.attn_q.weight"),
            LayerGroup::Block(17)
        );
        assert_eq!(
            LayerGroup::of_tensor("token_embd.weight"),
            LayerGroup::TokenEmbedding
        );
        assert_eq!(
            LayerGroup::of_tensor("output_norm.weight"),
            LayerGroup::OutputNorm
        );
        assert_eq!(LayerGroup::of_tensor("output.weight"), LayerGroup::Output);
        assert_eq!(
            LayerGroup::of_tensor("rope_freqs.weight"),
            LayerGroup::Other("rope_freqs".into())
        );
        assert_eq!(
            LayerGroup::of_tensor("blk.+1.x"),
            LayerGroup::Other("blk".into())
        );
        assert_eq!(
            LayerGroup::of_tensor("blk"),
            LayerGroup::Other("blk".into())
        );
    }

    #[test]
    fn page_size_must_be_a_power_of_two() {
        assert!(PageSize::new(4096).is_some());
        assert!(PageSize::new(65536).is_some());
        assert!(PageSize::new(4095).is_none());
        assert!(PageSize::new(0).is_none());
        assert!(PageSize::new(256).is_none());
    }
}
