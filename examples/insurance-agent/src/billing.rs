//! Billing and alerting: the outbox channels, the shared webhook secret and
//! the deliverers.
//!
//! Plan changes, plan requests, usage records and lifecycle transitions are
//! written to the `billing` channel of the outbox in the transaction of the
//! change; high-risk audit events to `alerts`. With a webhook URL
//! configured, a deliverer per channel sends them — signed with the secret
//! in `billing-webhook.key` (32 random bytes, created on first start),
//! retried with back-off, each with its idempotency key. Without one,
//! messages wait in the outbox (counted in `/metrics`) until a URL is set.
//!
//! The billing side answers plan requests at `POST /billing/callback`,
//! signed with the same secret (see `api::billing`).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tenancy_core::outbox::{Backoff, Deliverer};
use tenancy_core::webhook::{HttpTransport, WebhookSecret};
use tokio::task::JoinHandle;

use crate::app::Error;
use crate::data::Data;

/// The outbox channel of billing messages.
pub const BILLING: &str = "billing";
/// The outbox channel of high-risk audit alerts.
pub const ALERTS: &str = "alerts";
/// The shared webhook secret's file in the data directory.
pub const SECRET_FILE: &str = "billing-webhook.key";

/// Where the outbox is delivered.
#[derive(Debug, Clone)]
pub struct Billing {
    /// `INSURANCE_BILLING_WEBHOOK_URL`: plan requests and changes, usage
    /// records, lifecycle transitions.
    pub webhook_url: Option<String>,
    /// `INSURANCE_ALERT_WEBHOOK_URL`: high-risk audit events.
    pub alert_url: Option<String>,
    /// `INSURANCE_BILLING_SECRET`: the shared secret (at least 16 bytes);
    /// without it, `billing-webhook.key` in the data directory.
    pub secret: Option<WebhookSecret>,
    /// The retry schedule.
    pub backoff: Backoff,
    /// How often the deliverers look for due messages.
    pub poll: Duration,
}

impl Default for Billing {
    fn default() -> Self {
        Self {
            webhook_url: None,
            alert_url: None,
            secret: None,
            backoff: Backoff::default(),
            poll: Duration::from_secs(1),
        }
    }
}

/// The shared secret: the configured one, or the data directory's (created
/// random on first use).
pub fn secret(config: &Billing, dir: &Path) -> Result<WebhookSecret, Error> {
    if let Some(secret) = &config.secret {
        return Ok(secret.clone());
    }
    let bytes = crate::data::secret_file(dir, SECRET_FILE)?;
    Ok(WebhookSecret::new(bytes.to_vec()).map_err(|e| e.to_string())?)
}

/// Starts a deliverer per configured channel.
pub fn spawn(
    data: &Data,
    config: &Billing,
    secret: &WebhookSecret,
) -> Result<Vec<JoinHandle<()>>, Error> {
    let mut tasks = Vec::new();
    for (channel, url) in [(BILLING, &config.webhook_url), (ALERTS, &config.alert_url)] {
        let Some(url) = url else { continue };
        let transport = HttpTransport::new(url, secret.clone())
            .map_err(|e| format!("the {channel} webhook URL: {e}"))?;
        let deliverer = Deliverer::new(data.outbox(channel), Arc::new(transport), channel)
            .backoff(config.backoff)
            .interval(config.poll);
        tasks.push(tokio::spawn(deliverer.run(std::future::pending())));
    }
    Ok(tasks)
}
