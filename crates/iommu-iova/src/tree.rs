//! The ordered range tree (Linux's `iova_domain` rbtree): allocated and
//! reserved ranges of granule frames, keyed by their first frame.
//!
//! Allocation searches top-down below a limit, starting where the last
//! allocation of the same class (32-bit or not) ended, so that packing
//! downwards costs a step to the neighbour rather than a walk over every
//! live range. A failed search below 4 GiB remembers its size: later 32-bit
//! requests of that size or larger fail at once until something below 4 GiB
//! is freed.
//!
//! The tree is a red-black tree with parent links whose nodes live in one
//! arena and are named by index, as Linux's are by pointer: the search
//! visits neighbours one step at a time, a new range is linked next to the
//! neighbour the search stopped at (no second descent), and the cached
//! search points are nodes, not keys to look up again. A `BTreeMap` would
//! need a fresh descent for each of those. The arena keeps its peak size;
//! freed nodes are reused.
//!
//! The tree is not synchronised; [`IovaDomain`](crate::IovaDomain) wraps it
//! in a lock.

use crate::{IovaError, IovaRange};
use alloc::vec::Vec;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Allocated,
    Reserved,
}

/// No node (Linux's `NULL`).
const NIL: u32 = u32::MAX;

/// The sides of a node, for the mirrored halves of rebalancing.
const LEFT: usize = 0;
const RIGHT: usize = 1;

#[derive(Clone, Copy, Debug)]
struct Node {
    pfn_lo: u64,
    pfn_hi: u64,
    left: u32,
    /// Also the next free node while the node is unused.
    right: u32,
    parent: u32,
    red: bool,
    kind: Kind,
}

/// A node of the tree, as the domain holds on to one between finding it
/// and removing it under the same lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct NodeRef(u32);

/// A request that found no room. Linux remembers only the size; the limit
/// and alignment are kept too so that a request with a higher limit, or an
/// unaligned one after an aligned failure, still gets a search.
#[derive(Clone, Copy, Debug)]
struct Failure {
    size: u64,
    limit: u64,
    aligned: bool,
}

impl Failure {
    /// Whether a request must fail because this one did: no larger room
    /// under a higher limit, and no looser alignment.
    fn implies(&self, size: u64, limit: u64, aligned: bool) -> bool {
        size >= self.size && limit <= self.limit && (aligned || !self.aligned)
    }
}

/// Allocated and reserved ranges, ordered by first frame.
#[derive(Debug)]
pub struct IovaTree {
    nodes: Vec<Node>,
    /// Unused nodes of the arena, linked through `right`.
    free: u32,
    root: u32,
    /// The node with the highest first frame.
    last: u32,
    /// The node with the lowest first frame: a space packed from the top
    /// down allocates below it, and its walks to and from the bottom of the
    /// tree (as deep as the tree) become one step.
    first: u32,
    len: usize,
    start_pfn: u64,
    max_pfn: u64,
    dma_32bit_pfn: u64,
    /// The last failed request, while no frame below 4 GiB has been freed
    /// since: 32-bit requests it implies must fail, fail at once.
    failed32: Option<Failure>,
    /// Where the next top-down search of each class starts: below this
    /// node, or from the limit when [`NIL`] (Linux's anchor node).
    cached: u32,
    cached32: u32,
}

/// `ceil(log2(size))` for `size >= 1`.
pub(crate) const fn order_base_2(size: u64) -> u32 {
    if size <= 1 {
        0
    } else {
        64 - (size - 1).leading_zeros()
    }
}

impl IovaTree {
    /// An empty tree handing out frames in `[start_pfn, max_pfn]`;
    /// `dma_32bit_pfn` is the first frame at or above 4 GiB.
    pub fn new(start_pfn: u64, max_pfn: u64, dma_32bit_pfn: u64) -> Self {
        Self {
            nodes: Vec::new(),
            free: NIL,
            root: NIL,
            last: NIL,
            first: NIL,
            len: 0,
            start_pfn,
            max_pfn,
            dma_32bit_pfn,
            failed32: None,
            cached: NIL,
            cached32: NIL,
        }
    }

    /// Number of ranges (allocated and reserved).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the tree holds no range at all.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    // ---- allocation --------------------------------------------------------

