//! The index snapshot: a view's in-memory indexes written to one file when the projection
//! closes, and read back at the next open in place of decoding every stored call, when it was
//! written from exactly the view being opened.
//!
//! The snapshot is derived data twice over (from the view, which is from the log), so it is
//! trusted only when everything matches: its header names the view's generation, checkpoint
//! and counters, and a CRC-32 covers the header and the body. A snapshot of the same view at an
//! earlier checkpoint (the last clean stop's, when the process since crashed) is read too, and
//! the projection brings it up to the view from the log. Anything else (no file, another
//! view, a file cut short or garbled, a format this build does not read) means the indexes are
//! built from the stored views as before, and the reason is logged; reading it never panics and
//! never allocates more than the file's size warrants.
//!
//! The body is one section per index, each with its byte length, so that sections encode and
//! decode on both cores. An ordered set of `(value, id)` is written as runs of one value: the value
//! (delta-coded against the previous run's where it is a number, spelled out where it is a
//! string), the run's length, and its ids in ascending order as LEB128 deltas. The columns are
//! not written: they hold the same pairs as their sets and are filled from them on load.

use crate::grouped::Grouped;
use crate::index::{
    Feed, Indexes, Interner, RelatedIndex, Shared, SortTextIndex, TextIndex, TimeIndex,
    TEXT_FILTER, TEXT_SORT, TIME_SORT,
};
use crate::live_ids::LiveIds;
use crate::store::{par_map_costly, Meta};
use std::fmt;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};
use std::sync::Mutex;

mod decoder;
use decoder::{read_exact_at, Decoder, Source};

/// The snapshot's file, in the projection's directory.
const FILE_NAME: &str = "indexes.snapshot";
/// Where a snapshot is written before it replaces the last one.
const PARTIAL_NAME: &str = "indexes.snapshot.partial";
const MAGIC: &[u8; 8] = b"CLIDXSNP";
/// The body's layout: bump it when the sections, their order or their encoding change (or what
/// a value means, such as the note hash), so an older file is built over rather than misread.
const FORMAT: u32 = 1;
/// Magic, format, CRC, then the five u64 of [`Stamp`] and the body's length.
const HEADER_LEN: usize = 8 + 4 + 4 + 8 * 5;

/// Which view a snapshot holds the indexes of: the generation at a checkpoint, with the
/// counters, which a view at that checkpoint must also have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Stamp {
    pub(crate) generation: u64,
    pub(crate) checkpoint: u64,
    pub(crate) live: u64,
    pub(crate) deleted: u64,
}

impl Stamp {
    /// The stamp of the view `generation` at `meta`.
    pub(crate) fn of(generation: u64, meta: &Meta) -> Stamp {
        Stamp {
            generation,
            checkpoint: meta.checkpoint,
            live: meta.live,
            deleted: meta.deleted,
        }
    }
}

impl fmt::Display for Stamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "view {} at position {} ({} live, {} deleted)",
            self.generation, self.checkpoint, self.live, self.deleted
        )
    }
}

/// Why a snapshot was not used.
#[derive(Debug)]
pub(crate) enum Unused {
    /// There is none.
    Missing,
    /// It holds another view (or the same view at another checkpoint).
    Stale(Stamp),
    /// It cannot be read: cut short, garbled, another format, or unreadable.
    Damaged(String),
}

impl fmt::Display for Unused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unused::Missing => f.write_str("there is no index snapshot"),
            Unused::Stale(stamp) => write!(f, "the index snapshot is of {stamp}"),
            Unused::Damaged(reason) => write!(f, "the index snapshot is damaged: {reason}"),
        }
    }
}

fn damaged(reason: impl Into<String>) -> Unused {
    Unused::Damaged(reason.into())
}

/// The snapshot file of the projection in `dir`.
pub(crate) fn path(dir: &Path) -> PathBuf {
    dir.join(FILE_NAME)
}

