//! W3C trace context: a job's incoming `traceparent` is continued (same trace id, new span id) into
//! the job's log span and onto every event and webhook it causes.

use rand::Rng;

/// Longest `traceparent` looked at: version 00 is 55 characters; the margin allows whitespace.
const MAX_HEADER_CHARS: usize = 256;

/// A parsed `traceparent` (version 00).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: String,
    pub span_id: String,
    pub flags: String,
}

impl TraceParent {
    /// Parses `00-<32 hex>-<16 hex>-<2 hex>`; anything else (or all-zero ids) is ignored, and so
    /// is a header longer than [`MAX_HEADER_CHARS`] (it comes from whoever published the job).
    pub fn parse(header: &str) -> Option<Self> {
        if header.len() > MAX_HEADER_CHARS {
            return None;
        }
        let mut parts = header.trim().split('-');
        let (version, trace_id, span_id, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        let hex = |s: &str, len| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
        let nonzero = |s: &str| s.bytes().any(|b| b != b'0');
        let valid = version == "00"
            && parts.next().is_none()
            && hex(trace_id, 32)
            && hex(span_id, 16)
            && hex(flags, 2)
            && nonzero(trace_id)
            && nonzero(span_id);
        valid.then(|| Self {
            trace_id: trace_id.to_ascii_lowercase(),
            span_id: span_id.to_ascii_lowercase(),
            flags: flags.to_ascii_lowercase(),
        })
    }

    /// A new span in the same trace: what this job's work reports as its parent downstream.
    pub fn child(&self) -> Self {
        Self {
            trace_id: self.trace_id.clone(),
            span_id: format!("{:016x}", rand::rng().random::<u64>().max(1)),
            flags: self.flags.clone(),
        }
    }

    /// A new trace, for jobs that arrive without one.
    pub fn root() -> Self {
        Self {
            trace_id: format!("{:032x}", rand::rng().random::<u128>().max(1)),
            span_id: format!("{:016x}", rand::rng().random::<u64>().max(1)),
            flags: "01".to_owned(),
        }
    }

    pub fn header(&self) -> String {
        format!("00-{}-{}-{}", self.trace_id, self.span_id, self.flags)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_child_keeps_the_trace_and_gets_a_new_span() {
        let parent = TraceParent::parse(HEADER).unwrap();
        let child = parent.child();
        assert_eq!(child.trace_id, parent.trace_id);
        assert_ne!(child.span_id, parent.span_id);
        assert!(TraceParent::parse(&child.header()).is_some());
    }

    #[test]
    fn malformed_or_zero_headers_are_ignored() {
        assert!(TraceParent::parse("garbage").is_none());
        assert!(
            TraceParent::parse("00-00000000000000000000000000000000-00f067aa0ba902b7-01").is_none()
        );
        assert!(TraceParent::parse(&format!("{HEADER}-extra")).is_none());
    }

    #[test]
    fn odd_headers_are_ignored_without_panicking() {
        let odd = [
            String::new(),
            "-".repeat(3),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7".to_owned(),
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned(),
            "00-4bf92f3577b34da6a3ce929d0e0e473é-00f067aa0ba902b7-01".to_owned(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01".to_owned(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g".to_owned(),
            "00--00f067aa0ba902b7-01".to_owned(),
            "\u{0}".repeat(55),
            format!("{HEADER}{}", " ".repeat(100_000)),
            "0".repeat(1_000_000),
        ];
        for header in &odd {
            assert!(TraceParent::parse(header).is_none(), "{:.80}", header);
        }
    }

    #[test]
    fn uppercase_and_surrounding_spaces_are_tolerated_and_normalised() {
        let parsed = TraceParent::parse(&format!("  {}  ", HEADER.to_ascii_uppercase())).unwrap();
        assert_eq!(parsed.header(), HEADER);
    }
}
