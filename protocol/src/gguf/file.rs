//! The GGUF parser: header, metadata, tensor descriptors, and the whole-file checks.
//!
//! Layout (spec: <https://github.com/ggml-org/ggml/blob/master/docs/gguf.md>), all little-endian:
//!
//! ```text
//! magic "GGUF" | version u32 | tensor_count u64 | metadata_kv_count u64
//! metadata_kv_count × (key: string, type: u32, value)
//! tensor_count × (name: string, n_dims: u32, dims: n_dims × u64, type: u32, offset: u64)
//! padding to general.alignment | data section (tensor offsets are relative to its start)
//! ```

use super::cursor::Cursor;
use super::error::{ErrorKind, Field, GgufError};
use super::limits::{
    DEFAULT_ALIGNMENT, MAX_ALIGNMENT, MAX_DIMS, MAX_METADATA_ENTRIES, MAX_TENSORS,
    MAX_TENSOR_NAME_LEN,
};
use super::value::{check_count, eof_at, read_str, read_value, Value, ValueError, ValueType};
use crate::ggml_type::{GgmlType, TypeLookup};

/// The four bytes every GGUF file starts with.
pub const MAGIC: [u8; 4] = *b"GGUF";
/// The metadata key that sets the data alignment.
pub const ALIGNMENT_KEY: &str = "general.alignment";

/// Smallest encoding of a metadata entry: empty key (8), type tag (4), a one-byte value.
const MIN_METADATA_ENTRY_BYTES: u64 = 13;
/// Smallest encoding of a tensor descriptor: empty name (8), n_dims (4), type (4), offset (8).
const MIN_TENSOR_INFO_BYTES: u64 = 24;

/// A parsed and validated GGUF file that borrows its bytes (usually a read-only mapping).
#[derive(Debug, Clone)]
pub struct GgufFile<'a> {
    bytes: &'a [u8],
    version: u32,
    alignment: u64,
    metadata: Vec<MetadataEntry<'a>>,
    /// Indices into `metadata`, sorted by key, for lookups.
    keys_sorted: Vec<u32>,
    tensors: Vec<TensorInfo<'a>>,
    /// Indices into `tensors`, sorted by name, for lookups.
    names_sorted: Vec<u32>,
    descriptors_end: u64,
    data_offset: u64,
}

/// One metadata key and its value, with where they sit in the file.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MetadataEntry<'a> {
    pub key: &'a str,
    pub value: Value<'a>,
    /// Offset of the entry (its key's length prefix).
    pub offset: u64,
    /// Offset of the value itself.
    pub value_offset: u64,
}

/// A tensor descriptor, validated against the file: its bytes are in bounds and aligned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo<'a> {
    name: &'a str,
    dims: [u64; MAX_DIMS as usize],
    n_dims: u32,
    ty: GgmlType,
    relative_offset: u64,
    absolute_offset: u64,
    size: u64,
    descriptor_offset: u64,
}

impl<'a> TensorInfo<'a> {
    pub fn name(&self) -> &'a str {
        self.name
    }

    /// The dimensions, innermost first (ggml's `ne[0]` is the row length).
    pub fn dims(&self) -> &[u64] {
        &self.dims[..self.n_dims as usize]
    }

    pub fn ggml_type(&self) -> GgmlType {
        self.ty
    }

    /// Number of elements: the product of the dimensions.
    pub fn element_count(&self) -> u64 {
        // Checked at parse time not to overflow.
        self.dims().iter().product()
    }

    /// The data offset as stored in the file, relative to the data section.
    pub fn relative_offset(&self) -> u64 {
        self.relative_offset
    }

    /// Where the tensor's bytes start in the file.
    pub fn absolute_offset(&self) -> u64 {
        self.absolute_offset
    }

    /// The tensor's size in bytes, from the ggml type table.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The byte range `[start, end)` the tensor occupies in the file.
    pub fn byte_range(&self) -> core::ops::Range<u64> {
        self.absolute_offset..self.absolute_offset + self.size
    }

    /// Where the tensor's descriptor starts in the file.
    pub fn descriptor_offset(&self) -> u64 {
        self.descriptor_offset
    }
}

impl<'a> GgufFile<'a> {
    /// Parses and validates a whole GGUF file.
    pub fn parse(bytes: &'a [u8]) -> Result<GgufFile<'a>, GgufError> {
        Parser {
            cur: Cursor::new(bytes),
            bytes,
        }
        .parse()
    }

    /// The format version: 2 or 3.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The data alignment: `general.alignment`, or 32 when absent.
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// The file's bytes, as passed to [`GgufFile::parse`].
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    pub fn file_len(&self) -> u64 {
        self.bytes.len() as u64
    }

    /// Where the data section starts; tensor offsets are relative to it.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    /// The header, metadata and tensor descriptors, without the padding before the data.
    pub fn header_bytes(&self) -> &'a [u8] {
        &self.bytes[..self.descriptors_end as usize]
    }

