-- Stage state per input partition, with the next input offset it has not yet seen.
CREATE TABLE stage_checkpoints (
    consumer_group TEXT NOT NULL,
    topic          TEXT NOT NULL,
    partition      INTEGER NOT NULL,
    next_offset    INTEGER NOT NULL,
    records        INTEGER NOT NULL,
    state          BLOB NOT NULL,
    updated_at     INTEGER NOT NULL,
    PRIMARY KEY (consumer_group, topic, partition)
);
