//! Backups of the app database and restore.
//!
//! PostgreSQL: `pg_dump --format=custom` (restored with `pg_restore`).
//! SQLite: `VACUUM INTO` (a consistent copy while the database is in use).
//! A backup is written under a temporary name, fsynced and renamed, and its
//! SHA-256 is recorded in the directory's `MANIFEST.sha256` (the format of
//! `sha256sum`, so `sha256sum -c MANIFEST.sha256` checks the directory by
//! hand too). Files are named `shortlink-<kind>-<UTC time>.<ext>`; the time
//! in the name is what retention goes by.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use chrono::{DateTime, NaiveDateTime, TimeZone, Utc};
use prometheus::{Gauge, IntCounter, IntGauge};
use shortlink_runtime::config::ConfigError;
use shortlink_runtime::metrics::Metrics;
use shortlink_runtime::shutdown::Shutdown;
use sqlx::Connection;

/// The manifest's file name.
pub const MANIFEST: &str = "MANIFEST.sha256";
const TIME_FORMAT: &str = "%Y%m%dT%H%M%SZ";

/// Which database, from `DATABASE_URL`.
#[derive(Clone, Debug)]
pub enum Db {
    Postgres(String),
    /// The SQLite file.
    Sqlite(PathBuf),
}

impl Db {
    /// From `DATABASE_URL`, or the embedded default `<data_dir>/shortlink.db`.
    pub fn from_url(url: Option<&str>, data_dir: &Path) -> Result<Self, ConfigError> {
        match url.filter(|u| !u.is_empty()) {
            Some(u) if u.starts_with("postgres://") || u.starts_with("postgresql://") => {
                Ok(Db::Postgres(u.to_owned()))
            }
            Some(u) if u.starts_with("sqlite:") => {
                let path = u
                    .trim_start_matches("sqlite:")
                    .trim_start_matches("//")
                    .split('?')
                    .next()
                    .unwrap_or_default();
                if path.is_empty() || path == ":memory:" {
                    return Err(ConfigError::new(
                        "DATABASE_URL names an in-memory SQLite database: nothing to back up",
                    ));
                }
                Ok(Db::Sqlite(PathBuf::from(path)))
            }
            Some(_) => Err(ConfigError::new(
                "DATABASE_URL must start with postgres://, postgresql:// or sqlite:",
            )),
            None => Ok(Db::Sqlite(data_dir.join("shortlink.db"))),
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Db::Postgres(_) => "postgres",
            Db::Sqlite(_) => "sqlite",
        }
    }

    fn ext(&self) -> &'static str {
        match self {
            Db::Postgres(_) => "pgdump",
            Db::Sqlite(_) => "sqlite",
        }
    }
}

/// Splits the password out of a `postgres://` URL, so that it reaches
/// `pg_dump` as `PGPASSWORD` and never shows in the process list.
pub fn split_password(url: &str) -> (String, Option<String>) {
    let Some(scheme_end) = url.find("://") else {
        return (url.to_owned(), None);
    };
    let rest = &url[scheme_end + 3..];
    let auth_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let authority = &rest[..auth_end];
    let Some(at) = authority.rfind('@') else {
        return (url.to_owned(), None);
    };
    let userinfo = &authority[..at];
    let Some(colon) = userinfo.find(':') else {
        return (url.to_owned(), None);
    };
    let password = percent_encoding::percent_decode_str(&userinfo[colon + 1..])
        .decode_utf8_lossy()
        .into_owned();
    let stripped = format!(
        "{}{}{}",
        &url[..scheme_end + 3],
        &userinfo[..colon],
        &rest[at..]
    );
    (stripped, Some(password))
}

/// One backup file in a directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackupFile {
    pub path: PathBuf,
    pub taken: DateTime<Utc>,
}

/// `shortlink-<kind>-<time>.<ext>` -> its time.
pub fn parse_name(name: &str) -> Option<DateTime<Utc>> {
    let stem = name.strip_prefix("shortlink-")?;
    let (stem, ext) = stem.rsplit_once('.')?;
    if ext != "pgdump" && ext != "sqlite" {
        return None;
    }
    let (_, time) = stem.rsplit_once('-')?;
    let t = NaiveDateTime::parse_from_str(time, TIME_FORMAT).ok()?;
    Some(Utc.from_utc_datetime(&t))
}

