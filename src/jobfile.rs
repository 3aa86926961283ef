//! Reading job files for `enqueue` and `validate`, streamed so a 1 GB file is never held in memory:
//! a JSON array (elements parsed one by one), JSON Lines (one job per line; a bad line is reported
//! with its number and can be skipped), or a stream of JSON objects (one pretty-printed job).

use std::io::{BufRead, BufReader, Read};

use serde::de::{DeserializeSeed, SeqAccess, Visitor};
use serde_json::value::RawValue;

/// One job as read: where it came from and its raw JSON text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// 1-based position of the job in the file.
    pub index: u64,
    /// 1-based line where the job starts (JSON Lines) or ends (arrays and streams).
    pub line: u64,
    pub json: String,
}

/// A job that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct BadItem {
    pub line: u64,
    pub message: String,
    /// Whether reading can go on after it (JSON Lines) or the file is unreadable from here.
    pub recoverable: bool,
}

/// Reads `input`, calling `sink` for each job or bad item; `sink` returns false to stop.
/// Runs synchronously: call it from a blocking thread.
pub fn read_jobs<R: Read>(input: R, mut sink: impl FnMut(Result<Item, BadItem>) -> bool) {
    let mut reader = BufReader::with_capacity(1 << 16, input);
    match first_byte(&mut reader) {
        Ok(Some(b'[')) => read_array(reader, &mut sink),
        Ok(Some(_)) => read_lines_or_stream(reader, &mut sink),
        Ok(None) => {}
        Err(e) => {
            sink(Err(BadItem {
                line: 1,
                message: e.to_string(),
                recoverable: false,
            }));
        }
    }
}

/// Skips leading whitespace and peeks at the first significant byte.
fn first_byte<R: BufRead>(reader: &mut R) -> std::io::Result<Option<u8>> {
    loop {
        let buf = reader.fill_buf()?;
        if buf.is_empty() {
            return Ok(None);
        }
        match buf.iter().position(|b| !b.is_ascii_whitespace()) {
            Some(i) => return Ok(Some(buf[i])),
            None => {
                let n = buf.len();
                reader.consume(n);
            }
        }
    }
}

fn read_array<R: Read>(reader: R, sink: &mut dyn FnMut(Result<Item, BadItem>) -> bool) {
    let (reader, lines) = LineCounter::new(reader);
    let mut de = serde_json::Deserializer::from_reader(reader);
    let visitor = ArrayVisitor {
        sink: &mut *sink,
        lines,
    };
    let result = serde::Deserializer::deserialize_seq(&mut de, visitor);
    let result = result.and_then(|()| de.end());
    if let Err(e) = result {
        sink(Err(BadItem {
            line: e.line() as u64,
            message: e.to_string(),
            recoverable: false,
        }));
    }
}

struct ArrayVisitor<'a> {
    sink: &'a mut dyn FnMut(Result<Item, BadItem>) -> bool,
    lines: Lines,
}

/// Newlines read so far, shared between a [`LineCounter`] and whoever reports positions.
type Lines = std::rc::Rc<std::cell::Cell<u64>>;

/// Counts the newlines passing through, so an element parsed from a stream knows its line
/// (serde_json reports positions only in errors).
struct LineCounter<R> {
    inner: R,
    lines: Lines,
}

impl<R> LineCounter<R> {
    fn new(inner: R) -> (Self, Lines) {
        let lines = Lines::default();
        let counter = LineCounter {
            inner,
            lines: lines.clone(),
        };
        (counter, lines)
    }
}

impl<R: Read> Read for LineCounter<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        let newlines = buf[..n].iter().filter(|&&b| b == b'\n').count() as u64;
        self.lines.set(self.lines.get() + newlines);
        Ok(n)
    }
}

impl<'de> Visitor<'de> for ArrayVisitor<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an array of job objects")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut index = 0;
        while let Some(raw) = seq.next_element_seed(RawSeed)? {
            index += 1;
            let line = self.lines.get() + 1;
            let item = object_item(index, line, raw.get().to_owned());
            if !(self.sink)(item) {
                return Ok(());
            }
        }
        Ok(())
    }
}