/// A snapshot file as it is written: its header, then its body, one section after another,
/// each after its length. The sections stay apart until they are written: gathering them into
/// one body and the body into one file held the snapshot's bytes three times over at the end
/// of a rebuild (89 MB each at a million calls), and every ten minutes in `serve`.
pub(crate) struct EncodedFile {
    header: [u8; HEADER_LEN],
    /// Each section with the bytes of its length before it.
    sections: Vec<(Vec<u8>, Vec<u8>)>,
}

impl EncodedFile {
    /// The file's size in bytes.
    pub(crate) fn len(&self) -> usize {
        HEADER_LEN + body_len(&self.sections)
    }
}

fn body_len(sections: &[(Vec<u8>, Vec<u8>)]) -> usize {
    sections
        .iter()
        .map(|(length, section)| length.len() + section.len())
        .sum()
}

/// The snapshot file of `indexes`, the indexes of the view `stamp` names: the part that needs
/// the indexes, so that the caller can let go of them before the file is written.
pub(crate) fn encode_file(stamp: Stamp, indexes: &Indexes) -> EncodedFile {
    let sections = encode(indexes);
    let mut header = [0; HEADER_LEN];
    header[..8].copy_from_slice(MAGIC);
    header[8..12].copy_from_slice(&FORMAT.to_le_bytes());
    let values = [
        stamp.generation,
        stamp.checkpoint,
        stamp.live,
        stamp.deleted,
        body_len(&sections) as u64,
    ];
    for (slot, value) in header[16..].chunks_exact_mut(8).zip(values) {
        slot.copy_from_slice(&value.to_le_bytes());
    }
    let mut crc = header_checksum(&header);
    for (length, section) in &sections {
        crc.update(length);
        crc.update(section);
    }
    header[12..16].copy_from_slice(&crc.finalize().to_le_bytes());
    EncodedFile { header, sections }
}

/// Writes a file made by [`encode_file`] as the snapshot in `dir`: aside first, then renamed
/// over the last one, so a crash midway leaves the old one (or none), never half of one.
pub(crate) fn write_file(dir: &Path, file: &EncodedFile) -> std::io::Result<()> {
    let partial = dir.join(PARTIAL_NAME);
    // No fsync: a snapshot lost or torn by a power cut fails its CRC and is built over, which
    // costs one slow open, not data.
    let mut out = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&partial)?);
    out.write_all(&file.header)?;
    for (length, section) in &file.sections {
        out.write_all(length)?;
        out.write_all(section)?;
    }
    out.into_inner().map_err(|error| error.into_error())?;
    std::fs::rename(&partial, path(dir))
}

/// Reads the snapshot in `dir` if it holds indexes of the view `view` names, at its
/// checkpoint or at an earlier one of the same view generation (which the caller brings up to
/// the view from the log); returns the snapshot's own stamp with them.
///
/// Each section is read where it lies by the thread decoding it, a buffer at a time, so that no
/// section's bytes are held whole (the whole file was a tenth of the peak memory of an open at a
/// million calls, and whole sections in flight still a seventh); the checksum is computed as it
/// is read and checked at the end, before anything decoded is used.
pub(crate) fn load(dir: &Path, view: Stamp) -> Result<(Stamp, Indexes), Unused> {
    let file = match std::fs::File::open(path(dir)) {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Err(Unused::Missing),
        Err(error) => return Err(damaged(format!("reading it failed: {error}"))),
    };
    let size = file
        .metadata()
        .map_err(|error| damaged(format!("reading it failed: {error}")))?
        .len();
    let mut header = [0; HEADER_LEN];
    (&file)
        .read_exact(&mut header)
        .map_err(|_| damaged("cut short in its header"))?;
    let found = stamp_from(&header)?;
    let length = u64::from_le_bytes(field(&header, HEADER_LEN - 8));
    let body = size.saturating_sub(HEADER_LEN as u64);
    if body != length {
        return Err(damaged(format!(
            "its body is {body} bytes, its header says {length}"
        )));
    }
    let usable = found.generation == view.generation
        && (found.checkpoint < view.checkpoint || found == view);
    if !usable {
        return Err(Unused::Stale(found));
    }
    let mut crc = header_checksum(&header);
    let decoded = read_body(&file, HEADER_LEN as u64, length, &mut crc);
    // A garbled body is refused for its checksum, whatever its decoding made of it.
    if crc.finalize() != u32::from_le_bytes(field(&header, 12)) {
        return Err(damaged("its checksum does not match"));
    }
    let indexes = decoded?;
    if indexes.live() as u64 != found.live {
        return Err(damaged(format!(
            "it holds {} live calls, its header says {}",
            indexes.live(),
            found.live
        )));
    }
    Ok((found, indexes))
}

