//! `POST /users/bulk`: a CSV of `username,email` rows, sent as a multipart
//! file field or as a `text/csv` body.
//!
//! Memory is bounded by the body limit, not by a multiple of it: the body
//! is parsed where it lies, in two streaming passes (multipart by `multer`,
//! CSV by `csv-core`, the engine of the `csv` crate the import uses). The
//! first pass only counts and checks rows, so an upload over the row limit,
//! with a row that is not UTF-8 or holds a NUL, is refused before anything
//! is written. The second pass sends the rows in chunks, each one
//! `BulkCreateUsers` call that the links service answers within its
//! deadline with exactly what it committed.
//!
//! Semantics are per row: every row of the upload ends up either in
//! `users` (committed) or in `errors` (with its 1-based row number, the
//! header row counted). If a chunk cannot be sent (no replica, the database
//! went away), the edge stops there and answers with what was committed;
//! the rows not sent are listed as errors saying so. It never answers 504
//! for rows it does not know the fate of without saying which rows.

use std::convert::Infallible;

use bytes::Bytes;
use serde_json::{Value, json};
use shortlink_proto::v1 as pb;
use shortlink_proto::v1::user_service_client::UserServiceClient;

use super::{Call, Outcome, Reply, render};
use crate::balance::CallError;

/// Rows accepted in one upload.
pub const MAX_ROWS: usize = 10_000;
/// Rows per `BulkCreateUsers` call.
pub const CHUNK_ROWS: usize = 200;
/// Longest row, in bytes (a username and an e-mail address).
const MAX_ROW_BYTES: usize = 16 * 1024;
/// Most fields in a row.
const MAX_FIELDS: usize = 64;
/// Slices fed to the multipart parser, so that it never copies the whole
/// body at once.
const FEED: usize = 64 * 1024;

enum Source {
    Whole { body: Bytes, off: usize },
    Field(Box<multer::Field<'static>>),
}

impl Source {
    async fn open(content_type: &str, body: &Bytes) -> Result<Self, Reply> {
        let ct = content_type.to_ascii_lowercase();
        if ct.starts_with("text/csv") || ct.starts_with("text/plain") {
            return Ok(Source::Whole {
                body: body.clone(),
                off: 0,
            });
        }
        if !ct.starts_with("multipart/form-data") {
            return Err(Reply::error(
                415,
                "Content-Type must be multipart/form-data (a CSV file) or text/csv",
            ));
        }
        let boundary = multer::parse_boundary(content_type)
            .map_err(|_| Reply::error(400, "multipart boundary missing"))?;
        let body = body.clone();
        let n = body.len().div_ceil(FEED);
        let stream = futures::stream::iter((0..n).map(move |i| {
            Ok::<_, Infallible>(body.slice(i * FEED..((i + 1) * FEED).min(body.len())))
        }));
        let mut mp = multer::Multipart::new(stream, boundary);
        loop {
            match mp.next_field().await {
                Ok(Some(f)) if f.file_name().is_some() || f.name() == Some("file") => {
                    return Ok(Source::Field(Box::new(f)));
                }
                Ok(Some(_)) => continue,
                Ok(None) => {
                    return Err(Reply::error(
                        400,
                        "file is required: send the CSV as a multipart file field",
                    ));
                }
                Err(e) => return Err(Reply::error(400, format!("malformed multipart body: {e}"))),
            }
        }
    }

    async fn next(&mut self) -> Result<Option<Bytes>, Reply> {
        match self {
            Source::Whole { body, off } => {
                if *off >= body.len() {
                    return Ok(None);
                }
                let end = (*off + FEED).min(body.len());
                let b = body.slice(*off..end);
                *off = end;
                Ok(Some(b))
            }
            Source::Field(f) => f
                .chunk()
                .await
                .map_err(|e| Reply::error(400, format!("malformed multipart body: {e}"))),
        }
    }
}

/// Streaming CSV records over a `Source`.
struct Rows {
    src: Source,
    rdr: csv_core::Reader,
    chunk: Bytes,
    pos: usize,
    eof: bool,
    out: Vec<u8>,
    outlen: usize,
    ends: Vec<usize>,
    nends: usize,
    /// 1-based number of the record just read (the header counts).
    row: usize,
}

impl Rows {
    fn new(src: Source) -> Self {
        Self {
            src,
            rdr: csv_core::Reader::new(),
            chunk: Bytes::new(),
            pos: 0,
            eof: false,
            out: vec![0; 1024],
            outlen: 0,
            ends: vec![0; 8],
            nends: 0,
            row: 0,
        }
    }

