-- Seismo's tables on PostgreSQL (distributed mode).
--
-- The time-series tables (metric_points, anomalies, forecasts) are TimescaleDB hypertables
-- where the extension is available and natively range-partitioned tables with BRIN indexes
-- where it is not. Both branches create the same tables and columns, so the API and
-- Grafana never care which one a server has. `seismo migrate` sets `seismo.timescaledb`
-- to auto (use it when available), require (fail without it) or off before this runs.
-- Unique keys include the time column because both hypertables and partitioned tables
-- require it; ids are deterministic, so (id, time) is as unique as id.

CREATE TABLE series (
    series_id   BIGINT PRIMARY KEY,
    tenant      TEXT NOT NULL,
    name        TEXT NOT NULL,
    labels      JSONB NOT NULL,
    first_seen  TIMESTAMPTZ NOT NULL
);
CREATE INDEX series_tenant_name ON series (tenant, name);

-- Creates the daily partitions of a natively partitioned table covering [from_ts, to_ts].
-- Safe to call concurrently from several processes: a partition another session created
-- first is simply there.
CREATE FUNCTION seismo_ensure_partitions(tbl TEXT, from_ts TIMESTAMPTZ, to_ts TIMESTAMPTZ)
RETURNS INTEGER LANGUAGE plpgsql AS $$
DECLARE
    day DATE := (from_ts AT TIME ZONE 'UTC')::date;
    created INTEGER := 0;
    part TEXT;
BEGIN
    WHILE day <= (to_ts AT TIME ZONE 'UTC')::date LOOP
        part := format('%s_p%s', tbl, to_char(day, 'YYYYMMDD'));
        IF to_regclass(part) IS NULL THEN
            BEGIN
                EXECUTE format(
                    'CREATE TABLE %I PARTITION OF %I FOR VALUES FROM (%L) TO (%L)',
                    part, tbl,
                    (day::timestamp AT TIME ZONE 'UTC'),
                    ((day + 1)::timestamp AT TIME ZONE 'UTC'));
                created := created + 1;
            EXCEPTION WHEN duplicate_table OR unique_violation THEN
                NULL;
            END;
        END IF;
        day := day + 1;
    END LOOP;
    RETURN created;
END $$;

DO $$
DECLARE
    mode TEXT := coalesce(nullif(current_setting('seismo.timescaledb', true), ''), 'auto');
    available BOOLEAN := EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb');
    ts BOOLEAN;
    partition_clause TEXT;
