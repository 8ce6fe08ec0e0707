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

use indexmap::IndexSet;

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
    /// Visible at revisions `created..deleted`.
    pub created: u64,
    pub deleted: u64,
}

impl Entry {
    pub fn visible_at(&self, at: u64) -> bool {
        self.created <= at && at < self.deleted
    }
}

/// Every string the store holds, once.
#[derive(Default)]
pub(super) struct Interner {
    set: IndexSet<Box<str>>,
}

impl Interner {
    /// The symbol of `s`, if it was ever interned.
    pub fn get(&self, s: &str) -> Option<Sym> {
        self.set.get_index_of(s).map(|i| i as Sym + 1)
    }

    pub fn intern(&mut self, s: &str) -> Sym {
        if let Some(sym) = self.get(s) {
            return sym;
        }
        let (i, _) = self.set.insert_full(s.into());
        i as Sym + 1
    }

    /// The string of `sym`; `None` for [`NONE`].
    pub fn resolve(&self, sym: Sym) -> Option<&str> {
        let i = (sym as usize).checked_sub(1)?;
        self.set.get_index(i).map(|s| &**s)
    }

    /// The string of a symbol that is never [`NONE`] (every field but the
    /// subject relation): symbols only come from [`Interner::intern`].
    pub fn name(&self, sym: Sym) -> &str {
        self.resolve(sym).unwrap_or_default()
    }

    pub fn cmp_keys(&self, a: &Key, b: &Key) -> Ordering {
        for (x, y) in a.iter().zip(b) {
            if x != y {
                return self.resolve(*x).cmp(&self.resolve(*y));
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
    len: usize,
}

/// Chunks split when they pass twice this many entries.
const CHUNK: usize = 256;

impl Index {
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.len
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
        let ci = self
            .chunks
            .partition_point(|c| c.last().is_some_and(&before));
        match self.chunks.get(ci) {
            Some(c) => Pos(ci, c.partition_point(before)),
            None => Pos(ci, 0),
        }
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
        let ci = self.chunks.partition_point(|c| {
            c.last()
                .is_some_and(|e| Self::entry_cmp(names, e, key, created) == Ordering::Less)
        });
        let c = self.chunks.get(ci)?;
        let off = c.partition_point(|e| Self::entry_cmp(names, e, key, created) == Ordering::Less);
        let e = c.get(off)?;
        (e.key == *key && e.created == created).then_some(Pos(ci, off))
    }

    /// The live version of `key`, if any.
    pub fn live(&self, names: &Interner, key: &Key) -> Option<Entry> {
        let ci = self.chunks.partition_point(|c| {
            c.last()
                .is_some_and(|e| names.cmp_keys(&e.key, key) == Ordering::Less)
        });
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
        }
    }

    pub fn insert(&mut self, names: &Interner, entry: Entry) {
        let ci = self
            .chunks
            .partition_point(|c| {
                c.last().is_some_and(|e| {
                    Self::entry_cmp(names, e, &entry.key, entry.created) == Ordering::Less
                })
            })
            .min(self.chunks.len().saturating_sub(1));
        if self.chunks.is_empty() {
            self.chunks.push(Vec::with_capacity(CHUNK));
        }
        let chunk = &mut self.chunks[ci];
        let off = chunk.partition_point(|e| {
            Self::entry_cmp(names, e, &entry.key, entry.created) == Ordering::Less
        });
        chunk.insert(off, entry);
        self.len += 1;
        if chunk.len() > 2 * CHUNK {
            let tail = chunk.split_off(CHUNK);
            self.chunks.insert(ci + 1, tail);
        }
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
        } else if chunk.len() < CHUNK / 4 && ci + 1 < self.chunks.len() {
            // Merge a small chunk into its successor to keep chunks full.
            let small = self.chunks.remove(ci);
            let next = &mut self.chunks[ci];
            let mut merged = small;
            merged.append(next);
            *next = merged;
            if next.len() > 2 * CHUNK {
                let tail = next.split_off(next.len() / 2);
                self.chunks.insert(ci + 1, tail);
            }
        }
        true
    }

    /// Inserts many entries at once: sorted and merged in one pass, then
    /// cut into chunks (a bulk import, where one insert at a time would
    /// move chunks a million times).
    pub fn insert_many(&mut self, names: &Interner, mut new: Vec<Entry>) {
        new.sort_unstable_by(|a, b| Self::entry_cmp(names, a, &b.key, b.created));
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
        self.chunks = chunks;
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
            index.insert(
                &names,
                Entry {
                    key: k,
                    created: 1,
                    deleted: LIVE,
                },
            );
        }
        assert_eq!(index.len(), 2_000);
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
        let left: Vec<String> = index
            .iter_from(Pos(0, 0))
            .map(|e| names.name(e.key[1]).to_string())
            .collect();
        assert!(left.windows(2).all(|w| w[0] < w[1]));
        // Bulk merge lands in the same order as single inserts would.
        let more: Vec<Entry> = ids
            .iter()
            .step_by(2)
            .map(|id| Entry {
                key: key(&mut names, ["doc", id, "viewer", "user", "u", "x"]),
                created: 2,
                deleted: LIVE,
            })
            .collect();
        index.insert_many(&names, more);
        let all: Vec<String> = index
            .iter_from(Pos(0, 0))
            .map(|e| names.name(e.key[1]).to_string())
            .collect();
        assert_eq!(all, sorted);
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