    /// Reads the next record; false at the end.
    async fn advance(&mut self) -> Result<bool, Reply> {
        use csv_core::ReadRecordResult as R;
        self.outlen = 0;
        self.nends = 0;
        loop {
            if self.pos >= self.chunk.len() && !self.eof {
                match self.src.next().await? {
                    Some(c) => {
                        self.chunk = c;
                        self.pos = 0;
                    }
                    None => self.eof = true,
                }
            }
            let input = if self.eof {
                &[][..]
            } else {
                &self.chunk[self.pos..]
            };
            let (res, nin, nout, nend) = self.rdr.read_record(
                input,
                &mut self.out[self.outlen..],
                &mut self.ends[self.nends..],
            );
            self.pos += nin;
            self.outlen += nout;
            self.nends += nend;
            match res {
                R::InputEmpty => {}
                R::OutputFull => {
                    if self.out.len() >= MAX_ROW_BYTES {
                        return Err(Reply::error(
                            400,
                            format!("row {} is longer than {MAX_ROW_BYTES} bytes", self.row + 1),
                        ));
                    }
                    self.out.resize(self.out.len() * 2, 0);
                }
                R::OutputEndsFull => {
                    if self.ends.len() >= MAX_FIELDS {
                        return Err(Reply::error(
                            400,
                            format!("row {} has more than {MAX_FIELDS} fields", self.row + 1),
                        ));
                    }
                    self.ends.resize(self.ends.len() * 2, 0);
                }
                R::Record => {
                    self.row += 1;
                    return Ok(true);
                }
                R::End => return Ok(false),
            }
        }
    }

    fn field(&self, i: usize) -> &[u8] {
        if i >= self.nends {
            return b"";
        }
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.out[start..self.ends[i]]
    }

    /// The current record as a user, or None for a blank row or the
    /// header. Errors when a field is not UTF-8 or holds a NUL.
    fn user(&self) -> Result<Option<pb::CreateUserRequest>, Reply> {
        let text = |i: usize| -> Result<&str, Reply> {
            let s = std::str::from_utf8(self.field(i))
                .map_err(|_| Reply::error(400, format!("row {} is not valid UTF-8", self.row)))?;
            if s.contains('\0') {
                return Err(Reply::error(
                    400,
                    format!("row {} contains a NUL character", self.row),
                ));
            }
            Ok(s.trim())
        };
        let (u, e) = (text(0)?, text(1)?);
        if u.is_empty() && e.is_empty() && self.nends <= 2 {
            return Ok(None);
        }
        if self.row == 1 && u.eq_ignore_ascii_case("username") {
            return Ok(None);
        }
        Ok(Some(pb::CreateUserRequest {
            username: u.to_owned(),
            email: e.to_owned(),
        }))
    }
}

/// What one upload committed so far.
#[derive(Default)]
struct Tally {
    users: Vec<Value>,
    errors: Vec<Value>,
    upstream: Option<std::sync::Arc<str>>,
}

pub async fn upload(c: &Call<'_>) -> Outcome {
    let ct = c.content_type.unwrap_or("");
    // Pass 1: count and check every row before writing anything.
    let mut rows = Rows::new(Source::open(ct, &c.body).await?);
    let mut count = 0usize;
    while rows.advance().await? {
        if rows.user()?.is_some() {
            count += 1;
            if count > MAX_ROWS {
                return Err(Reply::error(
                    413,
                    format!("at most {MAX_ROWS} users per upload"),
                ));
            }
        }
    }
    if count == 0 {
        return Err(Reply::error(
            400,
            "the CSV has no rows (expected username,email)",
        ));
    }

    // Pass 2: send the rows in chunks.
    let mut rows = Rows::new(Source::open(ct, &c.body).await?);
    let mut tally = Tally::default();
    let mut chunk: Vec<pb::CreateUserRequest> = Vec::with_capacity(CHUNK_ROWS);
    let mut lines: Vec<usize> = Vec::with_capacity(CHUNK_ROWS);
    let mut more = true;
    while more {
        more = rows.advance().await?;
        if more && let Some(u) = rows.user()? {
            chunk.push(u);
            lines.push(rows.row);
        }
        if chunk.len() == CHUNK_ROWS || (!more && !chunk.is_empty()) {
            let msg = pb::BulkCreateUsersRequest {
                users: std::mem::take(&mut chunk),
            };
            let res = c
                .upstreams
                .call(false, |ch| {
                    let mut r = c.grpc(msg.clone());
                    // Sent as `grpc-timeout`: the service stops taking rows
                    // before it and answers with exactly what it committed.
                    r.set_timeout(c.upstreams.call_timeout());
                    async move { UserServiceClient::new(ch).bulk_create_users(r).await }
                })
                .await;
            match res {
                Ok((resp, rep)) => {
                    let resp = resp.into_inner();
                    tally.upstream = Some(std::sync::Arc::from(rep.addr.as_str()));
                    tally.users.extend(resp.created.iter().map(render::user));
                    tally.errors.extend(resp.errors.iter().map(|e| {
                        json!({"row": lines.get(e.index as usize).copied().unwrap_or(0), "error": e.error})
                    }));
                }
                Err(e) => {
                    return Ok(stopped(c, tally, e, &lines, &mut rows).await);
                }
            }
            lines.clear();
        }
    }
    let status = if tally.users.is_empty() { 400 } else { 201 };
    let mut r = Reply::json(
        status,
        json!({"created": tally.users.len(), "users": tally.users, "errors": tally.errors}),
    );
    r.upstream = tally.upstream;
    Ok(r)
}

/// The answer after a chunk could not be sent: what was committed, and
/// every row that was not, with why.
async fn stopped(
    c: &Call<'_>,
    mut tally: Tally,
    e: CallError,
    lines: &[usize],
    rows: &mut Rows,
) -> Reply {
    let mapped = super::call_error(e, c.routed.route);
    let reason = serde_json::from_slice::<Value>(&mapped.body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_owned))
        .unwrap_or_else(|| "upstream failure".into());
    for line in lines {
        tally.errors.push(json!({"row": line, "error": format!("not confirmed: {reason}; check GET /users before sending this row again")}));
    }
    while let Ok(true) = rows.advance().await {
        if let Ok(Some(_)) = rows.user() {
            tally
                .errors
                .push(json!({"row": rows.row, "error": format!("not processed: {reason}")}));
        }
    }
    let status = if tally.users.is_empty() {
        mapped.status
    } else {
        201
    };
    let mut r = Reply::json(
        status,
        json!({
            "error": format!("upload stopped: {reason}"),
            "created": tally.users.len(),
            "users": tally.users,
            "errors": tally.errors,
        }),
    );
    r.headers = mapped.headers;
    r.upstream = tally.upstream;
    r
}