/// The backups in `dir`, newest first.
pub fn list(dir: &Path) -> anyhow::Result<Vec<BackupFile>> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    for e in entries {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(taken) = parse_name(&name) {
            out.push(BackupFile {
                path: e.path(),
                taken,
            });
        }
    }
    out.sort_by_key(|f| std::cmp::Reverse(f.taken));
    Ok(out)
}

/// SHA-256 of a file, in hex.
pub fn sha256_file(path: &Path) -> anyhow::Result<String> {
    let mut f =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
    }
    Ok(ctx
        .finish()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// The manifest's entries: file name -> hex digest.
pub fn read_manifest(dir: &Path) -> anyhow::Result<Vec<(String, String)>> {
    let text = match std::fs::read_to_string(dir.join(MANIFEST)) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).context("reading the backup manifest"),
    };
    Ok(text
        .lines()
        .filter_map(|l| {
            let (sum, name) = l.split_once("  ")?;
            Some((name.trim().to_owned(), sum.trim().to_owned()))
        })
        .collect())
}

fn fsync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Writes `content` to `path` atomically (temporary file, fsync, rename).
fn write_atomic(path: &Path, content: &[u8]) -> anyhow::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file")
    ));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(content)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    fsync_dir(dir);
    Ok(())
}

/// Rewrites the manifest: `keep` (name -> digest) for files that exist.
fn write_manifest(dir: &Path, entries: &[(String, String)]) -> anyhow::Result<()> {
    let mut text = String::new();
    for (name, sum) in entries {
        if dir.join(name).exists() {
            text.push_str(&format!("{sum}  {name}\n"));
        }
    }
    write_atomic(&dir.join(MANIFEST), text.as_bytes()).context("writing the backup manifest")
}

/// What a backup produced.
#[derive(Clone, Debug)]
pub struct Taken {
    pub path: PathBuf,
    pub bytes: u64,
    pub sha256: String,
    pub duration: Duration,
}

/// Runs a PostgreSQL client tool (`pg_dump`, `pg_restore`) with `args`
/// against the database `url`, its password passed as `PGPASSWORD` (never
/// on the command line); the tool's stderr is the error when it fails.
async fn pg_tool(name: &str, url: &str, args: &[&std::ffi::OsStr]) -> anyhow::Result<()> {
    let (url, password) = split_password(url);
    let mut cmd = tokio::process::Command::new(name);
    cmd.args(args)
        .arg("--dbname")
        .arg(&url)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some(p) = password {
        cmd.env("PGPASSWORD", p);
    }
    let out = match cmd.output().await {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "{name} is not installed: install the PostgreSQL client tools (Debian: apt-get install postgresql-client; ./scripts/test.sh and ./scripts/ha.sh do)"
        ),
        Err(e) => return Err(e).with_context(|| format!("running {name}")),
    };
    if !out.status.success() {
        bail!(
            "{name} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Takes one backup of `db` into `dir`.
pub async fn take(db: &Db, dir: &Path) -> anyhow::Result<Taken> {
    let started = Instant::now();
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create the backup directory {}", dir.display()))?;
    let now = Utc::now();
    let name = format!(
        "shortlink-{}-{}.{}",
        db.kind(),
        now.format(TIME_FORMAT),
        db.ext()
    );
    let path = dir.join(&name);
    let tmp = dir.join(format!(".{name}.partial"));
    let _ = std::fs::remove_file(&tmp);
    let result = async {
        match db {
            Db::Postgres(url) => {
                let file = tmp.as_os_str();
                let args = ["--format=custom", "--no-owner", "--no-privileges", "--file"];
                let mut all: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_ref()).collect();
                all.push(file);
                pg_tool("pg_dump", url, &all).await?;
            }
            Db::Sqlite(file) => {
                if !file.exists() {
                    bail!("the SQLite database {} does not exist", file.display());
                }
                let mut conn = sqlx::sqlite::SqliteConnection::connect(&format!(
                    "sqlite://{}?mode=ro",
                    file.display()
                ))
                .await
                .with_context(|| format!("opening {}", file.display()))?;
                sqlx::query("VACUUM INTO ?")
                    .bind(tmp.display().to_string())
                    .execute(&mut conn)
                    .await
                    .context("VACUUM INTO")?;
                let _ = conn.close().await;
            }
        }
        let f = std::fs::File::open(&tmp)?;
        f.sync_all()?;
        Ok::<_, anyhow::Error>(())
    }
    .await;
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    let sha256 = sha256_file(&tmp)?;
    let bytes = std::fs::metadata(&tmp)?.len();
    std::fs::rename(&tmp, &path).context("renaming the finished backup")?;
    fsync_dir(dir);
    let mut entries = read_manifest(dir)?;
    entries.retain(|(n, _)| n != &name);
    entries.push((name, sha256.clone()));
    write_manifest(dir, &entries)?;
    Ok(Taken {
        path,
        bytes,
        sha256,
        duration: started.elapsed(),
    })
}

/// Deletes backups beyond the newest `keep_count` or older than
/// `keep_days`; the newest backup is always kept. Returns what was deleted.
pub fn prune(
    dir: &Path,
    keep_count: usize,
    keep_days: u32,
    now: DateTime<Utc>,
) -> anyhow::Result<Vec<PathBuf>> {
    let files = list(dir)?;
    let oldest_kept = now - chrono::Duration::days(i64::from(keep_days));
    let mut deleted = Vec::new();
    for (i, f) in files.iter().enumerate() {
        let too_many = i >= keep_count.max(1);
        let too_old = i > 0 && f.taken < oldest_kept;
        if too_many || too_old {
            std::fs::remove_file(&f.path)
                .with_context(|| format!("deleting {}", f.path.display()))?;
            deleted.push(f.path.clone());
        }
    }
    if !deleted.is_empty() {
        let entries = read_manifest(dir)?;
        write_manifest(dir, &entries)?;
        fsync_dir(dir);
    }
    Ok(deleted)
}

/// Row counts of the app database.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Counts {
    pub users: i64,
    pub links: i64,
    pub events: i64,
}

