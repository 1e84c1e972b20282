//! The allocator's pools: segments, size classes, best fit, split and coalesce, and the
//! stream-ordered reuse rule. Pure data, always used under the allocator lock.
//!
//! # State of a block
//! Every byte of a segment belongs to exactly one block, and blocks of a segment tile it:
//! - `Used`: handed out (to a tensor, or sitting in a thread cache).
//! - `Deferred`: freed, but streams other than its owner used it; it waits for events recorded
//!   on those streams at free time (`Pools::deferred`). No stream may reuse it yet.
//! - `Free { stream, seq }`: in the free index. Stream `stream` freed it as its `seq`-th free.
//!   `stream` may reuse it at once (stream order protects it). Any other stream may reuse it only
//!   once a fence recorded on `stream` after that free has completed: `seq <= completed[stream]`.
//!
//! Transitions: Free → Used (best fit, maybe split; the remainder stays Free with the same tag);
//! Used → Free (single-stream use) or Used → Deferred (multi-stream use); Deferred → Free when
//! its events complete. Free neighbours with the same stream coalesce (keeping the larger seq).
//!
//! # Fences
//! Per stream, `free_seq` counts frees and `completed` is the largest seq known complete.
//! When another stream wants a block it cannot take yet, the pool records *one* fence on the
//! owner stream covering all of that stream's frees so far (`request_fence`); polling a
//! completed fence raises `completed`. A free therefore costs no event; cross-stream reuse costs
//! one event record per stream per burst of frees.
//!
//! # Size classes
//! - small (≤ 1 MiB): rounded to 512 B, carved from 2 MiB segments;
//! - large (≤ 10 MiB): rounded to 512 B, carved from 20 MiB segments, remainders ≥ 1 MiB split off;
//! - huge (> 10 MiB): rounded to 2 MiB, one segment each, reused whole if at most 1/8 larger.

use crate::kernel::DevicePtr;
use crate::stream::StreamId;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

pub(crate) const MIN_BLOCK: usize = 512;
pub(crate) const SMALL_MAX: usize = 1 << 20;
const SMALL_SEGMENT: usize = 2 << 20;
const LARGE_MAX: usize = 10 << 20;
const LARGE_SEGMENT: usize = 20 << 20;
const HUGE_ROUND: usize = 2 << 20;
/// How many free blocks best fit looks at before giving up on a class.
const SCAN_LIMIT: usize = 64;

/// Size class of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Kind {
    Small,
    Large,
    Huge,
}

/// A block handed out by the allocator. Plain data; the allocator owns the memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Block {
    pub(crate) seg: u32,
    pub(crate) offset: usize,
    pub(crate) size: usize,
    pub(crate) ptr: DevicePtr,
    pub(crate) stream: StreamId,
}

impl Block {
    /// Device address of the block.
    pub fn ptr(&self) -> DevicePtr {
        self.ptr
    }
    /// Size in bytes (rounded).
    pub fn size(&self) -> usize {
        self.size
    }
    /// The stream it was allocated for.
    pub fn stream(&self) -> StreamId {
        self.stream
    }
}

/// Rounds a request to its class and block size; `None` on overflow.
pub(crate) fn classify(bytes: usize) -> Option<(Kind, usize)> {
    let bytes = bytes.max(1);
    if bytes <= SMALL_MAX {
        Some((Kind::Small, round_up(bytes, MIN_BLOCK)?))
    } else if bytes <= LARGE_MAX {
        Some((Kind::Large, round_up(bytes, MIN_BLOCK)?))
    } else {
        Some((Kind::Huge, round_up(bytes, HUGE_ROUND)?))
    }
}

pub(crate) fn round_up(n: usize, to: usize) -> Option<usize> {
    Some(n.checked_add(to - 1)? / to * to)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Used,
    Deferred,
    Free { stream: StreamId, seq: u64 },
}

#[derive(Debug)]
struct Seg<S> {
    raw: S,
    base: DevicePtr,
    size: usize,
    kind: Kind,
    /// offset -> (size, state)
    blocks: BTreeMap<usize, (usize, State)>,
    used: usize,
}

/// A deferred free waiting for events on the other streams that used the block.
#[derive(Debug)]
pub(crate) struct Deferred<E> {
    pub(crate) seg: u32,
    pub(crate) offset: usize,
    pub(crate) owner: StreamId,
    pub(crate) seq: u64,
    /// `(stream, event recorded on it)` per other stream that used the block.
    pub(crate) events: Vec<(StreamId, E)>,
}

