//! Reference sets: which pages of which frames of which packs something references. A map's
//! summary is the set of its entries; a VM's aggregate is the union of its maps' summaries; a
//! condemnation is a difference of such sets. Mark-and-sweep GC works on these, never on maps.
//!
//! In memory a set is, per pack id (sorted), a vector of `(frame, mask)` sorted by frame with
//! no frame twice and no zero mask: bit `s` of a frame's mask says page slot `s` is referenced.
//!
//! Encoded form ([`RefSet::encode`]): one zstd frame whose content is
//!
//! ```text
//! field                      size
//! pack count                 varint (LEB128, at most 10 bytes)
//! per pack, ids ascending:
//!   pack id                  16
//!   frame count              varint, at least 1
//!   per frame, ascending:
//!     frame delta            varint: the first frame itself, then frame - previous frame - 1
//!     mask                   u16 little-endian, not zero
//! ```
//!
//! Invariants (checked by [`RefSet::decode`], kept by every method): pack ids strictly
//! ascending, every pack with at least one frame, frames strictly ascending within u32, no zero
//! mask, nothing after the last frame; the decompressed content is at most the caller's bound.

#![warn(clippy::arithmetic_side_effects)]

use std::collections::BTreeMap;
use std::io::Read;

use super::{Corrupt, CorruptKind};
use uuid::Uuid;

/// The most bytes one referenced frame takes in the encoded content (5-byte delta, mask).
pub const MAX_FRAME_LEN: u64 = 5 + 2;
/// The most bytes one pack's heading takes in the encoded content (id, 5-byte count).
pub const MAX_PACK_LEN: u64 = 16 + 5;
/// zstd level for encoded sets: the content is small varints, level 3 is nearly free.
const LEVEL: i32 = 3;

/// The largest encoded content a set of at most `packs` packs and `frames` frames can have:
/// the `max_len` to pass [`RefSet::decode`] when the counts are known.
pub fn max_raw_len(packs: u64, frames: u64) -> u64 {
    packs
        .saturating_mul(MAX_PACK_LEN)
        .saturating_add(frames.saturating_mul(MAX_FRAME_LEN))
        .saturating_add(10)
}

/// A set of `(pack, frame, slot)` page references.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RefSet {
    packs: BTreeMap<Uuid, Vec<(u32, u16)>>,
}

/// The mask bit of `slot`, or `None` for a slot no frame has.
fn bit(slot: u8) -> Option<u16> {
    1u16.checked_shl(u32::from(slot))
}

/// Sorts `frames` by frame and merges duplicates by OR-ing their masks.
fn normalize(frames: &mut Vec<(u32, u16)>) {
    frames.sort_unstable_by_key(|&(f, _)| f);
    frames.dedup_by(|next, kept| {
        if next.0 == kept.0 {
            kept.1 |= next.1;
            true
        } else {
            false
        }
    });
}

/// Union of two sorted frame lists.
fn merge(a: &[(u32, u16)], b: &[(u32, u16)]) -> Vec<(u32, u16)> {
    let mut out = Vec::with_capacity(a.len().saturating_add(b.len()));
    let (mut i, mut j) = (0, 0);
    while let (Some(&x), Some(&y)) = (a.get(i), b.get(j)) {
        if x.0 < y.0 {
            out.push(x);
            i = i.saturating_add(1);
        } else if y.0 < x.0 {
            out.push(y);
            j = j.saturating_add(1);
        } else {
            out.push((x.0, x.1 | y.1));
            i = i.saturating_add(1);
            j = j.saturating_add(1);
        }
    }
    out.extend_from_slice(a.get(i..).unwrap_or_default());
    out.extend_from_slice(b.get(j..).unwrap_or_default());
    out
}

impl RefSet {
    pub fn new() -> RefSet {
        RefSet::default()
    }

