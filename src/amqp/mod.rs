//! The AMQP layer: connecting, the queue topology of SPEC §5, publishing with broker confirms and the
//! `x-cxrel-*` headers. Everything the rest of the crate knows about RabbitMQ goes through here.

pub mod connect;
pub mod headers;
pub mod publisher;
pub mod topology;

pub use connect::connect;
pub use publisher::{Publisher, PublisherSlot};
pub use topology::Topology;

use crate::error::ErrorClass;

/// A broker-side failure. All of them are transient: the broker or the connection may come back.
#[derive(Debug, thiserror::Error)]
pub enum AmqpError {
    #[error("broker: {0}")]
    Broker(#[from] lapin::Error),
    #[error("the broker refused (nacked) a message for {exchange:?}/{routing_key:?}")]
    Nacked {
        exchange: String,
        routing_key: String,
    },
    #[error(
        "declaring {name:?} failed: {error}; if it exists with another type or other arguments \
         (e.g. from an older cxrel), drain it and delete it, or use a new [amqp].prefix"
    )]
    Declare { name: String, error: lapin::Error },
    #[error(
        "the broker did not confirm a publish to {exchange:?}/{routing_key:?} within {timeout:?} (memory or disk alarm?)"
    )]
    ConfirmTimeout {
        exchange: String,
        routing_key: String,
        timeout: std::time::Duration,
    },
    #[error("not connected to the broker")]
    NotConnected,
    #[error("no connection to the broker within {0:?} (is it up, and is [amqp].url right?)")]
    ConnectTimeout(std::time::Duration),
    /// The connect itself failed: names the address (password redacted) and what to check.
    #[error(
        "cannot connect to the broker at {url}: {error} (is it up, is [amqp].url right, and does that port speak AMQP?)"
    )]
    Connect { url: String, error: lapin::Error },
    #[error("the broker cancelled the consumer (queue deleted?)")]
    ConsumerEnded,
    /// A job a dead replica left half-written could not be undone yet; jobs wait until it is.
    #[error("a job another replica left half-written cannot be undone yet ({0}); trying again")]
    LeftoverBlocked(String),
    #[error("no queue is bound for {exchange:?}/{routing_key:?}; run `cxrel topology declare`")]
    Unroutable {
        exchange: String,
        routing_key: String,
    },
}

impl AmqpError {
    pub fn class(&self) -> ErrorClass {
        ErrorClass::Transient
    }

    /// The channel or connection is gone (closed, broken, not connected): trying the same
    /// channel again cannot help.
    pub fn is_connection_gone(&self) -> bool {
        use lapin::ErrorKind;
        match self {
            Self::NotConnected | Self::ConnectTimeout(_) | Self::Connect { .. } => true,
            Self::Broker(e) | Self::Declare { error: e, .. } => matches!(
                e.kind(),
                ErrorKind::InvalidChannelState(..)
                    | ErrorKind::InvalidConnectionState(..)
                    | ErrorKind::IOError(..)
                    | ErrorKind::MissingHeartbeatError
            ),
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use amq_protocol::frame::{AMQPFrame, parse_frame};

    /// A content header frame (channel 1, class basic, 2-byte body) whose content type is
    /// `application/json` and whose message id is `message_id`, as RabbitMQ passes it on.
    fn content_header(message_id: &[u8]) -> Vec<u8> {
        let mut payload = vec![0, 60, 0, 0];
        payload.extend_from_slice(&2u64.to_be_bytes());
        payload.extend_from_slice(&0x8080u16.to_be_bytes());
        payload.push(16);
        payload.extend_from_slice(b"application/json");
        payload.push(u8::try_from(message_id.len()).unwrap());
        payload.extend_from_slice(message_id);
        let mut frame = vec![2, 0, 1];
        frame.extend_from_slice(&u32::try_from(payload.len()).unwrap().to_be_bytes());
        frame.extend_from_slice(&payload);
        frame.push(0xCE);
        frame
    }

    #[test]
    fn a_message_id_that_is_not_utf8_is_read_lossily_instead_of_failing_the_connection() {
        let frame = content_header(&[0xff, 0xfe]);
        let (rest, parsed) = parse_frame(frame.as_slice()).expect("the frame parses");
        assert!(rest.is_empty());
        let AMQPFrame::Header(1, header) = parsed else {
            panic!("a content header: {parsed:?}")
        };
        let id = header.properties.message_id().clone().unwrap();
        assert_eq!(id.as_str(), "\u{FFFD}\u{FFFD}");
        let content_type = header.properties.content_type().clone().unwrap();
        assert_eq!(content_type.as_str(), "application/json");
    }
}
