//! A bounds-checked little-endian reader over a byte slice. It never panics: every read either
//! returns the bytes or reports how many were needed and how many remained.

/// The input ended before a read could complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Eof {
    pub needed: u64,
    pub available: u64,
}

#[derive(Clone)]
pub(crate) struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

macro_rules! read_le {
    ($name:ident, $ty:ty) => {
        pub fn $name(&mut self) -> Result<$ty, Eof> {
            let bytes = self.take_array::<{ core::mem::size_of::<$ty>() }>()?;
            Ok(<$ty>::from_le_bytes(bytes))
        }
    };
}

impl<'a> Cursor<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Cursor { bytes, pos: 0 }
    }

    pub fn pos(&self) -> usize {
        self.pos
    }

    pub fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    /// Takes the next `n` bytes, where `n` came from the file as a u64.
    pub fn take(&mut self, n: u64) -> Result<&'a [u8], Eof> {
        let available = self.remaining();
        let eof = Eof {
            needed: n,
            available: available as u64,
        };
        let n = usize::try_from(n).map_err(|_| eof)?;
        if n > available {
            return Err(eof);
        }
        let slice = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(slice)
    }

    fn take_array<const N: usize>(&mut self) -> Result<[u8; N], Eof> {
        let slice = self.take(N as u64)?;
        let mut out = [0u8; N];
        out.copy_from_slice(slice);
        Ok(out)
    }

    read_le!(u8, u8);
    read_le!(i8, i8);
    read_le!(u16, u16);
    read_le!(i16, i16);
    read_le!(u32, u32);
    read_le!(i32, i32);
    read_le!(u64, u64);
    read_le!(i64, i64);
    read_le!(f32, f32);
    read_le!(f64, f64);
}

impl<'a> Cursor<'a> {
    /// The bytes between two positions this cursor has already passed.
    pub fn bytes_between(&self, start: usize, end: usize) -> &'a [u8] {
        self.bytes.get(start..end).unwrap_or(&[])
    }
}