    /// Adds one page. Constant time when each pack's frames arrive in increasing order (as a
    /// map's entries mostly do); otherwise a sorted insert, linear in the pack's frames (use
    /// [`RefSetBuilder`] for many references in no order). A slot of 16 or more names no page
    /// and is ignored.
    pub fn insert(&mut self, pack: Uuid, frame: u32, slot: u8) {
        let Some(bit) = bit(slot) else { return };
        let frames = self.packs.entry(pack).or_default();
        match frames.last_mut() {
            Some(last) if last.0 == frame => last.1 |= bit,
            Some(last) if last.0 > frame => {
                match frames.binary_search_by_key(&frame, |&(f, _)| f) {
                    Ok(i) => frames[i].1 |= bit,
                    Err(i) => frames.insert(i, (frame, bit)),
                }
            }
            _ => frames.push((frame, bit)),
        }
    }

    /// True when the set holds page `slot` of `frame` of `pack`.
    pub fn contains(&self, pack: Uuid, frame: u32, slot: u8) -> bool {
        let (Some(frames), Some(bit)) = (self.packs.get(&pack), bit(slot)) else {
            return false;
        };
        frames
            .binary_search_by_key(&frame, |&(f, _)| f)
            .is_ok_and(|i| frames[i].1 & bit != 0)
    }

    /// Adds every page of `other`.
    pub fn union_with(&mut self, other: &RefSet) {
        for (pack, theirs) in &other.packs {
            let ours = self.packs.entry(*pack).or_default();
            *ours = merge(ours, theirs);
        }
    }

    /// The pages of `self` that `other` does not hold.
    pub fn difference(&self, other: &RefSet) -> RefSet {
        let mut out = RefSet::new();
        for (pack, ours) in &self.packs {
            let theirs = other.frames(*pack);
            let mut j = 0;
            let mut left = Vec::new();
            for &(frame, mask) in ours {
                while theirs.get(j).is_some_and(|&(f, _)| f < frame) {
                    j = j.saturating_add(1);
                }
                let taken = theirs
                    .get(j)
                    .filter(|&&(f, _)| f == frame)
                    .map_or(0, |x| x.1);
                if mask & !taken != 0 {
                    left.push((frame, mask & !taken));
                }
            }
            if !left.is_empty() {
                out.packs.insert(*pack, left);
            }
        }
        out
    }

