//! Example events for "send example": a realistic `data` object per event type, marked with
//! `"example": true` so that a receiver can tell it from a real event.

use crate::event::{AccountId, Event, EventId, EventType};
use crate::subscription::EventFilter;
use chrono::{SubsecRound, Utc};
use serde_json::value::RawValue;

/// The type to send when none is asked for: the first one the webhook receives, or a card
/// payment (the most common event) for a webhook that receives all.
pub fn default_type(filter: EventFilter) -> EventType {
    match filter {
        EventFilter::All => EventType::PaymentCardSuccess,
        EventFilter::Only(_) => EventType::ALL
            .iter()
            .copied()
            .find(|t| filter.matches(*t))
            // `EventFilter::Only` is never empty: parsing refuses an empty list.
            .unwrap_or(EventType::PaymentCardSuccess),
    }
}

/// A fresh example event of `event_type` for `account`, created now.
pub fn example_event(event_type: EventType, account: &AccountId) -> Event {
    Event {
        id: EventId::generate(),
        event_type,
        account_id: account.clone(),
        created_at: Utc::now().trunc_subsecs(0),
        data: RawValue::from_string(example_data(event_type).to_string())
            .expect("a JSON value serializes to valid JSON"),
    }
}

fn example_data(event_type: EventType) -> serde_json::Value {
    let label = event_type.label();
    let outcome = if label.ends_with(".failed") {
        "failed"
    } else {
        "success"
    };
    let mut data = if label.contains("payment") {
        serde_json::json!({
            "transaction": "T-EXAMPLE-0001",
            "amount": "10.00",
            "currency_iso": "EUR",
            "customer_id": "1234",
            "item_id": "42",
            "status": outcome,
        })
    } else if label.contains("subscribe") {
        serde_json::json!({
            "subscription_id": "S-EXAMPLE-0001",
            "customer_id": "1234",
            "item_id": "42",
            "amount": "10.00",
            "currency_iso": "EUR",
            "status": outcome,
        })
    } else if label.starts_with("asset.") || label.starts_with("freemium.") {
        serde_json::json!({
            "customer_id": "1234",
            "item_id": "42",
            "status": outcome,
        })
    } else {
        serde_json::json!({
            "customer_id": "1234",
            "email": "jane.doe@example.com",
            "full_name": "Jane Doe",
        })
    };
    data["example"] = true.into();
    data
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_type_has_an_example_object_marked_as_such() {
        let account: AccountId = "68".parse().unwrap();
        for t in EventType::ALL {
            let event = example_event(*t, &account);
            let data: serde_json::Value = serde_json::from_str(event.data.get()).unwrap();
            assert_eq!(data["example"], true, "{t}");
            assert_eq!(event.event_type, *t);
            let envelope = event.to_envelope_json();
            assert!(
                Event::parse(envelope.as_bytes(), t.label(), crate::event::Limits::NONE).is_ok()
            );
        }
    }

    #[test]
    fn the_default_type_is_one_the_webhook_receives() {
        let only = EventFilter::parse(&["customer.updated", "subscribe.expired"]).unwrap();
        assert_eq!(default_type(only), EventType::SubscribeExpired);
        assert_eq!(
            default_type(EventFilter::All),
            EventType::PaymentCardSuccess
        );
    }
}
