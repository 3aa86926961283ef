//! Publishing with publisher confirms: a publish returns only once the broker has taken
//! responsibility for the message, which is what lets a delivery be acked after its successor.

use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Channel, Confirmation, Connection};

use super::AmqpError;

/// A channel in confirm mode. Cheap to clone; concurrent publishes each await their own confirm,
/// for at most the confirm timeout.
#[derive(Clone)]
pub struct Publisher {
    channel: Channel,
    confirm_timeout: Duration,
}

/// Confirm timeout unless set (`[amqp].confirm_timeout`'s default).
const DEFAULT_CONFIRM_TIMEOUT: Duration = Duration::from_secs(30);

impl Publisher {
    /// Opens a dedicated channel on `connection` and switches it to confirm mode.
    pub async fn open(connection: &Connection) -> Result<Self, AmqpError> {
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Self {
            channel,
            confirm_timeout: DEFAULT_CONFIRM_TIMEOUT,
        })
    }

    /// Waits at most `timeout` for each confirm.
    pub fn with_confirm_timeout(mut self, timeout: Duration) -> Self {
        self.confirm_timeout = timeout;
        self
    }

    pub fn channel(&self) -> &Channel {
        &self.channel
    }

    /// Publishes a persistent message straight to a queue and waits for the confirm. `mandatory`
    /// makes a missing queue an error instead of a silent drop.
    pub async fn to_queue(
        &self,
        queue: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<(), AmqpError> {
        self.publish("", queue, body, properties, true).await
    }

    /// Publishes to an exchange; with `mandatory` false an unbound routing key is not an error
    /// (an events exchange with no subscriber yet).
    pub async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
        mandatory: bool,
    ) -> Result<(), AmqpError> {
        let options = BasicPublishOptions {
            mandatory,
            ..BasicPublishOptions::default()
        };
        let properties = properties.with_delivery_mode(2);
        let where_to = || (exchange.to_owned(), routing_key.to_owned());
        let confirm = async {
            self.channel
                .basic_publish(
                    exchange.into(),
                    routing_key.into(),
                    options,
                    body,
                    properties,
                )
                .await?
                .await
        };
        let confirmation = match tokio::time::timeout(self.confirm_timeout, confirm).await {
            Ok(confirmation) => confirmation?,
            Err(_) => {
                let (exchange, routing_key) = where_to();
                tracing::warn!(exchange, routing_key, timeout = ?self.confirm_timeout, "the broker did not confirm a publish in time (memory or disk alarm?)");
                return Err(AmqpError::ConfirmTimeout {
                    exchange,
                    routing_key,
                    timeout: self.confirm_timeout,
                });
            }
        };
        match confirmation {
            Confirmation::Ack(None) | Confirmation::NotRequested => Ok(()),
            Confirmation::Ack(Some(_)) => {
                let (exchange, routing_key) = where_to();
                Err(AmqpError::Unroutable {
                    exchange,
                    routing_key,
                })
            }
            Confirmation::Nack(_) => {
                let (exchange, routing_key) = where_to();
                Err(AmqpError::Nacked {
                    exchange,
                    routing_key,
                })
            }
        }
    }
}

/// The publisher of the current broker connection, replaced on every reconnect, for components that
/// outlive a connection (webhook parking).
#[derive(Clone, Default)]
pub struct PublisherSlot {
    current: std::sync::Arc<std::sync::RwLock<Option<Publisher>>>,
}

impl PublisherSlot {
    pub fn set(&self, publisher: Publisher) {
        if let Ok(mut current) = self.current.write() {
            *current = Some(publisher);
        }
    }

    pub fn get(&self) -> Option<Publisher> {
        self.current.read().ok().and_then(|p| p.clone())
    }
}
