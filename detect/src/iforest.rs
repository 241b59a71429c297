//! Isolation forest (Liu, Ting and Zhou, 2008): fit on a sample, score by mean path length.
//!
//! Faithful to the paper: each tree is grown on a subsample of ψ rows drawn without
//! replacement, to the height limit ⌈log₂ ψ⌉, splitting on a random feature at a value
//! drawn uniformly between that feature's minimum and maximum in the node. A point's path
//! length is the depth of the leaf it reaches plus c(size of that leaf), and its score is
//! s = 2^(−E[h] / c(ψ)). Randomness comes from a seeded generator of our own, so a forest
//! is reproducible across platforms and versions of Seismo.

use serde::{Deserialize, Serialize};

mod packed;

/// Forest settings; the defaults are the paper's.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ForestParams {
    pub trees: usize,
    /// Subsample size ψ.
    pub sample_size: usize,
    pub seed: u64,
}

impl Default for ForestParams {
    fn default() -> Self {
        ForestParams {
            trees: 100,
            sample_size: 256,
            seed: 0,
        }
    }
}

/// Euler–Mascheroni constant, for the harmonic number approximation H(i) ≈ ln i + γ.
const EULER_GAMMA: f64 = 0.577_215_664_901_532_9;

/// Average path length of an unsuccessful binary-search-tree lookup among `n` points:
/// c(n) = 2H(n−1) − 2(n−1)/n, with c(2) = 1 and c(n ≤ 1) = 0 (paper, eq. 1).
pub fn c(n: usize) -> f64 {
    match n {
        0 | 1 => 0.0,
        2 => 1.0,
        _ => {
            let n = n as f64;
            2.0 * ((n - 1.0).ln() + EULER_GAMMA) - 2.0 * (n - 1.0) / n
        }
    }
}

/// SplitMix64: tiny, fast, and fixed by its definition, unlike library generators whose
/// streams may change between versions.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in 0..n (n > 0), by Lemire's multiply-shift (bias below 2⁻³²·n).
    pub fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }
}

/// One node of a tree in a flat array, 8 bytes so a whole tree fits in the L1 cache.
/// Internal nodes keep their children at `left` and `left + 1`. A leaf points at itself
/// with a NaN split (no value, not even +∞, is `>=` it), so a traversal can take a fixed
/// number of steps without testing for leaves: it simply stays put once it arrives.
///
/// Values are compared as f32, as scikit-learn's trees do; that halves the memory a
/// traversal touches and changes no ranking that matters for isolation.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Node {
    #[serde(with = "split_serde")]
    split: f32,
    feature: u16,
    left: u16,
}

impl PartialEq for Node {
    fn eq(&self, o: &Node) -> bool {
        // Bitwise, so that leaves (NaN splits) compare equal to themselves.
        self.split.to_bits() == o.split.to_bits()
            && self.feature == o.feature
            && self.left == o.left
    }
}

/// Largest subsample: node indices must fit the 16-bit `left` (a tree has < 2ψ nodes).
pub const MAX_SAMPLE_SIZE: usize = 32_768;
/// Most features a forest accepts (16-bit feature index).
pub const MAX_FEATURES: usize = u16::MAX as usize;

/// Leaves split at NaN, which JSON cannot hold: it travels as `null`.
mod split_serde {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &f32, s: S) -> Result<S::Ok, S::Error> {
        if v.is_finite() {
            s.serialize_f32(*v)
        } else {
            s.serialize_none()
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f32, D::Error> {
        Ok(Option::<f32>::deserialize(d)?.unwrap_or(f32::NAN))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Tree {
    nodes: Vec<Node>,
    /// For each leaf, its path length: depth + c(points in the leaf); 0 for inner nodes.
    path: Vec<f64>,
    /// Depth of the deepest leaf: the number of steps every traversal takes.
    height: u32,
}

impl Tree {
    #[cfg(test)]
    fn is_leaf(&self, i: usize) -> bool {
        self.nodes[i].left as usize == i
    }

    fn leaf(&self, x: &[f64]) -> usize {
        let mut i = 0usize;
        for _ in 0..self.height {
            let n = self.nodes[i];
            // Children are adjacent (left, then right); a leaf loops onto itself.
            i = n.left as usize + usize::from(x[n.feature as usize] as f32 >= n.split);
        }
        i
    }
}

/// A fitted isolation forest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IsolationForest {
    trees: Vec<Tree>,
    features: usize,
    /// c(ψ), the normaliser of path lengths.
    c_psi: f64,
    /// Per-feature median of the rows the forest was fitted on, for explanations.
    medians: Vec<f64>,
    /// The forest repacked for batch scoring, built at the first batch and kept: a
    /// repack costs as much as scoring a few thousand rows. Forests scored a row at a
    /// time (the host model's) never build it.
    #[serde(skip)]
    packed: PackedOnce,
}

/// A forest's packed form, made at most once. Not part of the forest's value: two forests
/// are equal when their trees are.
#[derive(Debug, Clone, Default)]
struct PackedOnce(std::sync::OnceLock<Option<packed::Packed>>);

impl PartialEq for PackedOnce {
    fn eq(&self, _: &PackedOnce) -> bool {
        true
    }
}

/// Rows of a dense matrix, row-major.
#[derive(Debug, Clone, Copy)]
pub struct Rows<'a> {
    pub data: &'a [f64],
    pub features: usize,
}

impl<'a> Rows<'a> {
    pub fn new(data: &'a [f64], features: usize) -> Self {
        assert!(
            features > 0 && data.len().is_multiple_of(features),
            "data is not a whole number of rows"
        );
        Rows { data, features }
    }