    /// Metadata entries in file order.
    pub fn metadata(&self) -> &[MetadataEntry<'a>] {
        &self.metadata
    }

    /// The entry for `key`, if present.
    pub fn entry(&self, key: &str) -> Option<&MetadataEntry<'a>> {
        let idx = self
            .keys_sorted
            .binary_search_by(|&i| self.metadata[i as usize].key.cmp(key))
            .ok()?;
        Some(&self.metadata[self.keys_sorted[idx] as usize])
    }

    /// The value for `key`, if present.
    pub fn get(&self, key: &str) -> Option<Value<'a>> {
        self.entry(key).map(|e| e.value)
    }

    /// Tensor descriptors in file order.
    pub fn tensors(&self) -> &[TensorInfo<'a>] {
        &self.tensors
    }

    /// The tensor named `name`, if present.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo<'a>> {
        let idx = self
            .names_sorted
            .binary_search_by(|&i| self.tensors[i as usize].name.cmp(name))
            .ok()?;
        Some(&self.tensors[self.names_sorted[idx] as usize])
    }

    /// The bytes of one of this file's tensors.
    pub fn tensor_data(&self, tensor: &TensorInfo<'_>) -> &'a [u8] {
        let range = tensor.byte_range();
        // Bounds were checked at parse time; an info from another file yields an empty slice.
        self.bytes
            .get(range.start as usize..range.end as usize)
            .unwrap_or(&[])
    }
}

struct Parser<'a> {
    cur: Cursor<'a>,
    bytes: &'a [u8],
}

fn at(pos: usize, field: Field, kind: ErrorKind) -> GgufError {
    GgufError::new(pos as u64, field, kind)
}

fn located(field: impl FnOnce() -> Field) -> impl FnOnce(ValueError) -> GgufError {
    move |(pos, kind)| at(pos, field(), kind)
}

impl<'a> Parser<'a> {
    fn parse(mut self) -> Result<GgufFile<'a>, GgufError> {
        let version = self.header()?;
        let tensor_count = self.count_field(Field::TensorCount)?;
        let metadata_count_pos = self.cur.pos();
        let metadata_count = self.count_field(Field::MetadataCount)?;
        check_count(
            "metadata entry count",
            metadata_count,
            MAX_METADATA_ENTRIES,
            MIN_METADATA_ENTRY_BYTES,
            self.cur.remaining(),
        )
        .map_err(|kind| at(metadata_count_pos, Field::MetadataCount, kind))?;

        let metadata = self.metadata(metadata_count)?;
        let keys_sorted = sorted_unique(
            &metadata,
            |e| e.key,
            |e| e.offset,
            |key, first| ErrorKind::DuplicateKey {
                key: key.to_owned(),
                first_offset: first,
            },
        )
        .map_err(|(e, kind)| {
            at(
                e.offset as usize,
                Field::MetadataKey {
                    index: metadata_index(&metadata, e),
                },
                kind,
            )
        })?;
        let alignment = alignment(&metadata)?;

        check_count(
            "tensor count",
            tensor_count,
            MAX_TENSORS,
            MIN_TENSOR_INFO_BYTES,
            self.cur.remaining(),
        )
        .map_err(|kind| at(8, Field::TensorCount, kind))?;
        let mut tensors = self.tensor_infos(tensor_count)?;
        let names_sorted = sorted_unique(
            &tensors,
            |t| t.name,
            |t| t.descriptor_offset,
            |name, first| ErrorKind::DuplicateTensorName {
                name: name.to_owned(),
                first_offset: first,
            },
        )
        .map_err(|(t, kind)| {
            let index = tensors
                .iter()
                .position(|x| x.descriptor_offset == t.descriptor_offset)
                .unwrap_or(0) as u64;
            at(
                t.descriptor_offset as usize,
                Field::TensorName { index },
                kind,
            )
        })?;

        let descriptors_end = self.cur.pos() as u64;
        let data_offset = align_up(descriptors_end, alignment).ok_or_else(|| {
            at(
                descriptors_end as usize,
                Field::DataSection,
                ErrorKind::SizeOverflow,
            )
        })?;
        let file_len = self.bytes.len() as u64;
        if !tensors.is_empty() && data_offset > file_len {
            return Err(at(
                descriptors_end as usize,
                Field::DataSection,
                ErrorKind::DataSectionPastEnd {
                    data_offset,
                    file_len,
                },
            ));
        }
        place_tensors(&mut tensors, data_offset, alignment, file_len)?;
        check_overlaps(&tensors)?;
        check_packed(&tensors, alignment)?;