/// `SELECT COUNT(*)` of a table on a connection; a missing table counts
/// as empty.
macro_rules! count_table {
    ($conn:expr, $table:literal) => {
        sqlx::query_scalar::<_, i64>(concat!("SELECT COUNT(*) FROM ", $table))
            .fetch_one(&mut *$conn)
            .await
            .unwrap_or(0)
    };
}

/// Counts users, links (`urls`) and events.
pub async fn counts(db: &Db) -> anyhow::Result<Counts> {
    match db {
        Db::Postgres(url) => {
            let mut c = sqlx::postgres::PgConnection::connect(url)
                .await
                .context("connecting to DATABASE_URL")?;
            let r = Counts {
                users: count_table!(&mut c, "users"),
                links: count_table!(&mut c, "urls"),
                events: count_table!(&mut c, "events"),
            };
            let _ = c.close().await;
            Ok(r)
        }
        Db::Sqlite(file) => {
            if !file.exists() {
                return Ok(Counts {
                    users: 0,
                    links: 0,
                    events: 0,
                });
            }
            let mut c = sqlx::sqlite::SqliteConnection::connect(&format!(
                "sqlite://{}?mode=ro",
                file.display()
            ))
            .await
            .with_context(|| format!("opening {}", file.display()))?;
            let r = Counts {
                users: count_table!(&mut c, "users"),
                links: count_table!(&mut c, "urls"),
                events: count_table!(&mut c, "events"),
            };
            let _ = c.close().await;
            Ok(r)
        }
    }
}

/// Checks `file` against the manifest of its directory.
pub fn verify(file: &Path) -> anyhow::Result<()> {
    let dir = file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = file
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| anyhow!("{} is not a file name", file.display()))?;
    let manifest = read_manifest(dir)?;
    let Some((_, want)) = manifest.iter().find(|(n, _)| n == name) else {
        bail!(
            "{} is not listed in {}: cannot verify it, so it is not restored",
            name,
            dir.join(MANIFEST).display()
        );
    };
    let got = sha256_file(file)?;
    if &got != want {
        bail!(
            "checksum mismatch for {name}: the manifest says {want}, the file hashes to {got}; the file is corrupted or was changed, and nothing was restored"
        );
    }
    Ok(())
}

