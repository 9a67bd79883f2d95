//! Metadata values: the type tags, borrowed views into the file, and an owned form for writing.
//!
//! Parsing walks every value once to validate it and find its end. Arrays keep a borrowed slice of
//! their encoded elements and decode on iteration, so a 262,144-entry vocabulary costs no
//! allocation at parse time.

use core::fmt;

use super::cursor::{Cursor, Eof};
use super::error::ErrorKind;
use super::limits::{MAX_ARRAY_DEPTH, MAX_ARRAY_LEN, MAX_STRING_LEN};

/// The value-type tag stored before every metadata value and array.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ValueType {
    U8,
    I8,
    U16,
    I16,
    U32,
    I32,
    F32,
    Bool,
    String,
    Array,
    U64,
    I64,
    F64,
}

impl ValueType {
    /// Every value type, in tag order.
    pub const ALL: [ValueType; 13] = [
        ValueType::U8,
        ValueType::I8,
        ValueType::U16,
        ValueType::I16,
        ValueType::U32,
        ValueType::I32,
        ValueType::F32,
        ValueType::Bool,
        ValueType::String,
        ValueType::Array,
        ValueType::U64,
        ValueType::I64,
        ValueType::F64,
    ];

    /// Maps a tag read from the file to a type.
    pub fn from_tag(tag: u32) -> Option<ValueType> {
        Self::ALL.get(usize::try_from(tag).ok()?).copied()
    }

    /// The tag written to the file.
    pub fn tag(self) -> u32 {
        self as u32
    }

    /// The encoded size of a value of this type, when it has a fixed size.
    pub fn fixed_size(self) -> Option<u64> {
        Some(match self {
            ValueType::U8 | ValueType::I8 | ValueType::Bool => 1,
            ValueType::U16 | ValueType::I16 => 2,
            ValueType::U32 | ValueType::I32 | ValueType::F32 => 4,
            ValueType::U64 | ValueType::I64 | ValueType::F64 => 8,
            ValueType::String | ValueType::Array => return None,
        })
    }

    /// The fewest bytes one value of this type can take: what a count is checked against.
    pub fn min_size(self) -> u64 {
        match self {
            ValueType::String => 8,
            ValueType::Array => 12,
            fixed => fixed.fixed_size().unwrap_or(1),
        }
    }

    /// The name the GGUF spec uses for this type.
    pub fn name(self) -> &'static str {
        match self {
            ValueType::U8 => "uint8",
            ValueType::I8 => "int8",
            ValueType::U16 => "uint16",
            ValueType::I16 => "int16",
            ValueType::U32 => "uint32",
            ValueType::I32 => "int32",
            ValueType::F32 => "float32",
            ValueType::Bool => "bool",
            ValueType::String => "string",
            ValueType::Array => "array",
            ValueType::U64 => "uint64",
            ValueType::I64 => "int64",
            ValueType::F64 => "float64",
        }
    }
}

impl fmt::Display for ValueType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A GGUF string: bytes that the spec says are UTF-8. Checked only when read as text, because
/// some vocabularies carry raw byte tokens.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct GgufStr<'a>(&'a [u8]);

impl<'a> GgufStr<'a> {
    /// The raw bytes.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.0
    }

    /// The text, if it is valid UTF-8.
    pub fn to_str(&self) -> Result<&'a str, core::str::Utf8Error> {
        core::str::from_utf8(self.0)
    }
}

impl fmt::Debug for GgufStr<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.to_str() {
            Ok(s) => fmt::Debug::fmt(s, f),
            Err(_) => write!(f, "b{:?}", self.0),
        }
    }
}

