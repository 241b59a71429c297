//! A fitted forest repacked for batch scoring: complete trees of 32-bit nodes over ranked inputs.
//!
//! Each tree becomes a complete binary tree of height H (the forest's deepest leaf), so a
//! node's children are found by arithmetic (2i+1, 2i+2) instead of stored pointers. A leaf
//! shallower than H becomes a chain of "always left" nodes ending at its leftmost slot on
//! level H. A node is one `u32`: the split feature in the high half and, in the low half,
//! the split's rank among that feature's distinct split values across the whole forest.
//! Each input value is ranked once among its feature's splits ([`Ranker`]), after which a
//! test is `rank >= key` on small integers. That is what lets the AVX-512 kernel
//! ([`vector`]) hold a level's nodes and 16 rows' ranks in registers and walk 16 rows at
//! once with permutes.
//!
//! Path lengths are summed in fixed point (units of 2⁻¹⁶), so the portable and the vector
//! paths give bit-identical sums; the rounding moves a score by well under 10⁻⁶.

use super::{IsolationForest, Tree};

/// Fixed-point scale of leaf path lengths.
const SCALE: f64 = 65_536.0;
/// Tallest tree the packed form takes (2¹⁰ slots a tree); taller forests keep the plain walk.
const MAX_HEIGHT: u32 = 10;
/// Key of an "always left" node: no rank reaches it (ranks stay below it by construction).
const PASS: u32 = 0xFFFF;

/// The vector walks a process may use, narrowest first.
#[cfg(target_arch = "x86_64")]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Simd {
    None,
    Avx2,
    Avx512,
}

/// The widest walk allowed: the CPU's own unless `SEISMO_SIMD` (`avx2` or `none`) lowers
/// it, so that one machine can measure each walk side by side (an AVX-512 CPU standing in
/// for one with AVX2 only). Read once; any other value leaves the CPU's choice.
#[cfg(target_arch = "x86_64")]
fn simd_allowed() -> Simd {
    static ALLOWED: std::sync::OnceLock<Simd> = std::sync::OnceLock::new();
    *ALLOWED.get_or_init(|| match std::env::var("SEISMO_SIMD").as_deref() {
        Ok("none") => Simd::None,
        Ok("avx2") => Simd::Avx2,
        _ => Simd::Avx512,
    })
}

#[derive(Debug, Clone)]
pub(super) struct Packed {
    height: u32,
    /// Slots per tree: 2^H (2^H − 1 inner nodes, the last slot unused).
    stride: usize,
    trees: usize,
    nodes: Vec<u32>,
    /// Leaf path lengths in fixed point, `stride` per tree (2^H leaves).
    leaves: Vec<u32>,
    /// Per feature, its distinct split values and a way to rank a value among them.
    rankers: Vec<Ranker>,
    /// The trees again, 8 interleaved, for the AVX2 walk; `None` without AVX2, where the
    /// AVX-512 walk takes the forest, or where `SEISMO_SIMD` rules the AVX2 walk out.
    #[cfg(target_arch = "x86_64")]
    lanes: Option<avx2::Lanes>,
}

impl Packed {
    /// Repacks `forest`, or `None` when it falls outside what the packed form can hold
    /// (very tall trees, more than 65,534 distinct splits on one feature, sums that could
    /// overflow a 32-bit lane, or a NaN split).
    pub(super) fn new(forest: &IsolationForest) -> Option<Packed> {
        let d = forest.features;
        let height = forest.trees.iter().map(|t| t.height).max()?;
        if height > MAX_HEIGHT || d > u16::MAX as usize {
            return None;
        }
        // Every split as (order-preserving key, node number), sorted per feature: one pass
        // then gives both the distinct split values and each node's rank among them.
        let first: Vec<usize> = forest
            .trees
            .iter()
            .scan(0, |n, t| {
                let at = *n;
                *n += t.nodes.len();
                Some(at)
            })
            .collect();
        let mut by_feature: Vec<Vec<(u32, u32)>> = vec![Vec::new(); d];
        for (t, tree) in forest.trees.iter().enumerate() {
            for (i, n) in tree.nodes.iter().enumerate() {
                if n.left as usize != i {
                    // A feature that was −∞ in training gives a NaN split (−∞ + ∞), which
                    // no value reaches (`x >= NaN` is false) but which a rank would count
                    // past: such a forest keeps the plain walk.
                    if n.split.is_nan() {
                        return None;
                    }
                    by_feature[n.feature as usize]
                        .push((order_key(n.split), (first[t] + i) as u32));
                }
            }
        }
        let total =
            first.last().copied().unwrap_or(0) + forest.trees.last().map_or(0, |t| t.nodes.len());
        let mut node_rank = vec![0u16; total];
        let mut rankers = Vec::with_capacity(d);
        for mut v in by_feature {
            v.sort_unstable();
            let mut splits: Vec<f32> = Vec::new();
            let mut last = None;
            for (key, node) in v {
                if last != Some(key) {
                    if splits.len() + 1 >= PASS as usize {
                        return None;
                    }
                    splits.push(from_order_key(key));
                    last = Some(key);
                }
                // `x >= split` exactly when at least (index of split + 1) splits are <= x.
                node_rank[node as usize] = splits.len() as u16;
            }
            rankers.push(Ranker::new(splits));
        }
        let max_leaf = forest
            .trees
            .iter()
            .flat_map(|t| t.path.iter())
            .fold(0.0f64, |m, &p| m.max(p));
        // The vector kernel sums a row's path lengths over all trees in one u32 lane.
        if max_leaf * SCALE * forest.trees.len() as f64 >= f64::from(u32::MAX) {
            return None;
        }
        let stride = 1usize << height;
        let trees = forest.trees.len();
        let mut packed = Packed {
            height,
            stride,
            trees,
            // 16 spare slots: the vector kernel loads 16 nodes at a time.
            nodes: vec![0; trees * stride + 16],
            leaves: vec![0; trees * stride],
            rankers,
            #[cfg(target_arch = "x86_64")]
            lanes: None,
        };
        for (k, t) in forest.trees.iter().enumerate() {
            packed.nodes[k * stride..(k + 1) * stride].fill(PASS);
            packed.place(t, &node_rank[first[k]..], k * stride, 0, 0, 0);
        }
        #[cfg(target_arch = "x86_64")]
        {
            packed.lanes = avx2::Lanes::new(&packed);
        }
        Some(packed)
    }

    /// Copies `tree`'s node `at` (at `depth`) into complete slot `slot` of the tree at `base`.
    /// `rank[i]` is node i's key: its split's rank among the feature's splits, plus one.
    fn place(
        &mut self,
        tree: &Tree,
        rank: &[u16],
        base: usize,
        at: usize,
        slot: usize,
        depth: u32,
    ) {
        let n = tree.nodes[at];
        if n.left as usize == at {
            // A leaf: the "always left" chain below it (already PASS) ends at its leftmost
            // slot on the bottom level.
            let bottom = ((slot + 1) << (self.height - depth)) - 1;
            self.leaves[base + bottom - (self.stride - 1)] = (tree.path[at] * SCALE).round() as u32;
            return;
        }
        self.nodes[base + slot] = u32::from(n.feature) << 16 | u32::from(rank[at]);
        self.place(tree, rank, base, n.left as usize, 2 * slot + 1, depth + 1);
        self.place(
            tree,
            rank,
            base,
            n.left as usize + 1,
            2 * slot + 2,
            depth + 1,
        );
    }

