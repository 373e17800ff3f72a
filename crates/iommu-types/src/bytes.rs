//! Fixed-width fields read out of untrusted bytes, for decoding fuzz inputs
//! into operation sequences: every byte string decodes to something, and
//! running out of bytes simply ends the input.

/// Reads little-endian fields from the front of a byte slice.
#[derive(Clone, Debug)]
pub struct ByteReader<'a> {
    data: &'a [u8],
}

impl<'a> ByteReader<'a> {
    /// A reader over `data`.
    pub const fn new(data: &'a [u8]) -> Self {
        Self { data }
    }

    /// Whether every byte has been read.
    pub const fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, rest) = self.data.split_first_chunk::<N>()?;
        self.data = rest;
        Some(*head)
    }

    /// One byte.
    pub fn u8(&mut self) -> Option<u8> {
        self.take::<1>().map(|[b]| b)
    }

    /// A little-endian `u16`.
    pub fn u16(&mut self) -> Option<u16> {
        self.take().map(u16::from_le_bytes)
    }

    /// A little-endian `u32`.
    pub fn u32(&mut self) -> Option<u32> {
        self.take().map(u32::from_le_bytes)
    }

    /// A little-endian `u64`.
    pub fn u64(&mut self) -> Option<u64> {
        self.take().map(u64::from_le_bytes)
    }

    /// A byte's low bit.
    pub fn bool(&mut self) -> Option<bool> {
        self.u8().map(|b| b & 1 != 0)
    }

    /// Items read one after another with `decode` until it runs out of
    /// bytes (how an input becomes its operation sequence).
    pub fn items<'r, T, F>(
        &'r mut self,
        mut decode: F,
    ) -> impl Iterator<Item = T> + use<'r, 'a, T, F>
    where
        F: FnMut(&mut ByteReader<'a>) -> Option<T> + 'r,
    {
        core::iter::from_fn(move || decode(self))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_read_little_endian_until_the_bytes_run_out() {
        let mut r = ByteReader::new(&[1, 0x34, 0x12, 9, 8, 7]);
        assert_eq!(r.u8(), Some(1));
        assert_eq!(r.u16(), Some(0x1234));
        assert_eq!(r.u32(), None, "three bytes left");
        assert_eq!(r.u8(), Some(9));
        assert!(!r.is_empty());
        assert_eq!(r.bool(), Some(false));
        assert_eq!(r.bool(), Some(true));
        assert!(r.is_empty());
        assert_eq!(r.u64(), None);
    }

    #[test]
    fn items_are_read_until_the_bytes_run_out() {
        let mut r = ByteReader::new(&[1, 0, 2, 0, 3]);
        let mut n = 0;
        for v in r.items(ByteReader::u16) {
            n += v;
        }
        assert_eq!(n, 3, "the odd byte is no item");
    }
}