/// Restores `file` into `db`. Refuses a target holding users, links or
/// events unless `force`. Returns the counts afterwards.
pub async fn restore(db: &Db, file: &Path, force: bool) -> anyhow::Result<Counts> {
    let name = file
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    let ext = name.rsplit('.').next().unwrap_or_default();
    if ext != db.ext() {
        bail!(
            "{name} is a {} backup but DATABASE_URL is a {} database",
            if ext == "pgdump" {
                "PostgreSQL"
            } else {
                "SQLite"
            },
            db.kind()
        );
    }
    verify(file)?;
    let before = counts(db).await?;
    if !force && (before.users > 0 || before.links > 0 || before.events > 0) {
        bail!(
            "the target database is not empty ({} users, {} links, {} events): restore into an empty database, or pass --force to replace its contents",
            before.users,
            before.links,
            before.events
        );
    }
    match db {
        Db::Postgres(url) => {
            let args = [
                "--no-owner",
                "--no-privileges",
                "--exit-on-error",
                "--single-transaction",
                "--clean",
                "--if-exists",
            ];
            let mut all: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_ref()).collect();
            all.push(file.as_os_str());
            pg_tool("pg_restore", url, &all)
                .await
                .context("the restore ran in one transaction, so the database is as before")?;
        }
        Db::Sqlite(target) => {
            let dir = target.parent().unwrap_or(Path::new("."));
            std::fs::create_dir_all(dir)?;
            let tmp = dir.join(format!(
                ".{}.restore",
                target.file_name().and_then(|n| n.to_str()).unwrap_or("db")
            ));
            std::fs::copy(file, &tmp).context("copying the backup")?;
            std::fs::File::open(&tmp)?.sync_all()?;
            for ext in ["-wal", "-shm", "-journal"] {
                let _ = std::fs::remove_file(format!("{}{ext}", target.display()));
            }
            std::fs::rename(&tmp, target).context("replacing the database file")?;
            fsync_dir(dir);
        }
    }
    counts(db).await
}

/// Settings of `shortlink backup`.
#[derive(Clone, Debug, clap::Args)]
pub struct BackupArgs {
    /// The app database: postgres://... or sqlite:...; unset means the
    /// embedded default, SHORTLINK_DATA_DIR/shortlink.db.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Where the embedded default database lives (when DATABASE_URL is unset).
    #[arg(long, env = "SHORTLINK_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// Directory the backups and their MANIFEST.sha256 are written to.
    #[arg(long, env = "BACKUP_DIR", default_value = "./backups")]
    pub dir: PathBuf,
    /// Take one backup, prune, and exit (0, or 1 with the error).
    #[arg(long)]
    pub once: bool,
    /// Time between scheduled backups: a number with s, m, h or d.
    #[arg(long, env = "BACKUP_INTERVAL", default_value = "24h", value_parser = parse_interval)]
    pub interval: Duration,
    /// Backups older than this many days are deleted (the newest is always kept).
    #[arg(long, env = "BACKUP_KEEP_DAYS", default_value_t = 7)]
    pub keep_days: u32,
    /// At most this many backups are kept, newest first.
    #[arg(long, env = "BACKUP_KEEP_COUNT", default_value_t = 7)]
    pub keep_count: usize,
    /// Where `/metrics` and `/live` are served (scheduled mode); `off` disables.
    #[arg(long, env = "BACKUP_METRICS_ADDR", default_value = "127.0.0.1:9192")]
    pub metrics_addr: String,
    #[command(flatten)]
    pub bus: shortlink_bus::BusArgs,
}

/// Settings of `shortlink restore`.
#[derive(Clone, Debug, clap::Args)]
pub struct RestoreArgs {
    /// The backup file (its directory's MANIFEST.sha256 must list it).
    pub file: PathBuf,
    /// Replace the contents of a database that already holds users, links or events.
    #[arg(long)]
    pub force: bool,
    /// The app database to restore into: postgres://... or sqlite:...
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Where the embedded default database lives (when DATABASE_URL is unset).
    #[arg(long, env = "SHORTLINK_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
}

/// `30s`, `15m`, `24h`, `7d` (or plain seconds).
pub fn parse_interval(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration such as 30s, 15m, 24h or 7d"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => return Err(format!("{s:?}: the unit must be s, m, h or d")),
    };
    if secs == 0 {
        return Err("the interval must be more than zero".into());
    }
    Ok(Duration::from_secs(secs))
}

