//! The approximate nearest-neighbour index: a hierarchical navigable small world graph (HNSW,
//! Malkov and Yashunin, "Efficient and robust approximate nearest neighbor search using
//! Hierarchical Navigable Small World graphs", 2016), written for how a collection uses it.
//!
//! Layout, chosen for the search's memory traffic (a walk is mostly distance computations, each on
//! a vector it has not read before, so it waits on memory more than it computes):
//! - the vectors of all nodes in one array, `dim` components a node, as half floats for cosine
//!   (unit vectors, see `metric.rs`) and `f32` otherwise;
//! - the bottom layer's links in one array, `2·M + 1` slots a node (a count, then the ids);
//! - the few upper layers' links per node.
//!
//! A search on the bottom layer takes a node's unvisited neighbours first, asks the CPU to fetch
//! their vectors (prefetch), then computes their distances, so the loads overlap instead of
//! waiting one after another. The query stays `f32`; the kernels widen the stored halves in
//! registers (`metric.rs`).
//!
//! Building follows the paper: a node's level is drawn from an exponential distribution (from a
//! seeded generator, so the same inputs in the same order give the same graph and the same file),
//! it is linked on each of its layers to neighbours chosen by the paper's heuristic (a candidate is
//! kept when it is nearer to the new node than to every neighbour kept so far), and a neighbour's
//! list that overflows is pruned with the same heuristic.
//!
//! Removing a key marks its node deleted: it still routes walks but is never an answer. A node
//! whose key is added again is a new node. A graph with more deleted nodes than live ones is
//! rebuilt by its owner (`index.rs`).
//!
//! The file format (little-endian) is written by [`Hnsw::write_to`] and read back by
//! [`Hnsw::from_bytes`], which checks every count and link against the sizes it declares, so a
//! damaged file is an error, never a wrong walk or a panic (`fuzz/fuzz_targets/hnsw.rs`).

use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashMap};
use std::io::Write;
use std::sync::Mutex;

use crate::metric::{self, Space};

const MAGIC: &[u8; 8] = b"ODHNSW\0\x01";
/// Layers above this are never drawn (with M ≥ 2, reaching even 16 is vanishingly unlikely).
const MAX_LEVEL: usize = 16;
/// Bounds on the parameters a graph accepts (and a file may declare).
const MAX_M: usize = 128;
pub(crate) const MAX_DIM: usize = 65_536;
/// The largest candidate list a graph builds or searches with (a collection's `ef_construction`
/// and `ef_search` are brought down to it).
const MAX_EF: usize = 4096;

/// A distance with the total order searches sort by.
#[derive(Clone, Copy, PartialEq)]
struct Scored(f32, u32);

impl Eq for Scored {}

impl PartialOrd for Scored {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Scored {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.total_cmp(&other.0).then(self.1.cmp(&other.1))
    }
}

/// Which nodes a search has reached, reset in O(1) by bumping the stamp.
struct Visited {
    marks: Vec<u32>,
    stamp: u32,
}

impl Visited {
    fn new() -> Visited {
        Visited { marks: Vec::new(), stamp: 0 }
    }

    fn reset(&mut self, nodes: usize) {
        if self.marks.len() < nodes {
            self.marks.resize(nodes, 0);
        }
        self.stamp = self.stamp.wrapping_add(1);
        if self.stamp == 0 {
            self.marks.iter_mut().for_each(|m| *m = 0);
            self.stamp = 1;
        }
    }

    /// Marks `n`; false when it already was.
    #[inline]
    fn insert(&mut self, n: u32) -> bool {
        let m = &mut self.marks[n as usize];
        if *m == self.stamp {
            false
        } else {
            *m = self.stamp;
            true
        }
    }
}

/// The stored vectors, `dim` components a node.
enum Vectors {
    Half(Vec<u16>),
    Full(Vec<f32>),
}

/// The parameters a graph is made with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Params {
    pub space: Space,
    pub dim: usize,
    pub m: usize,
    pub ef_construction: usize,
    pub ef_search: usize,
}

/// One collection's graph (see the module docs).
pub(crate) struct Hnsw {
    p: Params,
    /// Links a node keeps on the bottom layer (`2·M`).
    m0: usize,
    keys: Vec<u64>,
    levels: Vec<u8>,
    deleted: Vec<bool>,
    vectors: Vectors,
    /// `m0 + 1` a node: the count, then the neighbours.
    links0: Vec<u32>,
    /// Per node, `M + 1` a layer above the bottom one.
    upper: Vec<Vec<u32>>,
    node_of: HashMap<u64, u32>,
    entry: Option<u32>,
    top: usize,
    rng: u64,
    /// Reusable visit marks, one taken per search.
    pool: Mutex<Vec<Visited>>,
}

/// What [`Hnsw::from_bytes`] refuses.
pub(crate) type LoadError = String;

