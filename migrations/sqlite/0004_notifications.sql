-- The notification log: every page the notify stage finished with (delivered, or given up
-- on after its retries), so a restart never sends one twice and the incident shows them.
CREATE TABLE notifications (
    id          TEXT PRIMARY KEY,
    tenant      TEXT NOT NULL,
    incident_id TEXT NOT NULL,
    receiver    TEXT NOT NULL,
    action      TEXT NOT NULL,
    status      TEXT NOT NULL,
    attempts    INTEGER NOT NULL,
    response    TEXT NOT NULL,
    at          INTEGER NOT NULL
);
CREATE INDEX notifications_incident ON notifications (tenant, incident_id, at);

-- Silences: pages about incidents whose labels match are held while one is active.
CREATE TABLE silences (
    id         TEXT PRIMARY KEY,
    tenant     TEXT NOT NULL,
    matchers   TEXT NOT NULL,
    starts_at  INTEGER NOT NULL,
    ends_at    INTEGER NOT NULL,
    author     TEXT NOT NULL,
    comment    TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE INDEX silences_ends ON silences (ends_at);
