//! The ggml tensor type table: every type id ggml has ever assigned, with its block geometry.
//!
//! The figures match ggml's `type_traits` (`ggml/src/ggml.c`) and the block structs in
//! `ggml-common.h`. A tensor of type `t` whose first dimension is `ne0` occupies
//! `ne0 / block_size * type_size` bytes per row, and `ne0` must be a multiple of `block_size`.
//!
//! One deliberate difference from gguf-py 0.19.0: its table gives Q8_1 a 40-byte block (two f32
//! scales, the layout before ggml switched to `ggml_half2`). ggml itself asserts
//! `sizeof(block_q8_1) == 2 * sizeof(ggml_half) + 32 == 36`, and ggml is what reads the file.

use core::fmt;

use serde::{Deserialize, Serialize};

/// A ggml tensor type that the current ggml can still read.
///
/// Serialized as its numeric id; deserializing checks the id against the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "u32", into = "u32")]
pub struct GgmlType(u32);

/// A type id that is not a live ggml type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{0} is not a live ggml type id")]
pub struct NotALiveType(pub u32);

impl TryFrom<u32> for GgmlType {
    type Error = NotALiveType;

    fn try_from(id: u32) -> Result<Self, Self::Error> {
        match GgmlType::lookup(id) {
            TypeLookup::Known(t) => Ok(t),
            _ => Err(NotALiveType(id)),
        }
    }
}

impl From<GgmlType> for u32 {
    fn from(t: GgmlType) -> u32 {
        t.0
    }
}

/// What a type id means: a live type, a type ggml once had and then removed, or nothing at all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TypeLookup {
    /// A type ggml can read today.
    Known(GgmlType),
    /// An id ggml assigned once and then removed; files using it cannot be loaded.
    Removed(&'static str),
    /// An id ggml has never assigned.
    Unknown,
}

struct TypeTraits {
    name: &'static str,
    block_size: u32,
    type_size: u32,
}

const fn live(name: &'static str, block_size: u32, type_size: u32) -> Option<TypeTraits> {
    Some(TypeTraits {
        name,
        block_size,
        type_size,
    })
}

/// Names of ids that ggml removed; indexed by id, `None` where the id is live or never existed.
const REMOVED: [(u32, &str); 8] = [
    (4, "q4_2"),
    (5, "q4_3"),
    (31, "q4_0_4_4"),
    (32, "q4_0_4_8"),
    (33, "q4_0_8_8"),
    (36, "iq4_nl_4_4"),
    (37, "iq4_nl_4_8"),
    (38, "iq4_nl_8_8"),
];

/// The live types, indexed by id. Removed ids hold `None` and are named in [`REMOVED`].
const TRAITS: [Option<TypeTraits>; 43] = [
    live("f32", 1, 4),
    live("f16", 1, 2),
    live("q4_0", 32, 18),
    live("q4_1", 32, 20),
    None, // q4_2, removed
    None, // q4_3, removed
    live("q5_0", 32, 22),
    live("q5_1", 32, 24),
    live("q8_0", 32, 34),
    live("q8_1", 32, 36),
    live("q2_K", 256, 84),
    live("q3_K", 256, 110),
    live("q4_K", 256, 144),
    live("q5_K", 256, 176),
    live("q6_K", 256, 210),
    live("q8_K", 256, 292),
    live("iq2_xxs", 256, 66),
    live("iq2_xs", 256, 74),
    live("iq3_xxs", 256, 98),
    live("iq1_s", 256, 50),
    live("iq4_nl", 32, 18),
    live("iq3_s", 256, 110),
    live("iq2_s", 256, 82),
    live("iq4_xs", 256, 136),
    live("i8", 1, 1),
    live("i16", 1, 2),
    live("i32", 1, 4),
    live("i64", 1, 8),
    live("f64", 1, 8),
    live("iq1_m", 256, 56),
    live("bf16", 1, 2),
    None, // q4_0_4_4, removed
    None, // q4_0_4_8, removed
    None, // q4_0_8_8, removed
    live("tq1_0", 256, 54),
    live("tq2_0", 256, 66),
    None, // iq4_nl_4_4, removed
    None, // iq4_nl_4_8, removed
    None, // iq4_nl_8_8, removed
    live("mxfp4", 32, 17),
    live("nvfp4", 64, 36),
    live("q1_0", 128, 18),
    live("q2_0", 64, 18),
];

impl GgmlType {
    pub const F32: GgmlType = GgmlType(0);
    pub const F16: GgmlType = GgmlType(1);
    pub const Q4_0: GgmlType = GgmlType(2);
    pub const Q4_1: GgmlType = GgmlType(3);
    pub const Q5_0: GgmlType = GgmlType(6);
    pub const Q5_1: GgmlType = GgmlType(7);
    pub const Q8_0: GgmlType = GgmlType(8);
    pub const Q2_K: GgmlType = GgmlType(10);
    pub const Q3_K: GgmlType = GgmlType(11);
    pub const Q4_K: GgmlType = GgmlType(12);
    pub const Q5_K: GgmlType = GgmlType(13);
    pub const Q6_K: GgmlType = GgmlType(14);
    pub const BF16: GgmlType = GgmlType(30);

    /// Classifies a raw type id read from a file.
    pub fn lookup(id: u32) -> TypeLookup {
        if let Some(&(_, name)) = REMOVED.iter().find(|(removed, _)| *removed == id) {
            return TypeLookup::Removed(name);
        }
        match TRAITS.get(id as usize) {
            Some(Some(_)) => TypeLookup::Known(GgmlType(id)),
            _ => TypeLookup::Unknown,
        }
    }