impl Hnsw {
    /// An empty graph; parameters out of range are brought into range.
    pub fn new(p: Params) -> Hnsw {
        let m = p.m.clamp(2, MAX_M);
        let p = Params {
            m,
            ef_construction: p.ef_construction.clamp(m, MAX_EF),
            ef_search: p.ef_search.clamp(1, MAX_EF),
            dim: p.dim.clamp(1, MAX_DIM),
            ..p
        };
        Hnsw {
            p,
            m0: 2 * m,
            keys: Vec::new(),
            levels: Vec::new(),
            deleted: Vec::new(),
            vectors: if p.space.half() { Vectors::Half(Vec::new()) } else { Vectors::Full(Vec::new()) },
            links0: Vec::new(),
            upper: Vec::new(),
            node_of: HashMap::new(),
            entry: None,
            top: 0,
            rng: 0x9e37_79b9_7f4a_7c15,
            pool: Mutex::new(Vec::new()),
        }
    }

    /// Live (not removed) keys.
    pub fn len(&self) -> usize {
        self.node_of.len()
    }

    /// Nodes, removed ones included.
    pub fn nodes(&self) -> usize {
        self.keys.len()
    }

    /// Removed nodes still in the graph.
    pub fn removed(&self) -> usize {
        self.nodes() - self.len()
    }

    /// Vector length.
    pub fn dimensions(&self) -> usize {
        self.p.dim
    }

    /// Sets the search's candidate list size (at least 1).
    pub fn set_ef_search(&mut self, ef: usize) {
        self.p.ef_search = ef.clamp(1, MAX_EF);
    }

    /// Whether `key` is live.
    #[cfg(test)]
    pub fn contains(&self, key: u64) -> bool {
        self.node_of.contains_key(&key)
    }

    /// Room for `extra` more nodes without reallocating.
    pub fn reserve(&mut self, extra: usize) {
        self.keys.reserve(extra);
        self.levels.reserve(extra);
        self.deleted.reserve(extra);
        self.links0.reserve(extra * (self.m0 + 1));
        self.upper.reserve(extra);
        match &mut self.vectors {
            Vectors::Half(v) => v.reserve(extra * self.p.dim),
            Vectors::Full(v) => v.reserve(extra * self.p.dim),
        }
    }

    /// Removes `key`; false when it was not there.
    pub fn remove(&mut self, key: u64) -> bool {
        match self.node_of.remove(&key) {
            Some(n) => {
                self.deleted[n as usize] = true;
                true
            }
            None => false,
        }
    }

    /// The stored vector of `key` as `f32` (unit length for cosine; rounded to half precision).
    pub fn get(&self, key: u64) -> Option<Vec<f32>> {
        let n = *self.node_of.get(&key)? as usize;
        let d = self.p.dim;
        Some(match &self.vectors {
            Vectors::Half(v) => v[n * d..(n + 1) * d].iter().map(|h| metric::f16_to_f32(*h)).collect(),
            Vectors::Full(v) => v[n * d..(n + 1) * d].to_vec(),
        })
    }

    /// Distance from a query (already as the index compares it) to node `n`.
    #[inline]
    fn dist_q(&self, q: &[f32], n: u32) -> f32 {
        let (d, n) = (self.p.dim, n as usize);
        match &self.vectors {
            Vectors::Half(v) => self.p.space.query_half(q, &v[n * d..(n + 1) * d]),
            Vectors::Full(v) => self.p.space.query_full(q, &v[n * d..(n + 1) * d]),
        }
    }

    /// Distance between two nodes.
    #[inline]
    fn dist_n(&self, a: u32, b: u32) -> f32 {
        let (d, a, b) = (self.p.dim, a as usize, b as usize);
        match &self.vectors {
            Vectors::Half(v) => self.p.space.half_half(&v[a * d..(a + 1) * d], &v[b * d..(b + 1) * d]),
            Vectors::Full(v) => self.p.space.query_full(&v[a * d..(a + 1) * d], &v[b * d..(b + 1) * d]),
        }
    }

    /// Asks the CPU to start loading node `n`'s vector.
    #[inline]
    fn prefetch(&self, n: u32) {
        let (d, n) = (self.p.dim, n as usize);
        match &self.vectors {
            Vectors::Half(v) => metric::prefetch(&v[n * d..(n + 1) * d]),
            Vectors::Full(v) => metric::prefetch(&v[n * d..(n + 1) * d]),
        }
    }

    /// Asks the CPU to start loading node `n`'s links on `layer`.
    #[inline]
    fn prefetch_links(&self, n: u32, layer: usize) {
        if layer == 0 {
            let at = n as usize * (self.m0 + 1);
            metric::prefetch(&self.links0[at..at + self.m0 + 1]);
        }
    }