struct RawSeed;

impl<'de> DeserializeSeed<'de> for RawSeed {
    type Value = Box<RawValue>;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        serde::Deserialize::deserialize(d)
    }
}

/// JSON Lines when the first line is a whole JSON value; otherwise a stream of JSON values.
fn read_lines_or_stream<R: Read>(
    mut reader: BufReader<R>,
    sink: &mut dyn FnMut(Result<Item, BadItem>) -> bool,
) {
    let mut first = String::new();
    if let Err(e) = reader.read_line(&mut first) {
        sink(Err(BadItem {
            line: 1,
            message: e.to_string(),
            recoverable: false,
        }));
        return;
    }
    if serde_json::from_str::<&RawValue>(first.trim()).is_ok() {
        read_lines(first, reader, sink);
    } else {
        read_stream(std::io::Cursor::new(first).chain(reader), sink);
    }
}

fn read_lines<R: BufRead>(
    first: String,
    reader: R,
    sink: &mut dyn FnMut(Result<Item, BadItem>) -> bool,
) {
    let rest = reader.lines();
    let mut index = 0;
    for (number, line) in std::iter::once(Ok(first)).chain(rest).enumerate() {
        let line_no = number as u64 + 1;
        let item = match line {
            Ok(text) if text.trim().is_empty() => continue,
            Ok(text) => {
                index += 1;
                match serde_json::from_str::<&RawValue>(text.trim()) {
                    Ok(raw) => object_item(index, line_no, raw.get().to_owned()),
                    Err(e) => Err(BadItem {
                        line: line_no,
                        message: format!("not valid JSON: {e}"),
                        recoverable: true,
                    }),
                }
            }
            Err(e) => Err(BadItem {
                line: line_no,
                message: e.to_string(),
                recoverable: false,
            }),
        };
        let fatal = matches!(&item, Err(b) if !b.recoverable);
        if !sink(item) || fatal {
            return;
        }
    }
}

fn read_stream<R: Read>(reader: R, sink: &mut dyn FnMut(Result<Item, BadItem>) -> bool) {
    let (reader, lines) = LineCounter::new(reader);
    let values = serde_json::Deserializer::from_reader(reader).into_iter::<Box<RawValue>>();
    let mut index = 0;
    for next in values {
        let item = match next {
            Ok(raw) => {
                index += 1;
                object_item(index, lines.get() + 1, raw.get().to_owned())
            }
            Err(e) => Err(BadItem {
                line: e.line() as u64,
                message: e.to_string(),
                recoverable: false,
            }),
        };
        let fatal = item.is_err();
        if !sink(item) || fatal {
            return;
        }
    }
}

/// A job must at least be a JSON object; the worker checks the rest.
fn object_item(index: u64, line: u64, json: String) -> Result<Item, BadItem> {
    if json.starts_with('{') {
        Ok(Item { index, line, json })
    } else {
        Err(BadItem {
            line,
            message: format!("job {index} is not a JSON object"),
            recoverable: true,
        })
    }
}

/// The `job_id` a job in the file declares, if any (non-empty), read without parsing the job.
pub fn declared_job_id(json: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Peek {
        job_id: Option<String>,
    }
    serde_json::from_str::<Peek>(json)
        .ok()?
        .job_id
        .filter(|id| crate::job::printable_name(id))
}