    /// Finds a live type by its ggml name, case-insensitively (`q4_k`, `Q4_K`, `bf16`).
    pub fn from_name(name: &str) -> Option<GgmlType> {
        Self::all().find(|t| t.name().eq_ignore_ascii_case(name))
    }

    /// Every live type, in id order.
    pub fn all() -> impl Iterator<Item = GgmlType> {
        TRAITS
            .iter()
            .enumerate()
            .filter(|(_, t)| t.is_some())
            .map(|(id, _)| GgmlType(id as u32))
    }

    fn traits(self) -> &'static TypeTraits {
        // The constructor only hands out ids whose TRAITS slot is Some.
        match &TRAITS[self.0 as usize] {
            Some(t) => t,
            None => unreachable!("GgmlType holds only live ids"),
        }
    }

    /// The numeric id stored in GGUF files.
    pub fn id(self) -> u32 {
        self.0
    }

    /// ggml's name for the type, as `ggml_type_name` prints it.
    pub fn name(self) -> &'static str {
        self.traits().name
    }

    /// Elements per block: 1 for plain scalar types, 32 to 256 for quantized ones.
    pub fn block_size(self) -> u32 {
        self.traits().block_size
    }

    /// Bytes per block.
    pub fn type_size(self) -> u32 {
        self.traits().type_size
    }

    /// Bytes that `elements` values of this type occupy, or `None` when `elements` is not a whole
    /// number of blocks or the product overflows.
    pub fn bytes_for(self, elements: u64) -> Option<u64> {
        let block = u64::from(self.block_size());
        if !elements.is_multiple_of(block) {
            return None;
        }
        (elements / block).checked_mul(u64::from(self.type_size()))
    }

    /// Whether the type is a plain IEEE float (weights a synthetic writer should fill with numbers).
    pub fn is_float(self) -> bool {
        matches!(self.0, 0 | 1 | 28 | 30)
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The table in ../shared/design.md, transcribed from ggml's headers: (id, name, block, bytes).
    const GGML_TABLE: &[(u32, &str, u32, u32)] = &[
        (0, "f32", 1, 4),
        (1, "f16", 1, 2),
        (2, "q4_0", 32, 18),
        (3, "q4_1", 32, 20),
        (6, "q5_0", 32, 22),
        (7, "q5_1", 32, 24),
        (8, "q8_0", 32, 34),
        (9, "q8_1", 32, 36),
        (10, "q2_K", 256, 84),
        (11, "q3_K", 256, 110),
        (12, "q4_K", 256, 144),
        (13, "q5_K", 256, 176),
        (14, "q6_K", 256, 210),
        (15, "q8_K", 256, 292),
        (16, "iq2_xxs", 256, 66),
        (17, "iq2_xs", 256, 74),
        (18, "iq3_xxs", 256, 98),
        (19, "iq1_s", 256, 50),
        (20, "iq4_nl", 32, 18),
        (21, "iq3_s", 256, 110),
        (22, "iq2_s", 256, 82),
        (23, "iq4_xs", 256, 136),
        (24, "i8", 1, 1),
        (25, "i16", 1, 2),
        (26, "i32", 1, 4),
        (27, "i64", 1, 8),
        (28, "f64", 1, 8),
        (29, "iq1_m", 256, 56),
        (30, "bf16", 1, 2),
        (34, "tq1_0", 256, 54),
        (35, "tq2_0", 256, 66),
        (39, "mxfp4", 32, 17),
        (40, "nvfp4", 64, 36),
        (41, "q1_0", 128, 18),
        (42, "q2_0", 64, 18),
    ];

    #[test]
    fn table_matches_ggml_exactly() {
        let ours: Vec<_> = GgmlType::all()
            .map(|t| (t.id(), t.name(), t.block_size(), t.type_size()))
            .collect();
        assert_eq!(ours, GGML_TABLE);
    }

    #[test]
    fn removed_ids_are_named() {
        for (id, name) in [
            (4, "q4_2"),
            (5, "q4_3"),
            (31, "q4_0_4_4"),
            (32, "q4_0_4_8"),
            (33, "q4_0_8_8"),
            (36, "iq4_nl_4_4"),
            (37, "iq4_nl_4_8"),
            (38, "iq4_nl_8_8"),
        ] {
            assert_eq!(GgmlType::lookup(id), TypeLookup::Removed(name), "id {id}");
        }
    }

    #[test]
    fn ids_past_the_table_are_unknown() {
        assert_eq!(GgmlType::lookup(43), TypeLookup::Unknown);
        assert_eq!(GgmlType::lookup(u32::MAX), TypeLookup::Unknown);
    }

    #[test]
    fn names_parse_case_insensitively() {
        assert_eq!(GgmlType::from_name("Q4_K"), Some(GgmlType::Q4_K));
        assert_eq!(GgmlType::from_name("bf16"), Some(GgmlType::BF16));
        assert_eq!(GgmlType::from_name("q4_2"), None);
    }

    #[test]
    fn byte_sizes_follow_blocks() {
        assert_eq!(GgmlType::Q4_K.bytes_for(512), Some(288));
        assert_eq!(GgmlType::Q4_K.bytes_for(100), None);
        assert_eq!(GgmlType::F32.bytes_for(u64::MAX), None);
    }
}