    /// The links of node `n` on `layer`.
    #[inline]
    fn links(&self, n: u32, layer: usize) -> &[u32] {
        let n = n as usize;
        let list = if layer == 0 {
            let at = n * (self.m0 + 1);
            &self.links0[at..at + self.m0 + 1]
        } else {
            let at = (layer - 1) * (self.p.m + 1);
            &self.upper[n][at..at + self.p.m + 1]
        };
        &list[1..1 + list[0] as usize]
    }

    fn set_links(&mut self, n: u32, layer: usize, to: &[u32]) {
        let n = n as usize;
        let list = if layer == 0 {
            let at = n * (self.m0 + 1);
            &mut self.links0[at..at + self.m0 + 1]
        } else {
            let at = (layer - 1) * (self.p.m + 1);
            &mut self.upper[n][at..at + self.p.m + 1]
        };
        list[0] = to.len() as u32;
        list[1..1 + to.len()].copy_from_slice(to);
    }

    fn max_links(&self, layer: usize) -> usize {
        if layer == 0 { self.m0 } else { self.p.m }
    }

    fn random_level(&mut self) -> usize {
        // splitmix64
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        // Uniform in (0, 1].
        let u = ((z >> 11) + 1) as f64 / (1u64 << 53) as f64;
        let ml = 1.0 / (self.p.m as f64).ln();
        ((-u.ln() * ml) as usize).min(MAX_LEVEL)
    }

    fn take_visited(&self) -> Visited {
        self.pool.lock().unwrap_or_else(|e| e.into_inner()).pop().unwrap_or_else(Visited::new)
    }

    fn give_visited(&self, v: Visited) {
        self.pool.lock().unwrap_or_else(|e| e.into_inner()).push(v);
    }

    /// Adds `key` (replacing it when present) with vector `v` (as the index compares it: unit for
    /// cosine). `v` must have `dimensions()` components.
    pub fn add(&mut self, key: u64, v: &[f32]) {
        assert_eq!(v.len(), self.p.dim, "vector length must match the index");
        self.remove(key);
        let n = u32::try_from(self.keys.len()).expect("an index holds fewer than 2^32 nodes");
        let level = self.random_level();
        self.keys.push(key);
        self.levels.push(level as u8);
        self.deleted.push(false);
        match &mut self.vectors {
            Vectors::Half(s) => s.extend(v.iter().map(|x| metric::f32_to_f16(*x))),
            Vectors::Full(s) => s.extend_from_slice(v),
        }
        self.links0.resize(self.links0.len() + self.m0 + 1, 0);
        self.upper.push(vec![0; level * (self.p.m + 1)]);
        self.node_of.insert(key, n);
        let Some(entry) = self.entry else {
            self.entry = Some(n);
            self.top = level;
            return;
        };
        // For cosine the node is compared as stored (rounded to half precision), like every other.
        let q: Vec<f32> = match &self.vectors {
            Vectors::Half(_) => self.get(key).unwrap_or_else(|| v.to_vec()),
            Vectors::Full(_) => v.to_vec(),
        };
        let mut visited = self.take_visited();
        let mut cur = Scored(self.dist_q(&q, entry), entry);
        for layer in (level + 1..=self.top).rev() {
            cur = self.greedy(&q, cur, layer);
        }
        let mut eps = vec![cur];
        for layer in (0..=level.min(self.top)).rev() {
            let found = self.search_layer(&q, &eps, self.p.ef_construction, layer, &mut visited, |_| true);
            let chosen = self.select(&found, self.p.m);
            self.set_links(n, layer, &chosen);
            let max = self.max_links(layer);
            for &nb in &chosen {
                self.link(nb, n, layer, max);
            }
            eps = found;
        }
        self.give_visited(visited);
        if level > self.top {
            self.entry = Some(n);
            self.top = level;
        }
    }

    /// Adds `to` to `from`'s links on `layer`, pruning them to `max` with the heuristic.
    fn link(&mut self, from: u32, to: u32, layer: usize, max: usize) {
        let current = self.links(from, layer);
        if current.len() < max {
            let mut list = current.to_vec();
            list.push(to);
            self.set_links(from, layer, &list);
            return;
        }
        let mut cands: Vec<Scored> = current.iter().map(|&c| Scored(self.dist_n(from, c), c)).collect();
        cands.push(Scored(self.dist_n(from, to), to));
        cands.sort_unstable();
        let chosen = self.select(&cands, max);
        self.set_links(from, layer, &chosen);
    }

    /// The paper's neighbour heuristic over `cands` (sorted nearest first): a candidate is kept
    /// unless it is strictly nearer to one kept before it than to the base, up to `m`. (Ties are
    /// kept: with `>` instead, a node whose first neighbour is its exact duplicate would drop every
    /// other candidate, since each is exactly as far from both.)
    fn select(&self, cands: &[Scored], m: usize) -> Vec<u32> {
        let mut kept: Vec<u32> = Vec::with_capacity(m);
        for &Scored(d, c) in cands {
            if kept.len() >= m {
                break;
            }
            if kept.iter().all(|&k| self.dist_n(c, k) >= d) {
                kept.push(c);
            }
        }
        kept
    }

