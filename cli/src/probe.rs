//! `shortlink probe`: the container healthcheck, so the image needs no curl
//! or grpc_health_probe. One check, exit 0 when it passes and 1 when it
//! does not (with the reason on stderr), which is what Docker's
//! `HEALTHCHECK`, compose's `healthcheck` and a Kubernetes `exec` probe
//! expect.
//!
//! Targets: `http://host:port/path` (any 2xx passes: `/live`, `/ready`)
//! and `grpc://host:port[/service]` (`grpc.health.v1.Health/Check`,
//! SERVING passes; no service checks the server as a whole).

use std::time::Duration;

use shortlink_runtime::config::ConfigError;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Flags of `shortlink probe`.
#[derive(Debug, clap::Args)]
pub struct ProbeArgs {
    /// What to check: http://host:port/path (2xx passes) or
    /// grpc://host:port[/service] (grpc.health.v1 SERVING passes).
    #[arg(env = "PROBE_URL")]
    pub target: String,
    /// Bound on the whole check, in milliseconds.
    #[arg(long, env = "PROBE_TIMEOUT_MS", default_value_t = 2000)]
    pub timeout_ms: u64,
}

/// A parsed target.
#[derive(Debug, PartialEq, Eq)]
pub enum Target {
    Http { authority: String, path: String },
    Grpc { authority: String, service: String },
}

impl Target {
    pub fn parse(s: &str) -> Result<Self, ConfigError> {
        let bad = |why: &str| {
            ConfigError::new(format!(
                "probe target {s:?}: {why} (expected http://host:port/path or grpc://host:port[/service])"
            ))
        };
        let (scheme, rest) = s.split_once("://").ok_or_else(|| bad("no scheme"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let port_ok = authority
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p != 0));
        if !port_ok {
            return Err(bad("host:port required"));
        }
        if path.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad("the path has spaces or control characters"));
        }
        match scheme {
            "http" => Ok(Self::Http {
                authority: authority.to_owned(),
                path: if path.is_empty() {
                    "/".into()
                } else {
                    path.to_owned()
                },
            }),
            "grpc" => Ok(Self::Grpc {
                authority: authority.to_owned(),
                service: path.trim_start_matches('/').to_owned(),
            }),
            "https" => Err(bad(
                "https is not probed (a healthcheck runs inside the container: use the plain or side port)",
            )),
            _ => Err(bad("unknown scheme")),
        }
    }
}

/// Runs the probe: Ok(Ok(())) healthy, Ok(Err(reason)) unhealthy,
/// Err(config error) when the target cannot be understood.
pub async fn run(args: &ProbeArgs) -> Result<Result<(), String>, ConfigError> {
    let target = Target::parse(args.target.trim())?;
    let limit = Duration::from_millis(args.timeout_ms.max(1));
    let check = async {
        match &target {
            Target::Http { authority, path } => http(authority, path).await,
            Target::Grpc { authority, service } => grpc(authority, service).await,
        }
    };
    Ok(match tokio::time::timeout(limit, check).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {} ms", limit.as_millis())),
    })
}

async fn http(authority: &str, path: &str) -> Result<(), String> {
    let mut s = tokio::net::TcpStream::connect(authority)
        .await
        .map_err(|e| format!("connect {authority}: {e}"))?;
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: shortlink-probe\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| format!("send: {e}"))?;
    // The status line is all a probe needs; read until it is complete.
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 256];
    while !buf.contains(&b'\n') && buf.len() < 4096 {
        let n = s.read(&mut chunk).await.map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let line = String::from_utf8_lossy(&buf);
    let line = line.lines().next().unwrap_or_default();
    let status = line
        .strip_prefix("HTTP/1.")
        .and_then(|r| r.get(2..5))
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or_else(|| format!("not an HTTP answer: {line:?}"))?;
    if (200..300).contains(&status) {
        Ok(())
    } else {
        Err(format!("GET {path} answered {status}"))
    }
}

async fn grpc(authority: &str, service: &str) -> Result<(), String> {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;

    let channel = tonic::transport::Endpoint::from_shared(format!("http://{authority}"))
        .map_err(|e| format!("{authority}: {e}"))?
        .connect()
        .await
        .map_err(|e| format!("connect {authority}: {e}"))?;
    let resp = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.to_owned(),
        })
        .await
        .map_err(|s| format!("grpc.health.v1 Check: {:?} {}", s.code(), s.message()))?;
    let status = resp.into_inner().status;
    if status == ServingStatus::Serving as i32 {
        Ok(())
    } else {
        let name = ServingStatus::try_from(status)
            .map(|s| s.as_str_name().to_owned())
            .unwrap_or_else(|_| status.to_string());
        Err(format!("grpc.health.v1 status {name}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_or_say_why_not() {
        assert_eq!(
            Target::parse("http://127.0.0.1:9181/ready").unwrap(),
            Target::Http {
                authority: "127.0.0.1:9181".into(),
                path: "/ready".into()
            }
        );
        assert_eq!(
            Target::parse("grpc://links:50061/shortlink.v1.LinkService").unwrap(),
            Target::Grpc {
                authority: "links:50061".into(),
                service: "shortlink.v1.LinkService".into()
            }
        );
        assert_eq!(
            Target::parse("grpc://[::1]:50061").unwrap(),
            Target::Grpc {
                authority: "[::1]:50061".into(),
                service: String::new()
            }
        );
        for bad in [
            "127.0.0.1:9181",
            "http://127.0.0.1/ready",
            "http://:80/",
            "https://127.0.0.1:8443/live",
            "ftp://h:1/",
            "http://h:1/a b",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
    }
}