        Ok(GgufFile {
            bytes: self.bytes,
            version,
            alignment,
            metadata,
            keys_sorted,
            tensors,
            names_sorted,
            descriptors_end,
            data_offset,
        })
    }

    fn header(&mut self) -> Result<u32, GgufError> {
        let magic = self.cur.take(4).map_err(|e| {
            at(
                0,
                Field::Magic,
                ErrorKind::UnexpectedEof {
                    needed: e.needed,
                    available: e.available,
                },
            )
        })?;
        if magic != MAGIC {
            let mut found = [0u8; 4];
            found.copy_from_slice(magic);
            return Err(at(0, Field::Magic, ErrorKind::BadMagic { found }));
        }
        let version = self
            .cur
            .u32()
            .map_err(|e| eof_at(4)(e))
            .map_err(located(|| Field::Version))?;
        match version {
            2 | 3 => Ok(version),
            0 => Err(at(4, Field::Version, ErrorKind::VersionZero)),
            1 => Err(at(4, Field::Version, ErrorKind::Version1)),
            v if (1..=3).contains(&v.swap_bytes()) => Err(at(
                4,
                Field::Version,
                ErrorKind::BigEndian {
                    version: v.swap_bytes(),
                },
            )),
            v => Err(at(4, Field::Version, ErrorKind::FutureVersion(v))),
        }
    }

    fn count_field(&mut self, field: Field) -> Result<u64, GgufError> {
        let pos = self.cur.pos();
        self.cur
            .u64()
            .map_err(|e| eof_at(pos)(e))
            .map_err(located(|| field))
    }

    fn metadata(&mut self, count: u64) -> Result<Vec<MetadataEntry<'a>>, GgufError> {
        // `count` passed check_count against the remaining bytes, so this allocation is bounded.
        let mut entries = Vec::with_capacity(count as usize);
        for index in 0..count {
            let offset = self.cur.pos();
            let key = read_str(&mut self.cur).map_err(located(|| Field::MetadataKey { index }))?;
            let key = key.to_str().map_err(|e| {
                at(
                    offset + 8,
                    Field::MetadataKey { index },
                    ErrorKind::InvalidUtf8(e),
                )
            })?;
            if key.is_empty() {
                return Err(at(
                    offset,
                    Field::MetadataKey { index },
                    ErrorKind::EmptyKey,
                ));
            }
            let tag_pos = self.cur.pos();
            let tag = self
                .cur
                .u32()
                .map_err(|e| eof_at(tag_pos)(e))
                .map_err(located(|| Field::MetadataType {
                    key: key.to_owned(),
                }))?;
            let ty = ValueType::from_tag(tag).ok_or_else(|| {
                at(
                    tag_pos,
                    Field::MetadataType {
                        key: key.to_owned(),
                    },
                    ErrorKind::UnknownValueType(tag),
                )
            })?;
            let value_offset = self.cur.pos();
            let value =
                read_value(&mut self.cur, ty, 0).map_err(located(|| Field::MetadataValue {
                    key: key.to_owned(),
                }))?;
            entries.push(MetadataEntry {
                key,
                value,
                offset: offset as u64,
                value_offset: value_offset as u64,
            });
        }
        Ok(entries)
    }

    fn tensor_infos(&mut self, count: u64) -> Result<Vec<TensorInfo<'a>>, GgufError> {
        // `count` passed check_count against the remaining bytes, so this allocation is bounded.
        let mut tensors = Vec::with_capacity(count as usize);
        for index in 0..count {
            tensors.push(self.tensor_info(index)?);
        }
        Ok(tensors)
    }

    fn tensor_info(&mut self, index: u64) -> Result<TensorInfo<'a>, GgufError> {
        let descriptor_offset = self.cur.pos();
        let name = read_str(&mut self.cur).map_err(located(|| Field::TensorName { index }))?;
        let name_len = name.as_bytes().len() as u64;
        if name_len > MAX_TENSOR_NAME_LEN {
            return Err(at(
                descriptor_offset,
                Field::TensorName { index },
                ErrorKind::NameTooLong {
                    len: name_len,
                    max: MAX_TENSOR_NAME_LEN,
                },
            ));
        }
        let name = name.to_str().map_err(|e| {
            at(
                descriptor_offset + 8,
                Field::TensorName { index },
                ErrorKind::InvalidUtf8(e),
            )
        })?;
        let dims_field = || Field::TensorDims {
            tensor: name.to_owned(),
        };

        let n_dims_pos = self.cur.pos();
        let n_dims = self
            .cur
            .u32()
            .map_err(|e| eof_at(n_dims_pos)(e))
            .map_err(located(dims_field))?;
        if n_dims > MAX_DIMS {
            return Err(at(
                n_dims_pos,
                dims_field(),
                ErrorKind::TooManyDims {
                    n_dims,
                    max: MAX_DIMS,
                },
            ));
        }
        let mut dims = [1u64; MAX_DIMS as usize];
        for (i, dim) in dims.iter_mut().take(n_dims as usize).enumerate() {
            let pos = self.cur.pos();
            let value = self
                .cur
                .u64()
                .map_err(|e| eof_at(pos)(e))
                .map_err(located(dims_field))?;
            if value > i64::MAX as u64 {
                return Err(at(
                    pos,
                    dims_field(),
                    ErrorKind::DimTooLarge {
                        index: i as u32,
                        value,
                    },
                ));
            }
            *dim = value;
        }
        let elements = dims
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| at(n_dims_pos, dims_field(), ErrorKind::SizeOverflow))?;

        let type_pos = self.cur.pos();
        let type_field = || Field::TensorType {
            tensor: name.to_owned(),
        };
        let type_id = self
            .cur
            .u32()
            .map_err(|e| eof_at(type_pos)(e))
            .map_err(located(type_field))?;
        let ty = match GgmlType::lookup(type_id) {
            TypeLookup::Known(ty) => ty,
            TypeLookup::Removed(removed) => {
                return Err(at(
                    type_pos,
                    type_field(),
                    ErrorKind::RemovedTensorType {
                        id: type_id,
                        name: removed,
                    },
                ))
            }
            TypeLookup::Unknown => {
                return Err(at(
                    type_pos,
                    type_field(),
                    ErrorKind::UnknownTensorType(type_id),
                ))
            }
        };
        if dims[0] % u64::from(ty.block_size()) != 0 {
            return Err(at(
                type_pos,
                type_field(),
                ErrorKind::RowNotBlockMultiple {
                    ne0: dims[0],
                    ty: ty.name(),
                    block_size: ty.block_size(),
                },
            ));
        }
        let size = ty
            .bytes_for(elements)
            .ok_or_else(|| at(type_pos, type_field(), ErrorKind::SizeOverflow))?;

        let offset_pos = self.cur.pos();
        let relative_offset =
            self.cur
                .u64()
                .map_err(|e| eof_at(offset_pos)(e))
                .map_err(located(|| Field::TensorOffset {
                    tensor: name.to_owned(),
                }))?;

        Ok(TensorInfo {
            name,
            dims,
            n_dims,
            ty,
            relative_offset,
            absolute_offset: 0, // set by place_tensors once the data section is known
            size,
            descriptor_offset: descriptor_offset as u64,
        })
    }
}