fn field<const N: usize>(bytes: &[u8], at: usize) -> [u8; N] {
    let mut out = [0; N];
    out.copy_from_slice(&bytes[at..at + N]);
    out
}

fn stamp_from(header: &[u8; HEADER_LEN]) -> Result<Stamp, Unused> {
    if &header[..8] != MAGIC {
        return Err(damaged("it is not an index snapshot"));
    }
    let format = u32::from_le_bytes(field(header, 8));
    if format != FORMAT {
        return Err(damaged(format!(
            "it has format {format}, this build reads {FORMAT}"
        )));
    }
    let number = |i: usize| u64::from_le_bytes(field(header, 16 + 8 * i));
    Ok(Stamp {
        generation: number(0),
        checkpoint: number(1),
        live: number(2),
        deleted: number(3),
    })
}

/// The checksum of a file, fed its header (without its CRC field): the body follows.
fn header_checksum(header: &[u8]) -> crc32fast::Hasher {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&header[..12]);
    hasher.update(&header[16..HEADER_LEN]);
    hasher
}

/// The sections, in the order they are written.
#[derive(Clone, Copy, Debug)]
enum Kind {
    Ids,
    Changes,
    Time(usize),
    SortText(usize),
    Text(usize),
    Tags,
    Flags,
    Notes,
    Related(usize),
}

fn kinds() -> Vec<Kind> {
    let mut kinds = vec![Kind::Ids, Kind::Changes];
    kinds.extend((0..TIME_SORT.len()).map(Kind::Time));
    kinds.extend((0..TEXT_SORT.len()).map(Kind::SortText));
    kinds.extend((0..TEXT_FILTER.len()).map(Kind::Text));
    kinds.extend([Kind::Tags, Kind::Flags, Kind::Notes]);
    kinds.extend((0..crate::index::FILTER_RELATIONS.len()).map(Kind::Related));
    kinds
}

/// The body of the snapshot of `indexes`. Its sections are encoded on the machine's cores:
/// on one, a million calls' snapshot took half a second, the last step of a rebuild and of a
/// service's stop.
fn encode(indexes: &Indexes) -> Vec<(Vec<u8>, Vec<u8>)> {
    par_map_costly(&kinds(), |kind| {
        let section = encode_section(indexes, *kind);
        let mut length = Encoder::default();
        length.u64(section.len() as u64);
        (length.0, section)
    })
}