/// A metadata value that borrows the file's bytes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Value<'a> {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(GgufStr<'a>),
    Array(ArrayView<'a>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl<'a> Value<'a> {
    /// The type tag of this value.
    pub fn value_type(&self) -> ValueType {
        match self {
            Value::U8(_) => ValueType::U8,
            Value::I8(_) => ValueType::I8,
            Value::U16(_) => ValueType::U16,
            Value::I16(_) => ValueType::I16,
            Value::U32(_) => ValueType::U32,
            Value::I32(_) => ValueType::I32,
            Value::F32(_) => ValueType::F32,
            Value::Bool(_) => ValueType::Bool,
            Value::String(_) => ValueType::String,
            Value::Array(_) => ValueType::Array,
            Value::U64(_) => ValueType::U64,
            Value::I64(_) => ValueType::I64,
            Value::F64(_) => ValueType::F64,
        }
    }

    /// The value as a wide integer, for any integer type; `None` for other types.
    pub fn as_integer(&self) -> Option<i128> {
        Some(match *self {
            Value::U8(v) => v.into(),
            Value::I8(v) => v.into(),
            Value::U16(v) => v.into(),
            Value::I16(v) => v.into(),
            Value::U32(v) => v.into(),
            Value::I32(v) => v.into(),
            Value::U64(v) => v.into(),
            Value::I64(v) => v.into(),
            _ => return None,
        })
    }

    /// Copies the value out of the file.
    pub fn to_owned_value(&self) -> OwnedValue {
        match *self {
            Value::U8(v) => OwnedValue::U8(v),
            Value::I8(v) => OwnedValue::I8(v),
            Value::U16(v) => OwnedValue::U16(v),
            Value::I16(v) => OwnedValue::I16(v),
            Value::U32(v) => OwnedValue::U32(v),
            Value::I32(v) => OwnedValue::I32(v),
            Value::F32(v) => OwnedValue::F32(v),
            Value::Bool(v) => OwnedValue::Bool(v),
            Value::String(s) => OwnedValue::String(s.as_bytes().to_vec()),
            Value::Array(a) => OwnedValue::Array(
                a.elem_type(),
                a.iter().map(|v| v.to_owned_value()).collect(),
            ),
            Value::U64(v) => OwnedValue::U64(v),
            Value::I64(v) => OwnedValue::I64(v),
            Value::F64(v) => OwnedValue::F64(v),
        }
    }
}

/// An array value: its element type, its length and its encoded elements, validated at parse time.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ArrayView<'a> {
    elem_type: ValueType,
    len: u64,
    encoded: &'a [u8],
    depth: u32,
}

impl<'a> ArrayView<'a> {
    /// The type of every element.
    pub fn elem_type(&self) -> ValueType {
        self.elem_type
    }

    /// The number of elements.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The elements, decoded one at a time from the file's bytes.
    pub fn iter(&self) -> ArrayIter<'a> {
        ArrayIter {
            elem_type: self.elem_type,
            remaining: self.len,
            cursor: Cursor::new(self.encoded),
            depth: self.depth,
        }
    }
}

/// Decodes array elements lazily. The bytes were validated when the file was parsed.
pub struct ArrayIter<'a> {
    elem_type: ValueType,
    remaining: u64,
    cursor: Cursor<'a>,
    depth: u32,
}

impl<'a> Iterator for ArrayIter<'a> {
    type Item = Value<'a>;

    fn next(&mut self) -> Option<Value<'a>> {
        if self.remaining == 0 {
            return None;
        }
        self.remaining -= 1;
        // Validated at parse time, so this cannot fail; stopping is the safe answer if it did.
        read_value(&mut self.cursor, self.elem_type, self.depth).ok()
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = usize::try_from(self.remaining).unwrap_or(usize::MAX);
        (n, Some(n))
    }
}

/// A failure while reading a value: where the failing field starts, and why.
pub(crate) type ValueError = (usize, ErrorKind);

pub(crate) fn eof_at(pos: usize) -> impl Fn(Eof) -> ValueError {
    move |e| {
        (
            pos,
            ErrorKind::UnexpectedEof {
                needed: e.needed,
                available: e.available,
            },
        )
    }
}

/// Reads a length-prefixed GGUF string.
pub(crate) fn read_str<'a>(cur: &mut Cursor<'a>) -> Result<GgufStr<'a>, ValueError> {
    let start = cur.pos();
    let len = cur.u64().map_err(eof_at(start))?;
    if len > MAX_STRING_LEN {
        return Err((
            start,
            ErrorKind::CountOverCap {
                what: "string length",
                count: len,
                cap: MAX_STRING_LEN,
            },
        ));
    }
    let body_start = cur.pos();
    let bytes = cur.take(len).map_err(eof_at(body_start))?;
    Ok(GgufStr(bytes))
}

/// Reads one value of type `ty`. `depth` counts the arrays this value sits inside.
pub(crate) fn read_value<'a>(
    cur: &mut Cursor<'a>,
    ty: ValueType,
    depth: u32,
) -> Result<Value<'a>, ValueError> {
    let start = cur.pos();
    let eof = eof_at(start);
    Ok(match ty {
        ValueType::U8 => Value::U8(cur.u8().map_err(eof)?),
        ValueType::I8 => Value::I8(cur.i8().map_err(eof)?),
        ValueType::U16 => Value::U16(cur.u16().map_err(eof)?),
        ValueType::I16 => Value::I16(cur.i16().map_err(eof)?),
        ValueType::U32 => Value::U32(cur.u32().map_err(eof)?),
        ValueType::I32 => Value::I32(cur.i32().map_err(eof)?),
        ValueType::F32 => Value::F32(cur.f32().map_err(eof)?),
        ValueType::U64 => Value::U64(cur.u64().map_err(eof)?),
        ValueType::I64 => Value::I64(cur.i64().map_err(eof)?),
        ValueType::F64 => Value::F64(cur.f64().map_err(eof)?),
        ValueType::Bool => Value::Bool(read_bool(cur)?),
        ValueType::String => Value::String(read_str(cur)?),
        ValueType::Array => Value::Array(read_array(cur, depth)?),
    })
}