    /// Allocates `size` frames ending at or below `limit_pfn` (inclusive),
    /// aligned to `size` rounded up to a power of two when `size_aligned`.
    ///
    /// # Errors
    /// [`IovaError::InvalidSize`] for zero frames; [`IovaError::NoSpace`]
    /// when no gap fits (or, without remembering it as a failure, when no
    /// memory is left for the node).
    pub fn alloc(
        &mut self,
        size: u64,
        limit_pfn: u64,
        size_aligned: bool,
    ) -> Result<u64, IovaError> {
        self.reserve_nodes(1)?;
        let node = self.alloc_range(size, limit_pfn, size_aligned)?;
        Ok(self.node(node).pfn_lo)
    }

    /// [`alloc`](Self::alloc) with room for the node already reserved.
    #[inline]
    fn alloc_range(
        &mut self,
        size: u64,
        limit_pfn: u64,
        size_aligned: bool,
    ) -> Result<u32, IovaError> {
        if size == 0 {
            return Err(IovaError::InvalidSize);
        }
        // Exclusive limit, clamped to the domain.
        let limit = limit_pfn.min(self.max_pfn).saturating_add(1);
        let is32 = limit <= self.dma_32bit_pfn;
        if is32
            && self
                .failed32
                .is_some_and(|f| f.implies(size, limit, size_aligned))
        {
            return Err(IovaError::NoSpace);
        }
        let align_mask = if size_aligned {
            u64::MAX.checked_shl(order_base_2(size)).unwrap_or(0)
        } else {
            u64::MAX
        };
        let cached = if is32 { self.cached32 } else { self.cached };
        let (high, start) = match cached {
            NIL => (limit, self.last_below(limit)),
            c if self.node(c).pfn_lo <= limit => (self.node(c).pfn_lo, self.prev_or_nil(c)),
            _ => (limit, self.last_below(limit)),
        };
        let found = self
            .search(high, self.start_pfn, size, align_mask, start)
            .or_else(|| {
                // The cached point may sit below space freed since: search
                // the part above it once.
                if cached == NIL {
                    return None;
                }
                let retry_hi = self.node(cached).pfn_hi;
                if retry_hi >= limit {
                    return None;
                }
                self.search(
                    limit,
                    retry_hi + 1,
                    size,
                    align_mask,
                    self.last_below(limit),
                )
            });
        let Some((pfn_lo, pred)) = found else {
            self.failed32 = Some(Failure {
                size,
                limit,
                aligned: size_aligned,
            });
            return Err(IovaError::NoSpace);
        };
        let pfn_hi = pfn_lo + size - 1;
        let new = self.new_node(pfn_lo, pfn_hi, Kind::Allocated);
        self.insert_after(pred, new);
        if pfn_hi < self.dma_32bit_pfn {
            self.cached32 = new;
        } else {
            self.cached = new;
        }
        Ok(new)
    }

    /// Allocates `count` adjacent ranges of `size` frames as one block
    /// aligned to its whole size, ending at or below `limit_pfn`; returns the
    /// first frame of the block. Each range is its own node, freed on its own.
    ///
    /// # Errors
    /// As [`alloc`](Self::alloc) for the whole block.
    pub fn alloc_block(&mut self, size: u64, count: u64, limit_pfn: u64) -> Result<u64, IovaError> {
        let total = size.checked_mul(count).ok_or(IovaError::InvalidSize)?;
        let nodes = usize::try_from(count).map_err(|_| IovaError::NoSpace)?;
        self.reserve_nodes(nodes.max(1))?;
        let first_node = self.alloc_range(total, limit_pfn, true)?;
        let first = self.node(first_node).pfn_lo;
        if count > 1 {
            self.node_mut(first_node).pfn_hi = first + size - 1;
            let mut pred = first_node;
            for i in 1..count {
                let lo = first + i * size;
                let new = self.new_node(lo, lo + size - 1, Kind::Allocated);
                self.insert_after(pred, new);
                pred = new;
            }
        }
        Ok(first)
    }

    /// The highest aligned start of `size` free frames in `[low, high)`,
    /// looking down from `node` (the last node starting below `high`), with
    /// the node the new range goes after.
    #[inline(always)]
    fn search(
        &self,
        mut high: u64,
        low: u64,
        size: u64,
        align_mask: u64,
        mut node: u32,
    ) -> Option<(u64, u32)> {
        loop {
            let cand = high.checked_sub(size)? & align_mask;
            if cand < low {
                return None;
            }
            if node == NIL {
                return Some((cand, NIL));
            }
            let n = self.node(node);
            if cand > n.pfn_hi {
                return Some((cand, node));
            }
            high = high.min(n.pfn_lo);
            node = self.prev(node);
        }
    }

    // ---- lookup and free -------------------------------------------------

