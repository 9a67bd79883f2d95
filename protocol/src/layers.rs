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

/// Tensors below this size (norms, biases, scales) are read before everything else: an engine
/// reads them all when it is built, before it computes anything.
const SMALL_TENSOR: u64 = 64 << 10;

/// Every byte of the files (`file_lens`, by shard), each once, in the order a first forward
/// pass needs them: the pages of the small tensors, then the blocks in order, then the output
/// stage and the rest (the token embedding, which a tied output reads last), then what no
/// region holds (the header). A loader that reads in this order lets a worker computing while
/// the pages arrive find each layer in place before it asks for it. Ranges are page-aligned
/// except where a file ends.
pub fn read_order(regions: &[LayerRegion], file_lens: &[u64], page: PageSize) -> Vec<Extent> {
    let clip = |e: Extent| -> Option<Extent> {
        let len = *file_lens.get(e.shard as usize)?;
        let end = e.end.min(len);
        (e.start < end).then_some(Extent { end, ..e })
    };
    let small = regions
        .iter()
        .flat_map(|r| &r.tensors)
        .filter(|t| t.size > 0 && t.size < SMALL_TENSOR)
        .map(|t| Extent {
            shard: t.shard,
            start: page.down(t.offset),
            end: page.up(t.offset + t.size),
        });
    let mut blocks: Vec<&LayerRegion> = regions
        .iter()
        .filter(|r| matches!(r.group, LayerGroup::Block(_)))
        .collect();
    blocks.sort_by_key(|r| match r.group {
        LayerGroup::Block(n) => n,
        _ => 0,
    });
    let rest = regions
        .iter()
        .filter(|r| !matches!(r.group, LayerGroup::Block(_) | LayerGroup::TokenEmbedding));
    let embedding = regions
        .iter()
        .filter(|r| r.group == LayerGroup::TokenEmbedding);
    let wanted = small.chain(
        blocks
            .into_iter()
            .chain(rest)
            .chain(embedding)
            .flat_map(|r| r.extents.iter().copied()),
    );
    let whole = file_lens.iter().enumerate().map(|(shard, &len)| Extent {
        shard: shard as u16,
        start: 0,
        end: len,
    });
    let mut covered: Vec<Vec<(u64, u64)>> = vec![Vec::new(); file_lens.len()];
    let mut out = Vec::new();
    for e in wanted.chain(whole).filter_map(clip) {
        for (start, end) in uncovered(&covered[e.shard as usize], e.start, e.end) {
            out.push(Extent {
                shard: e.shard,
                start,
                end,
            });
            insert(&mut covered[e.shard as usize], start, end);
        }
    }
    out
}

/// The parts of `start..end` outside the sorted, disjoint `covered` ranges.
fn uncovered(covered: &[(u64, u64)], start: u64, end: u64) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut at = start;
    let first = covered.partition_point(|&(_, e)| e <= start);
    for &(s, e) in &covered[first..] {
        if s >= end {
            break;
        }
        if s > at {
            out.push((at, s));
        }
        at = at.max(e);
    }
    if at < end {
        out.push((at, end));
    }
    out
}

/// Adds `start..end` (disjoint from every range there) to the sorted `covered`, merging
/// neighbours.
fn insert(covered: &mut Vec<(u64, u64)>, start: u64, end: u64) {
    let at = covered.partition_point(|&(s, _)| s < start);
    covered.insert(at, (start, end));
    if at + 1 < covered.len() && covered[at + 1].0 == end {
        covered[at].1 = covered[at + 1].1;
        covered.remove(at + 1);
    }
    if at > 0 && covered[at - 1].1 == start {
        covered[at - 1].1 = covered[at].1;
        covered.remove(at);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tensor(name: &str, offset: u64, size: u64) -> RegionTensor {
        RegionTensor {
            name: name.into(),
            ggml_type: GgmlType::F32,
            dims: vec![size / 4],
            shard: 0,
            offset,
            size,
        }
    }

    fn region(group: LayerGroup, tensors: Vec<RegionTensor>) -> LayerRegion {
        let page = PageSize::FOUR_KIB;
        LayerRegion {
            group,
            tensor_bytes: tensors.iter().map(|t| t.size).sum(),
            extents: extents(&tensors, page),
            tensors,
        }
    }

    #[test]
    fn reads_norms_then_blocks_in_order_then_the_embedding() {
        // Header 0..8K; embedding 8K..1M; block 1 at 1M; block 0 at 2M (out of order in the file),
        // each a big weight and a small norm; the output norm at the end.
        let regions = vec![
            region(
                LayerGroup::TokenEmbedding,
                vec![tensor("token_embd.weight", 8192, 1040384)],
            ),
            region(
                LayerGroup::Block(1),
                vec![
                    tensor("blk.1.w", 1 << 20, 512 << 10),
                    tensor("blk.1.norm", (1 << 20) + (512 << 10), 256),
                ],
            ),
            region(
                LayerGroup::Block(0),
                vec![
                    tensor("blk.0.w", 2 << 20, 512 << 10),
                    tensor("blk.0.norm", (2 << 20) + (512 << 10), 256),
                ],
            ),
            region(
                LayerGroup::OutputNorm,
                vec![tensor("output_norm.weight", 3 << 20, 256)],
            ),
        ];
        let len = (3 << 20) + 100;
        let order = read_order(&regions, &[len], PageSize::FOUR_KIB);
        let starts: Vec<u64> = order.iter().map(|e| e.start).collect();
        let norm1 = (1 << 20) + (512 << 10);
        let norm0 = (2 << 20) + (512 << 10);
        assert_eq!(
            &starts[..3],
            &[norm1, norm0, 3 << 20],
            "small tensors first: {order:?}"
        );
        assert_eq!(order[2].end, len, "clipped to the file");
        assert_eq!(&starts[3..5], &[2 << 20, 1 << 20], "block 0, then block 1");
        assert_eq!(starts[5], 8192, "then the embedding");
        // Then what no tensor holds, in file order: the header and the padding between groups.
        let rest: Vec<(u64, u64)> = order[6..].iter().map(|e| (e.start, e.end)).collect();
        assert_eq!(
            rest,
            [
                (0, 8192),
                ((1 << 20) + (516 << 10), 2 << 20),
                ((2 << 20) + (516 << 10), 3 << 20)
            ]
        );
    }

    proptest::proptest! {
        #[test]
        fn every_byte_is_read_once(
            sizes in proptest::collection::vec((0u8..4, 1u64..200_000), 0..12),
            tail in 0u64..10_000,
        ) {
            // Tensors packed one after another from 4 KiB, in groups drawn at random.
            let mut offset = 4096;
            let mut regions: Vec<LayerRegion> = Vec::new();
            for (i, (group, size)) in sizes.iter().enumerate() {
                let group = match group {
                    0 => LayerGroup::TokenEmbedding,
                    1 => LayerGroup::Block(i as u32 % 3),
                    2 => LayerGroup::Output,
                    _ => LayerGroup::Other("x".into()),
                };
                regions.push(region(group, vec![tensor("t", offset, *size)]));
                offset += size.div_ceil(32) * 32;
            }
            let len = offset + tail;
            let order = read_order(&regions, &[len], PageSize::FOUR_KIB);
            let mut ranges: Vec<(u64, u64)> = order.iter().map(|e| (e.start, e.end)).collect();
            ranges.sort();
            let mut at = 0;
            for (s, e) in ranges {
                proptest::prop_assert_eq!(s, at, "a gap or an overlap: {:?}", order);
                proptest::prop_assert!(e > s);
                at = e;
            }
            proptest::prop_assert_eq!(at, len);
        }
    }

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
