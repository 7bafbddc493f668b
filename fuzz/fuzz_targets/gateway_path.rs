//! Fuzzes the gateway's routing of outside request targets: whatever target hyper would
//! accept must either be refused as ambiguous or land on exactly one route's upstream,
//! under that upstream's base path, with the target's query kept; no target may reach
//! another host or escape the base path.

#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use wimse_core::token::exchange::Scope;
use wimse_gateway::route::{Route, Routes, check_path};

/// (prefix, upstream, strip_prefix)
const ROUTES: [(&str, &str, bool); 3] = [
    ("/", "http://root.internal:1", false),
    ("/a", "http://a.internal:2/base", true),
    ("/a/b", "http://ab.internal:3/deep/base/", false),
];

fn routes() -> &'static Routes {
    static ROUTES_: OnceLock<Routes> = OnceLock::new();
    ROUTES_.get_or_init(|| {
        let scope = Scope::parse("s").unwrap();
        Routes::new(
            ROUTES
                .iter()
                .map(|(p, u, s)| Route::new(p, u, scope.clone(), *s).unwrap())
                .collect(),
        )
        .unwrap()
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(target) = http::uri::PathAndQuery::try_from(data) else {
        return;
    };
    let path = target.path();
    if check_path(path).is_err() {
        return;
    }
    let Some(route) = routes().find(path) else {
        panic!("the root route takes every path");
    };
    let (_, upstream, _) = ROUTES
        .iter()
        .find(|(p, _, _)| *p == route.prefix())
        .unwrap();
    let upstream: http::Uri = upstream.parse().unwrap();
    let forwarded: http::Uri = route
        .target(path, target.query())
        .parse()
        .expect("the forwarded target must be a valid uri");
    assert_eq!(forwarded.scheme_str(), Some("http"));
    assert_eq!(forwarded.authority(), upstream.authority(), "another host");
    let base = upstream.path().trim_end_matches('/');
    assert!(
        forwarded.path().starts_with(&format!("{base}/")),
        "escaped the base path: {} -> {}",
        target,
        forwarded
    );
    assert!(check_path(forwarded.path()).is_ok(), "became ambiguous: {forwarded}");
    assert_eq!(forwarded.query(), target.query());
});