    /// The allocated range containing `pfn`.
    pub fn find(&self, pfn: u64) -> Option<IovaRange> {
        self.find_ref(pfn).map(|(_, r)| r)
    }

    /// The allocated node containing `pfn`, and its range.
    #[inline]
    pub(crate) fn find_ref(&self, pfn: u64) -> Option<(NodeRef, IovaRange)> {
        // Each class's search resumes at the range it allocated last, so a
        // short-lived range freed right after its allocation is found there
        // without a descent.
        let holds = |c: u32| c != NIL && self.node(c).pfn_lo <= pfn && pfn <= self.node(c).pfn_hi;
        let i = if holds(self.cached32) {
            self.cached32
        } else if holds(self.cached) {
            self.cached
        } else {
            self.last_at_or_below(pfn)
        };
        if i == NIL {
            return None;
        }
        let n = self.node(i);
        (n.kind == Kind::Allocated && pfn <= n.pfn_hi).then_some((
            NodeRef(i),
            IovaRange {
                pfn_lo: n.pfn_lo,
                pfn_hi: n.pfn_hi,
            },
        ))
    }

    /// Frees the allocated range containing `pfn` and returns it.
    ///
    /// # Errors
    /// [`IovaError::NotAllocated`] when no allocated range contains `pfn`
    /// (reserved ranges are never freed this way).
    pub fn free(&mut self, pfn: u64) -> Result<IovaRange, IovaError> {
        let (node, range) = self.find_ref(pfn).ok_or(IovaError::NotAllocated)?;
        self.remove(node);
        Ok(range)
    }

    /// Frees the allocated range that starts exactly at `pfn`; used for
    /// ranges coming back from the caches, which always name their start.
    pub(crate) fn free_exact(&mut self, pfn: u64) -> bool {
        match self.find_ref(pfn) {
            Some((node, r)) if r.pfn_lo == pfn => {
                self.remove(node);
                true
            }
            _ => false,
        }
    }

    /// Removes `node`, found by [`find_ref`](Self::find_ref) under the same
    /// lock.
    #[inline]
    pub(crate) fn remove(&mut self, node: NodeRef) {
        let i = node.0;
        let Node { pfn_lo, pfn_hi, .. } = *self.node(i);
        // Keep the cached search points valid (they must name live nodes):
        // a freed range at or above a cached point moves it to the next node up.
        // (The last node's "next" is known without climbing to the root.)
        let next_up = if i == self.last { NIL } else { self.next(i) };
        let c32 = self.cached32;
        if c32 != NIL
            && (c32 == i || (pfn_hi < self.dma_32bit_pfn && pfn_lo >= self.node(c32).pfn_lo))
        {
            self.cached32 = next_up;
        }
        if pfn_lo < self.dma_32bit_pfn {
            self.failed32 = None;
        }
        let c = self.cached;
        if c != NIL && (c == i || pfn_lo >= self.node(c).pfn_lo) {
            self.cached = next_up;
        }
        self.unlink(i);
    }

    // ---- reservations -----------------------------------------------------

    /// Reserves `[pfn_lo, pfn_hi]` so it is never handed out. Overlapping or
    /// adjacent reserved ranges merge into one.
    ///
    /// # Errors
    /// [`IovaError::InvalidRange`] when `pfn_lo > pfn_hi`;
    /// [`IovaError::Overlap`] when a live allocation overlaps the range;
    /// [`IovaError::NoSpace`] when no memory is left for the node. The tree
    /// is then unchanged.
    pub fn reserve(&mut self, pfn_lo: u64, pfn_hi: u64) -> Result<IovaRange, IovaError> {
        if pfn_lo > pfn_hi {
            return Err(IovaError::InvalidRange);
        }
        self.reserve_nodes(1)?;
        // Every node touching [lo - 1, hi + 1], walking down from the top.
        let mut merged = IovaRange { pfn_lo, pfn_hi };
        let top = self.last_at_or_below(pfn_hi.saturating_add(1));
        let mut i = top;
        while i != NIL && self.node(i).pfn_hi.saturating_add(1) >= pfn_lo {
            let n = *self.node(i);
            if n.kind == Kind::Allocated {
                if n.pfn_lo <= pfn_hi && n.pfn_hi >= pfn_lo {
                    return Err(IovaError::Overlap);
                }
            } else {
                merged.pfn_lo = merged.pfn_lo.min(n.pfn_lo);
                merged.pfn_hi = merged.pfn_hi.max(n.pfn_hi);
            }
            i = self.prev(i);
        }
        // Reserved ranges never touch each other, so the ones to merge are
        // exactly those touching the request.
        let mut i = top;
        while i != NIL && self.node(i).pfn_hi.saturating_add(1) >= pfn_lo {
            let below = self.prev(i);
            if self.node(i).kind == Kind::Reserved {
                self.remove(NodeRef(i));
            }
            i = below;
        }
        let new = self.new_node(merged.pfn_lo, merged.pfn_hi, Kind::Reserved);
        let pred = self.last_below(merged.pfn_lo);
        self.insert_after(pred, new);
        Ok(merged)
    }