/// One section of the body: the set `kind` names.
fn encode_section(indexes: &Indexes, kind: Kind) -> Vec<u8> {
    let mut section = Encoder::default();
    match kind {
        Kind::Ids => {
            section.u64(indexes.ids.len() as u64);
            section.ascending(indexes.ids.iter());
        }
        Kind::Changes => {
            section.u64(indexes.changes.len() as u64);
            section.ascending(indexes.changes.entries().map(|(position, _)| position));
            for (_, id) in indexes.changes.entries() {
                section.u64(id);
            }
        }
        Kind::Time(i) => section.runs(indexes.times[i].entries(), |out, prev, value| {
            put_i64(out, prev.as_ref(), &value)
        }),
        Kind::SortText(i) => {
            section.runs(
                indexes.sort_texts[i].entries(),
                |out, _, value| match value.parts() {
                    None => out.u64(0),
                    Some((head, tail)) => {
                        out.u64(1);
                        out.text_in_parts(head, tail);
                    }
                },
            )
        }
        Kind::Text(i) => section.runs(indexes.texts[i].set.iter(), put_text),
        Kind::Tags => section.runs(indexes.tags.set.iter(), put_text),
        Kind::Flags => section.runs(indexes.flags.iter(), |out, _, flag| {
            out.u64(u64::from(*flag))
        }),
        Kind::Notes => section.runs(indexes.notes.iter(), |out, prev, hash| {
            out.u64(hash.wrapping_sub(prev.copied().unwrap_or(0)))
        }),
        Kind::Related(i) => section.runs(indexes.related[i].entries(), |out, prev, value| {
            put_i64(out, prev.as_ref(), &value)
        }),
    }
    section.0
}

fn put_i64(out: &mut Encoder, prev: Option<&i64>, value: &i64) {
    let delta = value.wrapping_sub(prev.copied().unwrap_or(0));
    out.u64(((delta << 1) ^ (delta >> 63)) as u64);
}

fn put_text(out: &mut Encoder, _: Option<&Shared>, text: &Shared) {
    out.text(text);
}

#[derive(Default)]
struct Encoder(Vec<u8>);

impl Encoder {
    /// LEB128.
    fn u64(&mut self, mut value: u64) {
        while value >= 0x80 {
            self.0.push((value as u8) | 0x80);
            value >>= 7;
        }
        self.0.push(value as u8);
    }

    fn text(&mut self, text: &str) {
        self.text_in_parts(text, "");
    }

    /// A string given as its head and its tail, written as the one string they make.
    fn text_in_parts(&mut self, head: &str, tail: &str) {
        self.u64((head.len() + tail.len()) as u64);
        self.0.extend_from_slice(head.as_bytes());
        self.0.extend_from_slice(tail.as_bytes());
    }

    /// Ascending numbers: the first, then the differences.
    fn ascending(&mut self, numbers: impl Iterator<Item = u64>) {
        let mut prev = 0;
        for number in numbers {
            self.u64(number - prev);
            prev = number;
        }
    }

    /// An ordered set of `(value, id)` as runs of one value (see the module's opening).
    fn runs<V: PartialEq + Copy>(
        &mut self,
        entries: impl ExactSizeIterator<Item = (V, u64)>,
        put_value: impl Fn(&mut Encoder, Option<V>, V),
    ) {
        self.u64(entries.len() as u64);
        let mut entries = entries.peekable();
        let mut prev: Option<V> = None;
        let mut ids = Vec::new();
        while let Some((value, id)) = entries.next() {
            ids.clear();
            ids.push(id);
            while let Some((_, id)) = entries.next_if(|(next, _)| *next == value) {
                ids.push(id);
            }
            put_value(self, prev, value);
            self.u64(ids.len() as u64);
            self.ascending(ids.iter().copied());
            prev = Some(value);
        }
    }
}

/// A section decoded.
enum Section {
    Ids(LiveIds),
    Changes(Feed),
    Time(TimeIndex),
    SortText(SortTextIndex),
    Text(TextIndex),
    Related(RelatedIndex),
    Flags(Grouped<bool>),
    Notes(Grouped<u64>),
}