/// Outcome of a best-fit search.
#[must_use]
#[derive(Debug)]
pub(crate) enum Fit {
    Found(Block),
    /// Nothing usable; these streams own blocks that would fit once fenced.
    None {
        fence_wanted: Vec<StreamId>,
    },
}

/// Segments and free blocks of one device. `S` is the backend's segment, `E` its fence event.
#[derive(Debug)]
pub(crate) struct Pools<S, E> {
    segs: Vec<Option<Seg<S>>>,
    free_ids: Vec<u32>,
    /// (kind, size, seg, offset) of every Free block.
    index: BTreeSet<(Kind, usize, u32, usize)>,
    /// Deferred frees in the order they were queued (`crate::alloc`'s poll relies on it).
    pub(crate) deferred: Vec<Deferred<E>>,
    pub(crate) free_seq: Vec<u64>,
    pub(crate) completed: Vec<u64>,
    pub(crate) fences: Vec<VecDeque<(u64, E)>>,
    pub(crate) reserved: usize,
}

impl<S, E> Pools<S, E> {
    pub(crate) fn new(streams: usize) -> Self {
        Self {
            segs: Vec::new(),
            free_ids: Vec::new(),
            index: BTreeSet::new(),
            deferred: Vec::new(),
            free_seq: vec![0; streams],
            completed: vec![0; streams],
            fences: (0..streams).map(|_| VecDeque::new()).collect(),
            reserved: 0,
        }
    }

    /// Size of a new segment for a request of class `kind` and `size` bytes.
    pub(crate) fn segment_size(kind: Kind, size: usize) -> usize {
        match kind {
            Kind::Small => SMALL_SEGMENT,
            Kind::Large => LARGE_SEGMENT,
            Kind::Huge => size,
        }
    }

    /// Best fit among free blocks of `kind` usable by `stream`.
    pub(crate) fn best_fit(&mut self, kind: Kind, size: usize, stream: StreamId) -> Fit {
        let mut fence_wanted = Vec::new();
        let mut found = None;
        for &(k, bsize, seg, off) in self.index.range((kind, size, 0, 0)..).take(SCAN_LIMIT) {
            if k != kind || (kind == Kind::Huge && bsize - size > size / 8) {
                break;
            }
            let State::Free { stream: owner, seq } = self.seg(seg).blocks[&off].1 else {
                unreachable!("index holds free blocks only")
            };
            if owner == stream || seq <= self.completed[owner.index()] {
                found = Some((bsize, seg, off));
                break;
            }
            if !fence_wanted.contains(&owner) {
                fence_wanted.push(owner);
            }
        }
        match found {
            Some((bsize, seg, off)) => Fit::Found(self.take(kind, bsize, seg, off, size, stream)),
            None => Fit::None { fence_wanted },
        }
    }

    fn take(
        &mut self,
        kind: Kind,
        bsize: usize,
        seg: u32,
        off: usize,
        size: usize,
        stream: StreamId,
    ) -> Block {
        self.index.remove(&(kind, bsize, seg, off));
        let s = self.seg_mut(seg);
        let state = s.blocks[&off].1;
        let rest = bsize - size;
        let split = match kind {
            Kind::Small => rest >= MIN_BLOCK,
            Kind::Large => rest > SMALL_MAX,
            Kind::Huge => false,
        };
        let size = if split { size } else { bsize };
        s.blocks.insert(off, (size, State::Used));
        s.used += size;
        if split {
            s.blocks.insert(off + size, (rest, state));
            self.index.insert((kind, rest, seg, off + size));
        }
        let ptr = self.seg(seg).base.byte_add(off);
        Block {
            seg,
            offset: off,
            size,
            ptr,
            stream,
        }
    }

    /// Adds a fresh segment and hands out its first `size` bytes to `stream`.
    pub(crate) fn add_segment(
        &mut self,
        raw: S,
        base: DevicePtr,
        seg_size: usize,
        kind: Kind,
        size: usize,
        stream: StreamId,
    ) -> Block {
        let seg = Seg {
            raw,
            base,
            size: seg_size,
            kind,
            blocks: BTreeMap::new(),
            used: 0,
        };
        let id = match self.free_ids.pop() {
            Some(id) => {
                self.segs[id as usize] = Some(seg);
                id
            }
            None => {
                self.segs.push(Some(seg));
                u32::try_from(self.segs.len() - 1).expect("fewer than 2^32 segments")
            }
        };
        self.reserved += seg_size;
        // The whole segment starts as one free block no stream has used (seq 0 is complete).
        self.seg_mut(id)
            .blocks
            .insert(0, (seg_size, State::Free { stream, seq: 0 }));
        self.index.insert((kind, seg_size, id, 0));
        self.take(kind, seg_size, id, 0, size, stream)
    }

