-- What the detector expected of each series, sampled every detect.band_every_secs: the
-- expected band dashboards and the series API draw beside the observed values. Laid out
-- like metric_points (a hypertable with the same retention, or daily native partitions),
-- following whichever layout the first migration chose.
DO $$
DECLARE
    native BOOLEAN := EXISTS (SELECT 1 FROM pg_partitioned_table WHERE partrelid = 'metric_points'::regclass);
BEGIN
    EXECUTE 'CREATE TABLE bands (
        series_id BIGINT NOT NULL,
        time      TIMESTAMPTZ NOT NULL,
        expected  DOUBLE PRECISION NOT NULL,
        lower     DOUBLE PRECISION NOT NULL,
        upper     DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (series_id, time))' || CASE WHEN native THEN ' PARTITION BY RANGE (time)' ELSE '' END;
    IF native THEN
        CREATE INDEX bands_time_brin ON bands USING brin (time);
    ELSE
        PERFORM create_hypertable('bands', 'time', chunk_time_interval => INTERVAL '7 days');
        PERFORM add_retention_policy('bands', INTERVAL '30 days');
    END IF;
END $$;
