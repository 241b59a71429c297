-- What the detector expected of each series, sampled every detect.band_every_secs: the
-- expected band dashboards and the series API draw beside the observed values.
CREATE TABLE bands (
    series_id INTEGER NOT NULL,
    time      INTEGER NOT NULL,
    expected  REAL NOT NULL,
    lower     REAL NOT NULL,
    upper     REAL NOT NULL,
    PRIMARY KEY (series_id, time)
) WITHOUT ROWID;
