//! The OpenAPI document describes every route the app serves: each
//! `.route(path, method(handler))` registered in `src/api/mod.rs` is a path
//! and operation of `/openapi.json` (the document itself excepted).
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use std::collections::BTreeSet;

use utoipa::OpenApi;

/// `(method, path)` of every route in the router's source.
fn routes() -> BTreeSet<(String, String)> {
    let source = include_str!("../src/api/mod.rs");
    let mut out = BTreeSet::new();
    let mut rest = source;
    while let Some(at) = rest.find(".route(") {
        rest = &rest[at + ".route(".len()..];
        // The call runs to the matching parenthesis.
        let mut depth = 1;
        let end = rest
            .char_indices()
            .find(|(_, c)| {
                match c {
                    '(' => depth += 1,
                    ')' => depth -= 1,
                    _ => {}
                }
                depth == 0
            })
            .unwrap()
            .0;
        let call = &rest[..end];
        let path = call.split('"').nth(1).unwrap().to_owned();
        for method in ["get", "post", "put", "patch", "delete"] {
            let starts = [
                format!("({method}("),
                format!(" {method}("),
                format!(".{method}("),
            ];
            if starts.iter().any(|s| call.contains(s.as_str())) {
                out.insert((method.to_owned(), path.clone()));
            }
        }
    }
    out
}

fn missing(routes: &BTreeSet<(String, String)>, doc: &serde_json::Value) -> Vec<(String, String)> {
    routes
        .iter()
        .filter(|(_, path)| path != "/openapi.json")
        .filter(|(method, path)| doc["paths"][path.as_str()][method.as_str()].is_null())
        .cloned()
        .collect()
}

fn document() -> serde_json::Value {
    serde_json::to_value(insurance_agent::api::openapi::ApiDoc::openapi()).unwrap()
}

#[test]
fn every_route_is_in_the_openapi_document() {
    let routes = routes();
    assert!(routes.len() > 40, "the route scan found only {routes:?}");
    let missing = missing(&routes, &document());
    assert!(
        missing.is_empty(),
        "routes missing from the OpenAPI document: {missing:?}"
    );
}

/// The control: the same check over a document without one operation
/// names it.
#[test]
fn the_check_catches_an_undocumented_route() {
    let mut doc = document();
    doc["paths"]["/billing/callback"]
        .as_object_mut()
        .unwrap()
        .remove("post")
        .unwrap();
    assert_eq!(
        missing(&routes(), &doc),
        vec![("post".to_owned(), "/billing/callback".to_owned())]
    );
}
