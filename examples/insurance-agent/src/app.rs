//! Starting the server: open the data directory (seeding demo data on first
//! run), load the plans and the session key, bind, serve.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tenancy_core::plan::PlanCatalog;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::api::{self, AppState};
use crate::auth::Sessions;
use crate::data::{Data, PgUrls};
use crate::drain::{DRAIN_TIMEOUT, Drain};
use crate::seed;

/// The embedded plan catalog (`config/plans.toml`).
pub const PLANS: &str = include_str!("../config/plans.toml");

/// Errors of start-up and the command line.
pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// Server settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// The data directory (control database, tenant files, session key).
    pub data_dir: PathBuf,
    /// Where to listen (`127.0.0.1:0` picks a free port).
    pub bind: SocketAddr,
    /// A plan catalog file replacing the embedded one.
    pub plans: Option<PathBuf>,
    /// PostgreSQL instead of the embedded SQLite (the data directory then
    /// keeps only the secrets).
    pub postgres: Option<PgUrls>,
    /// Redis for the API quota (feature `redis`), shared by every instance;
    /// `None`: counted in this process's memory.
    pub redis: Option<String>,
}

/// A running server.
#[derive(Debug)]
pub struct Running {
    /// The address it listens on.
    pub addr: SocketAddr,
    /// Where the data is, in words (`data in ./data (SQLite)` or
    /// `PostgreSQL, row-level security; audit clean`).
    pub storage: String,
    /// The demo tenants seeded by this start (empty when the data directory
    /// already had tenants).
    pub seeded: Vec<String>,
    /// The server's data access (operations code in the same process: a
    /// suspension made here is seen by the next request).
    pub data: Data,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

impl Running {
    /// Drains (new requests get 503, those in flight finish), stops
    /// listening, and waits.
    pub async fn stop(mut self) -> Result<(), Error> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.task).await??;
        Ok(())
    }

    /// Waits until the server stops (SIGTERM or Ctrl-C, after draining).
    pub async fn wait(mut self) -> Result<(), Error> {
        (&mut self.task).await??;
        Ok(())
    }
}

/// The plan catalog: `path`, or the embedded one.
pub fn plans(path: Option<&Path>) -> Result<PlanCatalog, Error> {
    let text = match path {
        Some(p) => {
            std::fs::read_to_string(p).map_err(|e| format!("reading {}: {e}", p.display()))?
        }
        None => PLANS.to_owned(),
    };
    Ok(PlanCatalog::from_toml(&text)?)
}

/// The API quota's limiter: Redis when configured, else this process's memory
/// (which `/usage` can also read). A limiter that cannot answer refuses the
/// request (503 with `Retry-After`): without a count there is no limit.
async fn rate_limiter(
    redis: Option<&str>,
) -> Result<
    (
        Arc<dyn tenancy_core::pipeline::RateCheck>,
        Option<Arc<tenancy_core::quota::MemoryQuota>>,
    ),
    Error,
> {
    match redis {
        None => {
            let memory = Arc::new(tenancy_core::quota::MemoryQuota::new());
            Ok((memory.clone(), Some(memory)))
        }
        #[cfg(feature = "redis")]
        Some(url) => Ok((
            Arc::new(
                tenancy_redis::RedisQuota::connect(url)
                    .await
                    .map_err(|e| format!("INSURANCE_REDIS_URL: {e}"))?,
            ),
            None,
        )),
        #[cfg(not(feature = "redis"))]
        Some(_) => Err(
            "INSURANCE_REDIS_URL is set but this build has no Redis support: \
                        build with `--features redis`"
                .into(),
        ),
    }
}

/// The session signing key (`session.key`), created on first run.
pub fn session_key(dir: &Path) -> Result<Vec<u8>, Error> {
    Ok(crate::data::secret_file(dir, "session.key")?.to_vec())
}

/// Opens the data directory (seeding the demo on first run) and starts
/// serving on `config.bind`.
pub async fn start(config: &Config) -> Result<Running, Error> {
    let data = Data::open_with(&config.data_dir, config.postgres.as_ref()).await?;
    let seeded = if seed::is_seeded(&data).await? {
        Vec::new()
    } else {
        seed::demo(&data)
            .await?
            .iter()
            .map(|t| t.slug.to_string())
            .collect()
    };
    let storage = match data.backend_name() {
        "postgres" => "PostgreSQL, row-level isolation; strict isolation audit passed".to_owned(),
        _ => format!("SQLite, data in {}", config.data_dir.display()),
    };
    let (rate, quota) = rate_limiter(config.redis.as_deref()).await?;
    let state = AppState {
        sessions: Sessions::new(session_key(&config.data_dir)?),
        plans: Arc::new(plans(config.plans.as_deref())?),
        rate,
        quota,
        data: data.clone(),
    };
    let listener = TcpListener::bind(config.bind).await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = oneshot::channel::<()>();
    let drain = Arc::new(Drain::default());
    let app = api::router(state).layer(axum::middleware::from_fn_with_state(
        drain.clone(),
        crate::drain::admit,
    ));
    let task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                tokio::select! {
                    _ = stopped => {}
                    () = crate::drain::signal() => {}
                }
                // New requests get 503 from here on; those in flight finish.
                drain.drain(DRAIN_TIMEOUT).await;
            })
            .await
    });
    Ok(Running {
        addr,
        storage,
        seeded,
        data,
        stop: Some(stop),
        task,
    })
}
