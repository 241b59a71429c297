-- Stage checkpoints become incremental: positions per input partition, and state as
-- separately stored entries per state partition (only changed entries are rewritten).
-- The old whole-partition JSON checkpoints are not carried over: the stages re-learn.
-- Integers are BIGINT and times epoch milliseconds, the same as on SQLite, so one
-- implementation serves both stores.
DROP TABLE stage_checkpoints;

CREATE TABLE stage_positions (
    consumer_group TEXT NOT NULL,
    topic          TEXT NOT NULL,
    partition      BIGINT NOT NULL,
    next_offset    BIGINT NOT NULL,
    records        BIGINT NOT NULL,
    format         BIGINT NOT NULL,
    updated_at     BIGINT NOT NULL,
    PRIMARY KEY (consumer_group, topic, partition)
);

CREATE TABLE stage_state (
    consumer_group TEXT NOT NULL,
    partition      BIGINT NOT NULL,
    key            BYTEA NOT NULL,
    state          BYTEA NOT NULL,
    PRIMARY KEY (consumer_group, partition, key)
);

-- API tokens: the secret is kept only as its SHA-256.
CREATE TABLE api_tokens (
    id            TEXT PRIMARY KEY,
    tenant        TEXT NOT NULL,
    role          TEXT NOT NULL,
    name          TEXT NOT NULL,
    secret_sha256 TEXT NOT NULL,
    rate_per_sec  DOUBLE PRECISION,
    created_at    BIGINT NOT NULL,
    revoked_at    BIGINT
);

-- Who changed what: incident transitions, token changes.
CREATE TABLE audit_log (
    id      BIGSERIAL PRIMARY KEY,
    time    BIGINT NOT NULL,
    tenant  TEXT NOT NULL,
    actor   TEXT NOT NULL,
    action  TEXT NOT NULL,
    target  TEXT NOT NULL,
    detail  TEXT NOT NULL
);
CREATE INDEX audit_log_tenant_time ON audit_log (tenant, time DESC, id DESC);