    /// Returns a used block to the free index under `stream`'s tag (single-stream use, or a
    /// deferred free whose events completed).
    pub(crate) fn release(&mut self, seg: u32, off: usize, stream: StreamId, seq: u64) {
        let s = self.seg_mut(seg);
        let (size, state) = s.blocks[&off];
        debug_assert!(
            matches!(state, State::Used | State::Deferred),
            "double free of {seg}:{off}"
        );
        if state == State::Used {
            s.used -= size;
        }
        let kind = s.kind;
        let (mut start, mut size, mut seq) = (off, size, seq);
        // Coalesce with the previous and next free blocks of the same stream.
        let prev = s.blocks.range(..off).next_back().map(|(&o, &b)| (o, b));
        if let Some((
            po,
            (
                psize,
                State::Free {
                    stream: ps,
                    seq: pseq,
                },
            ),
        )) = prev
        {
            if ps == stream && po + psize == off {
                s.blocks.remove(&off);
                start = po;
                size += psize;
                seq = seq.max(pseq);
                self.index.remove(&(kind, psize, seg, po));
            }
        }
        let s = self.seg_mut(seg);
        let next = s.blocks.range(start + size..).next().map(|(&o, &b)| (o, b));
        if let Some((
            no,
            (
                nsize,
                State::Free {
                    stream: ns,
                    seq: nseq,
                },
            ),
        )) = next
        {
            if ns == stream && no == start + size {
                s.blocks.remove(&no);
                size += nsize;
                seq = seq.max(nseq);
                self.index.remove(&(kind, nsize, seg, no));
            }
        }
        let s = self.seg_mut(seg);
        s.blocks.insert(start, (size, State::Free { stream, seq }));
        self.index.insert((kind, size, seg, start));
    }

    /// Marks a used block deferred (multi-stream free); the caller queues it with its events.
    pub(crate) fn defer(&mut self, seg: u32, off: usize) {
        let s = self.seg_mut(seg);
        let entry = s.blocks.get_mut(&off).expect("deferred block exists");
        debug_assert_eq!(entry.1, State::Used, "double free of {seg}:{off}");
        entry.1 = State::Deferred;
        s.used -= entry.0;
    }

    /// A small deferred block whose events completed, handed out again whole to `stream` (its
    /// owner; the caller keeps it in that stream's returns) instead of going back to the free
    /// index. `None` (nothing changed) for a block of another class.
    pub(crate) fn undefer_small(
        &mut self,
        seg: u32,
        off: usize,
        stream: StreamId,
    ) -> Option<Block> {
        let s = self.seg_mut(seg);
        if s.kind != Kind::Small {
            return None;
        }
        let entry = s.blocks.get_mut(&off).expect("deferred block exists");
        debug_assert_eq!(entry.1, State::Deferred, "{seg}:{off} is not deferred");
        entry.1 = State::Used;
        let size = entry.0;
        s.used += size;
        Some(Block {
            seg,
            offset: off,
            size,
            ptr: s.base.byte_add(off),
            stream,
        })
    }

    /// Takes out every segment with no used or deferred block whose free blocks are all safe
    /// for every stream; the caller gives them back to the device.
    pub(crate) fn take_releasable(&mut self) -> Vec<S> {
        let mut out = Vec::new();
        for id in 0..self.segs.len() {
            let Some(s) = &self.segs[id] else { continue };
            let safe = s.used == 0
                && s.blocks.values().all(|&(_, st)| match st {
                    State::Free { stream, seq } => seq <= self.completed[stream.index()],
                    _ => false,
                });
            if safe {
                let s = self.segs[id].take().expect("checked above");
                for (&off, &(size, _)) in &s.blocks {
                    self.index.remove(&(s.kind, size, id as u32, off));
                }
                self.reserved -= s.size;
                self.free_ids.push(id as u32);
                out.push(s.raw);
            }
        }
        out
    }

    /// Takes out every segment, used or not (final teardown, after the device is idle).
    pub(crate) fn take_all(&mut self) -> Vec<S> {
        self.index.clear();
        self.free_ids.clear();
        self.reserved = 0;
        self.deferred.clear();
        self.segs.drain(..).flatten().map(|s| s.raw).collect()
    }

    /// Number of live segments.
    pub(crate) fn segments(&self) -> usize {
        self.segs.iter().flatten().count()
    }

    /// Marks all frees so far complete (the device was synchronized).
    pub(crate) fn all_complete(&mut self, upto: &[u64]) {
        for (c, &u) in self.completed.iter_mut().zip(upto) {
            *c = (*c).max(u);
        }
    }

