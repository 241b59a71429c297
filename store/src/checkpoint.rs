//! Stage checkpoints: where each consumer group stands in its input partitions, and the
//! stage's state for each partition as separately stored entries, so a checkpoint writes
//! only what changed since the last one. Written once for both SQL stores.

use async_trait::async_trait;

use crate::Result;

/// Where a stage's consumer group stands in one input partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    pub topic: String,
    pub partition: u32,
    /// The first input offset the state has not seen: a new owner resumes here.
    pub next_offset: i64,
    /// Input records folded into the state over the partition's whole life.
    pub records: u64,
}

/// One state partition's checkpoint: its input positions and the state entries that
/// changed since the previous checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PartitionCheckpoint {
    pub partition: u32,
    /// Version of the stage's state encoding; a restore with another version starts afresh.
    pub format: u32,
    pub positions: Vec<Position>,
    /// (key, encoded state) of entries that are new or changed.
    pub upserts: Vec<(Vec<u8>, Vec<u8>)>,
    /// Keys of entries the stage dropped.
    pub deletes: Vec<Vec<u8>>,
}

/// A state partition as stored.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StoredPartition {
    /// The format of the stored entries (0 when nothing is stored).
    pub format: u32,
    pub positions: Vec<Position>,
    pub entries: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Storage of stage checkpoints, apart from the result tables.
#[async_trait]
pub trait CheckpointStore: Send + Sync + 'static {
    /// Everything stored for one state partition of a consumer group.
    async fn load_partition(&self, group: &str, partition: u32) -> Result<StoredPartition>;
    /// Saves checkpoints, each atomically. A checkpoint behind what is stored for its
    /// partition (a stale owner after a rebalance) is skipped whole, so it can never roll
    /// its successor back; the result says, per checkpoint, whether it was written.
    async fn save_partitions(&self, group: &str, cps: &[PartitionCheckpoint]) -> Result<Vec<bool>>;
    /// Forgets a partition's state and positions (a restore that found an unreadable format).
    async fn clear_partition(&self, group: &str, partition: u32) -> Result<()>;
    /// Every position of a consumer group, for lag reports and tests.
    async fn positions(&self, group: &str) -> Result<Vec<Position>>;
}

