//! Fails when the committed JSON Schemas under `schemas/json/` drift from the Rust types.

use std::path::PathBuf;

#[test]
fn committed_json_schemas_are_up_to_date() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("json");
    let update = std::env::var_os("SEISMO_UPDATE_SCHEMAS").is_some();
    let mut stale = Vec::new();
    for (file, schema) in seismo_schemas::json_schemas() {
        let text = serde_json::to_string_pretty(&schema).unwrap() + "\n";
        let path = dir.join(&file);
        if update {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(&path, &text).unwrap();
        } else if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
            stale.push(file);
        }
    }
    assert!(
        stale.is_empty(),
        "JSON Schemas out of date: {stale:?}; regenerate with \
         SEISMO_UPDATE_SCHEMAS=1 cargo test -p seismo-schemas --test json_schemas"
    );
}

#[test]
fn example_point_validates_against_its_schema_shape() {
    // The schema must name the fields a producer has to send.
    let (_, schema) = seismo_schemas::json_schemas()
        .into_iter()
        .find(|(f, _)| f.starts_with("metric_point"))
        .unwrap();
    let required: Vec<&str> = schema["required"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(required, vec!["name", "ts", "value"]);
}