    /// Writes the ranks of `row` (f32 comparisons, as in training) into `out`.
    fn rank_row(&self, row: &[f64], out: &mut [u16]) {
        for ((o, &x), r) in out.iter_mut().zip(row).zip(&self.rankers) {
            *o = r.rank(x as f32);
        }
    }

    /// Sums, for each row, the fixed-point path lengths over all trees.
    pub(super) fn path_sums(&self, data: &[f64], features: usize) -> Vec<u64> {
        #[cfg(target_arch = "x86_64")]
        if let Some(sums) = vector::path_sums(self, data, features) {
            return sums;
        }
        #[cfg(target_arch = "x86_64")]
        if let Some(sums) = avx2::path_sums(self, data, features) {
            return sums;
        }
        self.path_sums_blocked(data, features)
    }

    /// The walk for other CPUs (without AVX2, or not x86-64): a block of rows is ranked
    /// first, then each tree walks the whole block, [`LANES`] rows in step. One tree (4 KiB
    /// at height 10) stays in the L1 cache for the block instead of all trees being visited
    /// per row (400 KiB for 100 trees, from L2 at three times the latency), and the lanes'
    /// walks are independent chains of loads the core overlaps. Sums are integer, so they equal the reference
    /// walk's bit for bit.
    fn path_sums_blocked(&self, data: &[f64], features: usize) -> Vec<u64> {
        /// Rows per block: their ranks (2 bytes a feature) and sums stay in L1 beside a tree.
        const BLOCK: usize = 512;
        const LANES: usize = 8;
        let rows = data.len() / features.max(1);
        let mut sums = vec![0u64; rows];
        let mut ranks = vec![0u16; BLOCK * features];
        let bottom = self.stride - 1;
        for (b, out) in sums.chunks_mut(BLOCK).enumerate() {
            let n = out.len();
            for (k, r) in ranks.chunks_mut(features).take(n).enumerate() {
                let at = (b * BLOCK + k) * features;
                self.rank_row(&data[at..at + features], r);
            }
            for (t, tree) in self
                .nodes
                .chunks_exact(self.stride)
                .take(self.trees)
                .enumerate()
            {
                let leaves = &self.leaves[t * self.stride..(t + 1) * self.stride];
                let mut k = 0;
                while k < n {
                    let lanes = LANES.min(n - k);
                    let mut idx = [0usize; LANES];
                    for _ in 0..self.height {
                        for (l, i) in idx.iter_mut().enumerate().take(lanes) {
                            let node = tree[*i];
                            let r = ranks[(k + l) * features + (node >> 16) as usize];
                            *i = 2 * *i + 1 + usize::from(u32::from(r) >= (node & 0xFFFF));
                        }
                    }
                    for (o, i) in out[k..k + lanes].iter_mut().zip(&idx) {
                        *o += u64::from(leaves[i - bottom]);
                    }
                    k += lanes;
                }
            }
        }
        sums
    }

    /// The reference walk, one row at a time; the other walks must agree with it bit for bit.
    #[cfg(test)]
    fn path_sums_portable(&self, data: &[f64], features: usize) -> Vec<u64> {
        let mut ranks = vec![0u16; features];
        data.chunks(features)
            .map(|row| {
                self.rank_row(row, &mut ranks);
                self.row_sum(&ranks)
            })
            .collect()
    }

    #[cfg(test)]
    fn row_sum(&self, ranks: &[u16]) -> u64 {
        let mut sum = 0u64;
        for (t, tree) in self
            .nodes
            .chunks_exact(self.stride)
            .take(self.trees)
            .enumerate()
        {
            let mut i = 0usize;
            for _ in 0..self.height {
                let n = tree[i];
                let go_right = u32::from(ranks[(n >> 16) as usize]) >= (n & 0xFFFF);
                i = 2 * i + 1 + usize::from(go_right);
            }
            sum += u64::from(self.leaves[t * self.stride + i - (self.stride - 1)]);
        }
        sum
    }
}

/// Maps an f32 to a u32 whose unsigned order is `f32::total_cmp`'s.
fn order_key(x: f32) -> u32 {
    let b = x.to_bits();
    if b >> 31 == 1 { !b } else { b | 1 << 31 }
}

fn from_order_key(k: u32) -> f32 {
    f32::from_bits(if k >> 31 == 1 { k & !(1 << 31) } else { !k })
}

/// Ranks values among one feature's distinct split values: how many splits are `<=` the
/// value. NaN counts no split below it, so it goes left everywhere, as `x >= split` does.
///
/// A binary search over thousands of splits, for every feature of every row, cost a fifth
/// of the batch scoring time: each of its ~12 steps waits on the previous load. Instead the
/// splits are cut into chunks of 16, and the last split of each chunk forms the level
/// above, again in chunks of 16, up to a single chunk. A rank is then one count of
/// "splits <= x" in a 16-wide chunk per level (3 levels for 4,096 splits), and a 16-wide
/// count is one vector comparison.
#[derive(Debug, Clone)]
struct Ranker {
    /// Top level first. Each level is padded at the front with −∞ (`<=` every value but
    /// NaN) to whole chunks, `pad` of them, and at the back with one chunk of NaN (never
    /// `<=`), which a value above every entry lands in. An entry of a level is the last
    /// entry of a chunk of the level below.
    levels: Vec<Level>,
}

#[derive(Debug, Clone)]
struct Level {
    entries: Vec<f32>,
    pad: usize,
}

const CHUNK: usize = 16;

impl Ranker {
    fn new(splits: Vec<f32>) -> Ranker {
        let mut levels = Vec::new();
        let mut real = splits;
        loop {
            let pad = real.len().next_multiple_of(CHUNK).max(CHUNK) - real.len();
            let mut entries = vec![f32::NEG_INFINITY; pad];
            entries.extend(&real);
            let lasts: Vec<f32> = entries.chunks(CHUNK).map(|c| c[CHUNK - 1]).collect();
            entries.extend([f32::NAN; CHUNK]);
            let top = lasts.len() == 1;
            levels.push(Level { entries, pad });
            if top {
                break;
            }
            real = lasts;
        }
        levels.reverse();
        Ranker { levels }
    }

    /// Distinct split values, in increasing order.
    fn splits(&self) -> &[f32] {
        let bottom = &self.levels[self.levels.len() - 1];
        &bottom.entries[bottom.pad..bottom.entries.len() - CHUNK]
    }

    fn rank(&self, x: f32) -> u16 {
        // Chunks of the current level wholly <= x, known from the level above.
        let mut chunks = 0usize;
        let mut rank = 0usize;
        for level in &self.levels {
            let chunk = &level.entries[chunks * CHUNK..(chunks + 1) * CHUNK];
            let at = chunks * CHUNK + chunk.iter().filter(|&&s| s <= x).count();
            // NaN is `<=` nothing, not even the padding: it ranks 0 all the way down.
            rank = at.saturating_sub(level.pad);
            chunks = rank;
        }
        rank as u16
    }
}

