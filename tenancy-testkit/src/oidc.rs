//! A real OpenID provider for tests: the npm package `oidc-provider`, run by
//! `scripts/oidc/provider.mjs` (installed and located by `scripts/with-db`,
//! which exports `TENANCY_TEST_OIDC_SCRIPT`).
//!
//! [`OidcProvider::start`] runs an instance of the test's own — one issuer,
//! on a free loopback port — which the test may rotate keys of, pause, or
//! stop. Tokens come from its token endpoint by the client-credentials grant
//! with a resource indicator (the audience), as a real client would get them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine;

use crate::http::{RawResponse, send};

/// What can go wrong starting or asking the provider.
#[derive(Debug, thiserror::Error)]
pub enum OidcTestError {
    /// `TENANCY_TEST_OIDC_SCRIPT` is not set.
    #[error(
        "TENANCY_TEST_OIDC_SCRIPT is not set: run the tests through scripts/test (it installs and locates oidc-provider)"
    )]
    NotConfigured,
    /// An I/O failure (starting node, reading the key files).
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The provider answered something unexpected.
    #[error("oidc-provider: {0}")]
    Provider(String),
}

/// One running issuer. Stopped when dropped.
#[derive(Debug)]
pub struct OidcProvider {
    /// The issuer identifier (`http://127.0.0.1:<port>`).
    pub issuer: String,
    addr: SocketAddr,
    keys: PathBuf,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for OidcProvider {
    fn drop(&mut self) {
        let _ = signal(self.child.id(), "CONT");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn signal(pid: u32, sig: &str) -> std::io::Result<()> {
    let status = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .stderr(Stdio::null())
        .status()?;
    if status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other(format!("kill -{sig} {pid} failed")))
    }
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl OidcProvider {
    /// Starts an issuer with these `(client_id, secret)` clients.
    pub async fn start(clients: &[(&str, &str)]) -> Result<Self, OidcTestError> {
        let script =
            std::env::var("TENANCY_TEST_OIDC_SCRIPT").map_err(|_| OidcTestError::NotConfigured)?;
        let dir = tempfile::tempdir()?;
        let port = free_port()?;
        let list: Vec<String> = clients.iter().map(|(c, s)| format!("{c}:{s}")).collect();
        let child = Command::new("node")
            .arg(&script)
            .arg(port.to_string())
            .arg(dir.path())
            .arg(list.join(","))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let provider = Self {
            issuer: format!("http://127.0.0.1:{port}"),
            addr,
            keys: dir.path().to_owned(),
            child,
            _dir: dir,
        };
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return Ok(provider);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(OidcTestError::Provider(format!(
            "not listening on {addr} after 10 s"
        )))
    }

    async fn post_form(
        &self,
        path: &str,
        basic: &str,
        form: &str,
    ) -> Result<RawResponse, OidcTestError> {
        let req = format!(
            "POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\nAuthorization: Basic {basic}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{form}",
            self.addr.port(),
            form.len()
        );
        Ok(send(self.addr, req.as_bytes()).await?)
    }

    /// An access token for `client` with audience `resource` (RS256; ES256
    /// when the resource URL contains `es256`).
    pub async fn token(
        &self,
        client: &str,
        secret: &str,
        resource: &str,
    ) -> Result<String, OidcTestError> {
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("{client}:{secret}"));
        let form = format!(
            "grant_type=client_credentials&scope=api&resource={}",
            resource.replace(':', "%3A").replace('/', "%2F")
        );
        let r = self.post_form("/token", &basic, &form).await?;
        match r.json()["access_token"].as_str() {
            Some(t) if r.status == 200 => Ok(t.to_owned()),
            _ => Err(OidcTestError::Provider(format!(
                "token endpoint answered {}: {}",
                r.status,
                r.text()
            ))),
        }
    }

    /// The key ids the provider publishes now.
    pub async fn published_kids(&self) -> Result<Vec<String>, OidcTestError> {
        let r = send(self.addr, &crate::http::get("/jwks", &[])).await?;
        let keys = r.json()["keys"].as_array().cloned().unwrap_or_default();
        Ok(keys
            .iter()
            .filter_map(|k| k["kid"].as_str().map(str::to_owned))
            .collect())
    }

    fn read(&self, file: &str) -> Result<String, OidcTestError> {
        Ok(std::fs::read_to_string(self.keys.join(file))?)
    }

    /// The current RS256 signing key (PKCS#8 PEM) and its key id.
    pub fn rs256_key(&self) -> Result<(Vec<u8>, String), OidcTestError> {
        Ok((
            self.read("rs256.pem")?.into_bytes(),
            self.read("rs256.kid")?,
        ))
    }

    /// The ES256 signing key (PKCS#8 PEM) and its key id.
    pub fn es256_key(&self) -> Result<(Vec<u8>, String), OidcTestError> {
        Ok((
            self.read("es256.pem")?.into_bytes(),
            self.read("es256.kid")?,
        ))
    }

    /// Rotates the RS256 signing key (the old one stays published, as
    /// providers do during a rotation); returns the new key id once the
    /// provider publishes it.
    pub async fn rotate(&self) -> Result<String, OidcTestError> {
        let before = self.read("rs256.kid")?;
        signal(self.child.id(), "USR2")?;
        for _ in 0..200 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let now = self.read("rs256.kid").unwrap_or_default();
            if now != before && self.published_kids().await?.contains(&now) {
                return Ok(now);
            }
        }
        Err(OidcTestError::Provider(
            "the key did not rotate within 10 s".into(),
        ))
    }

    /// Stops publishing every retired key.
    pub async fn unpublish_retired(&self) -> Result<(), OidcTestError> {
        let count = self.published_kids().await?.len();
        signal(self.child.id(), "USR1")?;
        for _ in 0..200 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if self.published_kids().await?.len() < count {
                return Ok(());
            }
        }
        Err(OidcTestError::Provider(
            "retired keys still published after 10 s".into(),
        ))
    }

    /// The provider stops answering (connections hang) until [`Self::resume`].
    pub fn pause(&self) -> Result<(), OidcTestError> {
        Ok(signal(self.child.id(), "STOP")?)
    }

    /// The provider answers again.
    pub fn resume(&self) -> Result<(), OidcTestError> {
        Ok(signal(self.child.id(), "CONT")?)
    }

    /// Stops the provider (connections are refused from now on).
    pub fn stop(&mut self) -> Result<(), OidcTestError> {
        let _ = signal(self.child.id(), "CONT");
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }

    /// Where the key files are.
    pub fn key_dir(&self) -> &Path {
        &self.keys
    }
}