    fn seg(&self, id: u32) -> &Seg<S> {
        self.segs[id as usize].as_ref().expect("live segment")
    }
    fn seg_mut(&mut self, id: u32) -> &mut Seg<S> {
        self.segs[id as usize].as_mut().expect("live segment")
    }
}

#[cfg(all(test, not(chorus_loom)))]
mod tests {
    use super::*;

    type P = Pools<u32, ()>;

    const S1: StreamId = StreamId::new(1);
    const S2: StreamId = StreamId::new(2);

    fn pools() -> P {
        Pools::new(4)
    }

    #[test]
    fn classes_round_and_overflow() {
        assert_eq!(classify(1), Some((Kind::Small, 512)));
        assert_eq!(classify(513), Some((Kind::Small, 1024)));
        assert_eq!(
            classify(SMALL_MAX + 1),
            Some((Kind::Large, SMALL_MAX + 512))
        );
        assert_eq!(
            classify(LARGE_MAX + 1),
            Some((Kind::Huge, LARGE_MAX + HUGE_ROUND))
        );
        assert_eq!(classify(usize::MAX), None);
    }

    #[test]
    fn split_best_fit_and_coalesce() {
        let mut p = pools();
        let a = p.add_segment(7, DevicePtr(4096), SMALL_SEGMENT, Kind::Small, 1024, S1);
        assert_eq!((a.offset, a.size, a.ptr), (0, 1024, DevicePtr(4096)));
        let Fit::Found(b) = p.best_fit(Kind::Small, 512, S1) else {
            panic!()
        };
        assert_eq!(b.offset, 1024);
        p.release(0, a.offset, S1, 1);
        // Best fit takes the 1024 hole rather than the big tail.
        let Fit::Found(c) = p.best_fit(Kind::Small, 1024, S1) else {
            panic!()
        };
        assert_eq!(c.offset, 0);
        p.release(0, c.offset, S1, 2);
        p.release(0, b.offset, S1, 3);
        // Everything coalesced back into one block spanning the segment.
        assert_eq!(p.index.len(), 1);
        assert!(p.take_releasable().is_empty(), "seq 3 is not complete yet");
        p.all_complete(&[0, 3, 0, 0]);
        assert_eq!(p.take_releasable(), vec![7]);
        assert_eq!(p.reserved, 0);
    }

    #[test]
    fn other_stream_waits_for_fence() {
        let mut p = pools();
        let a = p.add_segment(
            1,
            DevicePtr(0),
            SMALL_SEGMENT,
            Kind::Small,
            SMALL_SEGMENT,
            S1,
        );
        p.release(a.seg, a.offset, S1, 5);
        match p.best_fit(Kind::Small, 512, S2) {
            Fit::None { fence_wanted } => assert_eq!(fence_wanted, vec![S1]),
            Fit::Found(b) => panic!("stream 2 must not reuse stream 1's block yet: {b:?}"),
        }
        // The owner can reuse at once.
        assert!(matches!(p.best_fit(Kind::Small, 512, S1), Fit::Found(_)));
        p.completed[1] = 5;
        assert!(matches!(p.best_fit(Kind::Small, 512, S2), Fit::Found(_)));
    }

    #[test]
    fn different_streams_do_not_coalesce() {
        let mut p = pools();
        let a = p.add_segment(1, DevicePtr(0), SMALL_SEGMENT, Kind::Small, 512, S1);
        let Fit::Found(b) = p.best_fit(Kind::Small, 512, S2) else {
            panic!()
        };
        p.release(a.seg, a.offset, S1, 1);
        p.release(b.seg, b.offset, S2, 1);
        // Stream 2's block sits between two free blocks of stream 1 and merges with neither.
        assert!(p.index.contains(&(Kind::Small, 512, b.seg, 512)));
        assert_eq!(
            p.index.len(),
            3,
            "stream 2's block must stay apart from stream 1's"
        );
    }

    #[test]
    fn huge_blocks_are_not_split_and_not_oversized() {
        let mut p = pools();
        let (k, size) = classify(40 << 20).unwrap();
        let a = p.add_segment(1, DevicePtr(0), size, k, size, S1);
        p.release(a.seg, a.offset, S1, 1);
        let (k2, small_huge) = classify(12 << 20).unwrap();
        assert!(
            matches!(p.best_fit(k2, small_huge, S1), Fit::None { .. }),
            "40 MiB is too big for 12 MiB"
        );
        assert!(matches!(p.best_fit(k, size, S1), Fit::Found(_)));
    }
}
