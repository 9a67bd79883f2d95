//! Typed access to metadata: `file.u32("llama.block_count")` and friends.
//!
//! Integer accessors accept any integer value type whose value fits the requested type, because
//! converters disagree on widths (block counts appear as uint32 and as int32 in the wild). Every
//! other mismatch is an error that names the key, the expected and the found type.

use super::file::GgufFile;
use super::value::{ArrayView, Value, ValueType};

/// A metadata key was missing or held something unusable.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MetadataError {
    /// The key is not in the file.
    #[error("metadata key {key:?} is missing")]
    Missing { key: String },
    /// The key holds a value of another type.
    #[error("metadata key {key:?} at byte {offset} is {found}, expected {expected}")]
    WrongType {
        key: String,
        offset: u64,
        expected: &'static str,
        found: ValueType,
    },
    /// The key holds an integer that does not fit the requested type.
    #[error("metadata key {key:?} at byte {offset} holds {value}, which does not fit {expected}")]
    OutOfRange {
        key: String,
        offset: u64,
        value: i128,
        expected: &'static str,
    },
    /// The key holds a string that is not UTF-8.
    #[error("metadata key {key:?} at byte {offset} holds a string that is not valid UTF-8")]
    NotUtf8 {
        key: String,
        offset: u64,
        #[source]
        source: core::str::Utf8Error,
    },
    /// An array's length does not match what the model's structure requires.
    #[error("metadata key {key:?} at byte {offset} has {found} elements, expected {expected}")]
    WrongLength {
        key: String,
        offset: u64,
        expected: u64,
        found: u64,
    },
}

macro_rules! int_accessor {
    ($(#[$doc:meta])* $name:ident, $ty:ty) => {
        $(#[$doc])*
        pub fn $name(&self, key: &str) -> Result<$ty, MetadataError> {
            self.integer(key, stringify!($ty))
                .and_then(|(value, offset)| {
                    <$ty>::try_from(value).map_err(|_| MetadataError::OutOfRange {
                        key: key.to_owned(),
                        offset,
                        value,
                        expected: stringify!($ty),
                    })
                })
        }
    };
}

impl<'a> GgufFile<'a> {
    fn require(&self, key: &str) -> Result<(Value<'a>, u64), MetadataError> {
        self.entry(key)
            .map(|e| (e.value, e.value_offset))
            .ok_or_else(|| MetadataError::Missing {
                key: key.to_owned(),
            })
    }

    fn wrong_type(key: &str, offset: u64, expected: &'static str, v: Value<'_>) -> MetadataError {
        MetadataError::WrongType {
            key: key.to_owned(),
            offset,
            expected,
            found: v.value_type(),
        }
    }

    fn integer(&self, key: &str, expected: &'static str) -> Result<(i128, u64), MetadataError> {
        let (value, offset) = self.require(key)?;
        value
            .as_integer()
            .map(|v| (v, offset))
            .ok_or_else(|| Self::wrong_type(key, offset, expected, value))
    }

    int_accessor!(
        /// An integer key as u16.
        u16, u16);
    int_accessor!(
        /// An integer key as u32.
        u32, u32);
    int_accessor!(
        /// An integer key as u64.
        u64, u64);
    int_accessor!(
        /// An integer key as i32.
        i32, i32);
    int_accessor!(
        /// An integer key as i64.
        i64, i64);

    /// A float key (float32 or float64) as f64.
    pub fn f64(&self, key: &str) -> Result<f64, MetadataError> {
        match self.require(key)? {
            (Value::F32(v), _) => Ok(f64::from(v)),
            (Value::F64(v), _) => Ok(v),
            (v, offset) => Err(Self::wrong_type(key, offset, "float", v)),
        }
    }

    /// A bool key.
    pub fn bool(&self, key: &str) -> Result<bool, MetadataError> {
        match self.require(key)? {
            (Value::Bool(v), _) => Ok(v),
            (v, offset) => Err(Self::wrong_type(key, offset, "bool", v)),
        }
    }

    /// A string key as UTF-8 text.
    pub fn str(&self, key: &str) -> Result<&'a str, MetadataError> {
        match self.require(key)? {
            (Value::String(s), offset) => s.to_str().map_err(|source| MetadataError::NotUtf8 {
                key: key.to_owned(),
                offset,
                source,
            }),
            (v, offset) => Err(Self::wrong_type(key, offset, "string", v)),
        }
    }

    /// An array key.
    pub fn array(&self, key: &str) -> Result<ArrayView<'a>, MetadataError> {
        match self.require(key)? {
            (Value::Array(a), _) => Ok(a),
            (v, offset) => Err(Self::wrong_type(key, offset, "array", v)),
        }
    }

    /// Like [`GgufFile::u32`], but `None` when the key is absent.
    pub fn opt_u32(&self, key: &str) -> Result<Option<u32>, MetadataError> {
        optional(self.u32(key))
    }

    /// `general.architecture`: the prefix of the model's hyper-parameter keys.
    pub fn architecture(&self) -> Result<&'a str, MetadataError> {
        self.str("general.architecture")
    }

    /// The vocabulary size: the length of `tokenizer.ggml.tokens`, else `{arch}.vocab_size`.
    pub fn vocab_size(&self) -> Result<Option<u64>, MetadataError> {
        if let Some(tokens) = optional(self.array("tokenizer.ggml.tokens"))? {
            return Ok(Some(tokens.len()));
        }
        match self.architecture() {
            Ok(arch) => optional(self.u64(&format!("{arch}.vocab_size"))),
            Err(MetadataError::Missing { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// Turns a missing key into `None` and keeps every other error.
pub fn optional<T>(result: Result<T, MetadataError>) -> Result<Option<T>, MetadataError> {
    match result {
        Ok(v) => Ok(Some(v)),
        Err(MetadataError::Missing { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}
