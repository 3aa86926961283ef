//! Opening a broker connection, named after this instance so operators can find it in the
//! management UI (and `rabbitmqctl close_connection` can target it).

use lapin::{Connection, ConnectionProperties};

use super::AmqpError;
use crate::secret::{Secret, redact_url};

/// Connects to `url` (whose password is a secret) with a client-visible connection name.
pub async fn connect(url: &Secret, connection_name: &str) -> Result<Connection, AmqpError> {
    let properties =
        ConnectionProperties::default().with_connection_name(connection_name.to_owned().into());
    tracing::debug!(url = %redact_url(url.expose()), connection_name, "connecting to the broker");
    Ok(Connection::connect(url.expose(), properties).await?)
}
