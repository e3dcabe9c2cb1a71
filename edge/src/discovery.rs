//! Where the links replicas are: `LINKS_UPSTREAMS` entries are either a
//! fixed `host:port` or `dns://name:port`, a name re-resolved every
//! `EDGE_DNS_INTERVAL_MS` whose addresses (A and AAAA) are the replicas.
//! Compose's service DNS (`links` with `--scale`) and a Kubernetes headless
//! Service both answer with one address per replica, so scaling needs no
//! configuration change.
//!
//! The resolver is hickory's, with its cache off: Docker's embedded DNS
//! answers with a 600 s TTL, and a replica set that lags scaling by ten
//! minutes is the failure this module exists to avoid. It reads
//! `/etc/resolv.conf` (search domains, ndots) unless `EDGE_DNS_SERVER`
//! names one server (tests, or a sidecar resolver).
//!
//! A lookup that fails or comes back empty keeps the last set: a DNS
//! outage or a restarting Docker daemon must not empty a set of replicas
//! that may be serving fine. Replicas that are really gone are taken out by
//! the health checks instead.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{NameServerConfigGroup, ResolveHosts, ResolverConfig};
use hickory_resolver::name_server::TokioConnectionProvider;
use prometheus::{IntCounterVec, IntGauge, Opts};
use shortlink_runtime::metrics::Metrics;
use shortlink_runtime::shutdown::Shutdown;

use crate::balance::Upstreams;

/// One `LINKS_UPSTREAMS` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UpstreamSpec {
    /// A fixed `host:port` (a host name is resolved by the connection,
    /// once per connect).
    Static(String),
    /// `dns://name:port`: every address the name resolves to, on `port`.
    Dns { name: String, port: u16 },
}

impl std::str::FromStr for UpstreamSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if let Some(rest) = s.strip_prefix("dns://") {
            let (name, port) = rest
                .rsplit_once(':')
                .ok_or_else(|| format!("{s:?}: dns:// needs name:port (dns://links:50061)"))?;
            let port = port
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("{s:?}: {port:?} is not a port"))?;
            let valid_name = !name.is_empty()
                && name.len() <= 253
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_');
            if !valid_name {
                return Err(format!("{s:?}: {name:?} is not a DNS name"));
            }
            return Ok(Self::Dns {
                name: name.to_owned(),
                port,
            });
        }
        if s.contains("://") {
            return Err(format!(
                "{s:?}: only dns:// is understood; a fixed replica is host:port"
            ));
        }
        if s.parse::<SocketAddr>().is_ok() {
            return Ok(Self::Static(s.to_owned()));
        }
        match s.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
                Ok(Self::Static(s.to_owned()))
            }
            _ => Err(format!("{s:?} is not host:port or dns://name:port")),
        }
    }
}

/// Parses `LINKS_UPSTREAMS` (empty entries skipped).
pub fn parse_specs(entries: &[String]) -> Result<Vec<UpstreamSpec>, String> {
    entries
        .iter()
        .filter(|e| !e.trim().is_empty())
        .map(|e| e.parse())
        .collect()
}

/// Discovery settings.
#[derive(Clone, Debug)]
pub struct DiscoveryConfig {
    /// Time between two resolutions.
    pub interval: Duration,
    /// One name server instead of the system's (`ip:port`).
    pub server: Option<SocketAddr>,
    /// Bound on one resolution.
    pub timeout: Duration,
}

/// Resolves the `dns://` entries and keeps the replica set in step.
pub struct Discovery {
    specs: Vec<UpstreamSpec>,
    resolver: TokioResolver,
    cfg: DiscoveryConfig,
    /// The last address set each `dns://` entry resolved to.
    last: tokio::sync::Mutex<Vec<BTreeSet<SocketAddr>>>,
    lookups: IntCounterVec,
    replicas: IntGauge,
}

impl std::fmt::Debug for Discovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Discovery")
            .field("specs", &self.specs)
            .field("cfg", &self.cfg)
            .finish()
    }
}

impl Discovery {
    /// None when every entry is fixed (nothing to re-resolve).
    pub fn new(
        specs: Vec<UpstreamSpec>,
        cfg: DiscoveryConfig,
        metrics: &Metrics,
    ) -> anyhow::Result<Option<Arc<Self>>> {
        let dns = specs
            .iter()
            .filter(|s| matches!(s, UpstreamSpec::Dns { .. }))
            .count();
        if dns == 0 {
            return Ok(None);
        }
        let mut builder = match cfg.server {
            Some(server) => {
                let group = NameServerConfigGroup::from_ips_clear(&[server.ip()], server.port(), true);
                TokioResolver::builder_with_config(
                    ResolverConfig::from_parts(None, vec![], group),
                    TokioConnectionProvider::default(),
                )
            }
            None => TokioResolver::builder_tokio().map_err(|e| {
                anyhow::anyhow!("cannot read the system DNS configuration (/etc/resolv.conf): {e}; set EDGE_DNS_SERVER")
            })?,
        };
        let opts = builder.options_mut();
        // Fresh answers on every round (see the module doc).
        opts.cache_size = 0;
        opts.positive_max_ttl = Some(Duration::ZERO);
        opts.negative_max_ttl = Some(Duration::ZERO);
        opts.timeout = cfg.timeout;
        opts.attempts = 1;
        opts.ip_strategy = hickory_resolver::config::LookupIpStrategy::Ipv4AndIpv6;
        if cfg.server.is_some() {
            opts.use_hosts_file = ResolveHosts::Never;
        }
        let resolver = builder.build();
        let lookups = metrics.register(
            IntCounterVec::new(
                Opts::new(
                    "upstream_discovery_lookups_total",
                    "DNS lookups of dns:// upstreams by result (changed, unchanged, empty, error).",
                ),
                &["result"],
            )
            .expect("valid metric"),
        );
        let replicas = metrics.register(
            IntGauge::new(
                "upstream_replicas",
                "Links replicas in the set now (fixed and discovered).",
            )
            .expect("valid metric"),
        );
        Ok(Some(Arc::new(Self {
            last: tokio::sync::Mutex::new(vec![BTreeSet::new(); dns]),
            specs,
            resolver,
            cfg,
            lookups,
            replicas,
        })))
    }

