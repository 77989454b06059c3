//! The `/api/v0/refs` query parser of preload mode: the raw query string, as a client
//! sends it, through axum's `Query` extraction (as the handler does) and then
//! `RefsQuery::parse`; and the same parser on pairs split naively from the input, which
//! reaches strings a URI would refuse.
//!
//! Checked besides "no panic": a parsed query has 1 to `MAX_ARGS` args and one root
//! CID per arg; the query forwarded to the backend parses back to the same query
//! (round trip); the depth limit agrees with kubo's rules.

#![no_main]

use axum::extract::Query;
use http::Uri;
use kitsune_proxy::preload::refs::{MAX_ARGS, RefsQuery};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(uri) = format!("/api/v0/refs?{text}").parse::<Uri>()
        && let Ok(Query(pairs)) = Query::<Vec<(String, String)>>::try_from_uri(&uri)
    {
        check(&pairs);
    }
    let pairs: Vec<(String, String)> = text
        .split('&')
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => (k.to_owned(), v.to_owned()),
            None => (kv.to_owned(), String::new()),
        })
        .collect();
    check(&pairs);
});

fn check(pairs: &[(String, String)]) {
    let Ok(q) = RefsQuery::parse(pairs) else {
        return;
    };
    assert!(!q.args.is_empty() && q.args.len() <= MAX_ARGS);
    assert_eq!(q.roots.len(), q.args.len());
    let forwarded: Vec<(String, String)> = q
        .backend_query()
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
    let again = RefsQuery::parse(&forwarded).expect("the forwarded query parses");
    assert_eq!(again, q, "parse -> backend_query -> parse");
    match q.depth_limit() {
        Some(d) if q.max_depth >= 0 => assert_eq!(i64::from(d), q.max_depth.min(u32::MAX.into())),
        Some(d) => assert!(!q.recursive && d == 1),
        None => assert!(q.recursive && q.max_depth < 0),
    }
}
