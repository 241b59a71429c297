//! Which watermarks a source stage of correlate's merge announces, and when (detect's and forecast's alike).
//!
//! A source stage's core works out each partition's event-time watermark; this decides
//! which to announce at a tick: the partitions read since the last one (when their
//! watermark moved), those restored from a checkpoint (again, since the announcement may
//! never have reached the bus before the process died; correlate keeps the highest, so a
//! repeat is harmless), and the owned partitions that have no data yet, which move with
//! the slowest partition of this process that has data so they never hold correlate back.

use std::collections::{BTreeSet, HashMap};

use bytes::Bytes;
use seismo_schemas::{Anomaly, correlation_key, topics::headers};
use seismo_transport::OutRecord;

/// Where an anomaly sits in correlate's merge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MergeTag {
    /// The `seismo.points` partition it came from.
    pub partition: u32,
    /// (input offset, index among that record's anomalies): increasing per partition.
    pub seq: (i64, u32),
    /// Merge time: the anomaly's time, or the partition's last watermark if later.
    pub merge_at_ms: i64,
}

/// The `seismo.anomalies` records of a batch: each anomaly keyed by its correlation key
/// and tagged for the merge, then each watermark announced to every anomaly partition.
/// A stage's partitions are numbered from `source_base` in the merge, so that two stages
/// reading the same points partition are two sources.
pub fn merge_records(
    anomalies: &[Anomaly],
    tags: &[MergeTag],
    watermarks: &[(u32, i64)],
    source_base: u32,
    anomaly_partitions: u32,
    scope_label: Option<&str>,
) -> Vec<OutRecord> {
    let source = |p: u32| (source_base + p).to_string();
    let mut records: Vec<OutRecord> = anomalies
        .iter()
        .zip(tags)
        .map(|(a, t)| {
            OutRecord::new(
                Bytes::from(correlation_key(&a.tenant, &a.labels, scope_label)),
                Bytes::from(serde_json::to_vec(a).expect("anomalies serialise")),
            )
            .header(headers::SOURCE_PARTITION, source(t.partition))
            .header(headers::SOURCE_SEQ, format!("{}.{}", t.seq.0, t.seq.1))
            .header(headers::MERGE_AT, t.merge_at_ms.to_string())
        })
        .collect();
    for &(p, wm) in watermarks {
        for q in 0..anomaly_partitions {
            records.push(
                OutRecord::new(Bytes::new(), Bytes::new())
                    .to_partition(q)
                    .header(headers::SOURCE_PARTITION, source(p))
                    .header(headers::WATERMARK, wm.to_string()),
            );
        }
    }
    records
}

/// A core whose partitions have watermarks.
pub trait WatermarkSource {
    /// The watermark last announced for `partition`, if any.
    fn published_watermark(&self, partition: u32) -> Option<i64>;
    /// Works out `partition`'s watermark; `Some` when it moved past the last announced
    /// one (which it then becomes).
    fn advance_watermark(&mut self, partition: u32) -> Option<i64>;
    /// Whether the core holds data of `partition`.
    fn has_partition(&self, partition: u32) -> bool;
}

/// The announcement bookkeeping of one source stage.
#[derive(Debug, Default)]
pub struct Announcer {
    /// Partitions with input since the last announcement.
    touched: BTreeSet<u32>,
    /// Partitions restored since the last announcement.
    restored: BTreeSet<u32>,
    /// Watermarks announced for owned partitions that have no data yet.
    empty: HashMap<u32, i64>,
}

impl Announcer {
    /// `partition` had input (or output that may move its watermark).
    pub fn touch(&mut self, partition: u32) {
        self.touched.insert(partition);
    }

    /// `partition` was restored from a checkpoint.
    pub fn restored(&mut self, partition: u32) {
        self.restored.insert(partition);
    }

    /// `partition` is no longer this process's.
    pub fn drop_partition(&mut self, partition: u32) {
        self.touched.remove(&partition);
        self.restored.remove(&partition);
        self.empty.remove(&partition);
    }

    /// Appends to `out` the watermarks of the restored partitions (again) and of the
    /// touched ones that moved.
    pub fn announce(&mut self, core: &mut impl WatermarkSource, out: &mut Vec<(u32, i64)>) {
        for p in std::mem::take(&mut self.restored) {
            if let Some(wm) = core.published_watermark(p) {
                out.push((p, wm));
            }
            self.touched.insert(p);
        }
        for p in std::mem::take(&mut self.touched) {
            if let Some(wm) = core.advance_watermark(p) {
                out.push((p, wm));
            }
        }
    }

    /// Appends to `out` a watermark for each partition of `assignment` without data: the
    /// slowest watermark of those with data, when it moved.
    pub fn cover_empty(
        &mut self,
        core: &impl WatermarkSource,
        assignment: &[u32],
        out: &mut Vec<(u32, i64)>,
    ) {
        let Some(wm) = assignment
            .iter()
            .filter_map(|p| core.published_watermark(*p))
            .min()
        else {
            return;
        };
        for &p in assignment {
            if !core.has_partition(p) && self.empty.get(&p).is_none_or(|w| *w < wm) {
                self.empty.insert(p, wm);
                out.push((p, wm));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Partitions with data and their (next, announced) watermarks.
    #[derive(Default)]
    struct Core(HashMap<u32, (i64, Option<i64>)>);

    impl WatermarkSource for Core {
        fn published_watermark(&self, p: u32) -> Option<i64> {
            self.0.get(&p)?.1
        }
        fn advance_watermark(&mut self, p: u32) -> Option<i64> {
            let (next, published) = self.0.get_mut(&p)?;
            if published.is_none_or(|w| w < *next) {
                *published = Some(*next);
                return Some(*next);
            }
            None
        }
        fn has_partition(&self, p: u32) -> bool {
            self.0.contains_key(&p)
        }
    }

    #[test]
    fn touched_partitions_announce_once_restored_ones_again_and_empty_ones_follow_the_slowest() {
        let mut core = Core::default();
        core.0.insert(0, (100, None));
        core.0.insert(1, (50, Some(50)));
        let mut a = Announcer::default();
        let mut out = Vec::new();

        a.touch(0);
        a.restored(1);
        a.announce(&mut core, &mut out);
        assert_eq!(out, vec![(1, 50), (0, 100)]);

        // Nothing moved: nothing to say.
        out.clear();
        a.touch(0);
        a.announce(&mut core, &mut out);
        assert!(out.is_empty());

        // Partition 2 has no data: it takes the slowest, once per move.
        a.cover_empty(&core, &[0, 1, 2], &mut out);
        assert_eq!(out, vec![(2, 50)]);
        out.clear();
        a.cover_empty(&core, &[0, 1, 2], &mut out);
        assert!(out.is_empty());
        core.0.get_mut(&1).unwrap().0 = 80;
        a.touch(1);
        a.announce(&mut core, &mut out);
        a.cover_empty(&core, &[0, 1, 2], &mut out);
        assert_eq!(out, vec![(1, 80), (2, 80)]);

        // A dropped partition is forgotten: taken back, it is announced afresh.
        a.drop_partition(2);
        out.clear();
        a.cover_empty(&core, &[0, 1, 2], &mut out);
        assert_eq!(out, vec![(2, 80)]);
    }
}
