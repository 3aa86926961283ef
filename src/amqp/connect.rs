//! Opening a broker connection, named after this instance so operators can find it in the
//! management UI (and `rabbitmqctl close_connection` can target it).

use std::time::Duration;

use lapin::{Connection, ConnectionProperties};

use super::AmqpError;
use crate::secret::{Secret, redact_url};

/// Longest wait for a connection (TCP, TLS, AMQP handshake). A refused port fails at once; this
/// bounds the rest, including a connect that never resolves: once, after a refused connection,
/// lapin's I/O thread ended without answering the connect, and `cxrel topology declare` waited
/// forever (seen in CI, 2026-12-02). The worker's reconnect loop must never hang there either.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Connects to `url` (whose password is a secret) with a client-visible connection name.
pub async fn connect(url: &Secret, connection_name: &str) -> Result<Connection, AmqpError> {
    let properties =
        ConnectionProperties::default().with_connection_name(connection_name.to_owned().into());
    tracing::debug!(url = %redact_url(url.expose()), connection_name, "connecting to the broker");
    match tokio::time::timeout(
        CONNECT_TIMEOUT,
        Connection::connect(url.expose(), properties),
    )
    .await
    {
        Ok(connected) => connected.map_err(|error| AmqpError::Connect {
            url: redact_url(url.expose()),
            error,
        }),
        Err(_) => Err(AmqpError::ConnectTimeout(CONNECT_TIMEOUT)),
    }
}