    /// Whether a live allocation overlaps `[pfn_lo, pfn_hi]`.
    pub fn overlaps_allocation(&self, pfn_lo: u64, pfn_hi: u64) -> bool {
        let mut i = self.last_at_or_below(pfn_hi);
        while i != NIL && self.node(i).pfn_hi >= pfn_lo {
            if self.node(i).kind == Kind::Allocated {
                return true;
            }
            i = self.prev(i);
        }
        false
    }

    /// Every range in address order, with whether it is reserved.
    pub fn ranges(&self) -> impl Iterator<Item = (IovaRange, bool)> + '_ {
        let mut i = if self.root == NIL {
            NIL
        } else {
            self.leftmost(self.root)
        };
        core::iter::from_fn(move || {
            if i == NIL {
                return None;
            }
            let n = self.node(i);
            i = self.next(i);
            Some((
                IovaRange {
                    pfn_lo: n.pfn_lo,
                    pfn_hi: n.pfn_hi,
                },
                n.kind == Kind::Reserved,
            ))
        })
    }

    // ---- the arena ---------------------------------------------------------

    /// Makes sure `n` more nodes can be created without allocating.
    ///
    /// # Errors
    /// [`IovaError::NoSpace`] when the memory for them cannot be had.
    pub(crate) fn reserve_nodes(&mut self, n: usize) -> Result<(), IovaError> {
        let mut spare = 0;
        let mut f = self.free;
        while f != NIL && spare < n {
            spare += 1;
            f = self.node(f).right;
        }
        let more = n - spare;
        if more == 0 || self.nodes.capacity() - self.nodes.len() >= more {
            return Ok(());
        }
        if self.nodes.len() + more > NIL as usize {
            return Err(IovaError::NoSpace);
        }
        self.nodes.try_reserve(more).map_err(|_| IovaError::NoSpace)
    }

    /// A new red, unlinked node; room for it was reserved.
    fn new_node(&mut self, pfn_lo: u64, pfn_hi: u64, kind: Kind) -> u32 {
        let node = Node {
            pfn_lo,
            pfn_hi,
            left: NIL,
            right: NIL,
            parent: NIL,
            red: true,
            kind,
        };
        if self.free != NIL {
            let i = self.free;
            self.free = self.node(i).right;
            *self.node_mut(i) = node;
            return i;
        }
        debug_assert!(
            self.nodes.len() < self.nodes.capacity(),
            "node room reserved"
        );
        self.nodes.push(node);
        (self.nodes.len() - 1) as u32
    }

    #[inline]
    fn node(&self, i: u32) -> &Node {
        &self.nodes[i as usize]
    }

    #[inline]
    fn node_mut(&mut self, i: u32) -> &mut Node {
        &mut self.nodes[i as usize]
    }

    // ---- ordered navigation ----------------------------------------------

    fn leftmost(&self, mut i: u32) -> u32 {
        while self.node(i).left != NIL {
            i = self.node(i).left;
        }
        i
    }

    fn rightmost(&self, mut i: u32) -> u32 {
        while self.node(i).right != NIL {
            i = self.node(i).right;
        }
        i
    }

    /// The node after `i` in address order.
    #[inline]
    fn next(&self, mut i: u32) -> u32 {
        let r = self.node(i).right;
        if r != NIL {
            return self.leftmost(r);
        }
        loop {
            let p = self.node(i).parent;
            if p == NIL || self.node(p).left == i {
                return p;
            }
            i = p;
        }
    }

    /// The node before `i` in address order.
    #[inline]
    fn prev(&self, mut i: u32) -> u32 {
        let l = self.node(i).left;
        if l != NIL {
            return self.rightmost(l);
        }
        loop {
            let p = self.node(i).parent;
            if p == NIL || self.node(p).right == i {
                return p;
            }
            i = p;
        }
    }

    /// [`prev`](Self::prev), at once for the first node.
    #[inline]
    fn prev_or_nil(&self, i: u32) -> u32 {
        if i == self.first {
            NIL
        } else {
            self.prev(i)
        }
    }

    /// The last node whose first frame is at or below `pfn`.
    fn last_at_or_below(&self, pfn: u64) -> u32 {
        let last = self.last;
        if last != NIL && self.node(last).pfn_lo <= pfn {
            return last;
        }
        let (mut i, mut best) = (self.root, NIL);
        while i != NIL {
            let n = self.node(i);
            if n.pfn_lo <= pfn {
                best = i;
                i = n.right;
            } else {
                i = n.left;
            }
        }
        best
    }

    /// The last node whose first frame is below `pfn`.
    fn last_below(&self, pfn: u64) -> u32 {
        match pfn.checked_sub(1) {
            Some(p) => self.last_at_or_below(p),
            None => NIL,
        }
    }

    // ---- red-black linking -----------------------------------------------

    fn is_red(&self, i: u32) -> bool {
        i != NIL && self.node(i).red
    }

    fn set_parent(&mut self, i: u32, p: u32) {
        if i != NIL {
            self.node_mut(i).parent = p;
        }
    }

    /// Puts `new` where `old` hangs from its parent.
    fn replace_child(&mut self, parent: u32, old: u32, new: u32) {
        if parent == NIL {
            self.root = new;
        } else if self.node(parent).left == old {
            self.node_mut(parent).left = new;
        } else {
            self.node_mut(parent).right = new;
        }
    }

    /// Child `d` of `i`: [`LEFT`] or [`RIGHT`].
    #[inline]
    fn child(&self, i: u32, d: usize) -> u32 {
        let n = self.node(i);
        if d == LEFT {
            n.left
        } else {
            n.right
        }
    }

    #[inline]
    fn set_child(&mut self, i: u32, d: usize, c: u32) {
        let n = self.node_mut(i);
        if d == LEFT {
            n.left = c;
        } else {
            n.right = c;
        }
    }

    /// Rotates `x` down towards side `d`: its child on the other side
    /// takes its place (`rotate(x, LEFT)` is the usual left rotation).
    fn rotate(&mut self, x: u32, d: usize) {
        let y = self.child(x, 1 - d);
        let inner = self.child(y, d);
        self.set_child(x, 1 - d, inner);
        self.set_parent(inner, x);
        let xp = self.node(x).parent;
        self.node_mut(y).parent = xp;
        self.replace_child(xp, x, y);
        self.set_child(y, d, x);
        self.node_mut(x).parent = y;
    }

    /// Links `new` right after `pred` in address order (first of all when
    /// `pred` is [`NIL`]) and rebalances: no search, as Linux's insertion
    /// next to a known neighbour.
    #[inline]
    fn insert_after(&mut self, pred: u32, new: u32) {
        if self.root == NIL {
            self.root = new;
            self.last = new;
            self.first = new;
        } else if pred == NIL {
            // Below the lowest node, which has no left child.
            let first = self.first;
            self.node_mut(first).left = new;
            self.node_mut(new).parent = first;
            self.first = new;
        } else if self.node(pred).right == NIL {
            self.node_mut(pred).right = new;
            self.node_mut(new).parent = pred;
            if self.last == pred {
                self.last = new;
            }
        } else {
            let succ = self.leftmost(self.node(pred).right);
            self.node_mut(succ).left = new;
            self.node_mut(new).parent = succ;
        }
        self.len += 1;
        self.insert_fixup(new);
    }

    fn insert_fixup(&mut self, mut z: u32) {
        while self.is_red(self.node(z).parent) {
            let mut p = self.node(z).parent;
            // A red parent is never the root, so the grandparent exists.
            let g = self.node(p).parent;
            // The side `p` hangs on; the uncle is on the other.
            let d = if self.node(g).left == p { LEFT } else { RIGHT };
            let u = self.child(g, 1 - d);
            if self.is_red(u) {
                self.node_mut(p).red = false;
                self.node_mut(u).red = false;
                self.node_mut(g).red = true;
                z = g;
                continue;
            }
            if self.child(p, 1 - d) == z {
                self.rotate(p, d);
                z = p;
                p = self.node(z).parent;
            }
            self.node_mut(p).red = false;
            self.node_mut(g).red = true;
            self.rotate(g, 1 - d);
        }
        let root = self.root;
        self.node_mut(root).red = false;
    }

    /// Takes `z` out of the tree (other nodes keep their indices) and puts
    /// it on the free list.
    fn unlink(&mut self, z: u32) {
        if self.last == z {
            self.last = self.prev(z);
        }
        if self.first == z {
            self.first = self.next(z);
        }
        let Node {
            left: zl,
            right: zr,
            parent: zp,
            red: z_red,
            ..
        } = *self.node(z);
        // `x` moves into the place of the node taken out; `xp` is its parent.
        let (x, xp, removed_red);
        if zl == NIL || zr == NIL {
            x = if zl == NIL { zr } else { zl };
            xp = zp;
            removed_red = z_red;
            self.replace_child(zp, z, x);
            self.set_parent(x, zp);
        } else {
            // Two children: the successor takes `z`'s place and colour.
            let y = self.leftmost(zr);
            removed_red = self.node(y).red;
            x = self.node(y).right;
            if self.node(y).parent == z {
                xp = y;
            } else {
                xp = self.node(y).parent;
                self.replace_child(xp, y, x);
                self.set_parent(x, xp);
                self.node_mut(y).right = zr;
                self.node_mut(zr).parent = y;
            }
            self.replace_child(zp, z, y);
            self.node_mut(y).parent = zp;
            self.node_mut(y).left = zl;
            self.node_mut(zl).parent = y;
            self.node_mut(y).red = z_red;
        }
        if !removed_red {
            self.delete_fixup(x, xp);
        }
        self.len -= 1;
        let free = self.free;
        let n = self.node_mut(z);
        n.left = NIL;
        n.parent = NIL;
        n.right = free;
        self.free = z;
    }

    fn delete_fixup(&mut self, mut x: u32, mut xp: u32) {
        while x != self.root && !self.is_red(x) {
            // `x` is one black short, so its sibling is a real node. `d` is
            // the side `x` hangs on.
            let d = if self.node(xp).left == x { LEFT } else { RIGHT };
            let mut w = self.child(xp, 1 - d);
            if self.is_red(w) {
                self.node_mut(w).red = false;
                self.node_mut(xp).red = true;
                self.rotate(xp, d);
                w = self.child(xp, 1 - d);
            }
            // The sibling's children nearer to `x` and farther from it.
            let (near, far) = (self.child(w, d), self.child(w, 1 - d));
            if !self.is_red(near) && !self.is_red(far) {
                self.node_mut(w).red = true;
                x = xp;
                xp = self.node(x).parent;
                continue;
            }
            if !self.is_red(far) {
                self.node_mut(near).red = false;
                self.node_mut(w).red = true;
                self.rotate(w, 1 - d);
                w = self.child(xp, 1 - d);
            }
            self.node_mut(w).red = self.node(xp).red;
            self.node_mut(xp).red = false;
            let far = self.child(w, 1 - d);
            self.node_mut(far).red = false;
            self.rotate(xp, d);
            x = self.root;
        }
        if x != NIL {
            self.node_mut(x).red = false;
        }
    }

    /// Checks every structural rule (order, no overlap, red-black colours,
    /// parent links, the last node, the count, the cached points); for tests.
    #[cfg(any(test, feature = "test-utils"))]
    pub fn check_invariants(&self) {
        fn walk(t: &IovaTree, i: u32, parent: u32, lo: u64, count: &mut usize) -> (usize, u64) {
            if i == NIL {
                return (1, lo);
            }
            let n = t.node(i);
            assert_eq!(n.parent, parent, "parent link of {}", n.pfn_lo);
            assert!(n.pfn_lo <= n.pfn_hi);
            if n.red {
                assert!(
                    !t.is_red(n.left) && !t.is_red(n.right),
                    "red node with a red child"
                );
            }
            let (bl, hi_left) = walk(t, n.left, i, lo, count);
            assert!(hi_left <= n.pfn_lo, "ranges in order and disjoint");
            *count += 1;
            let (br, hi) = walk(t, n.right, i, n.pfn_hi.saturating_add(1), count);
            assert_eq!(bl, br, "equal black heights");
            (bl + usize::from(!n.red), hi)
        }
        assert!(!self.is_red(self.root), "black root");
        let mut count = 0;
        walk(self, self.root, NIL, 0, &mut count);
        assert_eq!(count, self.len);
        let last = if self.root == NIL {
            NIL
        } else {
            self.rightmost(self.root)
        };
        assert_eq!(self.last, last, "last node");
        let first = if self.root == NIL {
            NIL
        } else {
            self.leftmost(self.root)
        };
        assert_eq!(self.first, first, "first node");
        for c in [self.cached, self.cached32] {
            if c != NIL {
                let n = self.node(c);
                assert_eq!(
                    self.last_at_or_below(n.pfn_lo),
                    c,
                    "cached point names a live node"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DMA32: u64 = 1 << 20; // 4 GiB of 4 KiB frames

    fn tree() -> IovaTree {
        IovaTree::new(1, (1 << 36) - 1, DMA32)
    }

    #[test]
    fn allocation_is_top_down_below_the_limit() {
        let mut t = tree();
        assert_eq!(t.alloc(1, DMA32 - 1, false), Ok(DMA32 - 1));
        assert_eq!(t.alloc(1, DMA32 - 1, false), Ok(DMA32 - 2));
        assert_eq!(t.alloc(4, DMA32 - 1, false), Ok(DMA32 - 6));
    }

    #[test]
    fn size_aligned_allocations_are_aligned_to_the_rounded_size() {
        let mut t = tree();
        t.alloc(1, 99, false).unwrap(); // 99
        let p = t.alloc(3, 99, true).unwrap();
        // 96..=98: the highest start aligned to 4 below frame 99.
        assert_eq!(p, 96);
        let q = t.alloc(16, 99, true).unwrap();
        assert_eq!(q, 80);
    }

    #[test]
    fn zero_frames_is_an_invalid_size() {
        assert_eq!(tree().alloc(0, 100, false), Err(IovaError::InvalidSize));
    }

    #[test]
    fn frames_below_the_start_are_never_handed_out() {
        let mut t = IovaTree::new(10, 1000, DMA32);
        assert_eq!(t.alloc(5, 14, false), Ok(10));
        assert_eq!(t.alloc(1, 14, false), Err(IovaError::NoSpace));
    }

    #[test]
    fn a_failed_32bit_size_fails_fast_until_a_32bit_range_is_freed() {
        let mut t = IovaTree::new(1, (1 << 36) - 1, 16);
        let a = t.alloc(8, 15, false).unwrap(); // 8..=15
        let _b = t.alloc(4, 15, false).unwrap(); // 4..=7
        assert_eq!(t.alloc(4, 15, false), Err(IovaError::NoSpace));
        assert!(t.failed32.is_some());
        // Smaller still searches; equal or larger fails without a search.
        assert_eq!(t.alloc(2, 15, false), Ok(2));
        assert!(t.failed32.is_some_and(|f| f.implies(5, 16, false)));
        assert_eq!(t.alloc(5, 15, false), Err(IovaError::NoSpace));
        // Above 4 GiB is not affected.
        assert!(t.alloc(4, 1 << 30, false).is_ok());
        t.free(a).unwrap();
        assert!(t.failed32.is_none());
        assert_eq!(t.alloc(4, 15, false), Ok(12));
    }

    #[test]
    fn a_failure_under_a_low_limit_does_not_fail_a_higher_limit() {
        let mut t = IovaTree::new(1, (1 << 36) - 1, DMA32);
        t.reserve(1, 63).unwrap();
        assert_eq!(t.alloc(32, 63, true), Err(IovaError::NoSpace));
        assert_eq!(t.alloc(32, 127, true), Ok(96));
        // An aligned failure does not imply an unaligned one.
        t.reserve(64, 94).unwrap();
        assert_eq!(t.alloc(2, 95, true), Err(IovaError::NoSpace));
        assert_eq!(t.alloc(1, 95, false), Ok(95));
    }

    #[test]
    fn free_finds_the_range_by_any_frame_in_it() {
        let mut t = tree();
        let p = t.alloc(8, 1000, false).unwrap();
        assert_eq!(
            t.find(p + 3),
            Some(IovaRange {
                pfn_lo: p,
                pfn_hi: p + 7
            })
        );
        assert_eq!(t.free(p + 7).unwrap().pfn_lo, p);
        assert_eq!(t.free(p), Err(IovaError::NotAllocated));
        assert!(t.is_empty());
    }

    #[test]
    fn freeing_above_the_cached_point_makes_the_hole_the_next_choice() {
        let mut t = tree();
        let a = t.alloc(1, 1000, false).unwrap();
        let b = t.alloc(1, 1000, false).unwrap();
        let c = t.alloc(1, 1000, false).unwrap();
        assert_eq!((a, b, c), (1000, 999, 998));
        // Freeing below the cached point leaves it: packing continues down.
        t.free(c).unwrap();
        assert_eq!(t.alloc(1, 1000, false), Ok(998));
        // Freeing at or above it moves it up past the hole.
        t.free(a).unwrap();
        assert_eq!(t.alloc(1, 1000, false), Ok(1000));
        assert_eq!(t.alloc(1, 1000, false), Ok(997));
    }

    #[test]
    fn space_above_the_cached_point_is_searched_when_below_is_full() {
        let mut t = IovaTree::new(500, 1 << 30, DMA32);
        assert_eq!(t.alloc(1, 1000, false), Ok(1000));
        // A lower limit puts the cached point at the bottom of the space...
        assert_eq!(t.alloc(1, 500, false), Ok(500));
        // ...so the next search below it fails and the retry looks above it.
        assert_eq!(t.alloc(1, 1000, false), Ok(999));
    }

    #[test]
    fn reserved_ranges_are_skipped_merged_and_never_freed() {
        let mut t = tree();
        t.reserve(90, 99).unwrap();
        t.reserve(85, 91).unwrap();
        t.reserve(100, 100).unwrap(); // adjacent: merges
        assert_eq!(
            t.ranges().collect::<alloc::vec::Vec<_>>(),
            [(
                IovaRange {
                    pfn_lo: 85,
                    pfn_hi: 100
                },
                true
            )]
        );
        assert_eq!(t.alloc(2, 100, false), Ok(83));
        assert_eq!(t.free(90), Err(IovaError::NotAllocated));
        assert_eq!(t.reserve(80, 84), Err(IovaError::Overlap));
        assert_eq!(t.reserve(5, 4), Err(IovaError::InvalidRange));
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn random_operations_keep_the_tree_a_red_black_tree_matching_a_model() {
        use alloc::collections::BTreeMap;
        let mut t = IovaTree::new(1, (1 << 20) - 1, 1 << 12);
        // pfn_lo -> (pfn_hi, reserved)
        let mut model: BTreeMap<u64, (u64, bool)> = BTreeMap::new();
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for step in 0..if cfg!(miri) { 300 } else { 20_000 } {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            match x % 8 {
                0..=3 => {
                    let size = 1 + (x >> 8) % 9;
                    let limit = [(1 << 12) - 1, (1 << 20) - 1, 3000][(x >> 16) as usize % 3];
                    if let Ok(p) = t.alloc(size, limit, (x >> 20) & 1 == 1) {
                        assert!(p + size - 1 <= limit);
                        let clash = model.range(..=p + size - 1).next_back();
                        assert!(clash.is_none_or(|(_, &(hi, _))| hi < p), "step {step}");
                        model.insert(p, (p + size - 1, false));
                    }
                }
                4..=6 => {
                    if let Some((&lo, &(hi, reserved))) =
                        model.iter().nth((x >> 8) as usize % model.len().max(1))
                    {
                        let pfn = lo + (x >> 24) % (hi - lo + 1);
                        let r = t.free(pfn);
                        if reserved {
                            assert_eq!(r, Err(IovaError::NotAllocated));
                        } else {
                            assert_eq!(
                                r,
                                Ok(IovaRange {
                                    pfn_lo: lo,
                                    pfn_hi: hi
                                })
                            );
                            model.remove(&lo);
                        }
                    }
                }
                _ => {
                    let lo = (x >> 8) % (1 << 13);
                    let hi = lo + (x >> 30) % 64;
                    let overlaps = model
                        .range(..=hi)
                        .rev()
                        .take_while(|(_, &(h, _))| h >= lo)
                        .any(|(_, &(_, r))| !r);
                    match t.reserve(lo, hi) {
                        Ok(m) => {
                            assert!(!overlaps);
                            let touching: alloc::vec::Vec<u64> = model
                                .range(..=hi + 1)
                                .rev()
                                .take_while(|(_, &(h, _))| h + 1 >= lo)
                                .filter(|(_, &(_, r))| r)
                                .map(|(&l, _)| l)
                                .collect();
                            for l in touching {
                                model.remove(&l);
                            }
                            model.insert(m.pfn_lo, (m.pfn_hi, true));
                        }
                        Err(e) => {
                            assert_eq!(e, IovaError::Overlap);
                            assert!(overlaps);
                        }
                    }
                }
            }
            if step % 97 == 0 {
                t.check_invariants();
            }
            if step % 13 == 0 {
                let got: alloc::vec::Vec<(u64, u64, bool)> = t
                    .ranges()
                    .map(|(r, res)| (r.pfn_lo, r.pfn_hi, res))
                    .collect();
                let want: alloc::vec::Vec<(u64, u64, bool)> =
                    model.iter().map(|(&l, &(h, r))| (l, h, r)).collect();
                assert_eq!(got, want, "step {step}");
            }
        }
        t.check_invariants();
    }
}
