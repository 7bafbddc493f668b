//! Routes: which inward service an outside request goes to, and the scope its Txn-Token
//! is narrowed to.
//!
//! A route's prefix matches on whole path segments (`/orders` matches `/orders` and
//! `/orders/7`, never `/ordersx`), and the longest matching prefix wins. Paths that
//! different servers read differently are refused before any route is chosen: dot
//! segments (`/public/../admin`, also percent-encoded), encoded slashes and backslashes,
//! and empty segments. Otherwise a request could be routed (and scoped) by one reading
//! of its path and served by another.

use std::time::Duration;
use wimse_core::token::exchange::Scope;
use wimse_workload::proxy::UpstreamProtocol;

/// How long a route's upstream may take to start answering, unless the route says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a route cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// The prefix is not a plain absolute path.
    #[error("{0}")]
    Prefix(String),
    /// The upstream is not an `http://` URL without query.
    #[error("{0}")]
    Upstream(String),
}

/// One route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    prefix: String,
    /// The upstream URL without a trailing `/`.
    upstream: String,
    scope: Scope,
    strip_prefix: bool,
    /// How long the upstream may take to send its response head.
    timeout: Duration,
    /// HTTP/1.1, or HTTP/2 for gRPC services.
    protocol: UpstreamProtocol,
    /// The most bytes a request body may hold, if limited.
    max_body: Option<u64>,
}

impl Route {
    /// A route for requests under `prefix` to `upstream` (`http://host:port[/base]`, or
    /// `https://` for mutual TLS with the gateway's X509-SVID), whose Txn-Tokens get
    /// `scope`; with `strip_prefix` the prefix is cut from the forwarded path.
    pub fn new(
        prefix: &str,
        upstream: &str,
        scope: Scope,
        strip_prefix: bool,
    ) -> Result<Self, RouteError> {
        Self::build(prefix, upstream, &["http", "https"], scope, strip_prefix).map_err(|e| match e {
            RouteError::Upstream(m) => RouteError::Upstream(format!(
                "{m} (the gateway proves itself with a WIT, or by mutual TLS to `https://`; put \
                 a `wimse proxy inbound` in front of the service)"
            )),
            prefix @ RouteError::Prefix(_) => prefix,
        })
    }

    /// An egress route: requests under `prefix` go to an outside `upstream` (`http://` or
    /// `https://`). Its scope is empty: no Txn-Token goes out.
    pub fn outward(prefix: &str, upstream: &str, strip_prefix: bool) -> Result<Self, RouteError> {
        Self::build(
            prefix,
            upstream,
            &["http", "https"],
            Scope::default(),
            strip_prefix,
        )
    }

    /// Whether the upstream is reached over TLS.
    pub fn is_https(&self) -> bool {
        self.upstream.starts_with("https://")
    }

