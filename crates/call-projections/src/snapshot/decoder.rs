//! The snapshot's section reader: a section's bytes read from where they lie in the file, a
//! buffer at a time, and checksummed as they are read, so that decoding a section holds a
//! buffer of it rather than all of it (a million calls' `recordingUrl` section alone is about
//! 40 MB, and whole sections in flight were the largest part of an open's peak memory).

use super::{damaged, Unused};

/// Where a body's bytes come from, read at any offset, so that each section's decoder reads
/// its own part of the file on its own thread.
pub(super) trait Source: Sync {
    /// Reads into `buf` from `offset`, as many bytes as are there, up to `buf`'s length.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize>;
}

impl Source for std::fs::File {
    #[cfg(unix)]
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        std::os::unix::fs::FileExt::read_at(self, buf, offset)
    }

    #[cfg(windows)]
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        std::os::windows::fs::FileExt::seek_read(self, buf, offset)
    }
}

impl Source for [u8] {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        let start = usize::try_from(offset).map_or(self.len(), |at| at.min(self.len()));
        let length = buf.len().min(self.len() - start);
        buf[..length].copy_from_slice(&self[start..start + length]);
        Ok(length)
    }
}

/// Fills `buf` from `offset` of `source`.
pub(super) fn read_exact_at<S: Source + ?Sized>(
    source: &S,
    buf: &mut [u8],
    offset: u64,
) -> Result<(), Unused> {
    let mut filled = 0;
    while filled < buf.len() {
        match source.read_at(&mut buf[filled..], offset + filled as u64) {
            Ok(0) => return Err(damaged("cut short")),
            Ok(read) => filled += read,
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
            Err(error) => return Err(damaged(format!("reading it failed: {error}"))),
        }
    }
    Ok(())
}

/// How much of a section a decoder reads at once (more when one string is longer).
const BUFFER: usize = 64 * 1024;

/// A bounds-checked reader of one section: every length it reads is checked against what is
/// left of the section, so a garbled length fails instead of asking for a huge allocation.
pub(super) struct Decoder<'s, S: ?Sized> {
    source: &'s S,
    /// The offset of the first byte not yet read into `buf`.
    next: u64,
    /// The offset just past the section.
    end: u64,
    buf: Vec<u8>,
    /// The first byte of `buf` not yet decoded.
    pos: usize,
    /// The checksum of the bytes read so far.
    crc: crc32fast::Hasher,
}

impl<'s, S: Source + ?Sized> Decoder<'s, S> {
    /// A reader of the `length` bytes at `start`.
    pub(super) fn new(source: &'s S, start: u64, length: u64) -> Self {
        Decoder {
            source,
            next: start,
            end: start.saturating_add(length),
            buf: Vec::new(),
            pos: 0,
            crc: crc32fast::Hasher::new(),
        }
    }

    /// The bytes of the section not yet decoded.
    fn left(&self) -> u64 {
        (self.buf.len() - self.pos) as u64 + (self.end - self.next)
    }

    /// The offset of the first byte not yet decoded.
    pub(super) fn position(&self) -> u64 {
        self.next - (self.buf.len() - self.pos) as u64
    }

    /// Whether every byte of the section was decoded.
    pub(super) fn is_done(&self) -> bool {
        self.left() == 0
    }

    /// Makes at least `want` undecoded bytes (no more than are left) lie in `buf`.
    fn fill(&mut self, want: usize) -> Result<(), Unused> {
        let buffered = self.buf.len() - self.pos;
        if buffered >= want {
            return Ok(());
        }
        self.buf.drain(..self.pos);
        self.pos = 0;
        let unread = self.end - self.next;
        let more = usize::try_from(unread)
            .unwrap_or(usize::MAX)
            .min(BUFFER.max(want - buffered));
        let from = self.buf.len();
        self.buf.resize(from + more, 0);
        if let Err(error) = read_exact_at(self.source, &mut self.buf[from..], self.next) {
            self.buf.truncate(from);
            return Err(error);
        }
        self.crc.update(&self.buf[from..]);
        self.next += more as u64;
        if self.buf.len() - self.pos < want {
            return Err(damaged("cut short"));
        }
        Ok(())
    }

    /// Reads what is left of the section for its checksum, and returns the checksum of all of
    /// it (a section that failed to decode is still checksummed whole, so the file's checksum
    /// is known whatever the decoders made of it).
    pub(super) fn finish(mut self) -> crc32fast::Hasher {
        self.pos = self.buf.len();
        while self.next < self.end && self.fill(1).is_ok() {
            self.pos = self.buf.len();
        }
        self.crc
    }

    /// A LEB128 number.
    pub(super) fn u64(&mut self) -> Result<u64, Unused> {
        if self.buf.len() - self.pos < 10 {
            let want = usize::try_from(self.left()).unwrap_or(usize::MAX).min(10);
            self.fill(want)?;
        }
        let mut value = 0u64;
        for (i, byte) in self.buf[self.pos..].iter().enumerate().take(10) {
            let bits = u64::from(byte & 0x7f);
            if i == 9 && bits > 1 {
                break;
            }
            value |= bits << (7 * i);
            if byte & 0x80 == 0 {
                self.pos += i + 1;
                return Ok(value);
            }
        }
        Err(damaged("a number is cut short or too long"))
    }