/// The indexes a body of `length` bytes at `start` of `source` holds, its bytes fed to `crc`.
///
/// Each section's length is read here; its bytes are read and decoded by a thread of its own
/// where it lies in the file, checksummed as they are read, and the checksums are joined in
/// the file's order. A section that does not decode is still read to its end, so that the
/// checksum of the whole body is known whatever the decoders made of it.
fn read_body<S: Source + ?Sized>(
    source: &S,
    start: u64,
    length: u64,
    crc: &mut crc32fast::Hasher,
) -> Result<Indexes, Unused> {
    let kinds = kinds();
    let end = start.saturating_add(length);
    // Each section's kind, where its bytes start and how many there are; and the bytes of
    // every section's length, for the checksum.
    let mut places = Vec::with_capacity(kinds.len());
    let mut lengths = Vec::with_capacity(kinds.len());
    let mut at = start;
    for kind in &kinds {
        let mut head = [0; 10];
        let head = &mut head[..(end - at).min(10) as usize];
        read_exact_at(source, head, at)?;
        let mut prefix = Decoder::new(&head[..], 0, head.len() as u64);
        let section_length = prefix.u64()?;
        let used = prefix.position() as usize;
        let section_start = at + used as u64;
        if section_length > end - section_start {
            return Err(damaged(format!(
                "a length of {section_length} runs past its end"
            )));
        }
        lengths.push(head[..used].to_vec());
        places.push((*kind, section_start, section_length));
        at = section_start + section_length;
    }
    if at != end {
        return Err(damaged("bytes follow its last section"));
    }
    let decoded = decode_sections(source, &places);
    for (length, (_, section_crc)) in lengths.iter().zip(&decoded) {
        crc.update(length);
        crc.combine(section_crc);
    }
    let mut indexes = Indexes::new();
    for (kind, (section, _)) in kinds.iter().zip(decoded) {
        match (*kind, section?) {
            (Kind::Ids, Section::Ids(ids)) => indexes.ids = ids,
            (Kind::Changes, Section::Changes(feed)) => indexes.changes = feed,
            (Kind::Time(i), Section::Time(index)) => indexes.times[i] = index,
            (Kind::SortText(i), Section::SortText(index)) => indexes.sort_texts[i] = index,
            (Kind::Text(i), Section::Text(index)) => indexes.texts[i] = index,
            (Kind::Tags, Section::Text(index)) => indexes.tags = index,
            (Kind::Flags, Section::Flags(set)) => indexes.flags = set,
            (Kind::Notes, Section::Notes(set)) => indexes.notes = set,
            (Kind::Related(i), Section::Related(set)) => indexes.related[i] = set,
            (kind, _) => return Err(damaged(format!("section {kind:?} decoded as another"))),
        }
    }
    let live = indexes.ids.len();
    let complete = |name: &str, len: usize| {
        if len == live {
            Ok(())
        } else {
            Err(damaged(format!("{name} holds {len} calls of {live}")))
        }
    };
    complete("the change feed", indexes.changes.len())?;
    for (i, field) in TIME_SORT.iter().enumerate() {
        complete(&format!("the {field} index"), indexes.times[i].len())?;
    }
    for (i, field) in TEXT_SORT.iter().enumerate() {
        complete(&format!("the {field} index"), indexes.sort_texts[i].len())?;
    }
    Ok(indexes)
}

/// A section decoded (or not), with the checksum of its bytes.
type Decoded = (Result<Section, Unused>, crc32fast::Hasher);

/// Decodes the sections at `places` on the machine's cores, each thread taking the next
/// section not yet taken, and returns each section with the checksum of its bytes.
fn decode_sections<S: Source + ?Sized>(source: &S, places: &[(Kind, u64, u64)]) -> Vec<Decoded> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get().min(8))
        .min(places.len());
    let next = AtomicUsize::new(0);
    let results: Vec<Mutex<Option<Decoded>>> = places.iter().map(|_| Mutex::new(None)).collect();
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, AtomicOrdering::Relaxed);
                let Some((kind, start, length)) = places.get(i) else {
                    return;
                };
                let mut decoder = Decoder::new(source, *start, *length);
                let section = decode_section(*kind, &mut decoder);
                let crc = decoder.finish();
                if let Ok(mut slot) = results[i].lock() {
                    *slot = Some((section, crc));
                }
            });
        }
    });
    results
        .into_iter()
        .map(|slot| {
            slot.into_inner().ok().flatten().unwrap_or_else(|| {
                (
                    Err(damaged("a section was not decoded")),
                    crc32fast::Hasher::new(),
                )
            })
        })
        .collect()
}

