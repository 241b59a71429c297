//! Smoke test against a real local model (SmolLM2-135M-Instruct behind llama.cpp's server, started by scripts/llm.sh): protocol, schema-constrained output, determinism at temperature 0.

use std::sync::Arc;

use seismo_explain::{ExplainConfig, Explainer, Source};
use seismo_store::{SqliteStore, Store};

mod common;
use common::{deps, seed};

fn endpoint() -> (String, String) {
    match (
        std::env::var("SEISMO_TEST_LLM"),
        std::env::var("SEISMO_TEST_LLM_MODEL"),
    ) {
        (Ok(url), Ok(model)) if !url.is_empty() => (url, model),
        _ => panic!(
            "SEISMO_TEST_LLM is not set: this test needs the local model server. Run the test \
             suite with scripts/test.sh (it starts one), or start it with `scripts/llm.sh start` \
             and export what it prints"
        ),
    }
}

#[tokio::test]
async fn a_real_local_model_answers_in_the_schema_and_repeats_itself_at_temperature_zero() {
    let (url, model) = endpoint();
    let store = SqliteStore::connect("sqlite::memory:").await.unwrap();
    store.migrate().await.unwrap();
    let store: Arc<dyn Store> = Arc::new(store);
    let mut cfg = ExplainConfig::default();
    cfg.model.base_url = url;
    cfg.model.model = model;
    cfg.pseudonymise_labels = vec!["host".into()];
    let ex = Explainer::new(cfg, deps(), "service".into(), store.clone()).unwrap();
    seed(&store, "inc1", 6, None).await;
    let first = ex.explain("default", "inc1", true).await.unwrap();
    assert_eq!(
        first.source,
        Source::Model,
        "fell back: {:?}",
        first.fallback
    );
    assert!(first.usage.input_tokens > 0 && first.usage.output_tokens > 0);
    let second = ex.explain("default", "inc1", true).await.unwrap();
    assert_eq!(
        second.source,
        Source::Model,
        "fell back: {:?}",
        second.fallback
    );
    assert_eq!(
        (
            &first.summary,
            &first.hypotheses,
            &first.next_checks,
            first.inconclusive
        ),
        (
            &second.summary,
            &second.hypotheses,
            &second.next_checks,
            second.inconclusive
        ),
        "the same facts at temperature 0 give the same answer"
    );
    let calls = store.incident_llm_calls("default", "inc1").await.unwrap();
    assert_eq!(calls.len(), 2);
    assert!(calls.iter().all(|c| c.outcome == "ok"), "{calls:?}");
    assert_eq!(calls[0].answer, calls[1].answer);
    eprintln!(
        "local model: {} ms, {} input and {} output tokens; summary: {}",
        first.usage.latency_ms, first.usage.input_tokens, first.usage.output_tokens, first.summary
    );
}
