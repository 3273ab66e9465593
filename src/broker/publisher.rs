//! A confirmed publisher: every publish is `mandatory` and persistent, and succeeds only when the
//! broker acked it without returning it, within the timeout. A Nack, a return or a timeout is an
//! error, never a success (unlike sinks that treat a Nack as delivered).

use crate::event::{AccountId, Event, EventId, EventType};
use chrono::{DateTime, SecondsFormat, Utc};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("the broker refused the message (nack)")]
    Nacked,
    #[error("the broker returned the message as unroutable: {0}")]
    Returned(String),
    #[error("no confirm from the broker within {0:?}")]
    Timeout(Duration),
    #[error("amqp: {0}")]
    Amqp(#[from] lapin::Error),
}

/// Headers to attach to a message, in the order given.
#[derive(Default, Clone, Debug)]
pub struct Headers(FieldTable);

impl Headers {
    pub fn text(mut self, key: &str, value: &str) -> Self {
        self.0.insert(
            ShortString::from(key),
            AMQPValue::LongString(LongString::from(value.as_bytes().to_vec())),
        );
        self
    }

    pub fn int(mut self, key: &str, value: i64) -> Self {
        self.0
            .insert(ShortString::from(key), AMQPValue::LongLongInt(value));
        self
    }

    /// The table itself, for callers that publish with lapin directly (tests pipelining
    /// publishes in a fixed order).
    pub fn into_table(self) -> FieldTable {
        self.0
    }
}

/// One message to publish.
pub struct Outgoing<'a> {
    pub exchange: &'a str,
    pub routing_key: &'a str,
    pub body: &'a [u8],
    pub message_id: Option<&'a str>,
    pub content_type: &'a str,
    pub headers: Headers,
    /// Per-message TTL in milliseconds (delay queues).
    pub expiration_ms: Option<u64>,
}

/// A channel in confirm mode, shared by all the tasks of a process: publishes are pipelined and
/// each awaits its own confirm.
#[derive(Clone)]
pub struct Publisher {
    channel: Channel,
    timeout: Duration,
}

impl Publisher {
    pub async fn new(connection: &Connection, timeout: Duration) -> Result<Self, lapin::Error> {
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Publisher { channel, timeout })
    }

    pub fn channel(&self) -> &Channel {
        &self.channel
    }

    pub async fn publish(&self, msg: Outgoing<'_>) -> Result<(), PublishError> {
        let target = if msg.exchange.is_empty() {
            msg.routing_key
        } else {
            msg.exchange
        };
        let published = self.publish_confirmed(msg).await;
        if let Err(e) = &published {
            crate::metrics::publish_failed(target, e)
        }
        published
    }

    async fn publish_confirmed(&self, msg: Outgoing<'_>) -> Result<(), PublishError> {
        let mut props = BasicProperties::default()
            .with_delivery_mode(2) // persistent
            .with_content_type(msg.content_type.into())
            .with_headers(msg.headers.0)
            .with_timestamp(Utc::now().timestamp().max(0) as u64);
        if let Some(id) = msg.message_id {
            props = props.with_message_id(id.into());
        }
        if let Some(ms) = msg.expiration_ms {
            props = props.with_expiration(ms.to_string().into());
        }
        let confirm = async {
            let pending = self
                .channel
                .basic_publish(
                    msg.exchange.into(),
                    msg.routing_key.into(),
                    BasicPublishOptions {
                        mandatory: true,
                        immediate: false,
                    },
                    msg.body,
                    props,
                )
                .await?;
            pending.await
        };
        let confirmation = tokio::time::timeout(self.timeout, confirm)
            .await
            .map_err(|_| PublishError::Timeout(self.timeout))??;
        match confirmation {
            Confirmation::Ack(None) => Ok(()),
            Confirmation::Ack(Some(returned)) | Confirmation::Nack(Some(returned)) => Err(
                PublishError::Returned(returned.reply_text.as_str().to_owned()),
            ),
            Confirmation::Nack(None) => Err(PublishError::Nacked),
            // `new` always selects confirm mode, so the broker always confirms.
            Confirmation::NotRequested => Err(PublishError::Nacked),
        }
    }
}

/// An event for upstream services to publish; `id` and `created_at` default to fresh values.
#[derive(Clone, Debug)]
pub struct NewEvent {
    pub id: Option<EventId>,
    pub event_type: EventType,
    pub account_id: AccountId,
    pub created_at: Option<DateTime<Utc>>,
    /// A JSON object, passed through to merchants untouched.
    pub data: Box<serde_json::value::RawValue>,
}

impl NewEvent {
    /// The envelope of DESIGN §2.
    pub fn into_event(self) -> Event {
        let created_at = self.created_at.unwrap_or_else(Utc::now);
        // Whole seconds: that is what receivers get as `timestamp` and `created`.
        let created_at =
            DateTime::parse_from_rfc3339(&created_at.to_rfc3339_opts(SecondsFormat::Secs, true))
                .map(|t| t.with_timezone(&Utc))
                .unwrap_or(created_at);
        Event {
            id: self.id.unwrap_or_else(EventId::generate),
            event_type: self.event_type,
            account_id: self.account_id,
            created_at,
            data: self.data,
        }
    }
}

/// The library API for upstream Rust services: publishes envelopes to `<prefix>.events`.
#[derive(Clone)]
pub struct EventPublisher {
    publisher: Publisher,
    exchange: String,
}

impl EventPublisher {
    pub fn new(publisher: Publisher, prefix: &str) -> Self {
        EventPublisher {
            publisher,
            exchange: format!("{prefix}.events"),
        }
    }

    /// Connects its own connection and confirm channel.
    pub async fn connect(
        amqp_url: &str,
        prefix: &str,
        timeout: Duration,
    ) -> Result<Self, PublishError> {
        let connection = super::connect(amqp_url, "hookrelay publisher").await?;
        Ok(Self::new(
            Publisher::new(&connection, timeout).await?,
            prefix,
        ))
    }

    /// Publishes one event and returns it as sent, once the broker confirmed it.
    pub async fn publish(&self, event: NewEvent) -> Result<Event, PublishError> {
        let event = event.into_event();
        let body = event.to_envelope_json();
        self.publisher
            .publish(Outgoing {
                exchange: &self.exchange,
                routing_key: event.event_type.label(),
                body: body.as_bytes(),
                message_id: Some(event.id.as_str()),
                content_type: "application/json",
                headers: Headers::default(),
                expiration_ms: None,
            })
            .await?;
        Ok(event)
    }
}
