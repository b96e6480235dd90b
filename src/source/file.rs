//! JSONL input: plain or gzip files and stdin, read one record (line) at a time as
//! bytes.
//!
//! Records stay bytes all the way to the decoder: a line that is not valid UTF-8 is
//! rejected there (`invalid_json`) and counted like any other bad message, instead of
//! failing the whole read.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use flate2::bufread::MultiGzDecoder;

/// Read buffer size of files and stdin (and of the decompressed stream).
pub const BUF_BYTES: usize = 1 << 20;

/// Longest record kept in memory. Longer lines are cut to `MAX_RECORD_BYTES + 1` bytes
/// (the rest of the line is skipped), so they still reach the decoder, which rejects
/// them as `oversize`, without an unbounded line exhausting memory.
pub const MAX_RECORD_BYTES: usize = 16 << 20;

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot open {}: {source}", path.display())]
    Open { path: PathBuf, source: io::Error },
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    /// A reading or decoding thread panicked (a bug): what came before it was
    /// delivered, the rest of the input was not read.
    #[error("the {thread} thread stopped unexpectedly; the input after that point was not read")]
    Stopped { thread: String },
}

impl SourceError {
    /// Wrap an error of reading `path` (e.g. from [`read_record`]).
    pub fn read(path: &Path, source: io::Error) -> SourceError {
        SourceError::Read {
            path: path.to_owned(),
            source,
        }
    }
}

/// Open a JSONL file, plain or gzip-compressed (`.gz`, or gzip content under any name;
/// concatenated gzip members are read in sequence), behind a 1 MiB buffer.
pub fn open_lines(path: &Path) -> Result<Box<dyn BufRead + Send>, SourceError> {
    let open_err = |source| SourceError::Open {
        path: path.to_owned(),
        source,
    };
    let file = File::open(path).map_err(open_err)?;
    let meta = file.metadata().map_err(open_err)?;
    if meta.is_dir() {
        return Err(open_err(io::Error::other("is a directory")));
    }
    let mut inner = BufReader::with_capacity(BUF_BYTES, file);
    let gz_name = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gz"));
    // A regular file's first read fills the buffer, so sniffing two bytes is reliable.
    let gz = gz_name || inner.fill_buf().map_err(open_err)?.starts_with(&GZIP_MAGIC);
    if gz {
        Ok(Box::new(BufReader::with_capacity(
            BUF_BYTES,
            MultiGzDecoder::new(inner),
        )))
    } else {
        Ok(Box::new(inner))
    }
}

/// Standard input, plain or gzip (detected from the first bytes, on the first read, so
/// opening never blocks), behind a 1 MiB buffer.
pub fn open_stdin() -> Box<dyn BufRead + Send> {
    Box::new(Sniffed::new(BufReader::with_capacity(
        BUF_BYTES,
        io::stdin(),
    )))
}

/// Read one record: the next line as bytes, without its `\n` or `\r\n`. Returns
/// `Ok(false)` at end of input. A last line without a newline is still a record; blank
/// lines come back empty (skipping them is the caller's choice). Lines longer than
/// [`MAX_RECORD_BYTES`] are cut, see there.
pub fn read_record<R: BufRead + ?Sized>(reader: &mut R, buf: &mut Vec<u8>) -> io::Result<bool> {
    read_record_max(reader, buf, MAX_RECORD_BYTES)
}

fn read_record_max<R: BufRead + ?Sized>(
    reader: &mut R,
    buf: &mut Vec<u8>,
    max: usize,
) -> io::Result<bool> {
    buf.clear();
    // Room for `max + 1` content bytes and the newline.
    let limit = max as u64 + 2;
    let n = (&mut *reader).take(limit).read_until(b'\n', buf)?;
    if n == 0 {
        return Ok(false);
    }
    if buf.last() == Some(&b'\n') {
        buf.pop();
        if buf.last() == Some(&b'\r') {
            buf.pop();
        }
    } else if n as u64 == limit {
        // Over-long line: keep `max + 1` bytes and skip the rest of it.
        buf.truncate(max + 1);
        skip_line(reader)?;
    }
    Ok(true)
}