fn decode_section<S: Source + ?Sized>(
    kind: Kind,
    reader: &mut Decoder<'_, S>,
) -> Result<Section, Unused> {
    let section = match kind {
        Kind::Ids => {
            let count = reader.count()?;
            Section::Ids(reader.ascending(count)?.into_iter().collect())
        }
        Kind::Changes => {
            let count = reader.count()?;
            let positions = reader.ascending(count)?;
            // The ids follow in the positions' order: the feed is read into place.
            let feed = positions
                .into_iter()
                .map(|position| reader.u64().map(|id| (position, id)))
                .collect::<Result<Feed, Unused>>()?;
            Section::Changes(feed)
        }
        // The column and the order at once, on this section's thread.
        Kind::Time(_) => Section::Time(reader.runs(get_i64)?),
        Kind::Related(_) => Section::Related(reader.runs(get_i64)?),
        // Each value is one run, so one shared copy each; the column and the order at once.
        Kind::SortText(_) => {
            Section::SortText(reader.runs(|reader, prev: Option<&Option<Shared>>| {
                let value = match reader.u64()? {
                    0 => None,
                    1 => Some(Shared::from(reader.text()?)),
                    other => return Err(damaged(format!("a null marker is {other}"))),
                };
                ascending_values(prev, &value)?;
                Ok(value)
            })?)
        }
        Kind::Text(_) | Kind::Tags => {
            let mut strings = Interner::default();
            let set = reader.runs(|reader, prev: Option<&Shared>| {
                let value = strings.insert_new(reader.text()?);
                ascending_values(prev, &value)?;
                Ok(value)
            })?;
            Section::Text(TextIndex::from_set(
                set,
                strings,
                !matches!(kind, Kind::Tags),
            ))
        }
        Kind::Flags => Section::Flags(reader.runs(|reader, prev: Option<&bool>| {
            let value = match reader.u64()? {
                0 => false,
                1 => true,
                other => return Err(damaged(format!("a flag is {other}"))),
            };
            ascending_values(prev, &value)?;
            Ok(value)
        })?),
        Kind::Notes => Section::Notes(reader.runs(|reader, prev: Option<&u64>| {
            let value = reader.u64()?.wrapping_add(prev.copied().unwrap_or(0));
            ascending_values(prev, &value)?;
            Ok(value)
        })?),
    };
    if !reader.is_done() {
        return Err(damaged(format!("bytes follow the {kind:?} section")));
    }
    Ok(section)
}

fn get_i64<S: Source + ?Sized>(
    reader: &mut Decoder<'_, S>,
    prev: Option<&i64>,
) -> Result<i64, Unused> {
    let zigzag = reader.u64()?;
    let delta = ((zigzag >> 1) as i64) ^ -((zigzag & 1) as i64);
    let value = prev.copied().unwrap_or(0).wrapping_add(delta);
    ascending_values(prev, &value)?;
    Ok(value)
}

/// Each run's value follows the previous run's: a set written in order reads back in order.
fn ascending_values<V: Ord>(prev: Option<&V>, value: &V) -> Result<(), Unused> {
    match prev {
        Some(prev) if prev >= value => Err(damaged("a set's values are out of order")),
        _ => Ok(()),
    }
}

/// The body of `indexes`' snapshot, for tests that feed the decoder damaged bodies directly
/// (past the checksum, which would refuse them first).
#[cfg(test)]
pub(crate) fn encode_body(indexes: &Indexes) -> Vec<u8> {
    encode(indexes)
        .into_iter()
        .flat_map(|(length, section)| length.into_iter().chain(section))
        .collect()
}

/// Decodes a body, for the same tests.
#[cfg(test)]
pub(crate) fn decode_body(body: &[u8]) -> Result<Indexes, Unused> {
    read_body(body, 0, body.len() as u64, &mut crc32fast::Hasher::new())
}
