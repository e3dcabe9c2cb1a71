//! The live view of the event stream: every event normalised to one shape
//! (`LiveEvent`), a bounded ring of the latest ones (what a new `/logs`
//! client sees first) and a broadcast channel for the events that follow,
//! plus the filters of `/logs`.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::broadcast;

/// One event as `/logs` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct LiveEvent {
    pub seq: u64,
    pub time: String,
    /// request, log, link or ops.
    pub kind: &'static str,
    /// INFO, WARN, ERROR or CRITICAL.
    pub level: String,
    pub component: String,
    /// HTTP status (requests only; 0 otherwise).
    pub status: u32,
    pub route: String,
    pub request_id: String,
    pub text: String,
}

fn s(v: &Value, k: &str) -> String {
    v.get(k)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

fn level_rank(l: &str) -> u8 {
    match l {
        "CRITICAL" => 3,
        "ERROR" => 2,
        "WARN" => 1,
        _ => 0,
    }
}

impl LiveEvent {
    /// Normalises an event of `kind` (from its topic) to the live shape.
    pub fn from_json(kind: &'static str, v: &Value) -> Self {
        let mut e = LiveEvent {
            seq: 0,
            time: s(v, "time"),
            kind,
            level: "INFO".into(),
            component: String::new(),
            status: 0,
            route: String::new(),
            request_id: s(v, "request_id"),
            text: String::new(),
        };
        match kind {
            "request" => {
                e.status = v.get("status").and_then(Value::as_u64).unwrap_or(0) as u32;
                e.level = match e.status {
                    500.. => "ERROR",
                    400..=499 => "WARN",
                    _ => "INFO",
                }
                .into();
                e.component = s(v, "edge_id");
                e.route = s(v, "route");
                let ms = v.get("duration_ms").and_then(Value::as_f64).unwrap_or(0.0);
                e.text = format!(
                    "{} {} → {} in {ms:.1} ms ({}{})",
                    s(v, "method"),
                    s(v, "path"),
                    e.status,
                    s(v, "outcome"),
                    match s(v, "upstream") {
                        u if u.is_empty() => String::new(),
                        u => format!(", via {u}"),
                    }
                );
            }
            "log" => {
                e.level = s(v, "level");
                e.component = s(v, "service");
                e.route = s(v, "target");
                e.text = s(v, "message");
            }
            "link" => {
                e.component = s(v, "source");
                e.text = format!(
                    "link {} {} (id {}, user {})",
                    s(v, "short_code"),
                    s(v, "kind"),
                    v.get("link_id").and_then(Value::as_i64).unwrap_or(0),
                    v.get("user_id").and_then(Value::as_i64).unwrap_or(0)
                );
            }
            _ => {
                e.level = match s(v, "level") {
                    l if l.is_empty() => "INFO".into(),
                    l => l,
                };
                e.component = s(v, "component");
                let what = match s(v, "action") {
                    a if a.is_empty() => s(v, "kind"),
                    a => format!("{} {a}", s(v, "kind")),
                };
                e.text = format!(
                    "{what}: {} {} (by {})",
                    e.component,
                    [s(v, "reason"), s(v, "detail")]
                        .into_iter()
                        .filter(|x| !x.is_empty())
                        .collect::<Vec<_>>()
                        .join("; "),
                    s(v, "actor")
                );
            }
        }
        if e.level.is_empty() {
            e.level = "INFO".into();
        }
        e
    }
}

/// The filters of `/logs` (all optional, all must match).
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct Filter {
    /// Minimum level: info, warn, error.
    #[serde(default)]
    pub level: String,
    /// Substring of the component.
    #[serde(default)]
    pub component: String,
    /// A status (404) or class (5xx, 4xx).
    #[serde(default)]
    pub status: String,
    /// Substring of the route template.
    #[serde(default)]
    pub route: String,
    /// Exact request id.
    #[serde(default)]
    pub request_id: String,
    /// request, log, link or ops.
    #[serde(default)]
    pub kind: String,
}

impl Filter {
    pub fn matches(&self, e: &LiveEvent) -> bool {
        let level = self.level.trim().to_ascii_uppercase();
        if !level.is_empty() && level_rank(&e.level) < level_rank(&level.replace("WARNING", "WARN"))
        {
            return false;
        }
        if !self.kind.is_empty() && self.kind != e.kind {
            return false;
        }
        if !self.component.is_empty() && !e.component.contains(self.component.trim()) {
            return false;
        }
        if !self.route.is_empty() && !e.route.contains(self.route.trim()) {
            return false;
        }
        if !self.request_id.is_empty() && e.request_id != self.request_id.trim() {
            return false;
        }
        let st = self.status.trim().to_ascii_lowercase();
        if !st.is_empty() {
            if e.status == 0 {
                return false;
            }
            let ok = match st.as_bytes() {
                [d, b'x', b'x'] => (e.status / 100) as u8 == d.wrapping_sub(b'0'),
                _ => st.parse::<u32>().map(|n| n == e.status).unwrap_or(false),
            };
            if !ok {
                return false;
            }
        }
        true
    }
}

/// The ring buffer and the broadcast of new events.
pub struct Live {
    ring: Mutex<VecDeque<LiveEvent>>,
    size: usize,
    seq: AtomicU64,
    tx: broadcast::Sender<LiveEvent>,
}

impl Live {
    pub fn new(size: usize) -> Self {
        let (tx, _) = broadcast::channel(4096);
        Self {
            ring: Mutex::new(VecDeque::with_capacity(size.max(1))),
            size: size.max(1),
            seq: AtomicU64::new(0),
            tx,
        }
    }

    /// Adds an event (numbering it) and tells the live streams.
    pub fn push(&self, mut e: LiveEvent) {
        e.seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        {
            let mut r = self.ring.lock().unwrap_or_else(|p| p.into_inner());
            r.push_back(e.clone());
            while r.len() > self.size {
                r.pop_front();
            }
        }
        let _ = self.tx.send(e);
    }

    /// The latest `limit` events matching `f`, oldest first.
    pub fn recent(&self, f: &Filter, limit: usize) -> Vec<LiveEvent> {
        let r = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<LiveEvent> = r
            .iter()
            .rev()
            .filter(|e| f.matches(e))
            .take(limit)
            .cloned()
            .collect();
        out.reverse();
        out
    }

    pub fn subscribe(&self) -> broadcast::Receiver<LiveEvent> {
        self.tx.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn requests_normalise_and_filter() {
        let e = LiveEvent::from_json(
            "request",
            &json!({"time": "2026-12-02T10:00:00Z", "edge_id": "edge-1", "request_id": "r1",
                    "method": "GET", "path": "/abcd", "route": "/{short_code}", "status": 502,
                    "duration_ms": 3.5, "outcome": "upstream_error"}),
        );
        assert_eq!(e.level, "ERROR");
        assert!(e.text.contains("GET /abcd → 502"), "{}", e.text);
        let f = |k: &str, v: &str| {
            let mut f = Filter::default();
            match k {
                "status" => f.status = v.into(),
                "level" => f.level = v.into(),
                "rid" => f.request_id = v.into(),
                _ => f.route = v.into(),
            }
            f.matches(&e)
        };
        assert!(f("status", "5xx"));
        assert!(f("status", "502"));
        assert!(!f("status", "4xx"));
        assert!(f("level", "warn"));
        assert!(f("rid", "r1"));
        assert!(!f("rid", "r2"));
        assert!(f("route", "short_code"));
    }

    #[test]
    fn the_ring_is_bounded_and_newest_last() {
        let l = Live::new(3);
        for i in 0..5 {
            l.push(LiveEvent::from_json(
                "log",
                &json!({"level": "WARN", "message": format!("m{i}")}),
            ));
        }
        let r = l.recent(&Filter::default(), 10);
        assert_eq!(
            r.iter().map(|e| e.text.as_str()).collect::<Vec<_>>(),
            ["m2", "m3", "m4"]
        );
        assert_eq!(l.recent(&Filter::default(), 1)[0].text, "m4");
    }
}