/// Implements [`CheckpointStore`] for a store with a `pool` field of sqlx database `$db`.
/// The statements are built with `QueryBuilder`, which writes each dialect's placeholders.
macro_rules! checkpoint_store {
    ($store:ty, $db:ty) => {
        #[async_trait::async_trait]
        impl $crate::checkpoint::CheckpointStore for $store {
            async fn load_partition(
                &self,
                group: &str,
                partition: u32,
            ) -> $crate::Result<$crate::checkpoint::StoredPartition> {
                use sqlx::Row;
                let mut qb = sqlx::QueryBuilder::<$db>::new(
                    "SELECT topic, next_offset, records, format FROM stage_positions WHERE consumer_group = ",
                );
                qb.push_bind(group)
                    .push(" AND partition = ")
                    .push_bind(i64::from(partition));
                let mut out = $crate::checkpoint::StoredPartition::default();
                for r in qb.build().fetch_all(&self.pool).await? {
                    out.format = r.try_get::<i64, _>("format")? as u32;
                    out.positions.push($crate::checkpoint::Position {
                        topic: r.try_get("topic")?,
                        partition,
                        next_offset: r.try_get("next_offset")?,
                        records: r.try_get::<i64, _>("records")? as u64,
                    });
                }
                let mut qb = sqlx::QueryBuilder::<$db>::new(
                    "SELECT key, state FROM stage_state WHERE consumer_group = ",
                );
                qb.push_bind(group)
                    .push(" AND partition = ")
                    .push_bind(i64::from(partition));
                for r in qb.build().fetch_all(&self.pool).await? {
                    out.entries.push((r.try_get("key")?, r.try_get("state")?));
                }
                Ok(out)
            }

            async fn save_partitions(
                &self,
                group: &str,
                cps: &[$crate::checkpoint::PartitionCheckpoint],
            ) -> $crate::Result<Vec<bool>> {
                #[expect(
                    clippy::disallowed_methods,
                    reason = "checkpoints record when they were written"
                )]
                let now = chrono::Utc::now().timestamp_millis();
                let mut tx = self.pool.begin().await?;
                let mut written = Vec::with_capacity(cps.len());
                for cp in cps {
                    let part = i64::from(cp.partition);
                    // Writes first, so the transaction takes the write lock at once (on
                    // SQLite a read-then-write transaction fails instead of waiting when
                    // another writer commits in between); the guard on each position makes
                    // a stale owner's save change nothing, and its savepoint is undone.
                    let mut sp = sqlx::Connection::begin(&mut *tx).await?;
                    let mut stale = false;
                    for p in &cp.positions {
                        let mut qb = sqlx::QueryBuilder::<$db>::new(
                            "INSERT INTO stage_positions (consumer_group, topic, partition, next_offset, records, format, updated_at) VALUES (",
                        );
                        let mut sep = qb.separated(", ");
                        sep.push_bind(group)
                            .push_bind(&p.topic)
                            .push_bind(part)
                            .push_bind(p.next_offset)
                            .push_bind(p.records as i64)
                            .push_bind(i64::from(cp.format))
                            .push_bind(now);
                        qb.push(
                            ") ON CONFLICT (consumer_group, topic, partition) DO UPDATE SET \
                             next_offset = excluded.next_offset, records = excluded.records, \
                             format = excluded.format, updated_at = excluded.updated_at \
                             WHERE stage_positions.next_offset <= excluded.next_offset",
                        );
                        if qb.build().execute(&mut *sp).await?.rows_affected() == 0 {
                            stale = true;
                            break;
                        }
                    }
                    written.push(!stale);
                    if stale {
                        sp.rollback().await?;
                        continue;
                    }
                    for chunk in cp.deletes.chunks(1000) {
                        let mut qb = sqlx::QueryBuilder::<$db>::new(
                            "DELETE FROM stage_state WHERE consumer_group = ",
                        );
                        qb.push_bind(group)
                            .push(" AND partition = ")
                            .push_bind(part)
                            .push(" AND key IN (");
                        let mut sep = qb.separated(", ");
                        for k in chunk {
                            sep.push_bind(k);
                        }
                        qb.push(")");
                        qb.build().execute(&mut *sp).await?;
                    }
                    for chunk in cp.upserts.chunks(2000) {
                        let mut qb = sqlx::QueryBuilder::<$db>::new(
                            "INSERT INTO stage_state (consumer_group, partition, key, state) ",
                        );
                        qb.push_values(chunk, |mut b, (k, v)| {
                            b.push_bind(group).push_bind(part).push_bind(k).push_bind(v);
                        });
                        qb.push(
                            " ON CONFLICT (consumer_group, partition, key) DO UPDATE SET state = excluded.state",
                        );
                        qb.build().persistent(chunk.len() == 2000).execute(&mut *sp).await?;
                    }
                    sp.commit().await?;
                }
                tx.commit().await?;
                Ok(written)
            }

            async fn clear_partition(&self, group: &str, partition: u32) -> $crate::Result<()> {
                let mut tx = self.pool.begin().await?;
                for table in ["stage_state", "stage_positions"] {
                    let mut qb = sqlx::QueryBuilder::<$db>::new(format!(
                        "DELETE FROM {table} WHERE consumer_group = "
                    ));
                    qb.push_bind(group)
                        .push(" AND partition = ")
                        .push_bind(i64::from(partition));
                    qb.build().execute(&mut *tx).await?;
                }
                tx.commit().await?;
                Ok(())
            }

            async fn positions(&self, group: &str) -> $crate::Result<Vec<$crate::checkpoint::Position>> {
                use sqlx::Row;
                let mut qb = sqlx::QueryBuilder::<$db>::new(
                    "SELECT topic, partition, next_offset, records FROM stage_positions WHERE consumer_group = ",
                );
                qb.push_bind(group).push(" ORDER BY topic, partition");
                qb.build()
                    .fetch_all(&self.pool)
                    .await?
                    .iter()
                    .map(|r| {
                        Ok($crate::checkpoint::Position {
                            topic: r.try_get("topic")?,
                            partition: r.try_get::<i64, _>("partition")? as u32,
                            next_offset: r.try_get("next_offset")?,
                            records: r.try_get::<i64, _>("records")? as u64,
                        })
                    })
                    .collect()
            }
        }
    };
}
pub(crate) use checkpoint_store;
