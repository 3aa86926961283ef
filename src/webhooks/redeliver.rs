//! `cxrel dlq redeliver-webhooks`: POSTs the events parked on `{prefix}.webhooks.dead` again, once
//! each, to the endpoint they were parked for (or, for an event that never reached an endpoint's
//! queue, to every configured endpoint whose filter wants it). A delivered event leaves the queue;
//! one still refused goes back to its end with the new error and one more attempt counted.

use lapin::Connection;
use serde_json::Value;

use super::delivery::{Endpoint, signed_post};
use crate::amqp::headers;
use crate::dlq::scan::{self, Decision, Pace, ScanReport};
use crate::dlq::{DeadLetter, DlqError};
use crate::settings::{WebhookDeliverySettings, WebhookSettings};

/// The header naming the `[[webhooks]]` entry (from 1) an event was parked for.
pub const NUMBER: &str = "x-cxrel-webhook-number";

/// What a redelivery did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Redelivered {
    /// Events delivered to every endpoint they were for, and removed from the queue.
    pub delivered: u64,
    /// Events an endpoint refused again: back at the end of the queue with the new error.
    pub failed: u64,
    /// Events left alone: for another endpoint than `--endpoint`, for an entry no longer
    /// configured, or not a CloudEvent.
    pub left: u64,
}

/// Redelivers what `dead` holds; `only` restricts it to one `[[webhooks]]` entry (from 1).
pub async fn redeliver(
    connection: &Connection,
    dead: &str,
    hooks: &[WebhookSettings],
    delivery: &WebhookDeliverySettings,
    only: Option<usize>,
    pace: Pace,
) -> Result<(ScanReport, Redelivered), DlqError> {
    // A secret that is no key cannot be configured (the settings check refuses it).
    let targets = Endpoint::all(hooks).unwrap_or_default();
    let client = reqwest::Client::builder()
        .timeout(delivery.timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("cxrel/", env!("CARGO_PKG_VERSION")))
        .build()
        .unwrap_or_default();
    let tally = std::cell::RefCell::new(Redelivered::default());
    let report = scan::scan_async(connection, dead, pace, |letter| {
        let (targets, client, tally) = (&targets, &client, &tally);
        async move {
            let (decision, outcome) = redeliver_one(client, targets, only, dead, &letter).await;
            let mut tally = tally.borrow_mut();
            match outcome {
                Outcome::Delivered => tally.delivered += 1,
                Outcome::Failed => tally.failed += 1,
                Outcome::Left => tally.left += 1,
            }
            decision
        }
    })
    .await?;
    Ok((report, tally.into_inner()))
}

enum Outcome {
    Delivered,
    Failed,
    Left,
}

/// The endpoints `letter` goes to: the one it was parked for, else every one that wants it.
fn recipients<'a>(
    targets: &'a [Endpoint],
    letter: &DeadLetter,
    ty: &str,
    only: Option<usize>,
) -> Vec<&'a Endpoint> {
    let table = letter.properties.headers().clone().unwrap_or_default();
    let parked_for = headers::get_u64(&table, NUMBER).and_then(|n| usize::try_from(n).ok());
    targets
        .iter()
        .filter(|t| match parked_for {
            Some(number) => t.number == number,
            None => t.wants(ty),
        })
        .filter(|t| only.is_none_or(|n| n == t.number))
        .collect()
}

async fn redeliver_one(
    client: &reqwest::Client,
    targets: &[Endpoint],
    only: Option<usize>,
    dead: &str,
    letter: &DeadLetter,
) -> (Decision, Outcome) {
    let Ok(event) = serde_json::from_slice::<Value>(&letter.body) else {
        return (Decision::Keep, Outcome::Left);
    };
    let (Some(id), Some(ty)) = (event["id"].as_str(), event["type"].as_str()) else {
        return (Decision::Keep, Outcome::Left);
    };
    let recipients = recipients(targets, letter, ty, only);
    if recipients.is_empty() {
        return (Decision::Keep, Outcome::Left);
    }
    let traceparent = event["traceparent"].as_str();
    let mut refused = Vec::new();
    for target in &recipients {
        if let Err(error) = post(client, target, id, traceparent, &letter.body).await {
            refused.push((*target, error));
        }
    }
    if refused.is_empty() {
        return (Decision::Remove, Outcome::Delivered);
    }
    let properties = parked_again(letter, &refused);
    let decision = Decision::Move {
        queue: dead.to_owned(),
        properties: Box::new(properties),
    };
    (decision, Outcome::Failed)
}

/// The letter's properties with the new error, one more attempt, and the endpoint when only one
/// refused it (so the next redelivery goes only there).
fn parked_again(letter: &DeadLetter, refused: &[(&Endpoint, String)]) -> lapin::BasicProperties {
    let mut table = letter.properties.headers().clone().unwrap_or_default();
    let attempts = headers::get_u64(&table, headers::ATTEMPTS).unwrap_or(0);
    let errors: Vec<String> = refused
        .iter()
        .map(|(t, e)| format!("webhook #{} ({}): {e}", t.number, t.shown))
        .collect();
    headers::set_str(&mut table, headers::ERROR_MESSAGE, errors.join("; "));
    headers::set_u64(&mut table, headers::ATTEMPTS, attempts + 1);
    headers::set_str(
        &mut table,
        headers::LAST_FAILED_AT,
        crate::events::now_rfc3339(),
    );
    if let [(target, _)] = refused {
        headers::set_str(&mut table, "x-cxrel-webhook-url", &target.shown);
        headers::set_u64(&mut table, NUMBER, target.number as u64);
    }
    let table = headers::without(&table, headers::DELIVERY_COUNT);
    headers::copy_properties(&letter.properties, table)
}

async fn post(
    client: &reqwest::Client,
    target: &Endpoint,
    id: &str,
    traceparent: Option<&str>,
    body: &[u8],
) -> Result<(), String> {
    let request = signed_post(client, &target.url, &target.key, id, traceparent, body);
    let response = request
        .send()
        .await
        .map_err(|e| crate::error::one_line(&e.without_url()))?;
    match response.status() {
        status if status.is_success() => Ok(()),
        status => Err(format!("endpoint answered {status}")),
    }
}
