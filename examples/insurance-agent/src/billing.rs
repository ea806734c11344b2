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
/// The billing webhook secret's file in the data directory (shared with the
/// billing side: it signs what is sent there and the callbacks from there).
pub const SECRET_FILE: &str = "billing-webhook.key";
/// The alert webhook secret's file: a separate secret, so whoever verifies
/// alerts cannot sign billing callbacks.
pub const ALERT_SECRET_FILE: &str = "alerts-webhook.key";
/// Delivered messages are kept this long, then pruned.
pub const KEEP_DELIVERED: Duration = Duration::from_secs(7 * 24 * 3600);

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
    /// `INSURANCE_ALERT_SECRET`: the alert webhook's secret; without it,
    /// `alerts-webhook.key` in the data directory.
    pub alert_secret: Option<WebhookSecret>,
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
            alert_secret: None,
            backoff: Backoff::default(),
            poll: Duration::from_secs(1),
        }
    }
}

/// The billing secret: the configured one, or the data directory's
/// (created random on first use).
pub fn secret(config: &Billing, dir: &Path) -> Result<WebhookSecret, Error> {
    configured_or_file(config.secret.as_ref(), dir, SECRET_FILE)
}

/// The alert webhook's secret, likewise.
pub fn alert_secret(config: &Billing, dir: &Path) -> Result<WebhookSecret, Error> {
    configured_or_file(config.alert_secret.as_ref(), dir, ALERT_SECRET_FILE)
}

fn configured_or_file(
    configured: Option<&WebhookSecret>,
    dir: &Path,
    file: &str,
) -> Result<WebhookSecret, Error> {
    if let Some(secret) = configured {
        return Ok(secret.clone());
    }
    let bytes = crate::data::secret_file(dir, file)?;
    Ok(WebhookSecret::new(bytes.to_vec()).map_err(|e| e.to_string())?)
}

/// Starts a deliverer per configured channel, and the hourly pruning of
/// messages delivered more than [`KEEP_DELIVERED`] ago.
pub fn spawn(data: &Data, config: &Billing, dir: &Path) -> Result<Vec<JoinHandle<()>>, Error> {
    let mut tasks = Vec::new();
    for (channel, url, secret) in [
        (BILLING, &config.webhook_url, secret(config, dir)?),
        (ALERTS, &config.alert_url, alert_secret(config, dir)?),
    ] {
        let Some(url) = url else { continue };
        let transport = HttpTransport::new(url, secret)
            .map_err(|e| format!("the {channel} webhook URL: {e}"))?;
        let deliverer = Deliverer::new(data.outbox(channel), Arc::new(transport), channel)
            .backoff(config.backoff)
            .interval(config.poll);
        tasks.push(tokio::spawn(deliverer.run(std::future::pending())));
    }
    let data = data.clone();
    tasks.push(tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(3600));
        loop {
            every.tick().await;
            let before = chrono::Utc::now()
                - chrono::Duration::from_std(KEEP_DELIVERED).unwrap_or(chrono::Duration::days(7));
            match data.prune_outbox(before).await {
                Ok(n) if n > 0 => tracing::info!(pruned = n, "delivered outbox messages pruned"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "outbox not pruned"),
            }
        }
    }));
    Ok(tasks)
}