/// Append the next records to `bytes`, each one's range in `ranges`, until `ranges`
/// holds `max_records` or the input ends: the records [`read_record`] would return one
/// by one (same cutting of over-long lines, same `\r\n` handling), except that blank
/// lines (only ASCII whitespace) are skipped. Returns `Ok(false)` once the input has
/// ended.
///
/// For `replay`'s reader thread: each line is copied once, from the reader's buffer
/// into the batch, found with `memchr` over the whole buffer. Reading line by line
/// into a buffer of its own and copying that into the batch cost a second copy of
/// every byte and a `read_until` call per record (docs/performance.md, twentieth
/// round).
pub fn read_records<R: BufRead + ?Sized>(
    reader: &mut R,
    bytes: &mut Vec<u8>,
    ranges: &mut Vec<std::ops::Range<usize>>,
    max_records: usize,
) -> io::Result<bool> {
    read_records_max(reader, bytes, ranges, max_records, MAX_RECORD_BYTES)
}

fn read_records_max<R: BufRead + ?Sized>(
    reader: &mut R,
    bytes: &mut Vec<u8>,
    ranges: &mut Vec<std::ops::Range<usize>>,
    max_records: usize,
    max: usize,
) -> io::Result<bool> {
    if ranges.len() >= max_records {
        return Ok(true);
    }
    // A line keeps at most `max + 1` bytes before its newline (see `read_record_max`).
    let keep = max + 1;
    let mut start = bytes.len();
    // The current line grew past `keep`: the rest of it, up to its newline, is skipped.
    let mut cut = false;
    // Ends the current line (`bytes[start..]`): trims a `\r` before its newline, and
    // records it unless it is blank.
    let mut finish = |bytes: &mut Vec<u8>, start: &mut usize, cut: &mut bool, newline: bool| {
        let mut end = bytes.len();
        if newline && !*cut && bytes[*start..].last() == Some(&b'\r') {
            end -= 1;
        }
        if bytes[*start..end].iter().all(u8::is_ascii_whitespace) {
            bytes.truncate(*start);
        } else {
            bytes.truncate(end);
            ranges.push(*start..end);
        }
        *start = bytes.len();
        *cut = false;
        ranges.len() >= max_records
    };
    loop {
        let avail = match reader.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if avail.is_empty() {
            // An unterminated last line is still a record.
            if bytes.len() > start || cut {
                finish(bytes, &mut start, &mut cut, false);
            }
            return Ok(false);
        }
        let mut used = 0;
        let mut full = false;
        while used < avail.len() && !full {
            let rest = &avail[used..];
            let (segment, newline) = match memchr::memchr(b'\n', rest) {
                Some(i) => (&rest[..i], true),
                None => (rest, false),
            };
            if !cut {
                let room = keep - (bytes.len() - start);
                if segment.len() > room {
                    bytes.extend_from_slice(&segment[..room]);
                    cut = true;
                } else {
                    bytes.extend_from_slice(segment);
                }
            }
            used += segment.len() + usize::from(newline);
            if newline {
                full = finish(bytes, &mut start, &mut cut, true);
            }
        }
        reader.consume(used);
        if full {
            return Ok(true);
        }
    }
}

fn skip_line<R: BufRead + ?Sized>(reader: &mut R) -> io::Result<()> {
    loop {
        let (used, done) = {
            let avail = match reader.fill_buf() {
                Ok(b) => b,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if avail.is_empty() {
                return Ok(());
            }
            match avail.iter().position(|&b| b == b'\n') {
                Some(i) => (i + 1, true),
                None => (avail.len(), false),
            }
        };
        reader.consume(used);
        if done {
            return Ok(());
        }
    }
}

/// A reader that decides on its first read whether its input is gzip.
struct Sniffed<R: BufRead> {
    state: State<R>,
}

enum State<R: BufRead> {
    Unknown(R),
    Plain(R),
    Gzip(BufReader<MultiGzDecoder<R>>),
    /// Only while switching states.
    Gone,
}

impl<R: BufRead> Sniffed<R> {
    fn new(inner: R) -> Self {
        Sniffed {
            state: State::Unknown(inner),
        }
    }

    fn decide(&mut self) -> io::Result<()> {
        if let State::Unknown(r) = &mut self.state {
            let gz = r.fill_buf()?.starts_with(&GZIP_MAGIC);
            self.state = match std::mem::replace(&mut self.state, State::Gone) {
                State::Unknown(r) if gz => {
                    State::Gzip(BufReader::with_capacity(BUF_BYTES, MultiGzDecoder::new(r)))
                }
                State::Unknown(r) => State::Plain(r),
                other => other,
            };
        }
        Ok(())
    }
}

impl<R: BufRead> Read for Sniffed<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let n = {
            let avail = self.fill_buf()?;
            let n = avail.len().min(out.len());
            out[..n].copy_from_slice(&avail[..n]);
            n
        };
        self.consume(n);
        Ok(n)
    }
}