    fn build(
        prefix: &str,
        upstream: &str,
        schemes: &[&str],
        scope: Scope,
        strip_prefix: bool,
    ) -> Result<Self, RouteError> {
        if !prefix.starts_with('/') {
            return Err(RouteError::Prefix(format!(
                "`{prefix}` must be an absolute path such as `/orders`"
            )));
        }
        let prefix = if prefix == "/" {
            prefix
        } else {
            prefix.trim_end_matches('/')
        };
        if !prefix
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'?' && b != b'#')
        {
            return Err(RouteError::Prefix(format!(
                "`{prefix}` may hold only visible ASCII, without `?` or `#`"
            )));
        }
        check_path(prefix).map_err(|why| RouteError::Prefix(format!("`{prefix}`: {why}")))?;
        let uri: http::Uri = upstream
            .parse()
            .map_err(|e| RouteError::Upstream(format!("`{upstream}`: {e}")))?;
        if !uri.scheme_str().is_some_and(|s| schemes.contains(&s)) || uri.authority().is_none() {
            return Err(RouteError::Upstream(format!(
                "`{upstream}` must be an absolute {} url",
                schemes.join(" or ")
            )));
        }
        if uri.query().is_some() || upstream.contains('#') {
            return Err(RouteError::Upstream(format!(
                "`{upstream}` may not have a query or fragment"
            )));
        }
        Ok(Route {
            prefix: prefix.to_owned(),
            upstream: upstream.trim_end_matches('/').to_owned(),
            scope,
            strip_prefix,
            timeout: DEFAULT_TIMEOUT,
            protocol: UpstreamProtocol::Http1,
            max_body: None,
        })
    }

    /// The route with another upstream timeout: how long the upstream may take to send its
    /// response head before the caller gets 504 (the body then streams without a limit).
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How long the upstream may take to send its response head.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The route speaking `protocol` to its upstream: [`UpstreamProtocol::Http2`] for a
    /// gRPC service (h2c to `http://`, ALPN `h2` to `https://`).
    #[must_use]
    pub fn with_protocol(mut self, protocol: UpstreamProtocol) -> Self {
        self.protocol = protocol;
        self
    }

    /// What the route speaks to its upstream.
    pub fn protocol(&self) -> UpstreamProtocol {
        self.protocol
    }

    /// The route taking request bodies of at most `max` bytes (`None`: any size; a gRPC
    /// call's stream counts all its messages).
    #[must_use]
    pub fn with_max_body(mut self, max: Option<u64>) -> Self {
        self.max_body = max;
        self
    }

    /// The most bytes a request body may hold on this route, if limited.
    pub fn max_body(&self) -> Option<u64> {
        self.max_body
    }

    /// The path prefix (without a trailing `/`, unless it is `/`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The scope a request on this route needs, and its Txn-Token gets (empty for an
    /// egress route).
    pub fn scope(&self) -> &Scope {
        &self.scope
    }

    /// Whether the route takes `path`.
    fn matches(&self, path: &str) -> bool {
        self.prefix == "/"
            || path
                .strip_prefix(self.prefix.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    }

    /// The upstream URL for `path_and_query` (which this route matches).
    pub fn target(&self, path: &str, query: Option<&str>) -> String {
        let path = if self.strip_prefix && self.prefix != "/" {
            path.get(self.prefix.len()..).unwrap_or_default()
        } else {
            path
        };
        let slash = if path.starts_with('/') { "" } else { "/" };
        match query {
            Some(q) => format!("{}{slash}{path}?{q}", self.upstream),
            None => format!("{}{slash}{path}", self.upstream),
        }
    }
}

/// Why a request path is refused, when servers could disagree on what it names (the
/// rules every workload applies, [`wimse_workload::authn::check_path`]).
pub use wimse_workload::authn::check_path;

/// The routes, longest prefix first, each with what its user keeps per route (`T`: the
/// egress keeps each destination's client and token cache here).
#[derive(Debug, Clone)]
pub struct Routes<T = ()>(Vec<(Route, T)>);

impl Routes {
    /// The routes; refused when two have the same prefix.
    pub fn new(routes: Vec<Route>) -> Result<Self, String> {
        Self::with(routes.into_iter().map(|r| (r, ())).collect())
    }
}

impl<T> Routes<T> {
    /// The routes with their values; refused when two have the same prefix.
    pub fn with(mut routes: Vec<(Route, T)>) -> Result<Self, String> {
        routes.sort_by(|(a, _), (b, _)| {
            b.prefix
                .len()
                .cmp(&a.prefix.len())
                .then(a.prefix.cmp(&b.prefix))
        });
        if let Some(pair) = routes
            .windows(2)
            .find(|w| matches!(w, [(a, _), (b, _)] if a.prefix == b.prefix))
            && let Some((first, _)) = pair.first()
        {
            return Err(format!("two routes have the prefix `{}`", first.prefix));
        }
        Ok(Routes(routes))
    }

    /// The route for `path`: the one with the longest prefix that matches it.
    pub fn find(&self, path: &str) -> Option<&Route> {
        self.find_with(path).map(|(route, _)| route)
    }

    /// [`Routes::find`], with the route's value.
    pub fn find_with(&self, path: &str) -> Option<(&Route, &T)> {
        self.0
            .iter()
            .find(|(r, _)| r.matches(path))
            .map(|(r, value)| (r, value))
    }

