//! `shortlink import`: loads users, links and events from CSV files in the
//! format of the original system's seed set, keeping ids and short codes.
//! Rows already present are skipped, so importing twice changes nothing.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use chrono::{DateTime, NaiveDateTime, Utc};
use serde::Deserialize;

use crate::model::{Event, Link, User};
use crate::store::{ImportCounts, LinkStore};

/// The files of a seed set.
#[derive(Clone, Debug)]
pub struct SeedFiles {
    pub users: PathBuf,
    pub urls: PathBuf,
    pub events: PathBuf,
}

impl SeedFiles {
    /// `users.csv`, `urls.csv` and `events.csv` in `dir`.
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            users: dir.join("users.csv"),
            urls: dir.join("urls.csv"),
            events: dir.join("events.csv"),
        }
    }
}

/// Parsed rows, ready to import.
#[derive(Clone, Debug, Default)]
pub struct Seed {
    pub users: Vec<User>,
    pub links: Vec<Link>,
    pub events: Vec<Event>,
}

#[derive(Deserialize)]
struct UserRow {
    id: i64,
    username: String,
    email: String,
    created_at: String,
}

#[derive(Deserialize)]
struct UrlRow {
    id: i64,
    user_id: i64,
    short_code: String,
    original_url: String,
    title: Option<String>,
    is_active: String,
    created_at: String,
    updated_at: String,
}

#[derive(Deserialize)]
struct EventRow {
    id: i64,
    url_id: i64,
    user_id: i64,
    event_type: String,
    timestamp: String,
    details: Option<String>,
}

/// Parses `2024-11-14 04:11:00` (taken as UTC), with optional fractional
/// seconds, or an RFC 3339 timestamp.
pub fn parse_time(s: &str) -> anyhow::Result<DateTime<Utc>> {
    let s = s.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    for fmt in ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f"] {
        if let Ok(t) = NaiveDateTime::parse_from_str(s, fmt) {
            return Ok(t.and_utc());
        }
    }
    bail!("not a timestamp: {s:?}")
}

fn parse_bool(s: &str) -> anyhow::Result<bool> {
    match s.trim().to_ascii_lowercase().as_str() {
        "true" | "t" | "1" | "yes" => Ok(true),
        "false" | "f" | "0" | "no" => Ok(false),
        other => bail!("not a boolean: {other:?}"),
    }
}

fn read<T: for<'de> Deserialize<'de>>(path: &Path) -> anyhow::Result<Vec<(u64, T)>> {
    let mut rdr =
        csv::Reader::from_path(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut out = Vec::new();
    for (i, row) in rdr.deserialize().enumerate() {
        let line = i as u64 + 2;
        let row: T = row.with_context(|| format!("{}:{line}: malformed row", path.display()))?;
        out.push((line, row));
    }
    Ok(out)
}

/// Reads and checks the three files; an error names the file and line.
pub fn load(files: &SeedFiles) -> anyhow::Result<Seed> {
    let mut seed = Seed::default();
    for (line, r) in read::<UserRow>(&files.users)? {
        let at = |e| format!("{}:{line}: {e}", files.users.display());
        seed.users.push(User {
            id: r.id,
            username: crate::validate::username(&r.username)
                .map_err(|e| anyhow::anyhow!(at(e.to_string())))?,
            email: crate::validate::email(&r.email)
                .map_err(|e| anyhow::anyhow!(at(e.to_string())))?,
            created_at: parse_time(&r.created_at)
                .map_err(|e| anyhow::anyhow!(at(e.to_string())))?,
        });
    }
    for (line, r) in read::<UrlRow>(&files.urls)? {
        let at = |e: String| anyhow::anyhow!("{}:{line}: {e}", files.urls.display());
        if r.short_code.is_empty() || r.short_code.len() > 32 {
            return Err(at(format!("bad short_code {:?}", r.short_code)));
        }
        seed.links.push(Link {
            id: r.id,
            user_id: r.user_id,
            short_code: r.short_code,
            original_url: crate::validate::original_url(&r.original_url)
                .map_err(|e| at(e.to_string()))?,
            title: r.title.filter(|t| !t.is_empty()),
            is_active: parse_bool(&r.is_active).map_err(|e| at(e.to_string()))?,
            created_at: parse_time(&r.created_at).map_err(|e| at(e.to_string()))?,
            updated_at: parse_time(&r.updated_at).map_err(|e| at(e.to_string()))?,
        });
    }
    for (line, r) in read::<EventRow>(&files.events)? {
        let at = |e: String| anyhow::anyhow!("{}:{line}: {e}", files.events.display());
        let details = match r.details.as_deref().map(str::trim) {
            None | Some("") => serde_json::json!({}),
            Some(s) => {
                serde_json::from_str(s).map_err(|e| at(format!("details is not JSON: {e}")))?
            }
        };
        if !details.is_object() {
            return Err(at("details is not a JSON object".into()));
        }
        seed.events.push(Event {
            id: r.id,
            url_id: r.url_id,
            user_id: r.user_id,
            event_type: r.event_type,
            timestamp: parse_time(&r.timestamp).map_err(|e| at(e.to_string()))?,
            details,
        });
    }
    Ok(seed)
}

/// Loads the files and imports them in one transaction.
pub async fn import(store: &dyn LinkStore, files: &SeedFiles) -> anyhow::Result<ImportCounts> {
    let seed = load(files)?;
    let counts = store
        .import(&seed.users, &seed.links, &seed.events)
        .await
        .context("import failed; nothing was written")?;
    tracing::info!(
        users = counts.users,
        links = counts.links,
        events = counts.events,
        read_users = seed.users.len(),
        read_links = seed.links.len(),
        read_events = seed.events.len(),
        "import finished"
    );
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_bools() {
        assert_eq!(
            parse_time("2024-11-14 04:11:00").unwrap().to_rfc3339(),
            "2024-11-14T04:11:00+00:00"
        );
        assert!(parse_time("2024-11-14T04:11:00Z").is_ok());
        assert!(parse_time("yesterday").is_err());
        assert!(parse_bool("True").unwrap());
        assert!(!parse_bool("False").unwrap());
        assert!(parse_bool("maybe").is_err());
    }
}