struct BackupMetrics {
    last_success: Gauge,
    duration: Gauge,
    size: IntGauge,
    failures: IntCounter,
    files: IntGauge,
}

impl BackupMetrics {
    fn new(m: &Metrics) -> Self {
        Self {
            last_success: m.register(
                Gauge::new(
                    "backup_last_success_timestamp_seconds",
                    "Unix time of the newest backup in BACKUP_DIR (0: none yet); the ShortlinkBackupTooOld alert watches it.",
                )
                .expect("valid metric"),
            ),
            duration: m.register(
                Gauge::new("backup_last_duration_seconds", "How long the last successful backup took.")
                    .expect("valid metric"),
            ),
            size: m.register(
                IntGauge::new("backup_last_size_bytes", "Size of the last successful backup.")
                    .expect("valid metric"),
            ),
            failures: m.register(
                IntCounter::new("backup_failures_total", "Backups that failed.")
                    .expect("valid metric"),
            ),
            files: m.register(
                IntGauge::new("backup_files", "Backups kept in BACKUP_DIR after pruning.")
                    .expect("valid metric"),
            ),
        }
    }
}

/// One backup round: take, prune, record. Errors are logged at ERROR.
async fn round(
    db: &Db,
    args: &BackupArgs,
    m: &BackupMetrics,
    events: &dyn Fn(&str, &str, &str),
) -> anyhow::Result<Taken> {
    let result = take(db, &args.dir).await;
    match &result {
        Ok(t) => {
            m.last_success.set(Utc::now().timestamp() as f64);
            m.duration.set(t.duration.as_secs_f64());
            m.size.set(t.bytes as i64);
            tracing::info!(
                file = %t.path.display(),
                bytes = t.bytes,
                duration_ms = t.duration.as_millis() as u64,
                sha256 = t.sha256.as_str(),
                "backup written"
            );
            events(
                "backup_ok",
                "INFO",
                &format!(
                    "{} ({} bytes, {} ms)",
                    t.path.display(),
                    t.bytes,
                    t.duration.as_millis()
                ),
            );
            match prune(&args.dir, args.keep_count, args.keep_days, Utc::now()) {
                Ok(gone) => {
                    for p in gone {
                        tracing::info!(file = %p.display(), "old backup deleted");
                    }
                }
                Err(e) => tracing::warn!(error = format!("{e:#}"), "cannot prune old backups"),
            }
            m.files
                .set(list(&args.dir).map(|l| l.len() as i64).unwrap_or(0));
        }
        Err(e) => {
            m.failures.inc();
            let msg = shortlink_runtime::redact::redact_text(&format!("{e:#}"));
            tracing::error!(error = msg.as_str(), dir = %args.dir.display(), "backup failed");
            events("backup_failed", "ERROR", &msg);
        }
    }
    result
}

