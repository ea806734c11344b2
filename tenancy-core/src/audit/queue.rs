//! A bounded queue in front of an audit sink.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::mpsc;

use super::{AuditError, AuditEvent, AuditSink};

/// Counters of an [`AuditQueue`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct QueueStats {
    /// Events accepted into the queue.
    pub enqueued: u64,
    /// Events the sink recorded.
    pub recorded: u64,
    /// Events refused because the queue was full (only [`AuditQueue::try_record`]
    /// refuses; the target is 0).
    pub dropped: u64,
    /// Events the sink still refused after every retry (logged at error level).
    pub failed: u64,
}

#[derive(Debug, Default)]
struct Counters {
    enqueued: AtomicU64,
    recorded: AtomicU64,
    dropped: AtomicU64,
    failed: AtomicU64,
}

/// Events that do not accompany a database change go through a bounded
/// queue to their sink, so recording them never blocks a request on the
/// sink — and never loses them quietly:
///
/// - [`AuditQueue::record`] waits for room when the queue is full
///   (backpressure), so nothing is dropped;
/// - [`AuditQueue::try_record`] returns [`AuditError::QueueFull`] instead
///   of waiting, and counts the event in [`QueueStats::dropped`];
/// - a sink failure is retried (5 attempts, backoff from 10 ms); an event
///   that still fails is logged with its content at error level and counted
///   in [`QueueStats::failed`].
///
/// Events that accompany a database change belong in the same transaction
/// instead (`TenantTx::audit` in tenancy-sqlx).
///
/// ```
/// use std::sync::Arc;
/// use tenancy_core::audit::{Action, AuditEvent, AuditQueue, MemorySink};
/// use tenancy_core::TenantId;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let sink = Arc::new(MemorySink::default());
/// let queue = AuditQueue::spawn(sink.clone(), 1024);
/// queue.record(AuditEvent::user(TenantId::new_v4(), "u1", Action::LOGIN, "session")).await?;
/// let stats = queue.shutdown().await;
/// assert_eq!((stats.recorded, stats.dropped), (1, 0));
/// assert_eq!(sink.events().len(), 1);
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct AuditQueue {
    tx: mpsc::Sender<AuditEvent>,
    counters: Arc<Counters>,
    worker: tokio::task::JoinHandle<()>,
}

impl AuditQueue {
    /// Starts a worker draining into `sink`, with room for `capacity` events.
    /// Must be called inside a tokio runtime.
    pub fn spawn(sink: Arc<dyn AuditSink>, capacity: usize) -> Self {
        let (tx, mut rx) = mpsc::channel::<AuditEvent>(capacity.max(1));
        let counters = Arc::new(Counters::default());
        let c = counters.clone();
        let worker = tokio::spawn(async move {
            while let Some(event) = rx.recv().await {
                let mut delay = Duration::from_millis(10);
                let mut attempt = 1;
                loop {
                    match sink.record(event.clone()).await {
                        Ok(()) => {
                            c.recorded.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                        Err(e) if attempt < 5 && !matches!(e, AuditError::Invalid(_)) => {
                            tracing::warn!(error = %e, attempt, "audit sink failed; retrying");
                            tokio::time::sleep(delay).await;
                            delay *= 2;
                            attempt += 1;
                        }
                        Err(e) => {
                            c.failed.fetch_add(1, Ordering::Relaxed);
                            tracing::error!(
                                target: "tenancy::audit",
                                error = %e,
                                event = ?event,
                                "audit event could not be recorded"
                            );
                            break;
                        }
                    }
                }
            }
        });
        Self {
            tx,
            counters,
            worker,
        }
    }

    /// Enqueues an event, waiting for room when the queue is full.
    pub async fn record(&self, event: AuditEvent) -> Result<(), AuditError> {
        event.validate()?;
        self.tx
            .send(event)
            .await
            .map_err(|_| AuditError::QueueClosed)?;
        self.counters.enqueued.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Enqueues an event without waiting; a full queue refuses it and counts
    /// a drop.
    pub fn try_record(&self, event: AuditEvent) -> Result<(), AuditError> {
        event.validate()?;
        match self.tx.try_send(event) {
            Ok(()) => {
                self.counters.enqueued.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                tracing::error!(target: "tenancy::audit", "audit queue full; event refused");
                Err(AuditError::QueueFull)
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(AuditError::QueueClosed),
        }
    }

    /// The counters so far.
    pub fn stats(&self) -> QueueStats {
        QueueStats {
            enqueued: self.counters.enqueued.load(Ordering::Relaxed),
            recorded: self.counters.recorded.load(Ordering::Relaxed),
            dropped: self.counters.dropped.load(Ordering::Relaxed),
            failed: self.counters.failed.load(Ordering::Relaxed),
        }
    }

    /// Stops accepting events, waits until every queued event is recorded
    /// (or has failed), and returns the final counters.
    pub async fn shutdown(self) -> QueueStats {
        let Self {
            tx,
            counters,
            worker,
        } = self;
        drop(tx);
        if let Err(e) = worker.await {
            tracing::error!(error = %e, "audit queue worker ended abnormally");
        }
        QueueStats {
            enqueued: counters.enqueued.load(Ordering::Relaxed),
            recorded: counters.recorded.load(Ordering::Relaxed),
            dropped: counters.dropped.load(Ordering::Relaxed),
            failed: counters.failed.load(Ordering::Relaxed),
        }
    }
}

#[async_trait]
impl AuditSink for AuditQueue {
    /// Enqueues with backpressure: `Ok` means queued, not yet recorded.
    async fn record(&self, event: AuditEvent) -> Result<(), AuditError> {
        AuditQueue::record(self, event).await
    }
}