    async fn lookup(&self, name: &str, port: u16) -> Result<BTreeSet<SocketAddr>, String> {
        let fut = self.resolver.lookup_ip(name);
        match tokio::time::timeout(self.cfg.timeout * 2, fut).await {
            Err(_) => Err("timed out".into()),
            // A real "no such name" or "no address": an empty set. A
            // SERVFAIL or REFUSED comes back as "no records" too, with its
            // code, and is an error.
            Ok(Err(e)) if e.is_no_records_found() && !server_failed(&e) => Ok(BTreeSet::new()),
            Ok(Err(e)) => Err(e.to_string()),
            Ok(Ok(ips)) => Ok(ips.iter().map(|ip| SocketAddr::new(ip, port)).collect()),
        }
    }

    /// Resolves every `dns://` entry once and applies the result. An entry
    /// whose lookup fails or is empty keeps its last addresses.
    pub async fn refresh(&self, upstreams: &Upstreams) -> anyhow::Result<()> {
        let mut last = self.last.lock().await;
        let mut changed = false;
        let mut k = 0;
        for spec in &self.specs {
            let UpstreamSpec::Dns { name, port } = spec else {
                continue;
            };
            let result = match self.lookup(name, *port).await {
                Ok(addrs) if addrs.is_empty() => {
                    if !last[k].is_empty() {
                        tracing::warn!(name = %name, kept = last[k].len(), "DNS returned no address for the links replicas; keeping the last set");
                    }
                    "empty"
                }
                Ok(addrs) if addrs == last[k] => "unchanged",
                Ok(addrs) => {
                    tracing::info!(name = %name, addresses = addrs.len(), "links replicas resolved");
                    last[k] = addrs;
                    changed = true;
                    "changed"
                }
                Err(e) => {
                    tracing::warn!(name = %name, error = %e, kept = last[k].len(), "DNS lookup of the links replicas failed; keeping the last set");
                    "error"
                }
            };
            self.lookups.with_label_values(&[result]).inc();
            k += 1;
        }
        if changed {
            let mut addrs: Vec<String> = Vec::new();
            let mut k = 0;
            for spec in &self.specs {
                match spec {
                    UpstreamSpec::Static(a) => addrs.push(a.clone()),
                    UpstreamSpec::Dns { .. } => {
                        addrs.extend(last[k].iter().map(ToString::to_string));
                        k += 1;
                    }
                }
            }
            upstreams.set_addrs(&addrs).await?;
        }
        self.replicas.set(upstreams.counts().1 as i64);
        Ok(())
    }

    /// Re-resolves every interval until shutdown.
    pub async fn run(self: Arc<Self>, upstreams: Arc<Upstreams>, shutdown: Shutdown) {
        loop {
            tokio::select! {
                () = tokio::time::sleep(self.cfg.interval) => {}
                () = shutdown.wait() => return,
            }
            if let Err(e) = self.refresh(&upstreams).await {
                tracing::error!(error = %e, "applying the discovered links replicas failed");
            }
        }
    }
}

/// True when the answer was an error code of the server (SERVFAIL,
/// REFUSED...), not an authoritative "no such name" or "no address".
fn server_failed(e: &hickory_resolver::ResolveError) -> bool {
    use hickory_resolver::proto::ProtoErrorKind;
    use hickory_resolver::proto::op::ResponseCode;
    match e.proto().map(|p| p.kind()) {
        Some(ProtoErrorKind::NoRecordsFound { response_code, .. }) => !matches!(
            response_code,
            ResponseCode::NoError | ResponseCode::NXDomain
        ),
        _ => false,
    }
}

/// The fixed entries, the set the edge starts with before any lookup.
pub fn static_addrs(specs: &[UpstreamSpec]) -> Vec<String> {
    specs
        .iter()
        .filter_map(|s| match s {
            UpstreamSpec::Static(a) => Some(a.clone()),
            UpstreamSpec::Dns { .. } => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_entries_parse_or_say_why_not() {
        assert_eq!(
            "dns://links:50061".parse::<UpstreamSpec>().unwrap(),
            UpstreamSpec::Dns {
                name: "links".into(),
                port: 50061
            }
        );
        assert_eq!(
            " links-headless.shortlink.svc.cluster.local:50061"
                .trim()
                .parse::<UpstreamSpec>()
                .unwrap(),
            UpstreamSpec::Static("links-headless.shortlink.svc.cluster.local:50061".into())
        );
        assert_eq!(
            "[::1]:50061".parse::<UpstreamSpec>().unwrap(),
            UpstreamSpec::Static("[::1]:50061".into())
        );
        for bad in [
            "dns://links",
            "dns://:50061",
            "dns://links:0",
            "dns://links:http",
            "dns://li nks:1",
            "http://links:50061",
            "links",
            ":50061",
        ] {
            let e = bad.parse::<UpstreamSpec>().expect_err(bad);
            assert!(e.contains(bad), "{e}");
        }
        let specs = parse_specs(&["127.0.0.1:1".into(), "".into(), "dns://l:2".into()]).unwrap();
        assert_eq!(static_addrs(&specs), vec!["127.0.0.1:1".to_owned()]);
    }
}
