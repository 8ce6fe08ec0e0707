//! The memory store's compact building blocks: an interner that turns every
//! type, relation and id into a `u32` symbol, and a sorted index of
//! relationship versions kept in chunks.
//!
//! A relationship is six symbols (24 bytes) plus the revisions it was
//! created and deleted at; each index holds one [`Entry`] per version. The
//! order is the relationships' *string* order (the order Postgres returns
//! with `COLLATE "C"` and cursors resume in), not the symbols' order: the
//! comparison resolves symbols, with a fast path for equal symbols (equal
//! symbols are equal strings, different symbols different strings).
//! Entries live in sorted chunks of a few hundred, so an insert moves at
//! most one chunk and a seek is two binary searches.

use std::cmp::Ordering;

use std::hash::BuildHasher;

/// An interned string. 0 is reserved for "none" (no subject relation),
/// which sorts before every string.
pub(super) type Sym = u32;

pub(super) const NONE: Sym = 0;

/// Six symbols in an index's field order.
pub(super) type Key = [Sym; 6];

/// A lookup key in strings (`None`: no subject relation, the minimum).
pub(super) type Probe<'a> = [Option<&'a str>; 6];

/// Revision a live version is deleted at: never.
pub(super) const LIVE: u64 = u64::MAX;

/// One version of a relationship in one index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Entry {
    pub key: Key,
    /// The [`Interner`] rank of `key[1]` (the resource id in the forward
    /// index) when the entry's index last took ranks, or [`UNRANKED`]: a
    /// seek compares ids by this number without touching the rank table
    /// (one cache miss less per probe). Set by the index, never by callers.
    rank1: u32,
    /// Visible at revisions `created..deleted`.
    pub created: u64,
    pub deleted: u64,
}

/// [`Entry::rank1`] of an entry whose id had no rank.
const UNRANKED: u32 = u32::MAX;

impl Entry {
    pub fn new(key: Key, created: u64, deleted: u64) -> Self {
        Entry {
            key,
            rank1: UNRANKED,
            created,
            deleted,
        }
    }

    pub fn visible_at(&self, at: u64) -> bool {
        self.created <= at && at < self.deleted
    }
}

/// Every string the store holds, once, and the string order of (nearly)
/// all of them as small integers.
///
/// The strings are stored back to back in one buffer and the hash table
/// holds only symbols: per string its bytes, an 8-byte end offset and ~5
/// bytes of table, where a boxed string in a set took a heap block (32
/// bytes for a short id), a 16-byte pointer and a stored hash.
#[derive(Default)]
pub(super) struct Interner {
    /// Every interned string's bytes, in symbol order.
    bytes: String,
    /// `ends[i]`: where symbol `i + 1`'s string ends in `bytes` (it starts
    /// where the previous one ends).
    ends: Vec<u64>,
    /// Symbols by the hash of their string.
    table: hashbrown::HashTable<Sym>,
    /// foldhash's keyed hasher: several times faster than SipHash on short
    /// ids, and seeded per process so callers cannot aim collisions.
    hasher: foldhash::quality::RandomState,
    /// `rank[i]`: the position of symbol `i + 1`'s string in string order
    /// among the first `rank.len()` symbols. Comparing two ranked symbols
    /// is comparing two integers instead of chasing two strings (a seek is
    /// ~20 comparisons); symbols interned since the last [`Interner::rerank`]
    /// compare by string.
    rank: Vec<u32>,
    /// Bumped by every [`Interner::rerank`]: ranks cached in an index are
    /// only used while the index's generation equals this one.
    generation: u64,
}