    /// Walks `layer` greedily from `cur` to the nearest node it can reach.
    fn greedy(&self, q: &[f32], mut cur: Scored, layer: usize) -> Scored {
        loop {
            let mut moved = false;
            for &nb in self.links(cur.1, layer) {
                let d = self.dist_q(q, nb);
                if d < cur.0 {
                    cur = Scored(d, nb);
                    moved = true;
                }
            }
            if !moved {
                return cur;
            }
        }
    }

    /// The best-first search of one layer from `eps`: up to `ef` nodes that `accept` takes, nearest
    /// first. Every node routes the walk; only accepted ones are answers.
    fn search_layer(
        &self,
        q: &[f32],
        eps: &[Scored],
        ef: usize,
        layer: usize,
        visited: &mut Visited,
        accept: impl Fn(u32) -> bool,
    ) -> Vec<Scored> {
        visited.reset(self.nodes());
        let mut frontier: BinaryHeap<Reverse<Scored>> = BinaryHeap::with_capacity((ef * 2).min(self.nodes() + 1));
        let mut best: BinaryHeap<Scored> = BinaryHeap::with_capacity((ef + 1).min(self.nodes() + 1));
        for &e in eps {
            if visited.insert(e.1) {
                frontier.push(Reverse(e));
                if accept(e.1) {
                    best.push(e);
                }
            }
        }
        while best.len() > ef {
            best.pop();
        }
        let mut fresh: Vec<u32> = Vec::with_capacity(self.m0);
        while let Some(Reverse(c)) = frontier.pop() {
            if best.len() >= ef && best.peek().is_some_and(|w| c.0 > w.0) {
                break;
            }
            fresh.clear();
            for &nb in self.links(c.1, layer) {
                if visited.insert(nb) {
                    self.prefetch(nb);
                    fresh.push(nb);
                }
            }
            for &nb in &fresh {
                let d = self.dist_q(q, nb);
                let full = best.len() >= ef;
                if !full || best.peek().is_some_and(|w| d < w.0) {
                    frontier.push(Reverse(Scored(d, nb)));
                    if accept(nb) {
                        best.push(Scored(d, nb));
                        if best.len() > ef {
                            best.pop();
                        }
                    }
                }
            }
            // The next node to expand: start loading its links.
            if let Some(Reverse(next)) = frontier.peek() {
                self.prefetch_links(next.1, layer);
            }
        }
        best.into_sorted_vec()
    }

    /// The `k` live keys nearest to `q` (as the index compares it) that `filter` accepts, nearest
    /// first, with their distances.
    pub fn search_filtered(&self, q: &[f32], k: usize, filter: impl Fn(u64) -> bool) -> Vec<(u64, f32)> {
        let Some(entry) = self.entry else { return Vec::new() };
        if k == 0 || q.len() != self.p.dim {
            return Vec::new();
        }
        let mut cur = Scored(self.dist_q(q, entry), entry);
        for layer in (1..=self.top).rev() {
            cur = self.greedy(q, cur, layer);
        }
        let mut visited = self.take_visited();
        let found = self.search_layer(q, &[cur], self.p.ef_search.max(k), 0, &mut visited, |n| {
            !self.deleted[n as usize] && filter(self.keys[n as usize])
        });
        self.give_visited(visited);
        found.into_iter().take(k).map(|s| (self.keys[s.1 as usize], s.0)).collect()
    }

    /// The `k` live keys nearest to `q`, nearest first.
    pub fn search(&self, q: &[f32], k: usize) -> Vec<(u64, f32)> {
        self.search_filtered(q, k, |_| true)
    }

    /// The `k` live keys nearest to `q` by comparing it with every vector.
    pub fn exact_search(&self, q: &[f32], k: usize) -> Vec<(u64, f32)> {
        if k == 0 || q.len() != self.p.dim {
            return Vec::new();
        }
        let mut best: BinaryHeap<Scored> = BinaryHeap::with_capacity(k + 1);
        for n in 0..self.nodes() as u32 {
            if self.deleted[n as usize] {
                continue;
            }
            let d = self.dist_q(q, n);
            if best.len() < k || best.peek().is_some_and(|w| d < w.0) {
                best.push(Scored(d, n));
                if best.len() > k {
                    best.pop();
                }
            }
        }
        best.into_sorted_vec().into_iter().map(|s| (self.keys[s.1 as usize], s.0)).collect()
    }

    /// Bytes [`Hnsw::write_to`] writes.
    pub fn serialized_len(&self) -> usize {
        let n = self.nodes();
        let elem = if self.p.space.half() { 2 } else { 4 };
        HEADER_LEN
            + n * (8 + 1 + 1)
            + self.links0.len() * 4
            + self.upper.iter().map(|u| u.len() * 4).sum::<usize>()
            + n * self.p.dim * elem
    }

