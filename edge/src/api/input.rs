//! Request input: query strings decoded into typed structs, and JSON bodies
//! read into objects, with the checks that keep hostile input from ever
//! reaching a service (and from ever becoming a 5xx or an ERROR line):
//! invalid UTF-8 and NUL characters anywhere, and nesting deeper than the
//! services accept, are refused with 400 here.

use serde::Deserialize;
use serde::de::{self, Deserializer};
use serde_json::{Map, Value};
use shortlink_proto::v1 as pb;

use super::Reply;

/// Deepest nesting accepted in a JSON body (objects and arrays). The
/// services store `details` as a protobuf `Struct`, whose decoder stops at
/// 100 levels; anything near that is abuse, not data.
pub const MAX_JSON_DEPTH: usize = 32;

/// Longest query string accepted (the API's parameters need a few dozen
/// bytes).
pub const MAX_QUERY_BYTES: usize = 4096;
/// Most `key=value` pairs accepted in a query string.
pub const MAX_QUERY_PAIRS: usize = 32;

/// Decodes a query string into `T`. Pairs are percent-decoded (`+` is a
/// space); a key given twice keeps its last value; an empty value means
/// "not given"; unknown keys are ignored. A value that is not UTF-8 or holds
/// a NUL is refused, and a value of the wrong type is refused with a
/// message naming the key (`page must be an integer`).
pub fn query<T: for<'de> Deserialize<'de>>(raw: Option<&str>) -> Result<T, Reply> {
    let raw = raw.unwrap_or("");
    // Bounded work per request: the de-duplication below is quadratic.
    if raw.len() > MAX_QUERY_BYTES {
        return Err(Reply::error(
            414,
            format!("the query string is longer than {MAX_QUERY_BYTES} bytes"),
        ));
    }
    let mut pairs: Vec<(String, String)> = Vec::new();
    for (n, pair) in raw.split('&').filter(|p| !p.is_empty()).enumerate() {
        if n >= MAX_QUERY_PAIRS {
            return Err(Reply::error(
                400,
                format!("the query string has more than {MAX_QUERY_PAIRS} parameters"),
            ));
        }
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let (k, v) = (decode(k)?, decode(v)?);
        if v.is_empty() {
            pairs.retain(|(pk, _)| *pk != k);
            continue;
        }
        match pairs.iter_mut().find(|(pk, _)| *pk == k) {
            Some(p) => p.1 = v,
            None => pairs.push((k, v)),
        }
    }
    let de = de::value::MapDeserializer::<_, de::value::Error>::new(pairs.into_iter());
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        Reply::error(400, format!("{path} {}", e.inner()))
    })
}

fn decode(s: &str) -> Result<String, Reply> {
    let plus = s.replace('+', " ");
    let text = percent_encoding::percent_decode_str(&plus)
        .decode_utf8()
        .map_err(|_| Reply::error(400, "the query string must be UTF-8"))?;
    if text.contains('\0') {
        return Err(Reply::error(
            400,
            "the query string must not contain NUL characters",
        ));
    }
    Ok(text.into_owned())
}

/// An integer query parameter.
fn int<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    let s = String::deserialize(d)?;
    s.trim()
        .parse::<i64>()
        .map(Some)
        .map_err(|_| de::Error::custom("must be an integer"))
}

/// A text query parameter.
fn text<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    String::deserialize(d).map(Some)
}

/// A boolean query parameter: true/1/yes or false/0/no, any case.
fn boolean<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    let s = String::deserialize(d)?;
    match s.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" => Ok(Some(true)),
        "false" | "0" | "no" => Ok(Some(false)),
        _ => Err(de::Error::custom("must be true or false")),
    }
}

/// Paging of every list route.
#[derive(Debug, Default, Deserialize)]
pub struct Paging {
    #[serde(default, deserialize_with = "int")]
    pub page: Option<i64>,
    #[serde(default, deserialize_with = "int")]
    pub per_page: Option<i64>,
}

impl Paging {
    /// Default page 1 and 20 per page; larger pages are clamped to 100 (the
    /// response says what was served).
    pub fn request(&self) -> Result<pb::PageRequest, Reply> {
        let p = self.page.unwrap_or(1);
        let pp = self.per_page.unwrap_or(20);
        if !(1..=i64::from(u32::MAX)).contains(&p) {
            return Err(Reply::error(400, "page must be a positive integer"));
        }
        if pp < 1 {
            return Err(Reply::error(400, "per_page must be at least 1"));
        }
        Ok(pb::PageRequest {
            page: p as u32,
            per_page: pp.min(100) as u32,
        })
    }
}