    /// The packs the set references, ascending.
    pub fn packs(&self) -> impl Iterator<Item = Uuid> + '_ {
        self.packs.keys().copied()
    }

    /// The referenced frames of `pack` with their page masks, ascending (empty if none).
    pub fn frames(&self, pack: Uuid) -> &[(u32, u16)] {
        self.packs.get(&pack).map_or(&[], Vec::as_slice)
    }

    /// Number of packs referenced.
    pub fn pack_count(&self) -> usize {
        self.packs.len()
    }

    /// Number of frames referenced, over all packs.
    pub fn frame_count(&self) -> u64 {
        self.packs.values().map(|f| f.len() as u64).sum()
    }

    /// Number of pages referenced.
    pub fn page_count(&self) -> u64 {
        self.packs
            .values()
            .flat_map(|f| f.iter())
            .map(|&(_, m)| u64::from(m.count_ones()))
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.packs.is_empty()
    }

    /// The encoded form (see the module doc): a zstd frame.
    pub fn encode(&self) -> Vec<u8> {
        let mut raw = Vec::with_capacity(
            usize::try_from(max_raw_len(self.pack_count() as u64, self.frame_count()))
                .unwrap_or(0)
                .min(1 << 24),
        );
        put_varint(&mut raw, self.packs.len() as u64);
        for (pack, frames) in &self.packs {
            raw.extend_from_slice(pack.as_bytes());
            put_varint(&mut raw, frames.len() as u64);
            let mut next = 0u64;
            for &(frame, mask) in frames {
                // Frames ascend strictly (the invariant), so the delta does not underflow.
                put_varint(&mut raw, u64::from(frame).saturating_sub(next));
                raw.extend_from_slice(&mask.to_le_bytes());
                next = u64::from(frame).saturating_add(1);
            }
        }
        // Compressing a buffer in memory fails only when memory does; an empty frame would then
        // be refused by `decode`, never misread.
        zstd::bulk::compress(&raw, LEVEL).unwrap_or_default()
    }

    /// Parses and validates an encoded set read from `key`, decompressing at most `max_len`
    /// bytes of content (see [`max_raw_len`]).
    pub fn decode(key: &str, bytes: &[u8], max_len: u64) -> Result<RefSet, Corrupt> {
        let corrupt = |kind: CorruptKind, detail: String| Corrupt::new(key, kind, detail);
        let mut raw = Vec::new();
        // Memory follows what the frame really holds, never more than `max_len` + 1 bytes.
        zstd::stream::read::Decoder::new(bytes)
            .and_then(|d| d.take(max_len.saturating_add(1)).read_to_end(&mut raw))
            .map_err(|e| {
                corrupt(
                    CorruptKind::Compression,
                    format!("refs do not decompress: {e}"),
                )
            })?;
        if raw.len() as u64 > max_len {
            return Err(corrupt(
                CorruptKind::Compression,
                format!("refs hold more than the {max_len} bytes they can"),
            ));
        }
        let mut r = Reader { raw: &raw, at: 0 };
        let bad = |what: String| corrupt(CorruptKind::Entry, what);
        let npacks = r
            .varint()
            .ok_or_else(|| bad("refs end in the pack count".into()))?;
        let mut packs = BTreeMap::new();
        let mut prev: Option<Uuid> = None;
        for p in 0..npacks {
            let Some(id) = r.take(16).and_then(|b| Uuid::from_slice(b).ok()) else {
                return Err(bad(format!("refs end in pack {p} of {npacks}")));
            };
            if prev.is_some_and(|q| q >= id) {
                return Err(bad(format!("refs pack {id} is out of order")));
            }
            prev = Some(id);
            let n = r
                .varint()
                .ok_or_else(|| bad(format!("refs end in pack {id}'s frame count")))?;
            // Each frame takes at least 3 bytes: a count beyond that cannot be honest.
            if n == 0 || n > (r.left() / 3) as u64 {
                return Err(bad(format!("refs pack {id} claims {n} frames")));
            }
            let mut frames = Vec::with_capacity(usize::try_from(n).unwrap_or(0));
            let mut next = 0u64;
            for _ in 0..n {
                let delta = r.varint();
                let mask = r.take(2).map(|b| u16::from_le_bytes([b[0], b[1]]));
                let frame = delta
                    .and_then(|d| next.checked_add(d))
                    .and_then(|f| u32::try_from(f).ok());
                let (Some(frame), Some(mask)) = (frame, mask) else {
                    return Err(bad(format!("refs pack {id} holds a frame out of range")));
                };
                if mask == 0 {
                    return Err(bad(format!("refs pack {id} frame {frame} has no page")));
                }
                frames.push((frame, mask));
                next = u64::from(frame).saturating_add(1);
            }
            packs.insert(id, frames);
        }
        if r.left() != 0 {
            return Err(bad(format!("refs have {} bytes after their end", r.left())));
        }
        Ok(RefSet { packs })
    }
}

/// Builds a [`RefSet`] from references in any order, in memory proportional to the result: each
/// pack's frames are appended and sorted again whenever the unsorted part has doubled them.
#[derive(Debug, Default)]
pub struct RefSetBuilder {
    packs: BTreeMap<Uuid, Pending>,
}

#[derive(Debug, Default)]
struct Pending {
    frames: Vec<(u32, u16)>,
    /// `frames[..sorted]` is sorted and merged; the rest was appended out of order.
    sorted: usize,
    in_order: bool,
}

impl RefSetBuilder {
    pub fn new() -> RefSetBuilder {
        RefSetBuilder::default()
    }

    /// Adds one page; a slot of 16 or more names no page and is ignored.
    pub fn insert(&mut self, pack: Uuid, frame: u32, slot: u8) {
        let Some(bit) = bit(slot) else { return };
        let p = self.packs.entry(pack).or_insert_with(|| Pending {
            in_order: true,
            ..Pending::default()
        });
        match p.frames.last_mut() {
            Some(last) if last.0 == frame => last.1 |= bit,
            Some(last) if last.0 > frame => {
                p.in_order = false;
                p.frames.push((frame, bit));
            }
            _ => p.frames.push((frame, bit)),
        }
        if p.in_order {
            p.sorted = p.frames.len();
        } else if p.frames.len() > p.sorted.saturating_mul(2).max(4096) {
            normalize(&mut p.frames);
            p.sorted = p.frames.len();
        }
    }