/// The data store a job that failed to parse names (`datastore_id`, or the tutorial's
/// `datastoreId`), if it is a usable name, so its events point at the right store.
pub fn declared_datastore_id(json: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Peek {
        #[serde(alias = "datastoreId")]
        datastore_id: Option<String>,
    }
    serde_json::from_str::<Peek>(json)
        .ok()?
        .datastore_id
        .filter(|id| crate::job::is_datastore_id(id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_declared_datastore_id_is_read_from_either_shape() {
        let read = declared_datastore_id;
        assert_eq!(read(r#"{"datastore_id":"a","x":1}"#).as_deref(), Some("a"));
        assert_eq!(read(r#"{"datastoreId":"b"}"#).as_deref(), Some("b"));
        assert_eq!(
            read(r#"{"datastore_id":"a/b"}"#),
            None,
            "not one path segment"
        );
        assert_eq!(read(r#"{"datastore_id":".."}"#), None, "a dot segment");
        assert_eq!(read(r#"{"datastore_id":""}"#), None);
        assert_eq!(read(r#"{"datastore_id":7}"#), None);
        assert_eq!(read("[]"), None);
    }

    #[test]
    fn the_declared_job_id_is_read_without_parsing_the_job() {
        assert_eq!(
            declared_job_id(r#"{"job_id":"j-1","operations":[]}"#).as_deref(),
            Some("j-1")
        );
        assert_eq!(declared_job_id(r#"{"parentId":"p"}"#), None);
        assert_eq!(declared_job_id(r#"{"job_id":""}"#), None);
        // The parser's rule: a job id with control characters is no identity to use.
        assert_eq!(declared_job_id(r#"{"job_id":"a\u0000b\nc"}"#), None);
        assert_eq!(
            declared_job_id(&format!(r#"{{"job_id":"{}"}}"#, "x".repeat(129))),
            None
        );
        assert_eq!(declared_job_id("not json"), None);
    }

    fn read(text: &str) -> Vec<Result<Item, BadItem>> {
        let mut out = Vec::new();
        read_jobs(text.as_bytes(), |item| {
            out.push(item);
            true
        });
        out
    }

    #[test]
    fn an_array_yields_each_element_in_order() {
        let items = read(" [ {\"a\":1}, {\"b\": [2, 3]} ]\n");
        let jsons: Vec<_> = items
            .iter()
            .map(|i| i.as_ref().unwrap().json.clone())
            .collect();
        assert_eq!(jsons, vec!["{\"a\":1}", "{\"b\": [2, 3]}"]);
    }

    #[test]
    fn json_lines_report_a_bad_line_by_number_and_go_on() {
        let items = read("{\"a\":1}\n\n{oops\n{\"c\":3}\n");
        assert_eq!(items.len(), 3);
        let bad = items[1].as_ref().unwrap_err();
        assert_eq!(bad.line, 3);
        assert!(bad.recoverable);
        assert_eq!(items[2].as_ref().unwrap().line, 4);
    }

    #[test]
    fn a_pretty_printed_single_object_is_one_job() {
        let items = read("{\n  \"parentId\": \"x\",\n  \"childIds\": []\n}\n");
        assert_eq!(items.len(), 1);
        assert!(items[0].as_ref().unwrap().json.contains("parentId"));
    }

    #[test]
    fn an_array_element_that_is_no_object_is_reported_with_the_line_it_ends_on() {
        let items = read("[\n  {\"a\": 1},\n  2,\n  {\n    \"b\": 2\n  },\n  \"x\"\n]");
        assert_eq!(items.len(), 4);
        assert_eq!(items[0].as_ref().unwrap().line, 2);
        assert_eq!(items[1].as_ref().unwrap_err().line, 3);
        assert_eq!(items[2].as_ref().unwrap().line, 6);
        assert_eq!(items[3].as_ref().unwrap_err().line, 7);
    }

    #[test]
    fn a_broken_array_is_fatal_with_its_line() {
        let items = read("[{\"a\":1},\n{\"b\":}]");
        let bad = items.last().unwrap().as_ref().unwrap_err();
        assert_eq!(bad.line, 2);
        assert!(!bad.recoverable);
    }

    #[test]
    fn non_objects_are_refused() {
        let items = read("[1, {\"a\":1}]");
        assert!(items[0].is_err());
        assert!(items[1].is_ok());
    }

    #[test]
    fn an_empty_input_yields_nothing() {
        assert!(read("  \n").is_empty());
    }
}