    /// Every route, longest prefix first.
    pub fn iter(&self) -> impl Iterator<Item = &Route> {
        self.0.iter().map(|(r, _)| r)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing, reason = "tests")]
    use super::*;
    use proptest::prelude::*;

    fn route(prefix: &str, strip: bool) -> Route {
        Route::new(
            prefix,
            "http://up:1/base/",
            Scope::parse("s").unwrap(),
            strip,
        )
        .unwrap()
    }

    #[test]
    fn prefixes_match_whole_segments_and_the_longest_wins() {
        let routes = Routes::new(vec![
            route("/", false),
            route("/a", false),
            route("/a/b/", false),
        ])
        .unwrap();
        let prefix = |p: &str| routes.find(p).map(Route::prefix);
        assert_eq!(prefix("/a/b/c"), Some("/a/b"));
        assert_eq!(prefix("/a/b"), Some("/a/b"));
        assert_eq!(prefix("/a/bc"), Some("/a"));
        assert_eq!(prefix("/a"), Some("/a"));
        assert_eq!(prefix("/ab"), Some("/"));
        let no_root = Routes::new(vec![route("/a", false)]).unwrap();
        assert!(no_root.find("/ab").is_none());
        assert!(no_root.find("/").is_none());
    }

    #[test]
    fn targets_keep_or_cut_the_prefix() {
        assert_eq!(
            route("/a", false).target("/a/7", Some("x=1")),
            "http://up:1/base/a/7?x=1"
        );
        assert_eq!(route("/a", true).target("/a/7", None), "http://up:1/base/7");
        assert_eq!(route("/a", true).target("/a", None), "http://up:1/base/");
        assert_eq!(route("/", true).target("/z", None), "http://up:1/base/z");
    }

    #[test]
    fn ambiguous_paths_are_refused() {
        for bad in [
            "/a/../b",
            "/a/./b",
            "/a/%2e%2E/b",
            "/a/.%2e",
            "/a/..;/b",
            "/a%00",
            "/a/%41",
            "/%61dmin",
            "/a/%7e",
            "/a%2fb",
            "/a%5Cb",
            "/a\\b",
            "//a",
            "/a//b",
            "relative",
        ] {
            assert!(check_path(bad).is_err(), "{bad}");
        }
        for good in ["/", "/a", "/a/", "/a/b.c", "/a/...", "/a/%20", "/a/%C3%A9"] {
            assert!(check_path(good).is_ok(), "{good}");
        }
    }

    #[test]
    fn inward_routes_take_http_or_https_and_egress_routes_too() {
        let scope = Scope::parse("s").unwrap();
        assert!(Route::new("/a", "https://x.example", scope.clone(), false).is_ok());
        assert!(Route::new("/a", "ftp://x.example", scope, false).is_err());
        let out = Route::outward("/a", "https://x.example/v1", true).unwrap();
        assert!(out.is_https());
        assert_eq!(out.target("/a/b", None), "https://x.example/v1/b");
        assert!(Route::outward("/a", "ftp://x.example", true).is_err());
    }

    #[test]
    fn two_routes_with_one_prefix_are_refused() {
        assert!(Routes::new(vec![route("/a", false), route("/a/", true)]).is_err());
    }

    proptest! {
        #[test]
        fn the_chosen_route_is_the_longest_segment_prefix(
            path in "(/[a-c]{0,2}){1,4}",
            prefixes in proptest::collection::btree_set("(/[a-c]{1,2}){1,3}", 1..5),
        ) {
            let routes = Routes::new(prefixes.iter().map(|p| route(p, true)).collect()).unwrap();
            let matching: Vec<&String> = prefixes
                .iter()
                .filter(|p| path == **p || path.starts_with(&format!("{p}/")))
                .collect();
            let longest = matching.iter().max_by_key(|p| p.len()).map(|p| p.as_str());
            prop_assert_eq!(routes.find(&path).map(Route::prefix), longest);
            if let Some(r) = routes.find(&path) {
                let target = r.target(&path, None);
                let rest = target.strip_prefix("http://up:1/base").unwrap();
                let cut = path.get(r.prefix().len()..).unwrap_or_default();
                prop_assert_eq!(rest, if cut.is_empty() { "/" } else { cut });
            }
        }
    }
}