    /// Writes the graph (the format [`Hnsw::from_bytes`] reads), a few bytes a call: give it a
    /// buffered writer.
    pub fn write_to(&self, w: &mut impl Write) -> std::io::Result<()> {
        let mut h = Vec::with_capacity(HEADER_LEN);
        h.extend_from_slice(MAGIC);
        for x in [self.p.space.code(), self.p.dim as u32, self.p.m as u32] {
            h.extend_from_slice(&x.to_le_bytes());
        }
        for x in [self.p.ef_construction as u32, self.p.ef_search as u32, self.top as u32] {
            h.extend_from_slice(&x.to_le_bytes());
        }
        for x in [self.nodes() as u64, self.entry.map_or(u64::MAX, u64::from), self.rng] {
            h.extend_from_slice(&x.to_le_bytes());
        }
        debug_assert_eq!(h.len(), HEADER_LEN);
        w.write_all(&h)?;
        for k in &self.keys {
            w.write_all(&k.to_le_bytes())?;
        }
        w.write_all(&self.levels)?;
        for d in &self.deleted {
            w.write_all(&[u8::from(*d)])?;
        }
        for x in self.links0.iter().chain(self.upper.iter().flatten()) {
            w.write_all(&x.to_le_bytes())?;
        }
        match &self.vectors {
            Vectors::Half(v) => v.iter().try_for_each(|x| w.write_all(&x.to_le_bytes())),
            Vectors::Full(v) => v.iter().try_for_each(|x| w.write_all(&x.to_le_bytes())),
        }
    }

    /// Reads a graph [`Hnsw::write_to`] wrote, for `expect` (space and dimension must match; the
    /// search's `ef` is taken from `expect`). Every size, count, level and link is checked.
    pub fn from_bytes(bytes: &[u8], expect: Params) -> Result<Hnsw, LoadError> {
        let mut r = Reader { b: bytes };
        if r.take(8)? != MAGIC {
            return Err("not an ondevice HNSW file (or another version)".into());
        }
        let space = r.u32()?;
        let dim = r.u32()? as usize;
        let m = r.u32()? as usize;
        let efc = r.u32()? as usize;
        let _ef = r.u32()?;
        let top = r.u32()? as usize;
        let nodes = r.u64()?;
        let entry = r.u64()?;
        let rng = r.u64()?;
        if space != expect.space.code() || dim != expect.dim {
            return Err("index file is for another distance or dimension".into());
        }
        if !(2..=MAX_M).contains(&m) || !(m..=MAX_EF).contains(&efc) || top > MAX_LEVEL {
            return Err("index file declares out-of-range parameters".into());
        }
        let elem = if expect.space.half() { 2 } else { 4 };
        let m0 = 2 * m;
        // Each node takes at least this much; a count the file cannot hold is refused before
        // anything is allocated for it.
        let per_node = 8 + 1 + 1 + (m0 + 1) * 4 + dim * elem;
        let nodes = usize::try_from(nodes).map_err(|_| "index file declares too many nodes")?;
        if nodes > u32::MAX as usize || nodes.checked_mul(per_node).is_none_or(|n| n > r.b.len()) {
            return Err("index file is shorter than the nodes it declares".into());
        }
        let entry = match entry {
            u64::MAX if nodes == 0 => None,
            e if (e as usize) < nodes => Some(e as u32),
            _ => return Err("index file's entry point is out of range".into()),
        };
        let mut g =
            Hnsw::new(Params { space: expect.space, dim, m, ef_construction: efc, ef_search: expect.ef_search });
        if g.p.m != m || g.p.dim != dim {
            return Err("index file declares out-of-range parameters".into());
        }
        g.rng = rng;
        g.top = top;
        g.entry = entry;
        g.keys = r.take(nodes * 8)?.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().unwrap())).collect();
        g.levels = r.take(nodes)?.to_vec();
        if g.levels.iter().any(|l| *l as usize > top) {
            return Err("index file has a node above the top layer".into());
        }
        if let Some(e) = entry
            && g.levels[e as usize] as usize != top
        {
            return Err("index file's entry point is not on the top layer".into());
        }
        g.deleted = r
            .take(nodes)?
            .iter()
            .map(|d| match d {
                0 => Ok(false),
                1 => Ok(true),
                _ => Err("index file has a damaged deletion mark".to_string()),
            })
            .collect::<Result<_, _>>()?;
        g.links0 = r.u32s(nodes * (m0 + 1))?;
        for n in 0..nodes {
            check_list(&g.links0[n * (m0 + 1)..(n + 1) * (m0 + 1)], m0, nodes)?;
        }
        let mut upper = Vec::with_capacity(nodes);
        for n in 0..nodes {
            let level = g.levels[n] as usize;
            let lists = r.u32s(level * (m + 1))?;
            for list in lists.chunks_exact(m + 1) {
                check_list(list, m, nodes)?;
            }
            upper.push(lists);
        }
        g.upper = upper;
        // Links on a layer may only point at nodes that are on it.
        for n in 0..nodes {
            for layer in 1..=g.levels[n] as usize {
                if g.links(n as u32, layer).iter().any(|&t| (g.levels[t as usize] as usize) < layer) {
                    return Err("index file links a node on a layer it is not on".into());
                }
            }
        }
        g.vectors = match r.take(nodes * dim * elem)? {
            b if elem == 2 => Vectors::Half(b.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect()),
            b => Vectors::Full(b.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()),
        };
        if !r.b.is_empty() {
            return Err("index file has bytes after its end".into());
        }
        let mut node_of = HashMap::with_capacity(nodes);
        for n in 0..nodes {
            if !g.deleted[n] && node_of.insert(g.keys[n], n as u32).is_some() {
                return Err("index file holds a key twice".into());
            }
        }
        g.node_of = node_of;
        Ok(g)
    }
}