impl Interner {
    /// The string of symbol `sym` (any value; `None` for [`NONE`] and for
    /// symbols never given).
    fn text<'a>(bytes: &'a str, ends: &[u64], sym: Sym) -> Option<&'a str> {
        let i = (sym as usize).checked_sub(1)?;
        let end = *ends.get(i)? as usize;
        let start = match i.checked_sub(1) {
            Some(p) => *ends.get(p)? as usize,
            None => 0,
        };
        bytes.get(start..end)
    }

    /// The symbol of `s`, if it was ever interned.
    pub fn get(&self, s: &str) -> Option<Sym> {
        self.find(self.hasher.hash_one(s), s)
    }

    /// The symbol of `s`, whose hash is `hash`, if interned.
    fn find(&self, hash: u64, s: &str) -> Option<Sym> {
        self.table
            .find(hash, |&sym| {
                Self::text(&self.bytes, &self.ends, sym) == Some(s)
            })
            .copied()
    }

    /// How many strings are interned: every symbol is at most this.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn intern(&mut self, s: &str) -> Sym {
        let hash = self.hasher.hash_one(s);
        if let Some(sym) = self.find(hash, s) {
            return sym;
        }
        // Symbols are u32 by design (an index entry is six of them); four
        // billion distinct strings are far beyond what one process holds.
        let sym = Sym::try_from(self.ends.len() + 1).unwrap_or(Sym::MAX);
        self.bytes.push_str(s);
        self.ends.push(self.bytes.len() as u64);
        let (bytes, ends, hasher) = (&self.bytes, &self.ends, &self.hasher);
        self.table.insert_unique(hash, sym, |&other| {
            hasher.hash_one(Self::text(bytes, ends, other).unwrap_or_default())
        });
        sym
    }

    /// The string of `sym`; `None` for [`NONE`].
    pub fn resolve(&self, sym: Sym) -> Option<&str> {
        Self::text(&self.bytes, &self.ends, sym)
    }

    /// The string of a symbol that is never [`NONE`] (every field but the
    /// subject relation): symbols only come from [`Interner::intern`].
    pub fn name(&self, sym: Sym) -> &str {
        self.resolve(sym).unwrap_or_default()
    }

    /// The rank of `s`, if it has one.
    fn rank_of(&self, s: Sym) -> Option<u32> {
        self.rank.get((s as usize).checked_sub(1)?).copied()
    }

    /// Whether every interned symbol has a rank (no string interned since
    /// the last [`Interner::rerank`]).
    pub fn all_ranked(&self) -> bool {
        self.rank.len() == self.len()
    }

    /// The string order of two symbols ([`NONE`] first).
    pub fn cmp_syms(&self, a: Sym, b: Sym) -> Ordering {
        if a == b {
            return Ordering::Equal;
        }
        match (self.rank_of(a), self.rank_of(b)) {
            (Some(x), Some(y)) => x.cmp(&y),
            _ => self.resolve(a).cmp(&self.resolve(b)),
        }
    }

    /// Ranks the symbols interned since the last call, when they are more
    /// than an eighth of all (so most comparisons stay integer ones and
    /// the work, a merge of the new strings into the ranked order, is
    /// amortized over the interning). True if it reranked.
    pub fn rerank_if_stale(&mut self) -> bool {
        let (ranked, len) = (self.rank.len(), self.len());
        let stale = len - ranked > (ranked / 8).max(1_024);
        if stale {
            self.rerank();
        }
        stale
    }

    /// Ranks every symbol (see [`Interner::ranks`]).
    pub fn rerank(&mut self) {
        if !self.all_ranked() {
            let rank = self.ranks();
            self.set_ranks(rank);
        }
    }

    /// The rank of every symbol (index `sym - 1`) in string order: the
    /// ranked order (recovered from the current ranks) merged with the new
    /// symbols sorted by string. Computed without changing anything, so
    /// other readers may share the interner meanwhile.
    pub fn ranks(&self) -> Vec<u32> {
        let (ranked, len) = (self.rank.len(), self.len());
        let mut order = vec![NONE; ranked];
        for (i, &r) in self.rank.iter().enumerate() {
            // Ranks are a permutation of 0..ranked, and i < len <= u32::MAX.
            order[r as usize] = i as Sym + 1;
        }
        let mut new: Vec<Sym> = (ranked as Sym + 1..=len as Sym).collect();
        new.sort_unstable_by(|a, b| self.resolve(*a).cmp(&self.resolve(*b)));
        let mut merged = Vec::with_capacity(len);
        let (mut old, mut new) = (order.into_iter().peekable(), new.into_iter().peekable());
        loop {
            let take_old = match (old.peek(), new.peek()) {
                (Some(a), Some(b)) => self.resolve(*a) <= self.resolve(*b),
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (None, None) => break,
            };
            merged.extend(if take_old { old.next() } else { new.next() });
        }
        let mut rank = vec![0u32; len];
        for (pos, sym) in merged.into_iter().enumerate() {
            rank[sym as usize - 1] = pos as u32;
        }
        rank
    }

    /// Installs ranks computed by [`Interner::ranks`] (no symbol interned
    /// since): a new generation.
    pub fn set_ranks(&mut self, rank: Vec<u32>) {
        debug_assert_eq!(rank.len(), self.len());
        self.rank = rank;
        self.generation += 1;
    }

    pub fn cmp_keys(&self, a: &Key, b: &Key) -> Ordering {
        for (x, y) in a.iter().zip(b) {
            if x != y {
                return self.cmp_syms(*x, *y);
            }
        }
        Ordering::Equal
    }

    pub fn cmp_probe(&self, a: &Key, p: &Probe<'_>) -> Ordering {
        for (x, y) in a.iter().zip(p) {
            let o = self.resolve(*x).cmp(y);
            if o != Ordering::Equal {
                return o;
            }
        }
        Ordering::Equal
    }
}