    /// A byte length within what is left.
    fn length(&mut self) -> Result<usize, Unused> {
        let length = self.u64()?;
        usize::try_from(length)
            .ok()
            .filter(|length| *length as u64 <= self.left())
            .ok_or_else(|| damaged(format!("a length of {length} runs past its end")))
    }

    /// A count of entries, each of which takes a byte at least: never more than what is left,
    /// so that a garbled count cannot ask for a huge allocation.
    pub(super) fn count(&mut self) -> Result<usize, Unused> {
        self.length()
    }

    /// A string, spelled out after its length.
    pub(super) fn text(&mut self) -> Result<&str, Unused> {
        let length = self.length()?;
        self.fill(length)?;
        let bytes = &self.buf[self.pos..self.pos + length];
        self.pos += length;
        std::str::from_utf8(bytes).map_err(|_| damaged("a string is not UTF-8"))
    }

    /// `count` ascending numbers.
    pub(super) fn ascending(&mut self, count: usize) -> Result<Vec<u64>, Unused> {
        let mut numbers = Vec::with_capacity(count);
        let mut prev = None;
        for _ in 0..count {
            let number = self.next_ascending(prev)?;
            numbers.push(number);
            prev = Some(number);
        }
        Ok(numbers)
    }

    /// The number after `prev` (`None`: the first) in a list of ascending numbers.
    fn next_ascending(&mut self, prev: Option<u64>) -> Result<u64, Unused> {
        let delta = self.u64()?;
        if prev.is_some() && delta == 0 {
            return Err(damaged("numbers that should ascend repeat"));
        }
        prev.unwrap_or(0)
            .checked_add(delta)
            .ok_or_else(|| damaged("a number overflows"))
    }

    /// An ordered set written by `Encoder::runs`, collected as it is decoded (a set packs
    /// entries that come in order without a second copy of them).
    pub(super) fn runs<V: Ord + Clone, C: FromIterator<(V, u64)>>(
        &mut self,
        mut get_value: impl FnMut(&mut Self, Option<&V>) -> Result<V, Unused>,
    ) -> Result<C, Unused> {
        let total = self.count()?;
        let mut produced = 0;
        let mut value: Option<V> = None;
        // The ids of the current value's run still to read, and the last one read.
        let (mut run_left, mut run_id) = (0usize, None);
        let mut failed = None;
        let collected = std::iter::from_fn(|| {
            let next = (|| {
                if run_left == 0 {
                    if produced == total {
                        return Ok(None);
                    }
                    let next = get_value(self, value.as_ref())?;
                    let length = self.count()?;
                    if length == 0 || length > total - produced {
                        return Err(damaged(format!("a run of {length} entries")));
                    }
                    (value, run_left, run_id) = (Some(next), length, None);
                }
                let id = self.next_ascending(run_id)?;
                (run_left, run_id) = (run_left - 1, Some(id));
                produced += 1;
                Ok(value.clone().map(|value| (value, id)))
            })();
            next.unwrap_or_else(|error| {
                failed = Some(error);
                None
            })
        })
        .collect();
        match failed {
            Some(error) => Err(error),
            None => Ok(collected),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_across_buffer_boundaries_and_checksums_every_byte() {
        // Numbers and strings that straddle the reader's buffer, at an offset into the source.
        let mut bytes = vec![7u8; 3];
        let start = bytes.len() as u64;
        let long = "x".repeat(BUFFER + 17);
        for i in 0..20_000u64 {
            let mut n = i * 1_000_003;
            loop {
                let byte = (n & 0x7f) as u8;
                n >>= 7;
                if n == 0 {
                    bytes.push(byte);
                    break;
                }
                bytes.push(byte | 0x80);
            }
        }
        bytes.extend([0x80 | (long.len() & 0x7f) as u8]);
        let mut rest = long.len() >> 7;
        while rest >= 0x80 {
            bytes.push(0x80 | (rest & 0x7f) as u8);
            rest >>= 7;
        }
        bytes.push(rest as u8);
        bytes.extend(long.as_bytes());
        let length = bytes.len() as u64 - start;
        let mut decoder = Decoder::new(&bytes[..], start, length);
        for i in 0..20_000u64 {
            assert_eq!(decoder.u64().unwrap(), i * 1_000_003);
        }
        assert_eq!(decoder.text().unwrap(), long);
        assert!(decoder.is_done());
        let mut expected = crc32fast::Hasher::new();
        expected.update(&bytes[start as usize..]);
        assert_eq!(decoder.finish().finalize(), expected.finalize());
    }

    #[test]
    fn a_section_cut_short_or_overlong_is_refused_and_still_checksummed_whole() {
        let bytes = [0xff, 0xff, 0x01, 5, b'a'];
        // A string's length past the section's end.
        let mut decoder = Decoder::new(&bytes[..], 3, 2);
        assert!(matches!(decoder.text(), Err(Unused::Damaged(_))));
        let mut expected = crc32fast::Hasher::new();
        expected.update(&bytes[3..]);
        assert_eq!(decoder.finish().finalize(), expected.finalize());
        // A section that says it runs past the source's end.
        let mut decoder = Decoder::new(&bytes[..], 3, 10);
        assert!(matches!(decoder.u64(), Err(Unused::Damaged(_))));
    }
}