    pub fn len(&self) -> usize {
        self.data.len() / self.features
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub fn row(&self, i: usize) -> &'a [f64] {
        &self.data[i * self.features..(i + 1) * self.features]
    }
}

impl IsolationForest {
    /// Grows a forest on `rows`.
    pub fn fit(rows: Rows<'_>, params: ForestParams) -> IsolationForest {
        let n = rows.len();
        assert!(n > 0, "cannot fit an isolation forest on no rows");
        assert!(
            rows.features <= MAX_FEATURES,
            "at most {MAX_FEATURES} features"
        );
        let psi = params.sample_size.clamp(1, n.min(MAX_SAMPLE_SIZE));
        let height_limit = (psi as f64).log2().ceil() as usize;
        let mut rng = Rng::new(params.seed);
        let mut pool: Vec<u32> = (0..n as u32).collect();
        let trees = (0..params.trees.max(1))
            .map(|_| {
                // Partial Fisher–Yates: the first ψ entries become a sample without replacement.
                for i in 0..psi {
                    let j = i + rng.below(n - i);
                    pool.swap(i, j);
                }
                let mut sample = pool[..psi].to_vec();
                grow(rows, &mut sample, height_limit, &mut rng)
            })
            .collect();
        let medians = (0..rows.features)
            .map(|f| {
                let mut v: Vec<f64> = (0..n.min(4096))
                    .map(|i| rows.row(i * n / n.min(4096))[f])
                    .collect();
                v.sort_by(f64::total_cmp);
                v[v.len() / 2]
            })
            .collect();
        IsolationForest {
            trees,
            features: rows.features,
            c_psi: c(psi),
            medians,
            packed: PackedOnce::default(),
        }
    }

    fn packed(&self) -> Option<&packed::Packed> {
        self.packed
            .0
            .get_or_init(|| packed::Packed::new(self))
            .as_ref()
    }

    pub fn features(&self) -> usize {
        self.features
    }

    /// Mean path length E[h(x)] over the trees.
    pub fn mean_path_length(&self, x: &[f64]) -> f64 {
        debug_assert_eq!(x.len(), self.features);
        let total: f64 = self.trees.iter().map(|t| t.path[t.leaf(x)]).sum();
        total / self.trees.len() as f64
    }

    /// Anomaly score s(x) = 2^(−E[h(x)]/c(ψ)) in (0, 1]: near 1 is anomalous, well below
    /// 0.5 is normal.
    pub fn score(&self, x: &[f64]) -> f64 {
        self.score_of_mean_path(self.mean_path_length(x))
    }

    /// s = 2^(−E[h]/c(ψ)); 0.5 when c(ψ) is 0 (a forest fitted on one row).
    fn score_of_mean_path(&self, mean: f64) -> f64 {
        if self.c_psi == 0.0 {
            return 0.5;
        }
        (-mean / self.c_psi).exp2()
    }

    /// Scores every row, on the forest repacked for batch work (see [`packed`]): complete
    /// trees over ranked inputs, walked 16 rows at a time with AVX-512 where the CPU has
    /// it, and 8 trees at a time with AVX2 where it has that. Scores agree with
    /// [`IsolationForest::score`] to within 10⁻⁶ (path lengths are summed in fixed point).
    pub fn score_rows(&self, rows: Rows<'_>) -> Vec<f64> {
        assert_eq!(rows.features, self.features, "rows have the wrong width");
        let Some(packed) = self.packed() else {
            return (0..rows.len()).map(|i| self.score(rows.row(i))).collect();
        };
        packed
            .path_sums(rows.data, rows.features)
            .into_iter()
            .map(|sum| self.score_of_mean_path(packed::mean_path(sum, self.trees.len())))
            .collect()
    }