    /// The set of everything inserted.
    pub fn finish(self) -> RefSet {
        let packs = self
            .packs
            .into_iter()
            .map(|(id, mut p)| {
                if !p.in_order {
                    normalize(&mut p.frames);
                }
                (id, p.frames)
            })
            .collect();
        RefSet { packs }
    }
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A cursor over encoded content; every read says `None` past the end.
struct Reader<'a> {
    raw: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn left(&self) -> usize {
        self.raw.len().saturating_sub(self.at)
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.raw.get(self.at..self.at.checked_add(n)?)?;
        self.at = self.at.checked_add(n)?;
        Some(s)
    }

    /// A LEB128 value of at most 10 bytes that fits a u64.
    fn varint(&mut self) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self.take(1)?.first()?;
            let part = u64::from(b & 0x7f);
            // The tenth byte may hold only the top bit of a u64.
            if shift == 63 && part > 1 {
                return None;
            }
            v |= part << shift;
            if b & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    fn ids() -> Vec<Uuid> {
        (1..=4u128).map(Uuid::from_u128).collect()
    }

    fn model_set(r: &RefSet) -> BTreeSet<(Uuid, u32, u8)> {
        let mut out = BTreeSet::new();
        for p in r.packs() {
            for &(f, m) in r.frames(p) {
                for s in 0..16u8 {
                    if m & (1 << s) != 0 {
                        out.insert((p, f, s));
                    }
                }
            }
        }
        out
    }

    fn refs() -> impl Strategy<Value = Vec<(usize, u32, u8)>> {
        proptest::collection::vec((0..4usize, 0..40u32, 0..16u8), 0..120)
    }

    fn build(v: &[(usize, u32, u8)]) -> (RefSet, BTreeSet<(Uuid, u32, u8)>) {
        let ids = ids();
        let mut r = RefSet::new();
        let mut b = RefSetBuilder::new();
        let mut m = BTreeSet::new();
        for &(p, f, s) in v {
            r.insert(ids[p], f, s);
            b.insert(ids[p], f, s);
            m.insert((ids[p], f, s));
        }
        assert_eq!(b.finish(), r, "builder and insert agree");
        (r, m)
    }

    /// Structural invariants every set keeps.
    fn check_invariants(r: &RefSet) {
        for p in r.packs() {
            let f = r.frames(p);
            assert!(!f.is_empty());
            assert!(f.windows(2).all(|w| w[0].0 < w[1].0));
            assert!(f.iter().all(|&(_, m)| m != 0));
        }
    }

    proptest! {
        #[test]
        fn sets_behave_like_the_model(a in refs(), b in refs(), probes in refs()) {
            let ids = ids();
            let (ra, ma) = build(&a);
            let (rb, mb) = build(&b);
            prop_assert_eq!(model_set(&ra), ma.clone());
            prop_assert_eq!(ra.page_count(), ma.len() as u64);
            prop_assert_eq!(ra.is_empty(), ma.is_empty());
            for &(p, f, s) in &probes {
                prop_assert_eq!(ra.contains(ids[p], f, s), ma.contains(&(ids[p], f, s)));
            }
            let mut u = ra.clone();
            u.union_with(&rb);
            check_invariants(&u);
            prop_assert_eq!(model_set(&u), ma.union(&mb).copied().collect::<BTreeSet<_>>());
            let d = ra.difference(&rb);
            check_invariants(&d);
            prop_assert_eq!(model_set(&d), ma.difference(&mb).copied().collect::<BTreeSet<_>>());
            let max = max_raw_len(u.pack_count() as u64, u.frame_count());
            prop_assert_eq!(RefSet::decode("r", &u.encode(), max).expect("decodes"), u);
        }
    }