/// List queries carry `page` and `per_page` (not flattened from `Paging`:
/// a flattened field would lose its name in error messages).
macro_rules! paged {
    ($($t:ty),*) => {$(
        impl $t {
            pub fn paging(&self) -> Result<pb::PageRequest, Reply> {
                Paging { page: self.page, per_page: self.per_page }.request()
            }
        }
    )*};
}
paged!(ListUrls, UserUrls, ListEvents);

/// `GET /urls`.
#[derive(Debug, Default, Deserialize)]
pub struct ListUrls {
    #[serde(default, deserialize_with = "int")]
    pub page: Option<i64>,
    #[serde(default, deserialize_with = "int")]
    pub per_page: Option<i64>,
    #[serde(default, deserialize_with = "int")]
    pub user_id: Option<i64>,
    #[serde(default, deserialize_with = "boolean")]
    pub is_active: Option<bool>,
}

/// `GET /users/{id}/urls`.
#[derive(Debug, Default, Deserialize)]
pub struct UserUrls {
    #[serde(default, deserialize_with = "int")]
    pub page: Option<i64>,
    #[serde(default, deserialize_with = "int")]
    pub per_page: Option<i64>,
    #[serde(default, deserialize_with = "boolean")]
    pub is_active: Option<bool>,
}

/// `GET /events` (`url_id` is ignored on `GET /urls/{id}/events`, where
/// the path names the URL).
#[derive(Debug, Default, Deserialize)]
pub struct ListEvents {
    #[serde(default, deserialize_with = "int")]
    pub page: Option<i64>,
    #[serde(default, deserialize_with = "int")]
    pub per_page: Option<i64>,
    #[serde(default, deserialize_with = "int")]
    pub url_id: Option<i64>,
    #[serde(default, deserialize_with = "int")]
    pub user_id: Option<i64>,
    #[serde(default, deserialize_with = "text")]
    pub event_type: Option<String>,
}

/// A JSON request body, read as an object.
#[derive(Debug)]
pub struct JsonBody(pub Map<String, Value>);

impl JsonBody {
    /// Parses the body; enforces `Content-Type: application/json`, the
    /// depth limit and the absence of NUL characters.
    pub fn parse(content_type: Option<&str>, body: &[u8]) -> Result<Self, Reply> {
        let ct = content_type.unwrap_or("").to_ascii_lowercase();
        if !ct.starts_with("application/json") && !ct.contains("+json") {
            return Err(Reply::error(415, "Content-Type must be application/json"));
        }
        if body.iter().all(u8::is_ascii_whitespace) {
            return Err(Reply::error(400, "request body is required"));
        }
        let v = match serde_json::from_slice::<Value>(body) {
            Ok(v) => v,
            Err(e) if e.to_string().contains("recursion limit") => {
                return Err(too_deep());
            }
            Err(e) => return Err(Reply::error(400, format!("malformed JSON: {e}"))),
        };
        check_value(&v, 1)?;
        match v {
            Value::Object(m) => Ok(Self(m)),
            _ => Err(Reply::error(400, "request body must be a JSON object")),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// A required string.
    pub fn string(&self, k: &str) -> Result<String, Reply> {
        self.opt_string(k)?
            .ok_or_else(|| Reply::error(400, format!("{k} is required")))
    }

    /// An optional string (`null` counts as absent).
    pub fn opt_string(&self, k: &str) -> Result<Option<String>, Reply> {
        match self.0.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(Reply::error(400, format!("{k} must be a string"))),
        }
    }

    /// A required integer that fits in 64 bits.
    pub fn int(&self, k: &str) -> Result<i64, Reply> {
        match self.0.get(k) {
            None | Some(Value::Null) => Err(Reply::error(400, format!("{k} is required"))),
            Some(Value::Number(n)) => n
                .as_i64()
                .ok_or_else(|| Reply::error(400, format!("{k} must be an integer"))),
            Some(_) => Err(Reply::error(400, format!("{k} must be an integer"))),
        }
    }

    /// An optional boolean.
    pub fn opt_bool(&self, k: &str) -> Result<Option<bool>, Reply> {
        match self.0.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(Reply::error(400, format!("{k} must be a boolean"))),
        }
    }

    /// An optional JSON object.
    pub fn opt_object(&self, k: &str) -> Result<Option<&Map<String, Value>>, Reply> {
        match self.0.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Object(o)) => Ok(Some(o)),
            Some(_) => Err(Reply::error(400, format!("{k} must be a JSON object"))),
        }
    }
}

fn too_deep() -> Reply {
    Reply::error(
        400,
        format!("the JSON body is nested deeper than {MAX_JSON_DEPTH} levels"),
    )
}