BEGIN
    IF mode NOT IN ('auto', 'require', 'off') THEN
        RAISE EXCEPTION 'storage.timescaledb must be auto, require or off, not %', mode;
    END IF;
    IF mode = 'require' AND NOT available THEN
        RAISE EXCEPTION 'storage.timescaledb = require, but the timescaledb extension is not available on this server';
    END IF;
    ts := available AND mode <> 'off';
    IF ts THEN
        CREATE EXTENSION IF NOT EXISTS timescaledb;
        partition_clause := '';
    ELSE
        partition_clause := ' PARTITION BY RANGE (time)';
    END IF;

    EXECUTE 'CREATE TABLE metric_points (
        series_id BIGINT NOT NULL,
        time      TIMESTAMPTZ NOT NULL,
        value     DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (series_id, time))' || partition_clause;

    EXECUTE 'CREATE TABLE anomalies (
        id          TEXT NOT NULL,
        tenant      TEXT NOT NULL,
        series_id   BIGINT NOT NULL,
        name        TEXT NOT NULL,
        labels      JSONB NOT NULL,
        time        TIMESTAMPTZ NOT NULL,
        observed    DOUBLE PRECISION NOT NULL,
        expected    DOUBLE PRECISION NOT NULL,
        lower       DOUBLE PRECISION NOT NULL,
        upper       DOUBLE PRECISION NOT NULL,
        score       DOUBLE PRECISION NOT NULL,
        severity    TEXT NOT NULL,
        kind        TEXT NOT NULL,
        detector    TEXT NOT NULL,
        explanation JSONB NOT NULL,
        PRIMARY KEY (id, time))' || partition_clause;

    EXECUTE 'CREATE TABLE forecasts (
        series_id    BIGINT NOT NULL,
        generated_at TIMESTAMPTZ NOT NULL,
        time         TIMESTAMPTZ NOT NULL,
        yhat         DOUBLE PRECISION NOT NULL,
        lower        DOUBLE PRECISION NOT NULL,
        upper        DOUBLE PRECISION NOT NULL,
        model        TEXT NOT NULL,
        PRIMARY KEY (series_id, generated_at, time))' || partition_clause;

    CREATE INDEX anomalies_tenant_time ON anomalies (tenant, time DESC, id DESC);
    CREATE INDEX anomalies_series_time ON anomalies (series_id, time);
    CREATE INDEX anomalies_id ON anomalies (id);

    IF ts THEN
        PERFORM create_hypertable('metric_points', 'time', chunk_time_interval => INTERVAL '1 day');
        PERFORM create_hypertable('anomalies', 'time', chunk_time_interval => INTERVAL '7 days');
        PERFORM create_hypertable('forecasts', 'time', chunk_time_interval => INTERVAL '7 days');
        ALTER TABLE metric_points SET (timescaledb.compress,
            timescaledb.compress_segmentby = 'series_id', timescaledb.compress_orderby = 'time');
        PERFORM add_compression_policy('metric_points', INTERVAL '2 days');
        PERFORM add_retention_policy('metric_points', INTERVAL '30 days');
        PERFORM add_retention_policy('forecasts', INTERVAL '30 days');
        PERFORM add_retention_policy('anomalies', INTERVAL '365 days');
    ELSE
        -- Rows arrive roughly in time order, so a BRIN index on time is tiny and prunes
        -- well; the primary keys serve lookups by series.
        CREATE INDEX metric_points_time_brin ON metric_points USING brin (time);
        CREATE INDEX anomalies_time_brin ON anomalies USING brin (time);
        CREATE INDEX forecasts_time_brin ON forecasts USING brin (time);
        -- The same 1-minute rollup the TimescaleDB branch keeps as a continuous aggregate
        -- (created by `seismo migrate` outside this transaction), computed on read here.
        CREATE VIEW metric_points_1m AS
            SELECT series_id,
                   to_timestamp(floor(extract(epoch FROM time) / 60) * 60) AS bucket,
                   avg(value) AS avg, min(value) AS min, max(value) AS max, count(*) AS count
            FROM metric_points GROUP BY 1, 2;
    END IF;
END $$;

CREATE TABLE alerts (
    tenant      TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    starts_at   TIMESTAMPTZ NOT NULL,
    status      TEXT NOT NULL,
    ends_at     TIMESTAMPTZ,
    labels      JSONB NOT NULL,
    annotations JSONB NOT NULL,
    source      TEXT NOT NULL,
    PRIMARY KEY (tenant, fingerprint, starts_at)
);

CREATE TABLE incidents (
    id          TEXT PRIMARY KEY,
    tenant      TEXT NOT NULL,
    title       TEXT NOT NULL,
    status      TEXT NOT NULL,
    severity    TEXT NOT NULL,
    started_at  TIMESTAMPTZ NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL,
    resolved_at TIMESTAMPTZ,
    scope       JSONB NOT NULL,
    root_cause_candidates JSONB NOT NULL
);
CREATE INDEX incidents_tenant_started ON incidents (tenant, started_at DESC, id DESC);

CREATE TABLE incident_anomalies (
    incident_id TEXT NOT NULL,
    anomaly_id  TEXT NOT NULL,
    PRIMARY KEY (incident_id, anomaly_id)
);

CREATE TABLE incident_alerts (
    incident_id TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    PRIMARY KEY (incident_id, fingerprint)
);

CREATE TABLE incident_events (
    id          TEXT PRIMARY KEY,
    incident_id TEXT NOT NULL,
    time        TIMESTAMPTZ NOT NULL,
    kind        TEXT NOT NULL,
    actor       TEXT NOT NULL,
    message     TEXT NOT NULL,
    from_status TEXT,
    to_status   TEXT
);
CREATE INDEX incident_events_incident ON incident_events (incident_id, time);

-- Stage state per input partition (detect's learned baselines), with the next input
-- offset it has not yet seen, so a new owner of the partition resumes exactly there.
CREATE TABLE stage_checkpoints (
    consumer_group TEXT NOT NULL,
    topic          TEXT NOT NULL,
    partition      INTEGER NOT NULL,
    next_offset    BIGINT NOT NULL,
    records        BIGINT NOT NULL,
    state          BYTEA NOT NULL,
    updated_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer_group, topic, partition)
);
