//! The docker backend: the Docker Engine API over its Unix socket (or
//! `tcp://`), for the compose topology. It watches the containers of one
//! compose project (label `com.docker.compose.project`) and acts on them.
//!
//! Endpoints used (Engine API v1.41, all in Docker 20.10 and later):
//! `GET /containers/json?all=1&filters=...`, `GET /containers/{id}/json`,
//! `POST /containers/{id}/{start,stop,kill,pause,unpause}`.
//!
//! Supervised: containers whose restart policy is not `no` (one-shot
//! services such as migrations exit by design), except the watchdog's own
//! container and those labelled `shortlink.watchdog=off`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;

use anyhow::{Context, anyhow, bail};
use async_trait::async_trait;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde::Deserialize;

use crate::backend::{Backend, Health, Observed, Signal, Status};

const API: &str = "/v1.41";

/// Where the Engine API listens.
#[derive(Clone, Debug)]
pub enum Endpoint {
    Unix(PathBuf),
    Tcp(String),
}

impl Endpoint {
    /// `unix:///var/run/docker.sock` or `tcp://host:port`.
    pub fn parse(s: &str) -> anyhow::Result<Self> {
        if let Some(p) = s.strip_prefix("unix://") {
            Ok(Endpoint::Unix(PathBuf::from(p)))
        } else if let Some(h) = s.strip_prefix("tcp://") {
            Ok(Endpoint::Tcp(h.trim_end_matches('/').to_owned()))
        } else {
            bail!("WATCHDOG_DOCKER_HOST must be unix:///path or tcp://host:port, not {s:?}")
        }
    }
}

