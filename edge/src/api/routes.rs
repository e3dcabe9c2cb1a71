//! The route table: every public path shape and method, each on one line
//! that names its handler. A path maps to a [`Route`] (a bounded template,
//! also the `route` metric label) and its parameters; the table then maps
//! (route, method) to a [`Handler`]. A route with a method it does not list
//! answers 405 with `Allow`, computed from the same table, so the two can
//! never disagree. `HEAD` is served by the `GET` handler without a body.

use http::Method;

use super::{ApiFn, events, links, users};

/// Route templates: the only values the `route` metric label takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Route {
    Shorten,
    Urls,
    Url,
    UrlEvents,
    Users,
    UsersBulk,
    User,
    UserUrls,
    Events,
    Health,
    Live,
    Ready,
    Metrics,
    OpenApi,
    Home,
    Redirect,
    NotFound,
}

impl Route {
    /// The template, for metrics and logs.
    pub fn template(self) -> &'static str {
        match self {
            Route::Shorten => "/shorten",
            Route::Urls => "/urls",
            Route::Url => "/urls/{id}",
            Route::UrlEvents => "/urls/{id}/events",
            Route::Users => "/users",
            Route::UsersBulk => "/users/bulk",
            Route::User => "/users/{id}",
            Route::UserUrls => "/users/{id}/urls",
            Route::Events => "/events",
            Route::Health => "/health",
            Route::Live => "/live",
            Route::Ready => "/ready",
            Route::Metrics => "/metrics",
            Route::OpenApi => "/openapi.json",
            Route::Home => "/",
            Route::Redirect => "/{short_code}",
            Route::NotFound => "unmatched",
        }
    }

    /// Health paths are never rate limited.
    pub fn is_health(self) -> bool {
        matches!(
            self,
            Route::Health | Route::Live | Route::Ready | Route::Metrics
        )
    }

    /// The largest request body this route reads.
    pub fn body_limit(self) -> usize {
        if self == Route::UsersBulk {
            super::MAX_UPLOAD_BODY
        } else {
            super::MAX_JSON_BODY
        }
    }
}

/// What the edge answers itself, without a links replica.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Local {
    Health,
    Live,
    Ready,
    Metrics,
    /// The API contract (`docs/openapi.yaml` as JSON); rate limited like
    /// the API, since it is not a health path.
    OpenApi,
    /// The public front page (`/`): the shorten form.
    Home,
}

/// How a route and method are answered.
#[derive(Clone, Copy)]
pub enum Handler {
    /// By the edge itself.
    Local(Local),
    /// By calls to the links replicas.
    Api(ApiFn),
}

impl std::fmt::Debug for Handler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Handler::Local(l) => write!(f, "Local({l:?})"),
            Handler::Api(_) => f.write_str("Api(..)"),
        }
    }
}

/// One line of the table.
pub struct RouteDef {
    pub route: Route,
    pub method: Method,
    pub handler: Handler,
}

const fn api(route: Route, method: Method, f: ApiFn) -> RouteDef {
    RouteDef {
        route,
        method,
        handler: Handler::Api(f),
    }
}

const fn local(route: Route, method: Method, l: Local) -> RouteDef {
    RouteDef {
        route,
        method,
        handler: Handler::Local(l),
    }
}

/// The public API, one line per route and method.
pub static ROUTES: &[RouteDef] = &[
    api(Route::Shorten, Method::POST, links::create),
    api(Route::Urls, Method::GET, links::list),
    api(Route::Urls, Method::POST, links::create),
    api(Route::Url, Method::GET, links::get),
    api(Route::Url, Method::PUT, links::update),
    api(Route::Url, Method::DELETE, links::delete),
    api(Route::UrlEvents, Method::GET, events::list_for_url),
    api(Route::Users, Method::GET, users::list),
    api(Route::Users, Method::POST, users::create),
    api(Route::UsersBulk, Method::POST, users::bulk),
    api(Route::User, Method::GET, users::get),
    api(Route::User, Method::PUT, users::update),
    api(Route::User, Method::DELETE, users::delete),
    api(Route::UserUrls, Method::GET, users::links),
    api(Route::Events, Method::GET, events::list),
    api(Route::Events, Method::POST, events::create),
    local(Route::Health, Method::GET, Local::Health),
    local(Route::Live, Method::GET, Local::Live),
    local(Route::Ready, Method::GET, Local::Ready),
    local(Route::Metrics, Method::GET, Local::Metrics),
    local(Route::OpenApi, Method::GET, Local::OpenApi),
    local(Route::Home, Method::GET, Local::Home),
    api(Route::Redirect, Method::GET, links::redirect),
];

/// A routed path: the template plus its id or code.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Routed {
    pub route: Route,
    pub id: Option<i64>,
    pub code: Option<String>,
}

/// Longest path segment taken as a short code (longer ones are not routed).
pub const MAX_CODE_SEGMENT: usize = 64;