    #[test]
    fn builder_survives_many_references_in_no_order() {
        let id = Uuid::from_u128(9);
        let mut b = RefSetBuilder::new();
        let mut r = RefSet::new();
        // A permutation of 0..100_000 frames, each page slot 3 and 5.
        for i in 0..200_000u64 {
            let frame = ((i / 2) * 7919 % 100_000) as u32;
            let slot = if i % 2 == 0 { 3 } else { 5 };
            b.insert(id, frame, slot);
            if i < 2000 {
                r.insert(id, frame, slot);
            }
        }
        let s = b.finish();
        assert_eq!(s.frame_count(), 100_000);
        assert_eq!(s.page_count(), 200_000);
        assert!(s.frames(id).iter().all(|&(_, m)| m == 0b10_1000));
        check_invariants(&r);
        assert!(r.contains(id, 7919, 5) && !r.contains(id, 7919, 4));
    }

    #[test]
    fn slots_past_a_frame_are_ignored() {
        let mut r = RefSet::new();
        r.insert(Uuid::nil(), 1, 16);
        assert!(r.is_empty());
        assert!(!r.contains(Uuid::nil(), 1, 200));
    }

    /// Encoded content wrapped in a zstd frame, as `encode` would.
    fn framed(raw: &[u8]) -> Vec<u8> {
        zstd::bulk::compress(raw, 1).expect("compress")
    }

    #[test]
    fn hostile_encodings_are_refused_with_their_kind() {
        let a = Uuid::from_u128(1);
        let b = Uuid::from_u128(2);
        let mut ok = vec![2u8];
        ok.extend_from_slice(a.as_bytes());
        ok.extend_from_slice(&[1, 5, 1, 0]);
        ok.extend_from_slice(b.as_bytes());
        ok.extend_from_slice(&[2, 0, 1, 0, 0, 2, 0]);
        let r = RefSet::decode("r", &framed(&ok), 1000).expect("valid");
        assert!(r.contains(a, 5, 0) && r.contains(b, 0, 0) && r.contains(b, 1, 1));

        let with = |edit: &dyn Fn(&mut Vec<u8>)| {
            let mut v = ok.clone();
            edit(&mut v);
            framed(&v)
        };
        let cases: Vec<(Vec<u8>, u64, CorruptKind, &str)> = vec![
            (
                b"not zstd".to_vec(),
                1000,
                CorruptKind::Compression,
                "do not decompress",
            ),
            (
                framed(&ok),
                10,
                CorruptKind::Compression,
                "more than the 10 bytes",
            ),
            (framed(&[]), 1000, CorruptKind::Entry, "pack count"),
            (
                with(&|v| v.truncate(30)),
                1000,
                CorruptKind::Entry,
                "refs end in pack 1",
            ),
            (
                with(&|v| v.push(0)),
                1000,
                CorruptKind::Entry,
                "1 bytes after",
            ),
            // Second pack id equal to the first: out of order.
            (
                with(&|v| v[21..37].copy_from_slice(a.as_bytes())),
                1000,
                CorruptKind::Entry,
                "out of order",
            ),
            (
                with(&|v| v[17] = 0),
                1000,
                CorruptKind::Entry,
                "claims 0 frames",
            ),
            (
                with(&|v| v[17] = 100),
                1000,
                CorruptKind::Entry,
                "claims 100 frames",
            ),
            (
                with(&|v| v[19] = 0),
                1000,
                CorruptKind::Entry,
                "frame 5 has no page",
            ),
            // A delta past u32.
            (
                with(&|v| {
                    v.splice(18..19, [0xff, 0xff, 0xff, 0xff, 0x1f])
                        .for_each(drop)
                }),
                1000,
                CorruptKind::Entry,
                "out of range",
            ),
        ];
        for (i, (bytes, max, kind, want)) in cases.into_iter().enumerate() {
            let err = RefSet::decode("r", &bytes, max).expect_err("hostile");
            assert_eq!(err.kind, kind, "case {i}: {err}");
            assert!(err.to_string().contains(want), "case {i}: {err}");
        }
    }
}
