//! The OpenAPI description: the committed copy (`api/openapi.json`) is the one the code
//! generates (`SEISMO_UPDATE_OPENAPI=1 cargo test -p seismo-api --test openapi` rewrites
//! it), and it documents exactly the routes the routers register.

use std::collections::BTreeSet;

const COMMITTED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.json");

#[test]
fn the_committed_description_is_the_generated_one() {
    let doc = seismo_api::openapi::document();
    let text = serde_json::to_string_pretty(&doc).unwrap() + "\n";
    if std::env::var_os("SEISMO_UPDATE_OPENAPI").is_some() {
        std::fs::write(COMMITTED, &text).unwrap();
    }
    let committed = std::fs::read_to_string(COMMITTED).unwrap_or_default();
    assert!(
        committed == text,
        "api/openapi.json is not what the code generates; run \
         SEISMO_UPDATE_OPENAPI=1 cargo test -p seismo-api --test openapi and commit it"
    );
}

/// The paths the API's, the operations' and the ingest routers register, read from their
/// source.
fn registered_paths() -> BTreeSet<String> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let mut out = BTreeSet::new();
    for file in ["api/src/lib.rs", "ingest/src/http.rs"] {
        let src = std::fs::read_to_string(format!("{root}/{file}")).unwrap();
        let mut rest = src.as_str();
        while let Some(i) = rest.find(".route(") {
            rest = &rest[i + 7..];
            let start = rest.find('"').unwrap() + 1;
            let end = start + rest[start..].find('"').unwrap();
            out.insert(rest[start..end].to_string());
        }
    }
    out
}

#[test]
fn every_registered_route_is_documented_and_nothing_else() {
    let doc = seismo_api::openapi::document();
    let documented: BTreeSet<String> = doc["paths"].as_object().unwrap().keys().cloned().collect();
    assert_eq!(documented, registered_paths());
    // Every operation says who may call it and what it answers.
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            assert!(
                op["responses"].as_object().is_some_and(|r| !r.is_empty()),
                "{method} {path}"
            );
            assert!(
                op["description"].as_str().unwrap().contains("Role:")
                    || op["security"] == serde_json::json!([]),
                "{method} {path}"
            );
        }
    }
    // The role each operation names is the one the authentication layer asks for.
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let text = op["description"].as_str().unwrap();
            let Some(role) = text
                .split("Role: `")
                .nth(1)
                .and_then(|r| r.split('`').next())
            else {
                continue;
            };
            let concrete = path.replace("{id}", "x");
            let need = seismo_api::auth::need(&method.to_uppercase().parse().unwrap(), &concrete);
            assert_eq!(format!("{need:?}").to_lowercase(), role, "{method} {path}");
        }
    }
    // Public paths are exactly the ones the authentication layer lets through.
    let public: BTreeSet<String> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(_, item)| {
            item.as_object()
                .unwrap()
                .values()
                .all(|op| op["security"] == serde_json::json!([]))
        })
        .map(|(p, _)| p.clone())
        .collect();
    let want: BTreeSet<String> = seismo_api::auth::PUBLIC_PATHS
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(public, want);
}