    /// How much each feature contributed to `x`'s score: for each feature, the drop in
    /// score when that feature alone is replaced by its typical (median) value from the
    /// training sample. The weights sum to 1; all are zero when no single feature explains
    /// the score (then the combination of features is what is unusual).
    pub fn contributions(&self, x: &[f64]) -> Vec<f64> {
        drop_shares(x, &self.medians, |probe| self.score(probe))
    }
}

/// For each feature of `x`, how much `measure` drops when that feature alone is put back
/// at its `typical` value, as shares that sum to 1 (all zero when no single feature
/// explains the measure).
pub(crate) fn drop_shares(x: &[f64], typical: &[f64], measure: impl Fn(&[f64]) -> f64) -> Vec<f64> {
    let base = measure(x);
    let mut probe = x.to_vec();
    let mut w: Vec<f64> = (0..x.len())
        .map(|f| {
            probe[f] = typical[f];
            let drop = (base - measure(&probe)).max(0.0);
            probe[f] = x[f];
            drop
        })
        .collect();
    let total: f64 = w.iter().sum();
    if total > 0.0 {
        w.iter_mut().for_each(|v| *v /= total);
    }
    w
}

/// Grows one isolation tree over the sample (indices into `rows`), breadth first so that
/// each node's children sit next to each other.
fn grow(rows: Rows<'_>, sample: &mut [u32], height_limit: usize, rng: &mut Rng) -> Tree {
    let d = rows.features;
    let value = |r: u32, f: usize| rows.data[r as usize * d + f] as f32;
    let leaf = |at: usize| Node {
        split: f32::NAN,
        feature: 0,
        left: at as u16,
    };
    let mut nodes = vec![leaf(0)];
    let mut path = vec![0.0];
    let mut height = 0u32;
    // (node index, range of `sample`, depth)
    let mut queue = std::collections::VecDeque::from([(0usize, 0usize, sample.len(), 0usize)]);
    let mut order: Vec<usize> = (0..d).collect();
    while let Some((at, lo, hi, depth)) = queue.pop_front() {
        let part = &mut sample[lo..hi];
        let mut chosen = None;
        if depth < height_limit && part.len() > 1 {
            // The paper draws the split attribute at random. An attribute constant in this
            // node cannot split it, so keep drawing (without replacement) until one varies,
            // as scikit-learn does; if none varies the node is a leaf.
            for k in 0..d {
                let j = k + rng.below(d - k);
                order.swap(k, j);
                let f = order[k];
                let (mut min, mut max) = (f32::INFINITY, f32::NEG_INFINITY);
                for &r in part.iter() {
                    let v = value(r, f);
                    min = min.min(v);
                    max = max.max(v);
                }
                if max > min {
                    chosen = Some((f, min, max));
                    break;
                }
            }
        }
        let Some((f, min, max)) = chosen else {
            path[at] = depth as f64 + c(part.len());
            height = height.max(depth as u32);
            continue;
        };
        let (lo_v, hi_v) = (f64::from(min), f64::from(max));
        let mut split = (lo_v + rng.f64() * (hi_v - lo_v)) as f32;
        if split <= min {
            // Keep both sides non-empty: values >= split go right.
            split = min.next_up().min(max);
        }
        let mut mid = 0;
        for k in 0..part.len() {
            if value(part[k], f) < split {
                part.swap(k, mid);
                mid += 1;
            }
        }
        let left = nodes.len();
        nodes.push(leaf(left));
        nodes.push(leaf(left + 1));
        path.extend([0.0, 0.0]);
        nodes[at] = Node {
            split,
            feature: f as u16,
            left: left as u16,
        };
        queue.push_back((left, lo, lo + mid, depth + 1));
        queue.push_back((left + 1, lo + mid, hi, depth + 1));
    }
    Tree {
        nodes,
        path,
        height,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn c_matches_the_paper() {
        assert_eq!(c(0), 0.0);
        assert_eq!(c(1), 0.0);
        assert_eq!(c(2), 1.0);
        // c(256) = 2(ln 255 + γ) − 2·255/256 ≈ 10.2448
        assert!((c(256) - 10.244_770_920_116_851).abs() < 1e-9, "{}", c(256));
        // c grows like 2 ln n.
        assert!((c(1 << 20) - 2.0 * ((1u64 << 20) as f64).ln()).abs() < 1.0);
    }

    #[test]
    fn path_length_of_a_small_tree() {
        // Four points, three of them equal: one split isolates the odd one at depth 1
        // (path 1); the three equal points cannot be split and form a leaf (path 1 + c(3)).
        let data = [0.0, 10.0, 10.0, 10.0];
        let mut sample = vec![0, 1, 2, 3];
        let t = grow(Rows::new(&data, 1), &mut sample, 2, &mut Rng::new(0));
        assert!(t.nodes[0].split > 0.0 && t.nodes[0].split <= 10.0);
        assert_eq!(t.path[t.leaf(&[0.0])], 1.0);
        assert!((t.path[t.leaf(&[10.0])] - (1.0 + c(3))).abs() < 1e-12);
        assert_eq!(t.height, 1);
    }

    fn cluster(n: usize, rng: &mut Rng) -> Vec<f64> {
        (0..n * 2).map(|_| rng.f64() * 2.0 - 1.0).collect()
    }

    #[test]
    fn a_planted_outlier_scores_highest() {
        let mut rng = Rng::new(1);
        let mut data = cluster(1000, &mut rng);
        data.extend([8.0, 8.0]);
        let rows = Rows::new(&data, 2);
        let forest = IsolationForest::fit(
            rows,
            ForestParams {
                seed: 3,
                ..Default::default()
            },
        );
        let scores = forest.score_rows(rows);
        // The blocked scorer agrees with the one-row scorer.
        for i in [0, 17, 999, 1000] {
            assert!((scores[i] - forest.score(rows.row(i))).abs() < 1e-6);
        }
        let (best, _) = scores
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .unwrap();
        assert_eq!(best, 1000);
        assert!(scores[1000] > 0.7, "{}", scores[1000]);
        let mean: f64 = scores[..1000].iter().sum::<f64>() / 1000.0;
        // Inliers sit near 0.5, as with scikit-learn on the same data.
        assert!(mean < 0.55, "{mean}");
    }

    #[test]
    fn forests_too_tall_to_pack_are_scored_row_by_row() {
        let mut rng = Rng::new(5);
        let data = cluster(5000, &mut rng);
        let rows = Rows::new(&data, 2);
        // ψ = 4096: height 12, beyond what the packed form takes.
        let f = IsolationForest::fit(
            rows,
            ForestParams {
                trees: 10,
                sample_size: 4096,
                seed: 1,
            },
        );
        assert!(packed::Packed::new(&f).is_none());
        let scores = f.score_rows(rows);
        for i in [0, 1234, 4999] {
            assert_eq!(scores[i], f.score(rows.row(i)));
        }
    }

    #[test]
    fn same_seed_same_forest_other_seed_other_forest() {
        let mut rng = Rng::new(9);
        let data = cluster(500, &mut rng);
        let rows = Rows::new(&data, 2);
        let p = ForestParams {
            seed: 11,
            ..Default::default()
        };
        let a = IsolationForest::fit(rows, p);
        assert_eq!(a, IsolationForest::fit(rows, p));
        assert_ne!(
            a,
            IsolationForest::fit(rows, ForestParams { seed: 12, ..p })
        );
        // And it survives a checkpoint round trip exactly.
        let back: IsolationForest =
            serde_json::from_str(&serde_json::to_string(&a).unwrap()).unwrap();
        assert_eq!(a, back);
    }

    #[test]
    fn trees_respect_the_height_limit_and_sample_size() {
        let mut rng = Rng::new(2);
        let data = cluster(5000, &mut rng);
        let f = IsolationForest::fit(Rows::new(&data, 2), ForestParams::default());
        assert_eq!(f.trees.len(), 100);
        for t in &f.trees {
            // Depth ≤ ⌈log₂ 256⌉ = 8: a full binary tree of depth 8 has at most 511 nodes.
            assert!(t.height <= 8);
            assert!(t.nodes.len() <= 511);
            // A proper binary tree: leaves = inner nodes + 1.
            let leaves = (0..t.nodes.len()).filter(|&i| t.is_leaf(i)).count();
            assert_eq!(2 * leaves - 1, t.nodes.len());
        }
        // Every path ends within the limit, plus the c(size) correction.
        for x in [[0.0, 0.0], [5.0, -5.0]] {
            assert!(f.mean_path_length(&x) <= 8.0 + c(256));
        }
    }

    #[test]
    fn contributions_point_at_the_unusual_feature() {
        let mut rng = Rng::new(4);
        let mut data = cluster(1000, &mut rng);
        data.extend([0.0, 9.0]);
        let f = IsolationForest::fit(Rows::new(&data, 2), ForestParams::default());
        let w = f.contributions(&[0.0, 9.0]);
        assert!((w.iter().sum::<f64>() - 1.0).abs() < 1e-9);
        assert!(w[1] > 0.6, "{w:?}");
    }
}