fn metadata_index(entries: &[MetadataEntry<'_>], entry: &MetadataEntry<'_>) -> u64 {
    entries
        .iter()
        .position(|e| e.offset == entry.offset)
        .unwrap_or(0) as u64
}

/// Sorts item indices by name and fails on the first duplicate, reporting the later occurrence.
fn sorted_unique<T>(
    items: &[T],
    name: impl Fn(&T) -> &str,
    offset: impl Fn(&T) -> u64,
    duplicate: impl Fn(&str, u64) -> ErrorKind,
) -> Result<Vec<u32>, (&T, ErrorKind)> {
    // Counts are capped far below u32::MAX (MAX_TENSORS, MAX_METADATA_ENTRIES).
    let mut order: Vec<u32> = (0..items.len() as u32).collect();
    // Stable sort keeps file order among equal names, so the second of a pair is the later one.
    order.sort_by(|&a, &b| name(&items[a as usize]).cmp(name(&items[b as usize])));
    for pair in order.windows(2) {
        let (first, second) = (&items[pair[0] as usize], &items[pair[1] as usize]);
        if name(first) == name(second) {
            return Err((second, duplicate(name(first), offset(first))));
        }
    }
    Ok(order)
}

fn alignment(metadata: &[MetadataEntry<'_>]) -> Result<u64, GgufError> {
    let Some(entry) = metadata.iter().find(|e| e.key == ALIGNMENT_KEY) else {
        return Ok(DEFAULT_ALIGNMENT);
    };
    let field = || Field::MetadataValue {
        key: ALIGNMENT_KEY.to_owned(),
    };
    let pos = entry.value_offset as usize;
    let value = match entry.value {
        Value::U32(v) => u64::from(v),
        other => {
            return Err(at(
                pos,
                field(),
                ErrorKind::AlignmentWrongType {
                    found: other.value_type(),
                },
            ))
        }
    };
    if value == 0 {
        return Err(at(pos, field(), ErrorKind::AlignmentZero));
    }
    if !value.is_power_of_two() {
        return Err(at(pos, field(), ErrorKind::AlignmentNotPowerOfTwo(value)));
    }
    if value > MAX_ALIGNMENT {
        return Err(at(
            pos,
            field(),
            ErrorKind::AlignmentTooLarge {
                value,
                cap: MAX_ALIGNMENT,
            },
        ));
    }
    Ok(value)
}

/// Rounds `value` up to a multiple of `align`, a power of two.
pub(crate) fn align_up(value: u64, align: u64) -> Option<u64> {
    Some(value.checked_add(align - 1)? & !(align - 1))
}

/// The position of a tensor descriptor's offset field: after its name, n_dims, dims and type.
fn offset_field_pos(t: &TensorInfo<'_>) -> u64 {
    t.descriptor_offset + 8 + t.name.len() as u64 + 4 + 8 * u64::from(t.n_dims) + 4
}

fn place_tensors(
    tensors: &mut [TensorInfo<'_>],
    data_offset: u64,
    alignment: u64,
    file_len: u64,
) -> Result<(), GgufError> {
    for t in tensors.iter_mut() {
        let pos = offset_field_pos(t) as usize;
        let field = || Field::TensorOffset {
            tensor: t.name.to_owned(),
        };
        if t.relative_offset % alignment != 0 {
            return Err(at(
                pos,
                field(),
                ErrorKind::MisalignedTensor {
                    offset: t.relative_offset,
                    alignment,
                },
            ));
        }
        let start = data_offset.checked_add(t.relative_offset);
        let end = start.and_then(|s| s.checked_add(t.size));
        let (Some(start), Some(end)) = (start, end) else {
            return Err(at(pos, field(), ErrorKind::SizeOverflow));
        };
        if end > file_len {
            return Err(at(
                pos,
                field(),
                ErrorKind::TensorPastEnd {
                    start,
                    end,
                    file_len,
                },
            ));
        }
        t.absolute_offset = start;
    }
    Ok(())
}

/// llama.cpp's rule: each tensor starts where the one before it (in descriptor order) ends,
/// padded to the alignment. Checked after the overlap check, so an overlap is still named as one.
fn check_packed(tensors: &[TensorInfo<'_>], alignment: u64) -> Result<(), GgufError> {
    let mut expected = 0u64;
    for t in tensors {
        if t.relative_offset != expected {
            return Err(at(
                offset_field_pos(t) as usize,
                Field::TensorOffset {
                    tensor: t.name.to_owned(),
                },
                ErrorKind::TensorNotPacked {
                    offset: t.relative_offset,
                    expected,
                },
            ));
        }
        // Bounded: every tensor lies inside the file (checked before).
        expected = align_up(expected + t.size, alignment).ok_or_else(|| {
            at(
                offset_field_pos(t) as usize,
                Field::DataSection,
                ErrorKind::SizeOverflow,
            )
        })?;
    }
    Ok(())
}

fn check_overlaps(tensors: &[TensorInfo<'_>]) -> Result<(), GgufError> {
    // Zero-sized tensors occupy no bytes, so they cannot overlap anything.
    let mut by_start: Vec<&TensorInfo<'_>> = tensors.iter().filter(|t| t.size > 0).collect();
    by_start.sort_by_key(|t| (t.absolute_offset, t.descriptor_offset));
    // With no overlap so far, each tensor ends at or before the next one starts, so comparing
    // neighbours in start order finds any overlap.
    for pair in by_start.windows(2) {
        let (prev, t) = (pair[0], pair[1]);
        if t.absolute_offset < prev.byte_range().end {
            // Report on whichever of the two descriptors comes later in the file.
            let (later, earlier) = if t.descriptor_offset > prev.descriptor_offset {
                (t, prev)
            } else {
                (prev, t)
            };
            return Err(at(
                offset_field_pos(later) as usize,
                Field::TensorOffset {
                    tensor: later.name.to_owned(),
                },
                ErrorKind::TensorsOverlap {
                    start: later.byte_range().start,
                    end: later.byte_range().end,
                    other: earlier.name.to_owned(),
                    other_start: earlier.byte_range().start,
                    other_end: earlier.byte_range().end,
                },
            ));
        }
    }
    Ok(())
}
