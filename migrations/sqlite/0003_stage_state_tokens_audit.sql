-- Stage checkpoints become incremental: positions per input partition, and state as
-- separately stored entries per state partition (only changed entries are rewritten).
-- The old whole-partition JSON checkpoints are not carried over: the stages re-learn.
DROP TABLE stage_checkpoints;

CREATE TABLE stage_positions (
    consumer_group TEXT NOT NULL,
    topic          TEXT NOT NULL,
    partition      INTEGER NOT NULL,
    next_offset    INTEGER NOT NULL,
    records        INTEGER NOT NULL,
    format         INTEGER NOT NULL,
    updated_at     INTEGER NOT NULL,
    PRIMARY KEY (consumer_group, topic, partition)
);

CREATE TABLE stage_state (
    consumer_group TEXT NOT NULL,
    partition      INTEGER NOT NULL,
    key            BLOB NOT NULL,
    state          BLOB NOT NULL,
    PRIMARY KEY (consumer_group, partition, key)
) WITHOUT ROWID;

-- API tokens: the secret is kept only as its SHA-256.
CREATE TABLE api_tokens (
    id            TEXT PRIMARY KEY,
    tenant        TEXT NOT NULL,
    role          TEXT NOT NULL,
    name          TEXT NOT NULL,
    secret_sha256 TEXT NOT NULL,
    rate_per_sec  REAL,
    created_at    INTEGER NOT NULL,
    revoked_at    INTEGER
);

-- Who changed what: incident transitions, token changes.
CREATE TABLE audit_log (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    time    INTEGER NOT NULL,
    tenant  TEXT NOT NULL,
    actor   TEXT NOT NULL,
    action  TEXT NOT NULL,
    target  TEXT NOT NULL,
    detail  TEXT NOT NULL
);
CREATE INDEX audit_log_tenant_time ON audit_log (tenant, time DESC, id DESC);