/// A position in an [`Index`]: chunk and offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Pos(usize, usize);

/// Entries sorted by key (string order), then by creation revision.
#[derive(Default)]
pub(super) struct Index {
    chunks: Vec<Vec<Entry>>,
    /// Each chunk's last entry, contiguous: the chunk-level half of a seek
    /// reads this small array instead of one cache line per chunk
    /// (`lasts[i] == *chunks[i].last()`; chunks are never empty).
    lasts: Vec<Entry>,
    len: usize,
    /// The [`Interner::generation`] the entries' cached ranks belong to.
    generation: u64,
    /// Where objects' rows were last found (see [`Index::seek_object`]).
    hints: Hints,
}

/// A lossy, lock-free table of positions: `(type, id)` → where that
/// object's first row was last found. Readers (under the store's shared
/// lock) refresh it with relaxed atomic stores; a hint is only ever used
/// after checking that it is exactly the answer, so a stale, torn or
/// colliding one costs a full seek, never a wrong position. Sized to about
/// one slot per four entries (8 bytes each), grown on insert.
#[derive(Default)]
struct Hints {
    slots: Vec<std::sync::atomic::AtomicU64>,
}

/// Chunk index and offset bits of a hint (offsets stay below 2 * CHUNK + 1).
const HINT_OFFSET_BITS: u32 = 10;
const HINT_CHUNK_BITS: u32 = 22;

impl Hints {
    /// The slot and the 32-bit fingerprint of object `(t, id)`
    /// (never 0, so an empty slot matches nothing).
    fn slot(&self, t: Sym, id: Sym) -> Option<(&std::sync::atomic::AtomicU64, u64)> {
        let h = ((u64::from(t) << 32) | u64::from(id)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let bits = self.slots.len().trailing_zeros();
        let i = usize::try_from(h >> (64 - bits.max(1))).ok()?;
        Some((self.slots.get(i)?, (h & 0xFFFF_FFFF) | 1))
    }

    /// Grows the table to about a quarter of `len` slots (a power of two,
    /// at least 1,024, at most 4M); its contents are dropped.
    fn fit(&mut self, len: usize) {
        let want = (len / 4).next_power_of_two().clamp(1 << 10, 1 << 22);
        if self.slots.len() < want {
            self.slots = (0..want)
                .map(|_| std::sync::atomic::AtomicU64::new(0))
                .collect();
        }
    }
}

/// Chunks split when they pass twice this many entries.
const CHUNK: usize = 256;

impl Index {
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn entry_cmp(names: &Interner, e: &Entry, key: &Key, created: u64) -> Ordering {
        names
            .cmp_keys(&e.key, key)
            .then_with(|| e.created.cmp(&created))
    }