/// `shortlink backup`: one backup (`--once`) or the schedule.
pub async fn run(args: BackupArgs, shutdown: Shutdown) -> anyhow::Result<()> {
    let db = Db::from_url(args.database_url.as_deref(), &args.data_dir)?;
    let metrics = Metrics::new("backup", "backup");
    let m = BackupMetrics::new(&metrics);
    let newest = list(&args.dir)?.into_iter().next();
    if let Some(n) = &newest {
        m.last_success.set(n.taken.timestamp() as f64);
    }
    let topics = shortlink_bus::Topics::with_prefix(&args.bus.topic_prefix);
    let bus: Option<Arc<dyn shortlink_bus::EventBus>> = if args.bus.kafka_brokers.is_some() {
        Some(shortlink_bus::connect(&args.bus, &metrics)?)
    } else {
        None
    };
    let source = std::env::var("INSTANCE_ID").unwrap_or_else(|_| "backup".into());
    let publish = |kind: &str, level: &str, detail: &str| {
        if let Some(bus) = &bus {
            let ev = shortlink_proto::events::OpsEvent {
                schema_version: 1,
                time: Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                kind: kind.into(),
                component: "backup".into(),
                actor: "backup".into(),
                source: source.clone(),
                level: level.into(),
                detail: detail.into(),
                ..Default::default()
            };
            bus.publish(
                &topics.ops,
                Some("backup"),
                shortlink_bus::Event::Ops(ev).into(),
            );
        }
    };
    if args.once {
        let r = round(&db, &args, &m, &publish).await;
        if let Some(bus) = &bus {
            bus.flush(Duration::from_secs(5));
        }
        let t = r?;
        println!(
            "backup written: {} ({} bytes, sha256 {}, {:.1} s)",
            t.path.display(),
            t.bytes,
            t.sha256,
            t.duration.as_secs_f64()
        );
        return Ok(());
    }
    if !matches!(args.metrics_addr.as_str(), "off" | "none" | "") {
        let addr: std::net::SocketAddr = args.metrics_addr.parse().map_err(|e| {
            ConfigError::new(format!("BACKUP_METRICS_ADDR {:?}: {e}", args.metrics_addr))
        })?;
        serve_metrics(addr, metrics.clone(), shutdown.clone()).await?;
    }
    // The first backup is due one interval after the newest one on disk.
    let mut next = match &newest {
        Some(n) => {
            let age = (Utc::now() - n.taken).to_std().unwrap_or_default();
            Instant::now() + args.interval.saturating_sub(age)
        }
        None => Instant::now(),
    };
    tracing::info!(
        dir = %args.dir.display(),
        interval_s = args.interval.as_secs(),
        keep_days = args.keep_days,
        keep_count = args.keep_count,
        first_in_s = next.saturating_duration_since(Instant::now()).as_secs(),
        database = db.kind(),
        "backup schedule started"
    );
    loop {
        tokio::select! {
            _ = shutdown.wait() => break,
            _ = tokio::time::sleep_until(next.into()) => {}
        }
        next = match round(&db, &args, &m, &publish).await {
            Ok(_) => Instant::now() + args.interval,
            // Try again soon, but not in a tight loop.
            Err(_) => Instant::now() + args.interval.min(Duration::from_secs(300)),
        };
    }
    if let Some(bus) = &bus {
        bus.flush(Duration::from_secs(5));
    }
    Ok(())
}

/// Serves `/metrics`, `/live` and `/ready` on `addr` until `shutdown`.
pub async fn serve_metrics(
    addr: std::net::SocketAddr,
    metrics: Arc<Metrics>,
    shutdown: Shutdown,
) -> anyhow::Result<std::net::SocketAddr> {
    let router = shortlink_runtime::side_port::metrics_router(metrics);
    shortlink_runtime::side_port::spawn_serve(addr, "BACKUP_METRICS_ADDR", router, shutdown).await
}

/// `shortlink restore`.
pub async fn run_restore(args: RestoreArgs) -> anyhow::Result<()> {
    let db = Db::from_url(args.database_url.as_deref(), &args.data_dir)?;
    let c = restore(&db, &args.file, args.force).await?;
    println!(
        "restored {} users, {} links, {} events from {}",
        c.users,
        c.links,
        c.events,
        args.file.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_their_time() {
        let t = parse_name("shortlink-postgres-20261202T030000Z.pgdump").unwrap();
        assert_eq!(t.to_rfc3339(), "2026-12-02T03:00:00+00:00");
        assert!(parse_name("shortlink-postgres-20261202T030000Z.txt").is_none());
        assert!(parse_name("MANIFEST.sha256").is_none());
    }

    #[test]
    fn the_password_leaves_the_url() {
        let (u, p) = split_password("postgres://app:s%40cret@db:5432/shortlink?sslmode=disable");
        assert_eq!(u, "postgres://app@db:5432/shortlink?sslmode=disable");
        assert_eq!(p.as_deref(), Some("s@cret"));
        let (u, p) = split_password("postgres://postgres@127.0.0.1/x");
        assert_eq!(u, "postgres://postgres@127.0.0.1/x");
        assert!(p.is_none());
    }

    #[test]
    fn intervals() {
        assert_eq!(parse_interval("24h").unwrap(), Duration::from_secs(86_400));
        assert_eq!(parse_interval("90").unwrap(), Duration::from_secs(90));
        assert!(parse_interval("0s").is_err());
        assert!(parse_interval("1w").is_err());
    }
}