fn check_str(s: &str) -> Result<(), Reply> {
    if s.contains('\0') {
        return Err(Reply::error(
            400,
            "text fields must not contain NUL characters",
        ));
    }
    Ok(())
}

fn check_value(v: &Value, depth: usize) -> Result<(), Reply> {
    match v {
        Value::String(s) => check_str(s),
        Value::Array(a) => {
            if depth > MAX_JSON_DEPTH {
                return Err(too_deep());
            }
            a.iter().try_for_each(|x| check_value(x, depth + 1))
        }
        Value::Object(m) => {
            if depth > MAX_JSON_DEPTH {
                return Err(too_deep());
            }
            for (k, x) in m {
                check_str(k)?;
                check_value(x, depth + 1)?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(r: Result<impl std::fmt::Debug, Reply>) -> (u16, String) {
        let e = r.unwrap_err();
        let v: Value = serde_json::from_slice(&e.body).unwrap();
        (e.status, v["error"].as_str().unwrap().to_owned())
    }

    #[test]
    fn query_strings_decode_into_typed_structs() {
        let q: ListEvents = query(Some(
            "page=2&per_page=5&url_id=7&event_type=cl%69ck&user_id=",
        ))
        .unwrap();
        assert_eq!((q.page, q.per_page), (Some(2), Some(5)));
        assert_eq!(q.url_id, Some(7));
        assert_eq!(q.user_id, None, "an empty value means not given");
        assert_eq!(q.event_type.as_deref(), Some("click"));
        let q: ListUrls = query(Some("is_active=YES&is_active=no&junk=1")).unwrap();
        assert_eq!(q.is_active, Some(false), "the last value wins");
        let q: ListEvents = query(Some("event_type=a+b%20c")).unwrap();
        assert_eq!(q.event_type.as_deref(), Some("a b c"));
        assert_eq!(
            err(query::<ListUrls>(Some("page=x"))),
            (400, "page must be an integer".into())
        );
        assert_eq!(
            err(query::<ListUrls>(Some("is_active=maybe"))),
            (400, "is_active must be true or false".into())
        );
        assert_eq!(err(query::<ListEvents>(Some("event_type=%ff"))).0, 400);
        let many = (0..100)
            .map(|i| format!("k{i}=1"))
            .collect::<Vec<_>>()
            .join("&");
        assert_eq!(err(query::<ListEvents>(Some(&many))).0, 400);
        let long = format!("event_type={}", "a".repeat(MAX_QUERY_BYTES));
        assert_eq!(err(query::<ListEvents>(Some(&long))).0, 414);
        assert_eq!(err(query::<ListEvents>(Some("event_type=a%00b"))).0, 400);
        assert_eq!(
            err(query::<ListUrls>(Some("per_page=0")).and_then(|q| q.paging())),
            (400, "per_page must be at least 1".into())
        );
        let p: ListUrls = query(Some("per_page=500")).unwrap();
        assert_eq!(p.paging().unwrap().per_page, 100);
    }

    #[test]
    fn hostile_json_is_refused_with_400() {
        let ct = Some("application/json");
        let deep = format!(
            "{{\"details\": {}1{}}}",
            "[".repeat(MAX_JSON_DEPTH + 1),
            "]".repeat(MAX_JSON_DEPTH + 1)
        );
        assert_eq!(err(JsonBody::parse(ct, deep.as_bytes())).0, 400);
        let very_deep = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
        assert_eq!(err(JsonBody::parse(ct, very_deep.as_bytes())).0, 400);
        let ok = format!(
            "{{\"d\": {}1{}}}",
            "[".repeat(MAX_JSON_DEPTH - 2),
            "]".repeat(MAX_JSON_DEPTH - 2)
        );
        assert!(JsonBody::parse(ct, ok.as_bytes()).is_ok());
        assert_eq!(err(JsonBody::parse(ct, br#"{"title": "a\u0000b"}"#)).0, 400);
        assert_eq!(err(JsonBody::parse(ct, br#"{"a\u0000": 1}"#)).0, 400);
        assert_eq!(err(JsonBody::parse(ct, b"{\"t\": \"\xff\"}")).0, 400);
        assert_eq!(err(JsonBody::parse(ct, br#"{"t": "\ud800"}"#)).0, 400);
        assert_eq!(err(JsonBody::parse(Some("text/plain"), b"{}")).0, 415);
        let b = JsonBody::parse(ct, br#"{"n": 1.5, "m": 99999999999999999999}"#).unwrap();
        assert_eq!(err(b.int("n")), (400, "n must be an integer".into()));
        assert_eq!(err(b.int("m")), (400, "m must be an integer".into()));
    }
}
