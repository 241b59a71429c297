-- The explainer's output: the latest explanation of each incident (its JSON body as the
-- explain crate defines it), and every model call made, for cost, caching and budgets.
CREATE TABLE explanations (
    tenant      TEXT NOT NULL,
    incident_id TEXT NOT NULL,
    facts_hash  TEXT NOT NULL,
    source      TEXT NOT NULL,
    body        TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (tenant, incident_id)
);

CREATE TABLE llm_calls (
    id             TEXT PRIMARY KEY,
    tenant         TEXT NOT NULL,
    incident_id    TEXT NOT NULL,
    purpose        TEXT NOT NULL,
    model          TEXT NOT NULL,
    prompt_version TEXT NOT NULL,
    facts_hash     TEXT NOT NULL,
    input_tokens   BIGINT NOT NULL,
    output_tokens  BIGINT NOT NULL,
    latency_ms     BIGINT NOT NULL,
    cost_usd       DOUBLE PRECISION NOT NULL,
    outcome        TEXT NOT NULL,
    answer         TEXT,
    at             BIGINT NOT NULL
);
CREATE INDEX llm_calls_cache ON llm_calls (facts_hash, model, prompt_version, purpose);
CREATE INDEX llm_calls_tenant ON llm_calls (tenant, at);
CREATE INDEX llm_calls_incident ON llm_calls (tenant, incident_id, at);
