-- Seismo's tables on SQLite (embedded mode). Times are UTC milliseconds since the epoch;
-- series ids are the 64-bit stable hash, stored as a signed INTEGER.

CREATE TABLE series (
    series_id   INTEGER PRIMARY KEY,
    tenant      TEXT NOT NULL,
    name        TEXT NOT NULL,
    labels      TEXT NOT NULL,          -- JSON object
    first_seen  INTEGER NOT NULL
);
CREATE INDEX series_tenant_name ON series (tenant, name);

CREATE TABLE metric_points (
    series_id   INTEGER NOT NULL,
    time        INTEGER NOT NULL,
    value       REAL NOT NULL,
    PRIMARY KEY (series_id, time)
) WITHOUT ROWID;

CREATE TABLE anomalies (
    id          TEXT PRIMARY KEY,
    tenant      TEXT NOT NULL,
    series_id   INTEGER NOT NULL,
    name        TEXT NOT NULL,
    labels      TEXT NOT NULL,
    time        INTEGER NOT NULL,
    observed    REAL NOT NULL,
    expected    REAL NOT NULL,
    lower       REAL NOT NULL,
    upper       REAL NOT NULL,
    score       REAL NOT NULL,
    severity    TEXT NOT NULL,
    kind        TEXT NOT NULL,
    detector    TEXT NOT NULL,
    explanation TEXT NOT NULL
);
CREATE INDEX anomalies_tenant_time ON anomalies (tenant, time DESC, id DESC);
CREATE INDEX anomalies_series_time ON anomalies (series_id, time);

CREATE TABLE forecasts (
    series_id    INTEGER NOT NULL,
    generated_at INTEGER NOT NULL,
    time         INTEGER NOT NULL,
    yhat         REAL NOT NULL,
    lower        REAL NOT NULL,
    upper        REAL NOT NULL,
    model        TEXT NOT NULL,
    PRIMARY KEY (series_id, generated_at, time)
) WITHOUT ROWID;

CREATE TABLE alerts (
    tenant      TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    starts_at   INTEGER NOT NULL,
    status      TEXT NOT NULL,
    ends_at     INTEGER,
    labels      TEXT NOT NULL,
    annotations TEXT NOT NULL,
    source      TEXT NOT NULL,
    PRIMARY KEY (tenant, fingerprint, starts_at)
);

CREATE TABLE incidents (
    id          TEXT PRIMARY KEY,
    tenant      TEXT NOT NULL,
    title       TEXT NOT NULL,
    status      TEXT NOT NULL,
    severity    TEXT NOT NULL,
    started_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    resolved_at INTEGER,
    scope       TEXT NOT NULL,          -- JSON object
    root_cause_candidates TEXT NOT NULL -- JSON array
);
CREATE INDEX incidents_tenant_started ON incidents (tenant, started_at DESC, id DESC);

CREATE TABLE incident_anomalies (
    incident_id TEXT NOT NULL,
    anomaly_id  TEXT NOT NULL,
    PRIMARY KEY (incident_id, anomaly_id)
) WITHOUT ROWID;

CREATE TABLE incident_alerts (
    incident_id TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    PRIMARY KEY (incident_id, fingerprint)
) WITHOUT ROWID;

CREATE TABLE incident_events (
    id          TEXT PRIMARY KEY,
    incident_id TEXT NOT NULL,
    time        INTEGER NOT NULL,
    kind        TEXT NOT NULL,
    actor       TEXT NOT NULL,
    message     TEXT NOT NULL,
    from_status TEXT,
    to_status   TEXT
);
CREATE INDEX incident_events_incident ON incident_events (incident_id, time);