/// Every user row of an upload with its row number, as pass 1 reads them
/// (for the tests and the fuzz target; the handler streams instead).
#[cfg(test)]
pub(crate) async fn parse_rows(
    content_type: &str,
    body: &Bytes,
) -> Result<Vec<(usize, pb::CreateUserRequest)>, Reply> {
    let mut rows = Rows::new(Source::open(content_type, body).await?);
    let mut out = Vec::new();
    while rows.advance().await? {
        if let Some(u) = rows.user()? {
            out.push((rows.row, u));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn users(ct: &str, body: &[u8]) -> Result<Vec<(usize, String, String)>, Reply> {
        let rows = parse_rows(ct, &Bytes::copy_from_slice(body)).await?;
        Ok(rows
            .into_iter()
            .map(|(n, u)| (n, u.username, u.email))
            .collect())
    }

    #[tokio::test]
    async fn multipart_and_plain_csv_stream_into_rows() {
        let body = b"--XyZ\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nhello\r\n--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"u.csv\"\r\nContent-Type: text/csv\r\n\r\nusername,email\r\nann,ann@example.com\r\n\"b,ob\", bob@example.com \r\n--XyZ--\r\n";
        let got = users("multipart/form-data; boundary=XyZ", body)
            .await
            .unwrap();
        assert_eq!(
            got,
            [
                (2, "ann".into(), "ann@example.com".into()),
                (3, "b,ob".into(), "bob@example.com".into())
            ]
        );
        let got = users("text/csv", b"x,x@example.com\n\ny,y@example.com")
            .await
            .unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].0, 1, "no header: the first row is row 1");
    }

    #[tokio::test]
    async fn rows_spanning_feed_slices_are_whole() {
        let mut csv = String::from("username,email\n");
        for i in 0..5000 {
            csv.push_str(&format!("\"user {i}\",u{i}@example.com\n"));
        }
        assert!(csv.len() > 2 * FEED);
        let got = users("text/csv", csv.as_bytes()).await.unwrap();
        assert_eq!(got.len(), 5000);
        assert_eq!(
            got[4999],
            (5001, "user 4999".into(), "u4999@example.com".into())
        );
    }

    #[tokio::test]
    async fn hostile_uploads_are_refused_with_4xx() {
        let status = |r: Result<Vec<(usize, String, String)>, Reply>| r.unwrap_err().status;
        assert_eq!(status(users("application/json", b"{}").await), 415);
        assert_eq!(status(users("multipart/form-data", b"x").await), 400);
        assert_eq!(
            status(
                users(
                    "multipart/form-data; boundary=B",
                    b"--B\r\nContent-Disposition: form-data; name=\"other\"\r\n\r\nx\r\n--B--\r\n"
                )
                .await
            ),
            400
        );
        assert_eq!(
            status(users("text/csv", b"a,\xff@example.com\n").await),
            400
        );
        assert_eq!(status(users("text/csv", b"a\0,a@example.com\n").await), 400);
        let long = format!("{},x@example.com\n", "a".repeat(MAX_ROW_BYTES * 2));
        assert_eq!(status(users("text/csv", long.as_bytes()).await), 400);
        let wide = format!("{}\n", "a,".repeat(MAX_FIELDS * 2));
        assert_eq!(status(users("text/csv", wide.as_bytes()).await), 400);
    }
}