/// Watches one compose project's containers.
pub struct DockerBackend {
    endpoint: Endpoint,
    project: String,
    own_id: Option<String>,
    stop_timeout_s: u32,
    ids: Mutex<HashMap<String, String>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListItem {
    id: String,
    #[serde(default)]
    names: Vec<String>,
    #[serde(default)]
    labels: HashMap<String, String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct Inspect {
    #[serde(default)]
    state: InspectState,
    #[serde(default)]
    host_config: HostConfig,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct InspectState {
    #[serde(default)]
    status: String,
    #[serde(default)]
    exit_code: i64,
    #[serde(default)]
    pid: u32,
    #[serde(default)]
    health: Option<HealthState>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct HealthState {
    #[serde(default)]
    status: String,
    #[serde(default)]
    log: Option<Vec<HealthLog>>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct HealthLog {
    #[serde(default)]
    output: String,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct HostConfig {
    #[serde(default)]
    restart_policy: RestartPolicy,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct RestartPolicy {
    #[serde(default)]
    name: String,
}

impl DockerBackend {
    /// `own_id`: this watchdog's container id (or its prefix, as in
    /// `HOSTNAME`), never acted on.
    pub fn new(endpoint: Endpoint, project: String, own_id: Option<String>) -> Self {
        Self {
            endpoint,
            project,
            own_id: own_id.filter(|s| !s.is_empty()),
            stop_timeout_s: 10,
            ids: Mutex::new(HashMap::new()),
        }
    }

    async fn call(&self, method: &str, path: &str) -> anyhow::Result<(u16, Bytes)> {
        let io: Box<dyn IoStream> = match &self.endpoint {
            Endpoint::Unix(p) => {
                Box::new(tokio::net::UnixStream::connect(p).await.with_context(|| {
                    format!("cannot connect to the Docker socket {}", p.display())
                })?)
            }
            Endpoint::Tcp(h) => Box::new(
                tokio::net::TcpStream::connect(h)
                    .await
                    .with_context(|| format!("cannot connect to the Docker API at {h}"))?,
            ),
        };
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .context("Docker API handshake")?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let req = http::Request::builder()
            .method(method)
            .uri(format!("{API}{path}"))
            .header(http::header::HOST, "docker")
            .body(Full::new(Bytes::new()))
            .context("Docker API request")?;
        let resp = tokio::time::timeout(
            std::time::Duration::from_secs(u64::from(self.stop_timeout_s) + 10),
            sender.send_request(req),
        )
        .await
        .map_err(|_| anyhow!("Docker API {method} {path} timed out"))?
        .with_context(|| format!("Docker API {method} {path}"))?;
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .context("Docker API response body")?
            .to_bytes();
        Ok((status, body))
    }

    async fn id_of(&self, name: &str) -> anyhow::Result<String> {
        if let Some(id) = self.ids.lock().expect("ids lock").get(name) {
            return Ok(id.clone());
        }
        self.observe().await?;
        self.ids
            .lock()
            .expect("ids lock")
            .get(name)
            .cloned()
            .ok_or_else(|| {
                anyhow!(
                    "no container for {name:?} in compose project {:?}",
                    self.project
                )
            })
    }

    fn is_own(&self, id: &str) -> bool {
        self.own_id
            .as_deref()
            .is_some_and(|own| id.starts_with(own) || own.starts_with(id))
    }
}

trait IoStream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> IoStream for T {}

fn api_error(status: u16, body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct Msg {
        message: String,
    }
    serde_json::from_slice::<Msg>(body)
        .map(|m| m.message)
        .unwrap_or_else(|_| String::from_utf8_lossy(body).chars().take(200).collect())
        + &format!(" (HTTP {status})")
}

#[async_trait]
impl Backend for DockerBackend {
    fn name(&self) -> &'static str {
        "docker"
    }

    async fn observe(&self) -> anyhow::Result<Vec<Observed>> {
        let filters = serde_json::json!({
            "label": [format!("com.docker.compose.project={}", self.project)]
        })
        .to_string();
        let q = percent_encoding::utf8_percent_encode(&filters, percent_encoding::NON_ALPHANUMERIC);
        let (status, body) = self
            .call("GET", &format!("/containers/json?all=1&filters={q}"))
            .await?;
        if status != 200 {
            bail!("listing containers: {}", api_error(status, &body));
        }
        let items: Vec<ListItem> = serde_json::from_slice(&body)
            .context("the container list is not the documented JSON")?;
        let mut per_service: HashMap<String, usize> = HashMap::new();
        for it in &items {
            if let Some(s) = it.labels.get("com.docker.compose.service") {
                *per_service.entry(s.clone()).or_default() += 1;
            }
        }
        let mut out = Vec::new();
        let mut ids = HashMap::new();
        for it in items {
            if self.is_own(&it.id)
                || it.labels.get("shortlink.watchdog").map(String::as_str) == Some("off")
            {
                continue;
            }
            let service = it
                .labels
                .get("com.docker.compose.service")
                .cloned()
                .or_else(|| {
                    it.names
                        .first()
                        .map(|n| n.trim_start_matches('/').to_owned())
                })
                .unwrap_or_else(|| it.id.chars().take(12).collect());
            let name = match (
                per_service.get(&service).copied().unwrap_or(1),
                it.labels.get("com.docker.compose.container-number"),
            ) {
                (n, Some(num)) if n > 1 => format!("{service}-{num}"),
                _ => service.clone(),
            };
            let (st, body) = self
                .call("GET", &format!("/containers/{}/json", it.id))
                .await?;
            if st == 404 {
                continue; // removed between the two calls
            }
            if st != 200 {
                bail!("inspecting {name}: {}", api_error(st, &body));
            }
            let ins: Inspect = serde_json::from_slice(&body)
                .with_context(|| format!("inspecting {name}: not the documented JSON"))?;
            let policy = ins.host_config.restart_policy.name.as_str();
            if policy.is_empty() || policy == "no" {
                continue;
            }
            let status = match ins.state.status.as_str() {
                "running" => Status::Running,
                "paused" => Status::Paused,
                "created" | "restarting" | "removing" => Status::Starting,
                other => Status::Exited(format!("{other} with status {}", ins.state.exit_code)),
            };
            let (health, detail) = match &ins.state.health {
                Some(h) => (
                    match h.status.as_str() {
                        "healthy" => Health::Healthy,
                        "unhealthy" => Health::Unhealthy,
                        _ => Health::Unknown,
                    },
                    h.log
                        .as_ref()
                        .and_then(|l| l.last())
                        .map(|l| l.output.trim().chars().take(200).collect())
                        .unwrap_or_default(),
                ),
                None if status == Status::Running => (Health::Healthy, String::new()),
                None => (Health::Unknown, String::new()),
            };
            ids.insert(name.clone(), it.id.clone());
            out.push(Observed {
                name,
                kind: service,
                status,
                health,
                pid: (ins.state.pid > 0).then_some(ins.state.pid),
                container_id: Some(it.id),
                health_detail: detail,
            });
        }
        *self.ids.lock().expect("ids lock") = ids;
        Ok(out)
    }

    async fn start(&self, name: &str) -> anyhow::Result<()> {
        let id = self.id_of(name).await?;
        let (st, body) = self
            .call("POST", &format!("/containers/{id}/start"))
            .await?;
        match st {
            204 | 304 => Ok(()),
            _ => bail!("starting {name}: {}", api_error(st, &body)),
        }
    }

    async fn signal(&self, name: &str, signal: Signal) -> anyhow::Result<()> {
        let id = self.id_of(name).await?;
        let path = match signal {
            Signal::Kill => format!("/containers/{id}/kill?signal=SIGKILL"),
            Signal::Stop => format!("/containers/{id}/stop?t={}", self.stop_timeout_s),
            Signal::Pause => format!("/containers/{id}/pause"),
            Signal::Resume => format!("/containers/{id}/unpause"),
        };
        let (st, body) = self.call("POST", &path).await?;
        match st {
            204 | 304 => Ok(()),
            _ => bail!("{signal:?} {name}: {}", api_error(st, &body)),
        }
    }
}
