//! Ids that would move a URL: data store and record ids become path segments of the record API
//! (`…/datastores/{ds}/records/{id}`), and `.`/`..` segments are dropped or resolved by URL
//! libraries, proxies and servers, so such an id would address a different resource. They are
//! refused at parse time whatever `[validation].id_format` says.

/// How many rounds of percent-decoding are undone before comparing: a proxy that decodes once
/// and a server that decodes again must not see a dot segment either.
const DECODE_ROUNDS: usize = 3;

/// Whether `id` is `.` or `..`, or becomes one after percent-decoding (`%2e`, `.%2E`, `%252e%252e`).
pub fn is_dot_segment(id: &str) -> bool {
    let mut current = id.as_bytes().to_vec();
    for _ in 0..=DECODE_ROUNDS {
        if current == b"." || current == b".." {
            return true;
        }
        let decoded = percent_decode(&current);
        if decoded == current {
            return false;
        }
        current = decoded;
    }
    false
}

/// One round of `%XX` decoding; a `%` not followed by two hex digits stays as it is.
fn percent_decode(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        let hex = |b: Option<&u8>| b.and_then(|b| (*b as char).to_digit(16));
        match (input[i], hex(input.get(i + 1)), hex(input.get(i + 2))) {
            (b'%', Some(high), Some(low)) => {
                // Both digits are < 16, so the byte fits.
                out.push(u8::try_from(high * 16 + low).unwrap_or(b'%'));
                i += 3;
            }
            (byte, _, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_and_percent_encoded_dot_segments_are_recognised() {
        for id in [
            ".",
            "..",
            "%2e",
            "%2E",
            ".%2e",
            "%2e.",
            "%2e%2e",
            "%2E%2e",
            "%252e%252e",
            "%25252e",
        ] {
            assert!(is_dot_segment(id), "{id}");
        }
    }

    #[test]
    fn ids_that_merely_contain_dots_are_fine() {
        for id in [
            "...",
            ".a",
            "a.",
            "a..b",
            "%2e%2e%2e",
            "%2",
            "%zz",
            "%",
            "accounts",
            "%2f",
        ] {
            assert!(!is_dot_segment(id), "{id}");
        }
    }
}