/// Maps a path to its route. Ids must be positive integers; anything else
/// does not match (404), like the original's `<int:id>` routes.
pub fn route(path: &str) -> Routed {
    let plain = |route| Routed {
        route,
        id: None,
        code: None,
    };
    let with_id = |route, s: &str| match s.parse::<i64>() {
        Ok(id) if id > 0 && s.bytes().all(|b| b.is_ascii_digit()) => Routed {
            route,
            id: Some(id),
            code: None,
        },
        _ => plain(Route::NotFound),
    };
    let Some(rest) = path.strip_prefix('/') else {
        return plain(Route::NotFound);
    };
    let mut segs = rest.split('/');
    let (a, b, c, extra) = (segs.next(), segs.next(), segs.next(), segs.next());
    if extra.is_some() {
        return plain(Route::NotFound);
    }
    match (a.unwrap_or(""), b, c) {
        ("shorten", None, None) => plain(Route::Shorten),
        ("urls", None, None) => plain(Route::Urls),
        ("urls", Some(id), None) => with_id(Route::Url, id),
        ("urls", Some(id), Some("events")) => with_id(Route::UrlEvents, id),
        ("users", None, None) => plain(Route::Users),
        ("users", Some("bulk"), None) => plain(Route::UsersBulk),
        ("users", Some(id), None) => with_id(Route::User, id),
        ("users", Some(id), Some("urls")) => with_id(Route::UserUrls, id),
        ("events", None, None) => plain(Route::Events),
        ("health", None, None) => plain(Route::Health),
        ("live", None, None) => plain(Route::Live),
        ("ready", None, None) => plain(Route::Ready),
        ("metrics", None, None) => plain(Route::Metrics),
        ("openapi.json", None, None) => plain(Route::OpenApi),
        ("", None, None) => plain(Route::Home),
        (code, None, None) if !code.is_empty() && code.len() <= MAX_CODE_SEGMENT => Routed {
            route: Route::Redirect,
            id: None,
            code: Some(code.to_owned()),
        },
        _ => plain(Route::NotFound),
    }
}

/// What the table says for a route and method.
#[derive(Debug)]
pub enum Lookup {
    Found(Handler),
    /// The route exists but not with this method: the `Allow` value.
    MethodNotAllowed(String),
    NotFound,
}

/// Finds the handler; `HEAD` uses the `GET` line.
pub fn lookup(route: Route, method: &Method) -> Lookup {
    if route == Route::NotFound {
        return Lookup::NotFound;
    }
    let want = if method == Method::HEAD {
        &Method::GET
    } else {
        method
    };
    let mut allow: Vec<&str> = Vec::new();
    for def in ROUTES.iter().filter(|d| d.route == route) {
        if def.method == want {
            return Lookup::Found(def.handler);
        }
        allow.push(def.method.as_str());
        if def.method == Method::GET {
            allow.push("HEAD");
        }
    }
    if allow.is_empty() {
        Lookup::NotFound
    } else {
        Lookup::MethodNotAllowed(allow.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_route_to_bounded_templates() {
        assert_eq!(route("/urls/12").route, Route::Url);
        assert_eq!(route("/urls/12").id, Some(12));
        assert_eq!(route("/urls/abc").route, Route::NotFound);
        assert_eq!(route("/urls/0").route, Route::NotFound);
        assert_eq!(route("/urls/+5").route, Route::NotFound);
        assert_eq!(route("/urls/12/").route, Route::NotFound);
        assert_eq!(route("/users/3/urls").route, Route::UserUrls);
        assert_eq!(route("/users/bulk").route, Route::UsersBulk);
        assert_eq!(route("/openapi.json").route, Route::OpenApi);
        assert_eq!(route("/Ab12Cd").code.as_deref(), Some("Ab12Cd"));
        assert_eq!(route("/").route, Route::Home);
        assert_eq!(route("").route, Route::NotFound);
        assert_eq!(route("/a/b/c/d").route, Route::NotFound);
        assert_eq!(
            route(&format!("/{}", "x".repeat(65))).route,
            Route::NotFound
        );
    }

    #[test]
    fn every_route_has_a_line_and_unlisted_methods_get_405_with_allow() {
        for r in [
            Route::Shorten,
            Route::Urls,
            Route::Url,
            Route::UrlEvents,
            Route::Users,
            Route::UsersBulk,
            Route::User,
            Route::UserUrls,
            Route::Events,
            Route::Health,
            Route::Live,
            Route::Ready,
            Route::Metrics,
            Route::OpenApi,
            Route::Home,
            Route::Redirect,
        ] {
            assert!(
                ROUTES.iter().any(|d| d.route == r),
                "{r:?} has no line in the table"
            );
        }
        // A future PATCH can never reach a handler by accident.
        match lookup(Route::Url, &Method::PATCH) {
            Lookup::MethodNotAllowed(a) => assert_eq!(a, "GET, HEAD, PUT, DELETE"),
            other => panic!("{other:?}"),
        }
        match lookup(Route::Shorten, &Method::GET) {
            Lookup::MethodNotAllowed(a) => assert_eq!(a, "POST"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            lookup(Route::Redirect, &Method::HEAD),
            Lookup::Found(Handler::Api(_))
        ));
        assert!(matches!(
            lookup(Route::Health, &Method::HEAD),
            Lookup::Found(Handler::Local(Local::Health))
        ));
        assert!(matches!(
            lookup(Route::NotFound, &Method::GET),
            Lookup::NotFound
        ));
        // No two lines for the same route and method.
        for (i, a) in ROUTES.iter().enumerate() {
            for b in &ROUTES[i + 1..] {
                assert!(
                    !(a.route == b.route && a.method == b.method),
                    "{:?} {} twice",
                    a.route,
                    a.method
                );
            }
        }
    }
}