/// Turns a fixed-point path sum over `trees` trees into the mean path length.
pub(super) fn mean_path(sum: u64, trees: usize) -> f64 {
    sum as f64 / SCALE / trees as f64
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod avx2 {
    //! The AVX2 walk, for x86-64 CPUs without AVX-512 (every one since 2013 has AVX2). The
    //! 8 lanes of a register are 8 trees walked by the same row, so the row's feature ranks
    //! (up to 32 features) sit in up to four registers and a lane's rank is picked by
    //! position with a permute, not gathered. The trees are stored 8 at a time with their
    //! nodes interleaved ([`Lanes`]): the first [`TOP`] levels' nodes of 8 trees are a few
    //! whole registers, picked per lane by blends, and only deeper nodes and the leaves
    //! are gathered. The walk it replaced put 8 rows in a register and so also gathered
    //! every row's rank at every level; on an AMD EPYC (Zen 3) it took 7.4 ns per row and
    //! tree on smtp and 8.9 ns on shuttle, against 3.8 and 4.9 ns here. Gathers set the
    //! pace of both: plain loads instead (each tree finishing alone in scalar code) were
    //! slower still, and so were more chains or more levels of blends. A block of rows is
    //! ranked first, a feature at a time, and each group of 8 trees (16 KiB at height 8)
    //! walks the whole block while it is in the L1 cache, [`CHAINS`] rows at once so that
    //! one gather's latency hides behind the others'.

    use super::{PASS, Packed};
    use std::arch::x86_64::*;

    /// Trees a register walks, one a lane.
    const LANES: usize = 8;
    /// Rows ranked at a time; a multiple of [`CHAINS`].
    const BLOCK: usize = 128;
    /// Rows that walk a group of trees together.
    const CHAINS: usize = 8;
    /// Levels whose nodes are picked from whole registers by blends (2^L − 1 blends at
    /// level L) instead of gathered. One level more or less measured the same.
    const TOP: u32 = 4;
    /// The walk holds each lane's slot plus this (see `step`).
    const AHEAD: i32 = 2;

    /// The packed trees 8 at a time: word `slot · 8 + lane` of group g is slot `slot` of
    /// tree 8g + lane (nodes and leaves alike). A node is re-encoded as its key above its
    /// feature (see `step`). A short last group is filled with trees that always go left
    /// to a leaf worth 0.
    #[derive(Debug, Clone)]
    pub(super) struct Lanes {
        nodes: Vec<u32>,
        leaves: Vec<u32>,
        groups: usize,
        /// Bits of the feature below a node's key.
        shift: u32,
    }

    impl Lanes {
        /// `None` when the CPU lacks AVX2, when the AVX-512 walk takes this forest (so
        /// its interleaved copy would never be read), or when a key above the feature
        /// would not fit 31 bits (over 32,768 features).
        pub(super) fn new(p: &Packed) -> Option<Lanes> {
            if super::simd_allowed() < super::Simd::Avx2 || super::vector::takes(p, p.rankers.len())
            {
                return None;
            }
            Self::build(p)
        }

        /// The interleaved copy wherever the CPU has AVX2, whichever walk would be used.
        pub(super) fn build(p: &Packed) -> Option<Lanes> {
            // POPCNT too: the ranker's chunk count uses it.
            if !is_x86_feature_detected!("avx2") || !is_x86_feature_detected!("popcnt") {
                return None;
            }
            let d = p.rankers.len();
            // Bits of a node's feature: 3 up to 8 features (K = 1), 4 up to 16, 5 up to 32,
            // else at least 6. The key above them must stay below 2^31.
            let shift = match d {
                0..=8 => 3,
                9..=16 => 4,
                17..=32 => 5,
                _ => (usize::BITS - (d - 1).leading_zeros()).max(6),
            };
            if shift > 15 {
                return None;
            }
            let encode = |n: u32| (n & 0xFFFF) << shift | n >> 16 | sign(shift, n >> 16);
            let groups = p.trees.div_ceil(LANES);
            let mut nodes = vec![encode(PASS); groups * p.stride * LANES];
            let mut leaves = vec![0; groups * p.stride * LANES];
            for t in 0..p.trees {
                let (g, lane) = (t / LANES, t % LANES);
                for s in 0..p.stride {
                    let at = (g * p.stride + s) * LANES + lane;
                    nodes[at] = encode(p.nodes[t * p.stride + s]);
                    leaves[at] = p.leaves[t * p.stride + s];
                }
            }
            Some(Lanes {
                nodes,
                leaves,
                groups,
                shift,
            })
        }
    }

    /// Bit 31 of a node and of a rank of feature `f`: where the row's ranks fill 2 or 4
    /// registers (S = 4 or 5), the feature's top register bit, so that a blend reads its
    /// choice from the node itself (the sign bit) with no shift. A node and the rank it is
    /// compared with always share the bit (the rank is of the node's feature), and two
    /// words with the same top bit compare as signed words exactly as their low 31 bits do.
    fn sign(shift: u32, f: u32) -> u32 {
        match shift {
            4 | 5 => (f >> (shift - 1) & 1) << 31,
            _ => 0,
        }
    }

    /// `None` when no [`Lanes`] were built (see [`Packed::lanes`]).
    pub(super) fn path_sums(p: &Packed, data: &[f64], d: usize) -> Option<Vec<u64>> {
        let lanes = p.lanes.as_ref()?;
        if d == 0 {
            return None;
        }
        // The ranker reads feature f of each row at f + k · d: rows must be the forest's
        // width (as `score_rows` asserts) for those reads to stay in their row.
        assert_eq!(d, p.rankers.len(), "rows have the wrong width");
        // Registers that hold a row's ranks; 0: wider rows gather them.
        let k = match lanes.shift {
            3 => 1,
            4 => 2,
            5 => 4,
            _ => 0,
        };
        let width = if k == 0 { d } else { 8 * k };
        let rows = data.len() / d;
        let mut sums = vec![0u64; rows];
        let mut ranks = vec![0u32; BLOCK * width];
        let mut acc = vec![[0u32; LANES]; BLOCK];
        for (b, out) in sums.chunks_mut(BLOCK).enumerate() {
            let n = out.len();
            let block = &data[b * BLOCK * d..(b * BLOCK + n) * d];
            for (f, ranker) in p.rankers.iter().enumerate() {
                // SAFETY: AVX2 and POPCNT are present (`Lanes` exist); `block` is whole
                // rows of `d` values (asserted above), every `f` below `d`, and at most
                // BLOCK rows, whose `width` words each `ranks` holds.
                unsafe { rank_column(ranker, block, d, f, lanes.shift, &mut ranks, width) };
            }
            // Rows past `n` keep stale or zero ranks: they walk to some leaf, unread.
            acc.fill([0; LANES]);
            let walked = n.next_multiple_of(CHAINS);
            // SAFETY: AVX2 is present (`Lanes` exist); `walked` <= BLOCK rows of `width`
            // ranks are in `ranks`; `walk` documents the rest of its bounds.
            unsafe {
                match k {
                    1 => walk::<1>(p, lanes, &ranks, width, walked, &mut acc),
                    2 => walk::<2>(p, lanes, &ranks, width, walked, &mut acc),
                    4 => walk::<4>(p, lanes, &ranks, width, walked, &mut acc),
                    _ => walk::<0>(p, lanes, &ranks, width, walked, &mut acc),
                }
            }
            for (o, a) in out.iter_mut().zip(&acc) {
                *o = a.iter().map(|&v| u64::from(v)).sum();
            }
        }
        Some(sums)
    }

    /// Adds every tree's leaf value to `acc` (lane l of a row's entry sums the trees
    /// 8g + l), for the first `rows` rows of `ranks` (`width` words a row: 8·K, or the
    /// feature count when K is 0).
    ///
    /// # Safety
    /// The CPU must support AVX2, `rows` must be at most `acc.len()` and `ranks.len() /
    /// width`. Every node load and gather stays in its group: a slot at level L < H is
    /// below 2^(L+1) − 1 <= 2^H − 1, so word slot · 8 + lane is below the group's
    /// 2^H · 8; a leaf's word is (slot − (2^H − 1)) · 8 + lane, also below it. The lanes
    /// hold slot + AHEAD, so the gathers' bases are moved back by AHEAD · 8 words (and
    /// the leaves' by (2^H − 1) · 8 more): each gathered address is still that word. A
    /// rank's feature is one the forest split on, below `d` <= `width`.
    #[target_feature(enable = "avx2")]
    unsafe fn walk<const K: usize>(
        p: &Packed,
        l: &Lanes,
        ranks: &[u32],
        width: usize,
        rows: usize,
        acc: &mut [[u32; LANES]],
    ) {
        debug_assert!(K == 0 || width == 8 * K);
        let lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        let words = p.stride * LANES;
        let h = p.height;
        let fmask = _mm256_set1_epi32((1 << l.shift) - 1);
        for g in 0..l.groups {
            let nodes = &l.nodes[g * words..(g + 1) * words];
            // Word (slot + AHEAD) · 8 + lane, for the slots walked; the leaves start at slot
            // 2^H − 1. Only the words actually gathered need be in the group.
            let node_base = nodes.as_ptr().wrapping_sub(AHEAD as usize * LANES) as *const i32;
            let leaf_base = l.leaves[g * words..]
                .as_ptr()
                .wrapping_sub((AHEAD as usize + p.stride - 1) * LANES)
                as *const i32;
            for first in (0..rows).step_by(CHAINS) {
                let row: [*const u32; CHAINS] =
                    std::array::from_fn(|c| ranks[(first + c) * width..].as_ptr());
                let mut slot = [_mm256_set1_epi32(AHEAD); CHAINS];
                // The levels picked from registers, one call a level (the level is a
                // constant of each), inlined so that the chains' slots stay in registers.
                // SAFETY: AVX2 is present; `row` as `walk` requires.
                unsafe {
                    if h > 0 {
                        top_level::<0, K>(nodes, &mut slot, &row, fmask);
                    }
                    if TOP > 1 && h > 1 {
                        top_level::<1, K>(nodes, &mut slot, &row, fmask);
                    }
                    if TOP > 2 && h > 2 {
                        top_level::<2, K>(nodes, &mut slot, &row, fmask);
                    }
                    if TOP > 3 && h > 3 {
                        top_level::<3, K>(nodes, &mut slot, &row, fmask);
                    }
                }
                for _ in TOP.min(h)..h {
                    for c in 0..CHAINS {
                        // SAFETY: see the function's bounds.
                        let node = unsafe {
                            _mm256_i32gather_epi32::<4>(
                                node_base,
                                _mm256_or_si256(_mm256_slli_epi32::<3>(slot[c]), lane),
                            )
                        };
                        slot[c] = unsafe { step::<K>(node, slot[c], row[c], fmask) };
                    }
                }
                for (c, s) in slot.iter().enumerate() {
                    let at = _mm256_or_si256(_mm256_slli_epi32::<3>(*s), lane);
                    // SAFETY: see the function's bounds.
                    let leaf = unsafe { _mm256_i32gather_epi32::<4>(leaf_base, at) };
                    let a = &mut acc[first + c];
                    store(a, _mm256_add_epi32(load(a), leaf));
                }
            }
        }
    }

    /// Level L (< [`TOP`]) for every chain: its nodes picked from registers by [`pick`].
    ///
    /// # Safety
    /// The CPU must support AVX2; each of `row` as [`step`] requires.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn top_level<const L: usize, const K: usize>(
        nodes: &[u32],
        slot: &mut [__m256i; CHAINS],
        row: &[*const u32; CHAINS],
        fmask: __m256i,
    ) {
        for c in 0..CHAINS {
            let node = pick::<L>(nodes, slot[c]);
            // SAFETY: as the caller promises.
            slot[c] = unsafe { step::<K>(node, slot[c], row[c], fmask) };
        }
    }

    /// One level: each lane goes from `slot` (plus AHEAD) to the child its row's rank picks
    /// at `node` (plus AHEAD).
    ///
    /// A node is its key above its feature (S bits, `fmask`), and a rank is stored as
    /// itself above S one-bits. So `node > rank` exactly when key > rank (with the feature
    /// at most 2^S − 1 the low bits cannot tip it), and no shift or mask is needed to
    /// compare; a permute reads the feature's low 3 bits from the node as it is, and a
    /// blend its register bit from the node's sign bit (see `sign`).
    ///
    /// # Safety
    /// `row` must point at the row's ranks: 8·K words, or (K = 0) at least as many as the
    /// forest has features.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn step<const K: usize>(
        node: __m256i,
        slot: __m256i,
        row: *const u32,
        fmask: __m256i,
    ) -> __m256i {
        // SAFETY: as the caller promises.
        let rank = unsafe { select::<K>(row, node, fmask) };
        // Right (2s + 2) when rank >= key, left (2s + 1) when key > rank: the comparison's
        // all-ones is −1. Node and rank share bit 31 (see `sign`), so the signed
        // comparison orders them as their low 31 bits, exactly. Held as
        // a = s + 2 (AHEAD), the child is 2a + (−1 or 0): one add fewer than 2s + 2 + (…).
        let left = _mm256_cmpgt_epi32(node, rank);
        _mm256_add_epi32(_mm256_add_epi32(slot, slot), left)
    }

    /// The nodes at `slot` − AHEAD (one a lane) among level L's 2^L slots, which start at slot
    /// 2^L − 1 and are 2^L whole registers of `nodes`. A tournament of blends on the
    /// slot's bits, the oldest decision first, so that only the last blend waits for the
    /// newest one.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn pick<const L: usize>(nodes: &[u32], slot: __m256i) -> __m256i {
        let first = (1 << L) - 1;
        let off = _mm256_sub_epi32(slot, _mm256_set1_epi32(first as i32 + AHEAD));
        let mut c: [__m256i; 8] = [_mm256_setzero_si256(); 8];
        for (i, r) in c.iter_mut().enumerate().take(1 << L) {
            *r = load(&nodes[(first + i) * LANES..(first + i + 1) * LANES]);
        }
        for b in (0..L).rev() {
            let mask = _mm256_castsi256_ps(_mm256_sll_epi32(off, _mm_cvtsi32_si128(31 - b as i32)));
            for i in 0..1 << b {
                c[i] = _mm256_castps_si256(_mm256_blendv_ps(
                    _mm256_castsi256_ps(c[i]),
                    _mm256_castsi256_ps(c[i + (1 << b)]),
                    mask,
                ));
            }
        }
        c[0]
    }

    /// Rows searched at once by [`rank_column`]: 8 a register, 4 registers whose gathers
    /// overlap (one search's next gather waits for its last).
    const RANK_ROWS: usize = 32;

    /// Ranks feature `f` of each row of `block` (`d` values a row) among its splits into
    /// word `f` of each row's `width` words of `ranks`, as [`super::Ranker::rank`] does.
    ///
    /// Whole groups of [`RANK_ROWS`] rows run a branchless binary search over the sorted
    /// splits, 8 rows a register: every lane halves the same length, so only the lanes'
    /// bases differ, and a step is one gather, one comparison and a masked add. Measured
    /// on shuttle (9 features), ranking took 22 % of the AVX2 scoring time with the
    /// 16-wide chunk count of [`super::Ranker`] a row at a time, which the rest of the
    /// rows still use.
    ///
    /// # Safety
    /// The CPU must support AVX2 and POPCNT; `block` holds whole rows of `d` > `f` values,
    /// at most `ranks.len() / width` of them, and 3 · `d` fits an i32 (the word offsets of
    /// a register's rows from row 8g + 4).
    #[target_feature(enable = "avx2,popcnt")]
    unsafe fn rank_column(
        r: &super::Ranker,
        block: &[f64],
        d: usize,
        f: usize,
        shift: u32,
        ranks: &mut [u32],
        width: usize,
    ) {
        // Below the rank, all ones where a node keeps its feature: see `step`; above it,
        // the feature's sign bit (see `sign`).
        let low = ((1u32 << shift) - 1) | sign(shift, f as u32);
        let rows = block.len() / d;
        let splits = r.splits();
        let searched = if splits.is_empty() {
            0
        } else {
            rows / RANK_ROWS * RANK_ROWS
        };
        const G: usize = RANK_ROWS / 8;
        // Word offsets of 8 consecutive rows' values of one feature.
        let row4 = _mm_mullo_epi32(_mm_setr_epi32(0, 1, 2, 3), _mm_set1_epi32(d as i32));
        let count = _mm_cvtsi32_si128(shift as i32);
        for first in (0..searched).step_by(RANK_ROWS) {
            let mut x = [_mm256_setzero_ps(); G];
            for (g, x) in x.iter_mut().enumerate() {
                let at = block[(first + 8 * g) * d + f..].as_ptr();
                // SAFETY: rows first + 8g .. + 8 are in `block`: their words k · d
                // from `at` (k < 8) are in it.
                let (lo, hi) = unsafe {
                    (
                        _mm256_i32gather_pd::<8>(at, row4),
                        _mm256_i32gather_pd::<8>(at.add(4 * d), row4),
                    )
                };
                // Rounded to f32 as `as f32` does (the default rounding mode).
                *x = _mm256_set_m128(_mm256_cvtpd_ps(hi), _mm256_cvtpd_ps(lo));
            }
            // Count of splits <= x: all splits below `base` are <= x, and the count is in
            // base ..= base + len. NaN is <= nothing and stays at 0.
            let mut base = [_mm256_setzero_si256(); G];
            let mut len = splits.len();
            let at = splits.as_ptr();
            while len > 1 {
                let half = len / 2;
                let probe = _mm256_set1_epi32(half as i32 - 1);
                let step = _mm256_set1_epi32(half as i32);
                for g in 0..G {
                    // SAFETY: base + len <= splits.len() throughout, and half − 1 < len.
                    let s =
                        unsafe { _mm256_i32gather_ps::<4>(at, _mm256_add_epi32(base[g], probe)) };
                    let le = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_LE_OQ>(s, x[g]));
                    base[g] = _mm256_add_epi32(base[g], _mm256_and_si256(le, step));
                }
                len -= half;
            }
            for g in 0..G {
                // SAFETY: len is 1, so base < splits.len().
                let s = unsafe { _mm256_i32gather_ps::<4>(at, base[g]) };
                let le = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_LE_OQ>(s, x[g]));
                let rank = _mm256_sub_epi32(base[g], le);
                let mut out = [0u32; LANES];
                store(
                    &mut out,
                    _mm256_or_si256(_mm256_sll_epi32(rank, count), _mm256_set1_epi32(low as i32)),
                );
                for (k, w) in out.into_iter().enumerate() {
                    ranks[(first + 8 * g + k) * width + f] = w;
                }
            }
        }
        for (k, row) in block.chunks_exact(d).enumerate().skip(searched) {
            let x = _mm256_set1_ps(row[f] as f32);
            let (mut chunks, mut rank) = (0usize, 0usize);
            for level in &r.levels {
                let c = &level.entries[chunks * 16..chunks * 16 + 16];
                // `s <= x`, false when either is NaN, as in `Ranker::rank`.
                let lo = _mm256_cmp_ps::<_CMP_LE_OQ>(loadf(&c[..8]), x);
                let hi = _mm256_cmp_ps::<_CMP_LE_OQ>(loadf(&c[8..]), x);
                let below = (_mm256_movemask_ps(lo) | _mm256_movemask_ps(hi) << 8).count_ones();
                rank = (chunks * 16 + below as usize).saturating_sub(level.pad);
                chunks = rank;
            }
            ranks[k * width + f] = (rank as u32) << shift | low;
        }
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    fn loadf(w: &[f32]) -> __m256 {
        let a: &[f32; 8] = w[..8].try_into().expect("8 floats");
        // SAFETY: `a` is 8 readable floats.
        unsafe { _mm256_loadu_ps(a.as_ptr()) }
    }

    /// Lane i's rank of feature f[i], from a row's ranks (8·K words at `row`, or
    /// gathered when K is 0).
    ///
    /// # Safety
    /// `row` must point at 8·K readable words, or (K = 0) at more words than any `f`.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn select<const K: usize>(row: *const u32, f: __m256i, fmask: __m256i) -> __m256i {
        // A permute reads the low 3 bits of the feature; the next bits pick the register.
        // SAFETY: the caller promises 8·K words.
        let perm = |k: usize| {
            _mm256_permutevar8x32_epi32(
                unsafe { _mm256_loadu_si256(row.add(8 * k) as *const __m256i) },
                f,
            )
        };
        let blend = |a: __m256i, b: __m256i, bit: i32| {
            let mask = _mm256_castsi256_ps(_mm256_sll_epi32(f, _mm_cvtsi32_si128(31 - bit)));
            _mm256_castps_si256(_mm256_blendv_ps(
                _mm256_castsi256_ps(a),
                _mm256_castsi256_ps(b),
                mask,
            ))
        };
        // The outer choice is the node's sign bit (see `sign`).
        let outer = |a: __m256i, b: __m256i| {
            _mm256_castps_si256(_mm256_blendv_ps(
                _mm256_castsi256_ps(a),
                _mm256_castsi256_ps(b),
                _mm256_castsi256_ps(f),
            ))
        };
        match K {
            1 => perm(0),
            2 => outer(perm(0), perm(1)),
            4 => outer(blend(perm(0), perm(1), 3), blend(perm(2), perm(3), 3)),
            // SAFETY: the feature is below the row's width (the caller's promise).
            _ => unsafe {
                _mm256_i32gather_epi32::<4>(row as *const i32, _mm256_and_si256(f, fmask))
            },
        }
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    fn load(w: &[u32]) -> __m256i {
        let a: &[u32; LANES] = w[..LANES].try_into().expect("8 words");
        // SAFETY: `a` is 8 readable words.
        unsafe { _mm256_loadu_si256(a.as_ptr() as *const __m256i) }
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    fn store(w: &mut [u32; LANES], x: __m256i) {
        // SAFETY: `w` is 8 writable words.
        unsafe { _mm256_storeu_si256(w.as_mut_ptr() as *mut __m256i, x) }
    }
}
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod vector {
    //! The AVX-512 walk. The 16 lanes of a register are 16 rows going down the same tree,
    //! level by level. Nothing is gathered from memory on the way down: the nodes of one
    //! level of the tree (at most 128) sit in up to eight registers and are picked by
    //! position with permutes, and the 16 rows' feature ranks (up to 16 features) sit in
    //! up to eight registers and are picked the same way; with a tree of height 8 the 256
    //! leaf values are picked from 16 registers too. Only wider rows' ranks and other
    //! heights' leaves are gathered. Zen 4 serves a 16-lane gather at about one element a
    //! cycle, which made an earlier kernel that gathered every node barely faster than
    //! scalar code.

    use super::Packed;
    use std::arch::x86_64::*;

    /// Most features at all: a word index (row · d + feature) must fit in 16 bits.
    const MAX_FEATURES: usize = 4096;
    /// Tallest tree: level 7's 128 nodes fill eight registers.
    const MAX_HEIGHT: u32 = 8;
    /// Rows ranked at a time, so their ranks stay in the L1 cache across all trees: 48
    /// vectors of 16, a multiple of every group size `walk` is run with.
    const BLOCK_ROWS: usize = 768;
    /// Vectors are padded to a multiple of this (every group size divides it).
    const GROUPS_DIVIDE: usize = 12;

    /// Whether this walk scores `p`'s rows of `d` features here: the CPU has AVX-512 (and
    /// it is allowed), and the forest is within the kernel's shape.
    pub(super) fn takes(p: &Packed, d: usize) -> bool {
        d != 0
            && d <= MAX_FEATURES
            && p.height <= MAX_HEIGHT
            && super::simd_allowed() >= super::Simd::Avx512
            && is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("popcnt")
    }

    /// `None` when [`takes`] says no.
    pub(super) fn path_sums(p: &Packed, data: &[f64], d: usize) -> Option<Vec<u64>> {
        if !takes(p, d) {
            return None;
        }
        let rows = data.len() / d;
        // Ranks of 16 rows fill `tables` 64-word tables, row-major (row · d + feature).
        let tables = (16 * d).div_ceil(64);
        let mut sums = vec![0u64; rows];
        // Two spare words: a gather reads 32 bits for each 16-bit rank.
        let mut ranks = vec![0u16; BLOCK_ROWS / 16 * tables * 64 + 2];
        let mut acc = vec![0u32; BLOCK_ROWS];
        let mut column = vec![0f32; BLOCK_ROWS];
        let mut column_ranks = vec![0u16; BLOCK_ROWS];
        for (b, out) in sums.chunks_mut(BLOCK_ROWS).enumerate() {
            let vectors = out.len().div_ceil(16);
            let first = b * BLOCK_ROWS;
            for f in 0..d {
                for (k, c) in column[..out.len()].iter_mut().enumerate() {
                    *c = data[(first + k) * d + f] as f32;
                }
                // SAFETY: the CPU has AVX-512F and POPCNT (checked above).
                unsafe { rank_many(&p.rankers[f], &column[..out.len()], &mut column_ranks) };
                for (k, &r) in column_ranks[..out.len()].iter().enumerate() {
                    ranks[(k / 16) * tables * 64 + (k % 16) * d + f] = r;
                }
            }
            let acc = &mut acc[..vectors.next_multiple_of(GROUPS_DIVIDE) * 16];
            acc.fill(0);
            // SAFETY: the CPU has AVX-512F and AVX-512BW (checked above); `walk` documents
            // why its gathers stay in bounds.
            unsafe {
                // Up to 16 features (4 tables, 8 registers) the ranks are held in
                // registers; wider rows have them gathered. Several vectors go down a tree
                // together so their latencies overlap, fewer when each needs more
                // registers (group sizes measured on the ODDS files: 6 vs 4 was 10-20%
                // faster with 1-2 tables, 3 vs 2 about 15% with 3 tables).
                match tables {
                    1 => walk::<1, 6>(p, d, &ranks, acc),
                    2 => walk::<2, 6>(p, d, &ranks, acc),
                    3 => walk::<3, 3>(p, d, &ranks, acc),
                    4 => walk::<4, 2>(p, d, &ranks, acc),
                    _ => walk::<0, 4>(p, d, &ranks, acc),
                }
            }
            for (o, a) in out.iter_mut().zip(acc.iter()) {
                *o = u64::from(*a);
            }
        }
        Some(sums)
    }

    /// Adds every tree's leaf value to `acc`, 16 rows a vector, `G` vectors at a time
    /// (`acc` holds a multiple of 16·G rows). The 16 rows' ranks are held in T tables of
    /// 64 words, or, when T is 0, gathered from `ranks`.
    ///
    /// # Safety
    /// The CPU must support AVX-512F and AVX-512BW. The raw reads are gathers:
    /// - leaves: lane l of a vector reads `leaves[t · 2^H + pos]`, where `pos` is the leaf's
    ///   position on level H, built from H bits (< 2^H), and t < trees; `leaves` holds
    ///   `trees · 2^H` entries;
    /// - ranks (T = 0): lane l reads the 32 bits at word l · d + f (f < d) of its vector's
    ///   ⌈16d/64⌉·64 words, so at most word 16d of that block; `ranks` holds a whole
    ///   number of blocks for every vector of `acc` plus two spare words.
    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn walk<const T: usize, const G: usize>(
        p: &Packed,
        d: usize,
        ranks: &[u16],
        acc: &mut [u32],
    ) {
        let one = _mm512_set1_epi32(1);
        let bit5 = _mm512_set1_epi32(32);
        let bit6 = _mm512_set1_epi32(64);
        let bit7 = _mm512_set1_epi32(128);
        // The same bits of a word index kept in the high half.
        let (word6, word7) = (_mm512_slli_epi32::<16>(bit6), _mm512_slli_epi32::<16>(bit7));
        // Where each lane's (row's) ranks start in the 16-row table, in the high half of
        // the lane, where nodes keep their feature.
        let row_at = _mm512_mullo_epi32(
            _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
            _mm512_set1_epi32((d as i32) << 16),
        );
        let leaves = p.leaves.as_ptr() as *const i32;
        let vector_words = (16 * d).div_ceil(64) * 64;
        debug_assert!(ranks.len() >= acc.len() / 16 * vector_words + 2);
        let vectors = acc.len() / 16;
        debug_assert_eq!(vectors % G, 0);
        for t in 0..p.trees {
            let tree = &p.nodes[t * p.stride..];
            let leaf_base = _mm512_set1_epi32((t * p.stride) as i32);
            for v0 in (0..vectors).step_by(G) {
                let mut x = [[_mm512_setzero_si512(); 8]; G];
                for (g, xg) in x.iter_mut().enumerate() {
                    let r = &ranks[(v0 + g) * vector_words..];
                    for (k, xk) in xg.iter_mut().enumerate().take(2 * T) {
                        *xk = load(&r[k * 32..k * 32 + 32]);
                    }
                }
                let mut pos = [_mm512_setzero_si512(); G];
                // One level: each lane's node is picked from the level's nodes (held in
                // `$regs` registers), then its feature's rank, and the lane steps down.
                macro_rules! level {
                    ($level:expr, $regs:literal, $pick:expr) => {{
                        let first = (1usize << $level) - 1;
                        let nodes: [__m512i; $regs] = std::array::from_fn(|k| {
                            load32(&tree[first + 16 * k..first + 16 * k + 16])
                        });
                        for g in 0..G {
                            let node: __m512i = $pick(&nodes, pos[g]);
                            // High half: the word holding this row's rank of the node's
                            // feature; low half: the node's key, kept by the permute.
                            let word = _mm512_add_epi32(row_at, node);
                            let rank = if T == 0 {
                                let block = ranks[(v0 + g) * vector_words..].as_ptr();
                                let at = _mm512_srli_epi32::<16>(word);
                                // SAFETY: in bounds, as documented above. The low half
                                // is the rank; the high half is the next word, dropped.
                                let both =
                                    unsafe { _mm512_i32gather_epi32::<2>(at, block as *const i32) };
                                _mm512_slli_epi32::<16>(both)
                            } else {
                                pick_rank::<T>(&x[g], word, word6, word7)
                            };
                            // rank·2¹⁶ + key >= key·2¹⁶ exactly when rank >= key.
                            let right =
                                _mm512_cmpge_epu32_mask(rank, _mm512_slli_epi32::<16>(node));
                            let twice = _mm512_add_epi32(pos[g], pos[g]);
                            pos[g] = _mm512_mask_add_epi32(twice, right, twice, one);
                        }
                    }};
                }
                for l in 0..p.height.min(5) {
                    level!(l, 1, |n: &[__m512i; 1], at| _mm512_permutexvar_epi32(
                        at, n[0]
                    ));
                }
                if p.height > 5 {
                    level!(5, 2, |n: &[__m512i; 2], at| _mm512_permutex2var_epi32(
                        n[0], at, n[1]
                    ));
                }
                if p.height > 6 {
                    level!(6, 4, |n: &[__m512i; 4], at| pick64(n, at, bit5));
                }
                if p.height > 7 {
                    level!(7, 8, |n: &[__m512i; 8], at| _mm512_mask_blend_epi32(
                        _mm512_test_epi32_mask(at, bit6),
                        pick64(&n[..4], at, bit5),
                        pick64(&n[4..], at, bit5)
                    ));
                }
                if p.height == 8 {
                    // The 256 leaves fill 16 registers; picking by permutes beats Zen 4's
                    // slow gathers.
                    let leaf_row = &p.leaves[t * 256..t * 256 + 256];
                    let table: [__m512i; 16] =
                        std::array::from_fn(|k| load32(&leaf_row[16 * k..16 * k + 16]));
                    for (g, out) in acc[v0 * 16..(v0 + G) * 16].chunks_exact_mut(16).enumerate() {
                        let leaf = pick256(&table, pos[g], bit5, bit6, bit7);
                        store32(out, _mm512_add_epi32(load32(out), leaf));
                    }
                } else {
                    for (g, out) in acc[v0 * 16..(v0 + G) * 16].chunks_exact_mut(16).enumerate() {
                        // SAFETY: in bounds, as documented above.
                        let leaf = unsafe {
                            _mm512_i32gather_epi32::<4>(_mm512_add_epi32(leaf_base, pos[g]), leaves)
                        };
                        store32(out, _mm512_add_epi32(load32(out), leaf));
                    }
                }
            }
        }
    }

    /// [`Ranker::rank`] for many values, with each chunk's count as one vector comparison.
    #[target_feature(enable = "avx512f,popcnt")]
    pub(super) fn rank_many(r: &super::Ranker, xs: &[f32], out: &mut [u16]) {
        // 16 values go down the levels together, so their chains of loads overlap.
        for (out, xs) in out.chunks_mut(16).zip(xs.chunks(16)) {
            let mut chunks = [0usize; 16];
            for level in &r.levels {
                for (c, &x) in chunks.iter_mut().zip(xs) {
                    let chunk: &[f32; 16] = level.entries[*c * 16..*c * 16 + 16]
                        .try_into()
                        .expect("chunk");
                    // SAFETY: `chunk` is 64 readable bytes; the load has no alignment
                    // requirement.
                    let s = unsafe { _mm512_loadu_ps(chunk.as_ptr()) };
                    // Ordered: a NaN on either side counts as not `<=`.
                    let le = _mm512_cmp_ps_mask::<_CMP_LE_OQ>(s, _mm512_set1_ps(x));
                    *c = (*c * 16 + le.count_ones() as usize).saturating_sub(level.pad);
                }
            }
            for (o, c) in out.iter_mut().zip(chunks) {
                *o = c as u16;
            }
        }
    }

    /// Picks from 256 slots (sixteen registers) by position.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn pick256(
        t: &[__m512i; 16],
        at: __m512i,
        bit5: __m512i,
        bit6: __m512i,
        bit7: __m512i,
    ) -> __m512i {
        let a: [__m512i; 8] =
            std::array::from_fn(|k| _mm512_permutex2var_epi32(t[2 * k], at, t[2 * k + 1]));
        let (m5, m6, m7) = (
            _mm512_test_epi32_mask(at, bit5),
            _mm512_test_epi32_mask(at, bit6),
            _mm512_test_epi32_mask(at, bit7),
        );
        let b: [__m512i; 4] =
            std::array::from_fn(|j| _mm512_mask_blend_epi32(m5, a[2 * j], a[2 * j + 1]));
        let c0 = _mm512_mask_blend_epi32(m6, b[0], b[1]);
        let c1 = _mm512_mask_blend_epi32(m6, b[2], b[3]);
        _mm512_mask_blend_epi32(m7, c0, c1)
    }

    /// Picks from 64 node slots (four registers) by position.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn pick64(t: &[__m512i], at: __m512i, bit5: __m512i) -> __m512i {
        _mm512_mask_blend_epi32(
            _mm512_test_epi32_mask(at, bit5),
            _mm512_permutex2var_epi32(t[0], at, t[1]),
            _mm512_permutex2var_epi32(t[2], at, t[3]),
        )
    }

    /// Picks each lane's 16-bit rank at the word index in the high half of `word` from the
    /// 16-row table (T tables of 64 words, two registers each), into the high half of the
    /// lane; the low half keeps `word`'s low half. `bit6` and `bit7` are those bits of the
    /// high half (which table).
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    fn pick_rank<const T: usize>(
        x: &[__m512i; 8],
        word: __m512i,
        bit6: __m512i,
        bit7: __m512i,
    ) -> __m512i {
        // Odd 16-bit words (high halves) are looked up; even ones are copied from `word`.
        const HIGH: __mmask32 = 0xAAAA_AAAA;
        let r0 = _mm512_mask2_permutex2var_epi16(x[0], word, HIGH, x[1]);
        if T == 1 {
            return r0;
        }
        let r1 = _mm512_mask2_permutex2var_epi16(x[2], word, HIGH, x[3]);
        let lo = _mm512_mask_blend_epi32(_mm512_test_epi32_mask(word, bit6), r0, r1);
        if T == 2 {
            return lo;
        }
        let r2 = _mm512_mask2_permutex2var_epi16(x[4], word, HIGH, x[5]);
        let r3 = if T == 4 {
            _mm512_mask2_permutex2var_epi16(x[6], word, HIGH, x[7])
        } else {
            r2
        };
        let hi = _mm512_mask_blend_epi32(_mm512_test_epi32_mask(word, bit6), r2, r3);
        _mm512_mask_blend_epi32(_mm512_test_epi32_mask(word, bit7), lo, hi)
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    fn load(words: &[u16]) -> __m512i {
        let a: &[u16; 32] = words.try_into().expect("32 ranks");
        // SAFETY: `a` is 64 readable bytes; the load has no alignment requirement.
        unsafe { _mm512_loadu_si512(a.as_ptr() as *const __m512i) }
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    fn load32(v: &[u32]) -> __m512i {
        let a: &[u32; 16] = v.try_into().expect("16 values");
        // SAFETY: `a` is 64 readable bytes; the load has no alignment requirement.
        unsafe { _mm512_loadu_si512(a.as_ptr() as *const __m512i) }
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    fn store32(v: &mut [u32], x: __m512i) {
        let a: &mut [u32; 16] = v.try_into().expect("16 values");
        // SAFETY: `a` is 64 writable bytes; the store has no alignment requirement.
        unsafe { _mm512_storeu_si512(a.as_mut_ptr() as *mut __m512i, x) }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{ForestParams, IsolationForest, Rng, Rows};
    use super::*;

    fn data(rows: usize, d: usize, seed: u64) -> Vec<f64> {
        let mut rng = Rng::new(seed);
        (0..rows * d)
            // Coarse values, so many rows sit exactly on split values and ties are tested.
            .map(|_| (rng.f64() * 20.0).round() - 10.0)
            .collect()
    }

    #[test]
    fn chunked_ranks_are_the_plain_count() {
        let mut rng = Rng::new(7);
        // Clustered splits (as on integer data) with far ones; lengths around each chunk
        // and level boundary.
        let all: Vec<f32> = (0..5000)
            .map(|_| (rng.below(20) as f64 + rng.f64()) as f32)
            .chain([1e6, f32::INFINITY, f32::NEG_INFINITY])
            .collect();
        for n in (1..40).chain([255, 256, 257, 4096, 4097, all.len()]) {
            let mut v = all[all.len() - n..].to_vec();
            v.sort_by(f32::total_cmp);
            v.dedup();
            let r = Ranker::new(v.clone());
            assert_eq!(r.splits(), &v[..]);
            let xs: Vec<f32> = (0..1000)
                .map(|_| (rng.f64() * 30.0 - 5.0) as f32)
                .chain(v.iter().copied())
                .chain([f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 1e7, -1e7])
                .collect();
            for &x in &xs {
                assert_eq!(
                    usize::from(r.rank(x)),
                    v.partition_point(|&s| s <= x),
                    "{x}"
                );
            }
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("popcnt")
            {
                let mut out = vec![0u16; xs.len()];
                // SAFETY: the CPU has AVX-512F and POPCNT (checked just above).
                #[allow(unsafe_code)]
                unsafe {
                    vector::rank_many(&r, &xs, &mut out)
                };
                let plain: Vec<u16> = xs.iter().map(|&x| r.rank(x)).collect();
                assert_eq!(out, plain);
            }
        }
        assert_eq!(Ranker::new(vec![]).rank(1.0), 0);
        assert_eq!(Ranker::new(vec![]).rank(f32::NAN), 0);
    }

    #[test]
    fn a_forest_trained_on_infinities_scores_as_its_trees_do() {
        // −∞ in training makes NaN splits (−∞ + ∞), which no value reaches; a rank would
        // count past them, so such a forest must keep the plain walk and score the same.
        let d = 3;
        let mut train = data(600, d, 3);
        for r in (0..600).step_by(7) {
            train[r * d] = f64::NEG_INFINITY;
        }
        let forest = IsolationForest::fit(
            Rows::new(&train, d),
            ForestParams {
                trees: 20,
                sample_size: 64,
                seed: 1,
            },
        );
        assert!(
            forest
                .trees
                .iter()
                .any(|t| t.nodes.iter().any(|n| n.split.is_nan())),
            "the set-up should make a NaN split"
        );
        assert!(Packed::new(&forest).is_none());
        let test = data(300, d, 4);
        let batch = forest.score_rows(Rows::new(&test, d));
        for (i, b) in batch.iter().enumerate() {
            assert_eq!(*b, forest.score(&test[i * d..(i + 1) * d]), "row {i}");
        }
    }

    #[test]
    fn packed_walk_reaches_the_same_leaves_as_the_tree_walk() {
        for (d, psi) in [
            (1, 256),
            (3, 256),
            (5, 32),
            (9, 64),
            (13, 256),
            (16, 256),
            (20, 256),
            (32, 128),
            (33, 256),
            (64, 256),
            (4, 1024),
            // Trees lower than the AVX2 walk's blended levels.
            (2, 8),
            (3, 2),
        ] {
            let train = data(2000, d, d as u64);
            let forest = IsolationForest::fit(
                Rows::new(&train, d),
                ForestParams {
                    trees: 37,
                    sample_size: psi,
                    seed: 5,
                },
            );
            let packed = Packed::new(&forest).unwrap();
            let mut test = data(1601, d, 99);
            test[0] = f64::NAN;
            test[d] = f64::INFINITY;
            test[2 * d] = f64::NEG_INFINITY;
            // The same sums, whichever walk the machine takes...
            let sums = packed.path_sums(&test, d);
            assert_eq!(sums, packed.path_sums_portable(&test, d), "d = {d}");
            assert_eq!(packed.path_sums_blocked(&test, d), sums, "d = {d}, blocked");
            #[cfg(target_arch = "x86_64")]
            if let Some(lanes) = avx2::Lanes::build(&packed) {
                // Built here even where the AVX-512 walk takes the forest, so that this
                // machine tests the AVX2 walk too.
                let mut with = packed.clone();
                with.lanes = Some(lanes);
                let v = avx2::path_sums(&with, &test, d).expect("AVX2 lanes are built");
                assert_eq!(v, sums, "d = {d}, avx2");
            }
            #[cfg(target_arch = "x86_64")]
            if packed.height <= 8
                && simd_allowed() == Simd::Avx512
                && std::arch::is_x86_feature_detected!("avx512bw")
            {
                // This machine does take the vector walk, so the comparison above tested it.
                assert!(vector::path_sums(&packed, &test, d).is_some());
            }
            // ...and they are the tree walk's path lengths, up to the fixed-point rounding.
            for (i, &s) in sums.iter().enumerate() {
                let exact: f64 = forest
                    .trees
                    .iter()
                    .map(|t| t.path[t.leaf(&test[i * d..(i + 1) * d])])
                    .sum();
                let packed = s as f64 / SCALE;
                assert!(
                    (packed - exact).abs() < 37.0 / SCALE,
                    "row {i}: {packed} vs {exact}"
                );
            }
        }
    }
}