const HEADER_LEN: usize = 8 + 6 * 4 + 3 * 8;

fn check_list(list: &[u32], max: usize, nodes: usize) -> Result<(), LoadError> {
    let count = list[0] as usize;
    if count > max || list[1..1 + count].iter().any(|&t| t as usize >= nodes) {
        return Err("index file has a damaged link list".into());
    }
    Ok(())
}

struct Reader<'a> {
    b: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], LoadError> {
        if n > self.b.len() {
            return Err("index file is cut short".into());
        }
        let (head, rest) = self.b.split_at(n);
        self.b = rest;
        Ok(head)
    }

    fn u32(&mut self) -> Result<u32, LoadError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }

    fn u64(&mut self) -> Result<u64, LoadError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }

    fn u32s(&mut self, n: usize) -> Result<Vec<u32>, LoadError> {
        let bytes = n.checked_mul(4).ok_or("index file is cut short")?;
        Ok(self.take(bytes)?.chunks_exact(4).map(|c| u32::from_le_bytes(c.try_into().unwrap())).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rng(seed: &mut u64) -> f32 {
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((*seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    /// Clustered data, like embeddings: a few centres, points around them.
    fn data(n: usize, dim: usize, seed: u64) -> Vec<Vec<f32>> {
        let mut s = seed;
        let centres: Vec<Vec<f32>> = (0..20).map(|_| (0..dim).map(|_| rng(&mut s)).collect()).collect();
        (0..n).map(|i| centres[i % centres.len()].iter().map(|c| c + 0.4 * rng(&mut s)).collect()).collect()
    }

    fn params(space: Space, dim: usize) -> Params {
        Params { space, dim, m: 16, ef_construction: 128, ef_search: 64 }
    }

    fn exact(space: Space, vs: &[Vec<f32>], q: &[f32], k: usize, live: impl Fn(usize) -> bool) -> Vec<u64> {
        let mut all: Vec<(f32, u64)> =
            vs.iter().enumerate().filter(|(i, _)| live(*i)).map(|(i, v)| (space.reference(q, v), i as u64)).collect();
        all.sort_by(|a, b| a.0.total_cmp(&b.0));
        all.into_iter().take(k).map(|x| x.1).collect()
    }

    fn recall(got: &[(u64, f32)], want: &[u64]) -> f64 {
        got.iter().filter(|(k, _)| want.contains(k)).count() as f64 / want.len() as f64
    }

    fn build(space: Space, vs: &[Vec<f32>]) -> Hnsw {
        let mut g = Hnsw::new(params(space, vs[0].len()));
        for (i, v) in vs.iter().enumerate() {
            g.add(i as u64, &space.prepare(v.clone()));
        }
        g
    }

    /// Recall@10 against exact search is high for every distance, the distances reported are the
    /// space's own, and the exact scan finds exactly the true neighbours.
    #[test]
    fn finds_the_true_neighbours() {
        for space in [Space::Cosine, Space::Dot, Space::L2] {
            let (n, dim) = (3000, 48);
            // Queries from the same distribution as the data (the points after the first `n`).
            let mut vs = data(n + 100, dim, 11);
            if space == Space::Dot {
                vs.iter_mut().for_each(|v| *v = Space::Cosine.prepare(v.clone()));
            }
            let queries = vs.split_off(n);
            let g = build(space, &vs);
            let mut total = 0.0;
            for q in &queries {
                let pq = space.prepare(q.clone());
                let want = exact(space, &vs, q, 10, |_| true);
                let got = g.search(&pq, 10);
                assert_eq!(got.len(), 10);
                assert!(got.windows(2).all(|w| w[0].1 <= w[1].1), "sorted nearest first");
                for (k, d) in &got {
                    let r = space.reference(q, &vs[*k as usize]);
                    assert!((d - r).abs() <= 2e-3 * r.abs().max(1.0), "{space:?}: {d} vs {r}");
                }
                total += recall(&got, &want);
                let ex = g.exact_search(&pq, 10);
                assert!(recall(&ex, &want) >= 0.9, "{space:?} exact scan: {ex:?} vs {want:?}");
            }
            let r = total / queries.len() as f64;
            assert!(r >= 0.97, "{space:?} recall@10 {r}");
        }
    }

    /// Removed keys are never answers but the graph still routes through them; a key added again
    /// answers with its new vector; filters restrict answers, not the walk.
    #[test]
    fn removal_re_adding_and_filters() {
        let space = Space::Cosine;
        let vs = data(2000, 32, 5);
        let mut g = build(space, &vs);
        for i in (0..2000).step_by(2) {
            assert!(g.remove(i as u64));
        }
        assert!(!g.remove(0));
        assert_eq!((g.len(), g.removed()), (1000, 1000));
        let q = vs[10].clone();
        let got = g.search(&space.prepare(q.clone()), 10);
        assert!(got.iter().all(|(k, _)| k % 2 == 1), "{got:?}");
        let want = exact(space, &vs, &q, 10, |i| i % 2 == 1);
        assert!(recall(&got, &want) >= 0.9, "{got:?} vs {want:?}");
        // Key 3 now points where key 10 was.
        g.add(3, &space.prepare(vs[10].clone()));
        assert_eq!(g.search(&space.prepare(vs[10].clone()), 1)[0].0, 3);
        assert!(g.contains(3) && !g.contains(10));
        let filtered = g.search_filtered(&space.prepare(q.clone()), 5, |k| k % 4 == 1);
        assert_eq!(filtered.len(), 5);
        assert!(filtered.iter().all(|(k, _)| k % 4 == 1), "{filtered:?}");
        let want = exact(space, &vs, &q, 5, |i| i % 4 == 1);
        assert!(recall(&filtered, &want) >= 0.8, "{filtered:?} vs {want:?}");
        let v = g.get(3).unwrap();
        let u = space.prepare(vs[10].clone());
        assert!(v.iter().zip(&u).all(|(a, b)| (a - b).abs() < 1e-3));
        assert!(g.get(10).is_none());
    }

    /// Exact duplicates (a re-ingested document's chunks, boilerplate) keep the graph connected:
    /// every node stays reachable, and a removed twin does not take its copy's links with it.
    #[test]
    fn duplicates_keep_the_graph_connected() {
        let space = Space::Cosine;
        let base = data(600, 16, 9);
        let mut g = Hnsw::new(params(space, 16));
        // Every vector three times, the older copies removed as a re-ingest does.
        for round in 0..3u64 {
            for (i, v) in base.iter().enumerate() {
                let key = round * 10_000 + i as u64;
                g.add(key, &space.prepare(v.clone()));
                if round > 0 {
                    g.remove(key - 10_000);
                }
            }
        }
        assert_eq!(g.len(), 600);
        let mut found = 0;
        for (i, v) in base.iter().enumerate() {
            let hits = g.search(&space.prepare(v.clone()), 1);
            found += usize::from(hits.first().map(|h| h.0) == Some(20_000 + i as u64));
        }
        assert!(found >= 594, "{found} of 600 live vectors found as their own nearest");
        // No node kept only a single link because its first neighbour was a copy of it.
        let single = (0..g.nodes() as u32).filter(|&n| g.links(n, 0).len() <= 1).count();
        assert!(single < g.nodes() / 50, "{single} nodes with at most one link");
    }

    /// Candidate list sizes are bounded, from a collection's settings and from a file.
    #[test]
    fn candidate_list_sizes_are_bounded() {
        let g = Hnsw::new(Params { ef_construction: usize::MAX, ef_search: usize::MAX, ..params(Space::L2, 4) });
        assert_eq!((g.p.ef_construction, g.p.ef_search), (MAX_EF, MAX_EF));
        let mut bytes = Vec::new();
        g.write_to(&mut bytes).unwrap();
        bytes[8 + 12..8 + 16].copy_from_slice(&u32::MAX.to_le_bytes()); // ef_construction
        assert!(Hnsw::from_bytes(&bytes, params(Space::L2, 4)).is_err());
    }

    /// A graph written and read back answers every query the same; the same inputs in the same
    /// order write the same bytes.
    #[test]
    fn file_round_trip_is_exact_and_reproducible() {
        for space in [Space::Cosine, Space::L2] {
            let vs = data(1500, 24, 3);
            let mut g = build(space, &vs);
            g.remove(7);
            let mut bytes = Vec::new();
            g.write_to(&mut bytes).unwrap();
            assert_eq!(bytes.len(), g.serialized_len());
            let mut again = Vec::new();
            build(space, &vs).tap_remove(7).write_to(&mut again).unwrap();
            assert_eq!(bytes, again, "{space:?}: same inputs, same file");
            let h = Hnsw::from_bytes(&bytes, params(space, 24)).unwrap();
            assert_eq!((h.len(), h.nodes()), (g.len(), g.nodes()));
            for q in data(30, 24, 8) {
                let q = space.prepare(q);
                assert_eq!(g.search(&q, 10), h.search(&q, 10));
            }
            let mut h = h;
            h.add(99_999, &space.prepare(vs[1].clone()));
            assert_eq!(h.search(&space.prepare(vs[1].clone()), 2).len(), 2);
            assert!(Hnsw::from_bytes(&bytes, params(Space::Dot, 24)).is_err());
            assert!(Hnsw::from_bytes(&bytes, params(space, 25)).is_err());
        }
    }

    /// The fuzz target's seed (`fuzz/seeds/vector_index/`) is a file this code writes and reads:
    /// `ONDEVICE_WRITE_FUZZ_SEED=1` rewrites it.
    #[test]
    fn fuzz_seed_is_a_current_file() {
        let space = Space::Cosine;
        let g = build(space, &data(40, 8, 2));
        let mut bytes = Vec::new();
        g.write_to(&mut bytes).unwrap();
        let seed = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds/vector_index/cosine-40x8");
        if std::env::var_os("ONDEVICE_WRITE_FUZZ_SEED").is_some() {
            std::fs::create_dir_all(seed.parent().unwrap()).unwrap();
            std::fs::write(&seed, &bytes).unwrap();
        }
        assert_eq!(std::fs::read(&seed).unwrap(), bytes, "rewrite the seed with ONDEVICE_WRITE_FUZZ_SEED=1");
        assert_eq!(crate::check_index_file(&bytes, ondevice_vector::Distance::Cosine), Ok(40));
        assert!(crate::check_index_file(&bytes, ondevice_vector::Distance::L2).is_err());
    }

    /// Every kind of damage is an error, never a panic or a graph that walks out of bounds.
    #[test]
    fn damaged_files_are_refused() {
        let space = Space::Cosine;
        let vs = data(300, 16, 4);
        let g = build(space, &vs);
        let mut bytes = Vec::new();
        g.write_to(&mut bytes).unwrap();
        let p = params(space, 16);
        for cut in [0, 7, 20, HEADER_LEN, HEADER_LEN + 5, bytes.len() / 2, bytes.len() - 1] {
            assert!(Hnsw::from_bytes(&bytes[..cut], p).is_err(), "cut at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(Hnsw::from_bytes(&longer, p).is_err());
        // A link to a node that does not exist.
        let links0_at = HEADER_LEN + 300 * 10;
        let mut bad = bytes.clone();
        bad[links0_at..links0_at + 4].copy_from_slice(&1u32.to_le_bytes());
        bad[links0_at + 4..links0_at + 8].copy_from_slice(&300u32.to_le_bytes());
        assert!(Hnsw::from_bytes(&bad, p).err().unwrap().contains("link"));
        // A count larger than a list holds.
        let mut bad = bytes.clone();
        bad[links0_at..links0_at + 4].copy_from_slice(&33u32.to_le_bytes());
        assert!(Hnsw::from_bytes(&bad, p).is_err());
        // A node count the file cannot hold.
        let mut bad = bytes.clone();
        bad[HEADER_LEN - 24..HEADER_LEN - 16].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(Hnsw::from_bytes(&bad, p).is_err());
        // Every single-byte change is either refused or reads into a graph that searches safely.
        let q = space.prepare(vs[0].clone());
        for at in (0..bytes.len()).step_by(7) {
            let mut b = bytes.clone();
            b[at] ^= 0x5a;
            if let Ok(h) = Hnsw::from_bytes(&b, p) {
                let _ = h.search(&q, 5);
            }
        }
    }

    /// The level distribution and therefore the file depend only on the inputs.
    #[test]
    fn empty_and_tiny_graphs() {
        let space = Space::L2;
        let mut g = Hnsw::new(params(space, 4));
        assert!(g.search(&[0.0; 4], 3).is_empty());
        assert!(g.exact_search(&[0.0; 4], 3).is_empty());
        let mut bytes = Vec::new();
        g.write_to(&mut bytes).unwrap();
        assert_eq!(Hnsw::from_bytes(&bytes, params(space, 4)).unwrap().len(), 0);
        g.add(5, &[1.0, 0.0, 0.0, 0.0]);
        assert_eq!(g.search(&[1.0, 0.0, 0.0, 0.0], 3), vec![(5, 0.0)]);
        assert!(g.search(&[1.0, 0.0], 3).is_empty(), "wrong length answers nothing");
        g.remove(5);
        assert!(g.search(&[1.0, 0.0, 0.0, 0.0], 3).is_empty());
    }

    impl Hnsw {
        fn tap_remove(mut self, key: u64) -> Hnsw {
            self.remove(key);
            self
        }
    }
}