    /// The first position whose entry is at or after `probe` (`strict`:
    /// after every entry equal to it).
    pub fn seek(&self, names: &Interner, probe: &Probe<'_>, strict: bool) -> Pos {
        let before = |e: &Entry| match names.cmp_probe(&e.key, probe) {
            Ordering::Less => true,
            Ordering::Equal => strict,
            Ordering::Greater => false,
        };
        self.partition(before)
    }

    /// Whether `e` sorts before every key starting with `prefix` (symbols
    /// of the leading fields): symbols equal, or compared by the entry's
    /// cached id rank where both it and the prefix's (`rank1`) are current,
    /// else by rank or string ([`Interner::cmp_syms`]).
    fn before_prefix_ranked(names: &Interner, e: &Entry, prefix: &[Sym], rank1: u32) -> bool {
        for (i, (x, y)) in e.key.iter().zip(prefix).enumerate() {
            if x != y {
                if i == 1 && rank1 != UNRANKED && e.rank1 != UNRANKED {
                    return e.rank1 < rank1;
                }
                return names.cmp_syms(*x, *y) == Ordering::Less;
            }
        }
        false
    }

    /// The rank of `sym` comparable with the ranks cached in this index's
    /// entries: [`UNRANKED`] when it has none or the cached ones are stale.
    fn usable_rank(&self, names: &Interner, sym: Sym) -> u32 {
        match self.generation == names.generation {
            true => names.rank_of(sym).unwrap_or(UNRANKED),
            false => UNRANKED,
        }
    }