fn read_bool(cur: &mut Cursor<'_>) -> Result<bool, ValueError> {
    let start = cur.pos();
    match cur.u8().map_err(eof_at(start))? {
        0 => Ok(false),
        1 => Ok(true),
        other => Err((start, ErrorKind::InvalidBool(other))),
    }
}

fn read_array<'a>(cur: &mut Cursor<'a>, depth: u32) -> Result<ArrayView<'a>, ValueError> {
    let start = cur.pos();
    if depth >= MAX_ARRAY_DEPTH {
        return Err((
            start,
            ErrorKind::ArrayTooDeep {
                max_depth: MAX_ARRAY_DEPTH,
            },
        ));
    }
    let tag = cur.u32().map_err(eof_at(start))?;
    let elem_type = ValueType::from_tag(tag).ok_or((start, ErrorKind::UnknownValueType(tag)))?;
    let count_pos = cur.pos();
    let len = cur.u64().map_err(eof_at(count_pos))?;
    check_count(
        "array length",
        len,
        MAX_ARRAY_LEN,
        elem_type.min_size(),
        cur.remaining(),
    )
    .map_err(|kind| (count_pos, kind))?;

    let body_start = cur.pos();
    match elem_type.fixed_size() {
        Some(size) => {
            // check_count proved len * min_size fits in the remaining bytes.
            let bytes = cur.take(len * size).map_err(eof_at(body_start))?;
            if elem_type == ValueType::Bool {
                if let Some(i) = bytes.iter().position(|&b| b > 1) {
                    return Err((body_start + i, ErrorKind::InvalidBool(bytes[i])));
                }
            }
        }
        None => {
            for _ in 0..len {
                read_value(cur, elem_type, depth + 1)?;
            }
        }
    }
    let encoded = cur.bytes_between(body_start, cur.pos());
    Ok(ArrayView {
        elem_type,
        len,
        encoded,
        depth: depth + 1,
    })
}

/// Checks a count read from the file against its named cap and against the bytes that remain,
/// before anything is allocated or iterated on its say-so.
pub(crate) fn check_count(
    what: &'static str,
    count: u64,
    cap: u64,
    min_bytes_each: u64,
    remaining: usize,
) -> Result<(), ErrorKind> {
    if count > cap {
        return Err(ErrorKind::CountOverCap { what, count, cap });
    }
    let remaining = remaining as u64;
    match count.checked_mul(min_bytes_each) {
        Some(needed) if needed <= remaining => Ok(()),
        _ => Err(ErrorKind::CountExceedsFile {
            what,
            count,
            min_bytes_each,
            remaining,
        }),
    }
}

/// A metadata value that owns its data: what the writer takes, and what a parsed value copies to.
#[derive(Clone, Debug, PartialEq)]
pub enum OwnedValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    /// String bytes; normally UTF-8.
    String(Vec<u8>),
    /// An element type and the elements, which must all have that type.
    Array(ValueType, Vec<OwnedValue>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl OwnedValue {
    /// A string value from text.
    pub fn string(s: impl Into<String>) -> OwnedValue {
        OwnedValue::String(s.into().into_bytes())
    }

    /// An array of strings.
    pub fn strings<S: Into<String>>(items: impl IntoIterator<Item = S>) -> OwnedValue {
        OwnedValue::Array(
            ValueType::String,
            items.into_iter().map(OwnedValue::string).collect(),
        )
    }

    /// The type tag this value is written with.
    pub fn value_type(&self) -> ValueType {
        match self {
            OwnedValue::U8(_) => ValueType::U8,
            OwnedValue::I8(_) => ValueType::I8,
            OwnedValue::U16(_) => ValueType::U16,
            OwnedValue::I16(_) => ValueType::I16,
            OwnedValue::U32(_) => ValueType::U32,
            OwnedValue::I32(_) => ValueType::I32,
            OwnedValue::F32(_) => ValueType::F32,
            OwnedValue::Bool(_) => ValueType::Bool,
            OwnedValue::String(_) => ValueType::String,
            OwnedValue::Array(..) => ValueType::Array,
            OwnedValue::U64(_) => ValueType::U64,
            OwnedValue::I64(_) => ValueType::I64,
            OwnedValue::F64(_) => ValueType::F64,
        }
    }
}