impl<R: BufRead> BufRead for Sniffed<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        self.decide()?;
        match &mut self.state {
            State::Plain(r) | State::Unknown(r) => r.fill_buf(),
            State::Gzip(r) => r.fill_buf(),
            State::Gone => Ok(&[]),
        }
    }

    fn consume(&mut self, amt: usize) {
        match &mut self.state {
            State::Plain(r) | State::Unknown(r) => r.consume(amt),
            State::Gzip(r) => r.consume(amt),
            State::Gone => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Cursor, Write};

    use flate2::Compression;
    use flate2::write::GzEncoder;

    use super::*;
    use crate::event::{RejectReason, decode};

    fn records(mut r: impl BufRead) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut buf = Vec::new();
        while read_record(&mut r, &mut buf).unwrap() {
            out.push(buf.clone());
        }
        out
    }

    fn gz(data: &[u8]) -> Vec<u8> {
        let mut e = GzEncoder::new(Vec::new(), Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn file_with(dir: &tempfile::TempDir, name: &str, data: &[u8]) -> PathBuf {
        let p = dir.path().join(name);
        std::fs::write(&p, data).unwrap();
        p
    }

    const LINES: &[u8] = b"{\"a\":1}\n\n{\"b\":2}\r\n{\"c\":3}";

    fn expected() -> Vec<Vec<u8>> {
        vec![
            b"{\"a\":1}".to_vec(),
            Vec::new(),
            b"{\"b\":2}".to_vec(),
            b"{\"c\":3}".to_vec(),
        ]
    }

    #[test]
    fn plain_file_with_crlf_blank_and_unterminated_lines() {
        let dir = tempfile::tempdir().unwrap();
        let p = file_with(&dir, "events.jsonl", LINES);
        assert_eq!(records(open_lines(&p).unwrap()), expected());
    }

    #[test]
    fn gzip_by_extension_by_content_and_multi_member() {
        let dir = tempfile::tempdir().unwrap();
        let p = file_with(&dir, "events.jsonl.gz", &gz(LINES));
        assert_eq!(records(open_lines(&p).unwrap()), expected());
        let p = file_with(&dir, "events.data", &gz(LINES));
        assert_eq!(records(open_lines(&p).unwrap()), expected());
        let mut two = gz(b"{\"a\":1}\n");
        two.extend(gz(b"{\"b\":2}\n"));
        let p = file_with(&dir, "two.gz", &two);
        assert_eq!(
            records(open_lines(&p).unwrap()),
            vec![b"{\"a\":1}".to_vec(), b"{\"b\":2}".to_vec()]
        );
    }

    #[test]
    fn invalid_utf8_reaches_the_decoder() {
        let dir = tempfile::tempdir().unwrap();
        let p = file_with(
            &dir,
            "bad.jsonl",
            b"{\"event_id\":\"\xff\xfe\"}\n\xc3\x28\n",
        );
        let recs = records(open_lines(&p).unwrap());
        assert_eq!(
            recs,
            vec![
                b"{\"event_id\":\"\xff\xfe\"}".to_vec(),
                b"\xc3\x28".to_vec()
            ]
        );
        for r in &recs {
            assert_eq!(decode(r).unwrap_err().reason, RejectReason::InvalidJson);
        }
    }

    #[test]
    fn errors_name_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.jsonl");
        let err = open_lines(&missing).err().unwrap();
        assert!(err.to_string().contains("nope.jsonl"), "{err}");
        let err = open_lines(dir.path()).err().unwrap();
        assert!(err.to_string().contains("directory"), "{err}");
        // A `.gz` name with plain content fails on read, not silently.
        let p = file_with(&dir, "plain.gz", b"{\"a\":1}\n");
        let mut r = open_lines(&p).unwrap();
        let e = read_record(&mut r, &mut Vec::new()).unwrap_err();
        assert!(SourceError::read(&p, e).to_string().contains("plain.gz"));
    }

    #[test]
    fn empty_input_has_no_records() {
        let dir = tempfile::tempdir().unwrap();
        let p = file_with(&dir, "empty.jsonl", b"");
        assert!(records(open_lines(&p).unwrap()).is_empty());
        assert!(records(Sniffed::new(Cursor::new(Vec::new()))).is_empty());
    }

    #[test]
    fn sniffed_stream_detects_gzip_lazily() {
        assert_eq!(
            records(Sniffed::new(Cursor::new(LINES.to_vec()))),
            expected()
        );
        assert_eq!(records(Sniffed::new(Cursor::new(gz(LINES)))), expected());
        let mut s = String::new();
        Sniffed::new(Cursor::new(gz(b"hello")))
            .read_to_string(&mut s)
            .unwrap();
        assert_eq!(s, "hello");
    }

    #[test]
    fn over_long_lines_are_cut_and_skipped() {
        let data = b"0123456789abcdef\nshort\n0123456789\r\n01234567890\n".to_vec();
        let mut r = Cursor::new(data);
        let mut buf = Vec::new();
        let mut got = Vec::new();
        while read_record_max(&mut r, &mut buf, 10).unwrap() {
            got.push(String::from_utf8(buf.clone()).unwrap());
        }
        assert_eq!(got, ["0123456789a", "short", "0123456789", "01234567890"]);
    }

    /// What `read_records_max` must return: `read_record_max` line by line, blank
    /// lines left out.
    fn line_by_line(data: &[u8], max: usize) -> Vec<Vec<u8>> {
        let mut r = Cursor::new(data);
        let (mut buf, mut got) = (Vec::new(), Vec::new());
        while read_record_max(&mut r, &mut buf, max).unwrap() {
            if !buf.iter().all(u8::is_ascii_whitespace) {
                got.push(buf.clone());
            }
        }
        got
    }

    /// Batches of at most `per_batch` records, read through a `buffer`-byte buffer.
    fn batched(data: &[u8], max: usize, buffer: usize, per_batch: usize) -> Vec<Vec<u8>> {
        let mut r = BufReader::with_capacity(buffer, Cursor::new(data));
        let mut got = Vec::new();
        loop {
            let (mut bytes, mut ranges) = (b"stale".to_vec(), Vec::new());
            let more = read_records_max(&mut r, &mut bytes, &mut ranges, per_batch, max).unwrap();
            assert!(ranges.len() <= per_batch);
            assert!(
                !more || ranges.len() == per_batch,
                "a batch ends early only at the end"
            );
            assert!(
                ranges.iter().all(|r| r.start >= 5),
                "earlier bytes are kept"
            );
            got.extend(ranges.into_iter().map(|r| bytes[r].to_vec()));
            if !more {
                return got;
            }
        }
    }

    #[test]
    fn batches_of_records_are_the_records_line_by_line() {
        let data = b"0123456789abcdef\nshort\n\n  \r\n0123456789\r\n01234567890\r\nx\r\rlast\r";
        let want = line_by_line(data, 10);
        assert_eq!(
            want,
            [
                &b"0123456789a"[..],
                b"short",
                b"0123456789",
                b"01234567890",
                b"x\r\rlast\r"
            ]
        );
        for buffer in [1, 2, 3, 7, 64] {
            for per_batch in [1, 2, 5, 100] {
                assert_eq!(
                    batched(data, 10, buffer, per_batch),
                    want,
                    "{buffer} {per_batch}"
                );
            }
        }
    }

    proptest::proptest! {
        /// Any bytes (lines short and over-long, `\r`s anywhere, blank lines, a last
        /// line with or without its newline), any buffer and batch size.
        #[test]
        fn batched_records_match_line_by_line(
            data in proptest::collection::vec(
                proptest::sample::select(vec![b'a', b'b', b' ', b'\r', b'\n', b'\n', 0xff]),
                0..200,
            ),
            max in 1usize..12,
            buffer in 1usize..40,
            per_batch in 1usize..6,
        ) {
            proptest::prop_assert_eq!(batched(&data, max, buffer, per_batch), line_by_line(&data, max));
        }
    }
}