    /// "Sorts before every key starting with `prefix`", with the prefix's
    /// id rank looked up once for the whole search.
    fn before_prefix<'a>(
        &self,
        names: &'a Interner,
        prefix: &'a [Sym],
    ) -> impl Fn(&Entry) -> bool + 'a {
        let rank1 = prefix
            .get(1)
            .map_or(UNRANKED, |&s| self.usable_rank(names, s));
        move |e: &Entry| Self::before_prefix_ranked(names, e, prefix, rank1)
    }

    /// The first position whose entry is not `before` (a monotone
    /// predicate over the index order): chunk by `lasts`, then within it.
    fn partition(&self, before: impl Fn(&Entry) -> bool) -> Pos {
        let ci = self.lasts.partition_point(&before);
        match self.chunks.get(ci) {
            Some(c) => Pos(ci, c.partition_point(before)),
            None => Pos(ci, 0),
        }
    }

    /// Takes the interner's current ranks into every entry (after a
    /// rerank; until then the cached ranks are ignored).
    pub fn take_ranks(&mut self, names: &Interner) {
        self.generation = names.generation;
        let rank = |e: &mut Entry| e.rank1 = names.rank_of(e.key[1]).unwrap_or(UNRANKED);
        self.chunks.iter_mut().flatten().for_each(rank);
        self.lasts.iter_mut().for_each(rank);
    }

    /// Whether `pos` is exactly where the keys starting with `prefix`
    /// start: an entry not before it, and the entry before `pos` (if any)
    /// before it.
    fn starts_at(&self, names: &Interner, pos: Pos, prefix: &[Sym]) -> bool {
        let before = self.before_prefix(names, prefix);
        let Pos(ci, off) = pos;
        let Some(e) = self.chunks.get(ci).and_then(|c| c.get(off)) else {
            return false;
        };
        if before(e) {
            return false;
        }
        let previous = match off.checked_sub(1) {
            Some(o) => self.chunks.get(ci).and_then(|c| c.get(o)),
            None => ci.checked_sub(1).and_then(|c| self.lasts.get(c)),
        };
        previous.is_none_or(before)
    }

    /// Where the rows of object `(t, id)` start (or would): the position
    /// hinted for it when the hint checks out, else a full seek that
    /// refreshes the hint. An object's rows are looked up several times
    /// per check and across checks; a verified hint costs two entry reads
    /// instead of a binary search.
    pub fn seek_object(&self, names: &Interner, t: Sym, id: Sym) -> Pos {
        use std::sync::atomic::Ordering::Relaxed;
        let prefix = [t, id];
        let Some((slot, fingerprint)) = self.hints.slot(t, id) else {
            return self.seek_prefix(names, &prefix);
        };
        let hint = slot.load(Relaxed);
        if hint >> 32 == fingerprint {
            let ci = (hint >> HINT_OFFSET_BITS) & ((1 << HINT_CHUNK_BITS) - 1);
            let off = hint & ((1 << HINT_OFFSET_BITS) - 1);
            if let (Ok(ci), Ok(off)) = (usize::try_from(ci), usize::try_from(off)) {
                let pos = Pos(ci, off);
                if self.starts_at(names, pos, &prefix) {
                    return pos;
                }
            }
        }
        let pos = self.seek_prefix(names, &prefix);
        let Pos(ci, off) = pos;
        if let (Ok(c), Ok(o)) = (u64::try_from(ci), u64::try_from(off))
            && c < 1 << HINT_CHUNK_BITS
            && o < 1 << HINT_OFFSET_BITS
            && self.chunks.get(ci).is_some_and(|chunk| off < chunk.len())
        {
            slot.store((fingerprint << 32) | (c << HINT_OFFSET_BITS) | o, Relaxed);
        }
        pos
    }

    /// The first position whose key starts at or after `prefix`: the fast
    /// check path's seek.
    pub fn seek_prefix(&self, names: &Interner, prefix: &[Sym]) -> Pos {
        self.partition(self.before_prefix(names, prefix))
    }

    /// The first position after every key starting with `prefix`.
    pub fn seek_past_prefix(&self, names: &Interner, prefix: &[Sym]) -> Pos {
        self.partition(|e| {
            for (x, y) in e.key.iter().zip(prefix) {
                if x != y {
                    return names.cmp_syms(*x, *y) == Ordering::Less;
                }
            }
            true
        })
    }

    /// [`Index::seek_prefix`] from `start`, a position known to be at or
    /// before the answer (e.g. where the prefix's object starts): an
    /// exponential then binary search within `start`'s chunk, touching only
    /// entries near `start`; a full seek when the answer lies beyond it.
    pub fn seek_prefix_from(&self, names: &Interner, start: Pos, prefix: &[Sym]) -> Pos {
        let before = self.before_prefix(names, prefix);
        let Pos(ci, off) = start;
        if let (Some(c), Some(last)) = (self.chunks.get(ci), self.lasts.get(ci))
            && !before(last)
            && off <= c.len()
        {
            let rest = &c[off..];
            let mut hi = 1;
            while hi < rest.len() && before(&rest[hi]) {
                hi *= 2;
            }
            let lo = hi / 2;
            let hi = hi.min(rest.len());
            return Pos(ci, off + lo + rest[lo..hi].partition_point(before));
        }
        self.seek_prefix(names, prefix)
    }

    /// Entries from `pos` on, in order.
    pub fn iter_from(&self, pos: Pos) -> impl Iterator<Item = &Entry> {
        let Pos(ci, off) = pos;
        let first = self
            .chunks
            .get(ci)
            .map(|c| &c[off.min(c.len())..])
            .unwrap_or_default();
        first
            .iter()
            .chain(self.chunks.iter().skip(ci + 1).flatten())
    }

    /// The exact version `(key, created)`, if present.
    fn find(&self, names: &Interner, key: &Key, created: u64) -> Option<Pos> {
        let ci = self
            .lasts
            .partition_point(|e| Self::entry_cmp(names, e, key, created) == Ordering::Less);
        let c = self.chunks.get(ci)?;
        let off = c.partition_point(|e| Self::entry_cmp(names, e, key, created) == Ordering::Less);
        let e = c.get(off)?;
        (e.key == *key && e.created == created).then_some(Pos(ci, off))
    }

    /// The live version of `key`, if any.
    pub fn live(&self, names: &Interner, key: &Key) -> Option<Entry> {
        let ci = self
            .lasts
            .partition_point(|e| names.cmp_keys(&e.key, key) == Ordering::Less);
        let off = self
            .chunks
            .get(ci)
            .map(|c| c.partition_point(|e| names.cmp_keys(&e.key, key) == Ordering::Less))
            .unwrap_or(0);
        self.iter_from(Pos(ci, off))
            .take_while(|e| e.key == *key)
            .find(|e| e.deleted == LIVE)
            .copied()
    }

    /// Sets the deletion revision of version `(key, created)`.
    pub fn set_deleted(&mut self, names: &Interner, key: &Key, created: u64, deleted: u64) {
        if let Some(Pos(ci, off)) = self.find(names, key, created) {
            self.chunks[ci][off].deleted = deleted;
            self.fix_last(ci);
        }
    }

    /// Restores `lasts[ci]` after chunk `ci` changed in place.
    fn fix_last(&mut self, ci: usize) {
        if let (Some(last), Some(slot)) = (
            self.chunks.get(ci).and_then(|c| c.last()),
            self.lasts.get_mut(ci),
        ) {
            *slot = *last;
        }
    }

    pub fn insert(&mut self, names: &Interner, mut entry: Entry) {
        self.hints.fit(self.len + 1);
        entry.rank1 = self.usable_rank(names, entry.key[1]);
        let ci = self
            .lasts
            .partition_point(|e| {
                Self::entry_cmp(names, e, &entry.key, entry.created) == Ordering::Less
            })
            .min(self.chunks.len().saturating_sub(1));
        if self.chunks.is_empty() {
            self.chunks.push(Vec::with_capacity(CHUNK));
            self.lasts.push(entry);
        }
        let chunk = &mut self.chunks[ci];
        let off = chunk.partition_point(|e| {
            Self::entry_cmp(names, e, &entry.key, entry.created) == Ordering::Less
        });
        chunk.insert(off, entry);
        self.len += 1;
        if chunk.len() > 2 * CHUNK {
            self.split(ci, CHUNK);
        } else {
            self.fix_last(ci);
        }
    }

    /// Splits chunk `ci` at `at` (a chunk of more than 2 * CHUNK entries,
    /// so both halves are non-empty), keeping `lasts` aligned.
    fn split(&mut self, ci: usize, at: usize) {
        let Some(chunk) = self.chunks.get_mut(ci) else {
            return;
        };
        let tail = chunk.split_off(at.min(chunk.len()));
        if let Some(&last) = tail.last() {
            self.chunks.insert(ci + 1, tail);
            self.lasts.insert(ci + 1, last);
        }
        self.fix_last(ci);
    }

    /// Removes version `(key, created)`; true if it was there.
    pub fn remove(&mut self, names: &Interner, key: &Key, created: u64) -> bool {
        let Some(Pos(ci, off)) = self.find(names, key, created) else {
            return false;
        };
        let chunk = &mut self.chunks[ci];
        chunk.remove(off);
        self.len -= 1;
        if chunk.is_empty() {
            self.chunks.remove(ci);
            self.lasts.remove(ci);
        } else if chunk.len() < CHUNK / 4 && ci + 1 < self.chunks.len() {
            // Merge a small chunk into its successor to keep chunks full
            // (the merged chunk ends where the successor did).
            let small = self.chunks.remove(ci);
            self.lasts.remove(ci);
            let next = &mut self.chunks[ci];
            let mut merged = small;
            merged.append(next);
            *next = merged;
            if next.len() > 2 * CHUNK {
                let half = next.len() / 2;
                self.split(ci, half);
            }
        } else {
            self.fix_last(ci);
        }
        true
    }

    /// Inserts many entries at once: sorted and merged in one pass, then
    /// cut into chunks (a bulk import, where one insert at a time would
    /// move chunks a million times).
    pub fn insert_many(&mut self, names: &Interner, mut new: Vec<Entry>) {
        Self::sort(names, &mut new);
        self.insert_sorted(names, new);
    }

    /// Sorts entries into index order (by their keys' string order, then
    /// creation). With every symbol ranked, each entry's ranks are read
    /// once and the sort compares integers.
    pub fn sort(names: &Interner, entries: &mut [Entry]) {
        if names.all_ranked() {
            Self::sort_by_ranks(&names.rank, entries);
        } else {
            entries.sort_unstable_by(|a, b| Self::entry_cmp(names, a, &b.key, b.created));
        }
    }

    /// [`Index::sort`] with ranks of every symbol given
    /// ([`Interner::ranks`], not yet installed).
    pub fn sort_by_ranks(rank: &[u32], entries: &mut [Entry]) {
        // NONE first, then by rank; a symbol without a rank cannot occur
        // (the ranks cover every symbol) and would sort first.
        let order = |s: Sym| match (s as usize).checked_sub(1).and_then(|i| rank.get(i)) {
            Some(r) => r.saturating_add(1),
            None => 0,
        };
        entries.sort_by_cached_key(|e| (e.key.map(order), e.created));
    }

    /// Merges entries already in index order ([`Index::sort`]) in.
    pub fn insert_sorted(&mut self, names: &Interner, new: Vec<Entry>) {
        self.hints.fit(self.len + new.len());
        let old = std::mem::take(&mut self.chunks);
        let mut merged = Vec::with_capacity(self.len + new.len());
        let mut old = old.into_iter().flatten().peekable();
        let mut new = new.into_iter().peekable();
        loop {
            let take_old = match (old.peek(), new.peek()) {
                (Some(a), Some(b)) => {
                    Self::entry_cmp(names, a, &b.key, b.created) != Ordering::Greater
                }
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (None, None) => break,
            };
            let next = if take_old { old.next() } else { new.next() };
            merged.extend(next);
        }
        self.len = merged.len();
        let mut chunks = Vec::with_capacity(merged.len() / CHUNK + 1);
        let mut rest = merged.as_slice();
        while !rest.is_empty() {
            let (head, tail) = rest.split_at(rest.len().min(CHUNK + CHUNK / 2));
            chunks.push(head.to_vec());
            rest = tail;
        }
        self.lasts = chunks.iter().filter_map(|c| c.last().copied()).collect();
        self.chunks = chunks;
        self.take_ranks(names);
    }

    /// Checks `lasts` against the chunks (tests).
    #[cfg(test)]
    fn lasts_agree(&self) -> bool {
        self.lasts.len() == self.chunks.len()
            && self
                .chunks
                .iter()
                .zip(&self.lasts)
                .all(|(c, l)| c.last() == Some(l))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code
    use super::*;

    fn key(names: &mut Interner, s: [&str; 6]) -> Key {
        s.map(|x| names.intern(x))
    }

    #[test]
    fn index_keeps_string_order_whatever_the_symbols() {
        let mut names = Interner::default();
        let mut index = Index::default();
        // Interned in reverse order: symbol order is the opposite of string order.
        let ids: Vec<String> = (0..2_000).rev().map(|i| format!("{i:05}")).collect();
        for id in &ids {
            let k = key(&mut names, ["doc", id, "viewer", "user", "u", "x"]);
            index.insert(&names, Entry::new(k, 1, LIVE));
        }
        assert_eq!(index.len(), 2_000);
        assert!(index.lasts_agree());
        let seen: Vec<String> = index
            .iter_from(Pos(0, 0))
            .map(|e| names.name(e.key[1]).to_string())
            .collect();
        let mut sorted = seen.clone();
        sorted.sort();
        assert_eq!(seen, sorted);
        let at = index.seek(
            &names,
            &[Some("doc"), Some("01000"), None, None, None, None],
            false,
        );
        assert_eq!(
            names.name(index.iter_from(at).next().unwrap().key[1]),
            "01000"
        );
        let after = index.seek(
            &names,
            &[
                Some("doc"),
                Some("01000"),
                Some("viewer"),
                Some("user"),
                Some("u"),
                Some("x"),
            ],
            true,
        );
        assert_eq!(
            names.name(index.iter_from(after).next().unwrap().key[1]),
            "01001"
        );
        // Removing every other entry keeps order and finds each exactly.
        for id in ids.iter().step_by(2) {
            let k = key(&mut names, ["doc", id, "viewer", "user", "u", "x"]);
            assert!(index.remove(&names, &k, 1));
            assert!(!index.remove(&names, &k, 1));
        }
        assert_eq!(index.len(), 1_000);
        assert!(index.lasts_agree());
        let left: Vec<String> = index
            .iter_from(Pos(0, 0))
            .map(|e| names.name(e.key[1]).to_string())
            .collect();
        assert!(left.windows(2).all(|w| w[0] < w[1]));
        // Bulk merge lands in the same order as single inserts would.
        let more: Vec<Entry> = ids
            .iter()
            .step_by(2)
            .map(|id| {
                Entry::new(
                    key(&mut names, ["doc", id, "viewer", "user", "u", "x"]),
                    2,
                    LIVE,
                )
            })
            .collect();
        index.insert_many(&names, more);
        assert!(index.lasts_agree());
        let all: Vec<String> = index
            .iter_from(Pos(0, 0))
            .map(|e| names.name(e.key[1]).to_string())
            .collect();
        assert_eq!(all, sorted);
    }

    #[test]
    fn ranks_order_symbols_as_their_strings() {
        let mut names = Interner::default();
        let mut index = Index::default();
        let mut ids: Vec<String> = (0..5_000)
            .map(|i| format!("{:x}", i * 7919 % 5_003))
            .collect();
        // Interned and inserted in three batches, ranked after each of the
        // first two, so ranked and unranked symbols meet in comparisons.
        for (round, batch) in ids.chunks(1_700).enumerate() {
            for id in batch {
                let k = key(&mut names, ["doc", id, "viewer", "user", "u", "x"]);
                index.insert(&names, Entry::new(k, 1, LIVE));
            }
            if round < 2 {
                names.rerank();
                // The second time the index takes the new ranks; the first
                // time its cached ranks stay stale (and must be ignored).
                if round == 1 {
                    index.take_ranks(&names);
                }
            }
            assert!(index.lasts_agree());
        }
        let syms: Vec<Sym> = (1..=names.len() as Sym).collect();
        for a in syms.iter().step_by(7) {
            for b in syms.iter().step_by(11) {
                assert_eq!(
                    names.cmp_syms(*a, *b),
                    names.resolve(*a).cmp(&names.resolve(*b))
                );
            }
        }
        ids.sort();
        ids.dedup();
        let seen: Vec<String> = index
            .iter_from(Pos(0, 0))
            .map(|e| names.name(e.key[1]).to_string())
            .collect();
        assert_eq!(seen, ids);
        // Seeks by symbol prefix, from scratch and from an earlier start.
        let doc = names.get("doc").unwrap();
        for id in ids.iter().step_by(97) {
            let sym = names.get(id).unwrap();
            let at = index.seek_prefix(&names, &[doc, sym]);
            assert_eq!(names.name(index.iter_from(at).next().unwrap().key[1]), id);
            let from = index.seek_prefix_from(&names, Pos(0, 0), &[doc, sym]);
            assert_eq!(from, at);
            // Hinted: the first call stores the hint, the second uses it.
            assert_eq!(index.seek_object(&names, doc, sym), at);
            assert_eq!(index.seek_object(&names, doc, sym), at);
        }
        // Every hint goes stale when entries move (inserts before them,
        // chunk splits): the hinted seek still lands exactly.
        let aaa = names.intern("aaa");
        for i in 0..700 {
            let k = key(
                &mut names,
                ["doc", &format!("{i:x}"), "editor", "user", "u", "x"],
            );
            index.insert(&names, Entry::new(k, 2, LIVE));
        }
        for id in ids.iter().step_by(97) {
            let sym = names.get(id).unwrap();
            assert_eq!(
                index.seek_object(&names, doc, sym),
                index.seek_prefix(&names, &[doc, sym]),
                "{id}"
            );
        }
        // An object with no rows: where it would start, never a stale hint.
        assert_eq!(
            index.seek_object(&names, doc, aaa),
            index.seek_prefix(&names, &[doc, aaa])
        );
    }

    #[test]
    fn no_subject_relation_sorts_first() {
        let mut names = Interner::default();
        let a = key(&mut names, ["doc", "1", "viewer", "group", "g", ""]);
        let mut b = a;
        b[5] = NONE;
        assert_eq!(names.cmp_keys(&b, &a), Ordering::Less);
        assert_eq!(names.resolve(NONE), None);
        assert_eq!(names.resolve(a[5]), Some(""));
    }
}
