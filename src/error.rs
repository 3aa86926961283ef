//! The one classification every stage's errors share: what to do next with the message.

/// Permanent errors dead-letter at once; transient ones retry through the hold queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    Permanent,
    Transient,
}

/// An error and its causes on one line, `: `-separated. A cause whose text the line already holds
/// is left out: many errors print their source in their own message too, and the chain would
/// otherwise say the same thing two or three times.
pub fn one_line(error: &(dyn std::error::Error + 'static)) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("broker: {0}")]
    struct Outer(#[from] std::io::Error);

    #[test]
    fn a_cause_already_in_the_message_is_not_repeated() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused");
        assert_eq!(one_line(&Outer(io)), "broker: connection refused");
    }
}
