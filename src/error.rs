//! The one classification every stage's errors share: what to do next with the message.

/// Permanent errors dead-letter at once; transient ones retry through the hold queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    Permanent,
    Transient,
}
