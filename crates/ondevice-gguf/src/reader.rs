//! A little-endian reader that knows its position and how many bytes remain,
//! so every declared length is checked before anything is allocated.

use std::io::{self, Read};

use crate::error::{GgufError, Limit};
use crate::limits::PREALLOC_ELEMENTS;

/// Strings up to this long are read into a buffer sized at once (see [`Cursor::check_string`]).
const SMALL_STRING: u64 = 64 << 10;

pub(crate) struct Cursor<R> {
    inner: R,
    pos: u64,
    len: u64,
}

impl<R: Read> Cursor<R> {
    pub(crate) fn new(inner: R, len: u64) -> Self {
        Cursor { inner, pos: 0, len }
    }

    pub(crate) fn pos(&self) -> u64 {
        self.pos
    }

    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    pub(crate) fn remaining(&self) -> u64 {
        self.len.saturating_sub(self.pos)
    }

    /// Fails unless `needed` bytes remain.
    pub(crate) fn ensure(&self, needed: u64) -> Result<(), GgufError> {
        if needed > self.remaining() {
            return Err(self.truncated(needed));
        }
        Ok(())
    }

    fn truncated(&self, needed: u64) -> GgufError {
        GgufError::Truncated { offset: self.pos, needed, available: self.remaining() }
    }

    fn io_error(&self, needed: u64, source: io::Error) -> GgufError {
        if source.kind() == io::ErrorKind::UnexpectedEof {
            self.truncated(needed)
        } else {
            GgufError::Io { offset: self.pos, source }
        }
    }

    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N], GgufError> {
        let mut buf = [0u8; N];
        self.ensure(N as u64)?;
        self.inner.read_exact(&mut buf).map_err(|e| self.io_error(N as u64, e))?;
        self.pos += N as u64;
        Ok(buf)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, GgufError> {
        Ok(self.array::<1>()?[0])
    }

    pub(crate) fn u32(&mut self) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    pub(crate) fn u64(&mut self) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// Reads `n` bytes; `n` is checked against the remaining length first, and
    /// the buffer grows only as bytes actually arrive.
    pub(crate) fn bytes(&mut self, n: u64) -> Result<Vec<u8>, GgufError> {
        self.ensure(n)?;
        let mut buf = Vec::with_capacity(usize::try_from(n.min(1 << 20)).unwrap_or(0));
        let read = (&mut self.inner).take(n).read_to_end(&mut buf).map_err(|e| self.io_error(n, e))?;
        if (read as u64) < n {
            return Err(self.truncated(n));
        }
        self.pos += n;
        Ok(buf)
    }

    /// Reads `n` bytes into `buf` (replacing its contents); `n` is checked first.
    pub(crate) fn read_into(&mut self, n: u64, buf: &mut Vec<u8>) -> Result<(), GgufError> {
        self.ensure(n)?;
        buf.clear();
        let read = (&mut self.inner).take(n).read_to_end(buf).map_err(|e| self.io_error(n, e))?;
        if (read as u64) < n {
            return Err(self.truncated(n));
        }
        self.pos += n;
        Ok(())
    }

    /// Passes over `n` bytes.
    pub(crate) fn skip(&mut self, n: u64) -> Result<(), GgufError> {
        self.ensure(n)?;
        let skipped = io::copy(&mut (&mut self.inner).take(n), &mut io::sink()).map_err(|e| self.io_error(n, e))?;
        if skipped < n {
            return Err(self.truncated(n));
        }
        self.pos += n;
        Ok(())
    }

    /// Checks a string as [`string`](Self::string) reads it, through `scratch`.
    pub(crate) fn check_string(&mut self, max: u64, limit: Limit, scratch: &mut Vec<u8>) -> Result<(), GgufError> {
        let offset = self.pos;
        let len = self.u64()?;
        if len > max {
            return Err(GgufError::LimitExceeded { what: limit, count: len, max, offset });
        }
        let start = self.pos;
        if len <= SMALL_STRING {
            // The common case (a token, a merge): no growth as bytes arrive is needed.
            self.ensure(len)?;
            scratch.resize(len as usize, 0);
            self.inner.read_exact(scratch).map_err(|e| self.io_error(len, e))?;
            self.pos += len;
        } else {
            // Grows only as bytes arrive, like `bytes`: a reader may hold less than it claims.
            self.read_into(len, scratch)?;
        }
        std::str::from_utf8(scratch).map_err(|_| GgufError::InvalidUtf8 { offset: start })?;
        Ok(())
    }

    /// Reads a `u64`-length-prefixed UTF-8 string of at most `max` bytes.
    pub(crate) fn string(&mut self, max: u64, limit: Limit) -> Result<String, GgufError> {
        let offset = self.pos;
        let len = self.u64()?;
        if len > max {
            return Err(GgufError::LimitExceeded { what: limit, count: len, max, offset });
        }
        let start = self.pos;
        let bytes = self.bytes(len)?;
        String::from_utf8(bytes).map_err(|_| GgufError::InvalidUtf8 { offset: start })
    }
}

/// Capacity to reserve for `count` declared elements: never more than
/// [`PREALLOC_ELEMENTS`], so a lie about the count cannot reserve memory that
/// the file does not back.
pub(crate) fn capacity(count: u64) -> usize {
    usize::try_from(count.min(PREALLOC_ELEMENTS)).unwrap_or(0)
}
