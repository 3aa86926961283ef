//! Record ids interned to dense `u32`s: one string arena, one end offset per id, one hash table of
//! indexes (no second copy of any string), so a UUID costs ~36 + 4 + ~10 bytes. UUIDs are
//! case-insensitive (RFC 9562 §4): a hyphenated UUID is kept and looked up in lower case, so a job's
//! `550E8400-…` finds the store's `550e8400-…`, and a store that prints upper case still matches.

use std::borrow::Cow;
use std::hash::BuildHasher;

use hashbrown::HashTable;
use rustc_hash::FxBuildHasher;

use super::GraphError;

/// Dense index of an interned record id.
pub type Ix = u32;

#[derive(Debug, Default, Clone)]
pub struct Interner {
    arena: String,
    ends: Vec<u32>,
    table: HashTable<Ix>,
    /// The first spelling of ids not kept as given (upper-case UUIDs): the store owns its ids, so
    /// requests name a record as the store printed it. Empty for a store printing lower case.
    spellings: rustc_hash::FxHashMap<Ix, Box<str>>,
}

impl Interner {
    pub fn with_capacity(records: usize, bytes: usize) -> Self {
        Interner {
            arena: String::with_capacity(bytes),
            ends: Vec::with_capacity(records),
            table: HashTable::with_capacity(records),
            spellings: Default::default(),
        }
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// The string of `ix`; empty for an index that was never handed out.
    pub fn resolve(&self, ix: Ix) -> &str {
        resolve_in(&self.arena, &self.ends, ix)
    }

    pub fn get(&self, s: &str) -> Option<Ix> {
        self.find(&canonical(s))
    }

    /// How `ix` was first spelled when that differs from its canonical form, else the canonical.
    pub fn spelling(&self, ix: Ix) -> &str {
        match self.spellings.get(&ix) {
            Some(spelled) => spelled,
            None => self.resolve(ix),
        }
    }

    /// The index of `s`, adding it when new.
    pub fn intern(&mut self, given: &str) -> Result<Ix, GraphError> {
        let s = canonical(given);
        let respelled = matches!(s, Cow::Owned(_));
        let s = s.as_ref();
        if let Some(ix) = self.find(s) {
            return Ok(ix);
        }
        let ix = Ix::try_from(self.ends.len()).map_err(|_| GraphError::TooLarge)?;
        let end = u32::try_from(self.arena.len() + s.len()).map_err(|_| GraphError::TooLarge)?;
        if respelled {
            self.spellings.insert(ix, given.into());
        }
        self.arena.push_str(s);
        self.ends.push(end);
        let hash = FxBuildHasher.hash_one(s);
        let Self {
            arena, ends, table, ..
        } = self;
        table.insert_unique(hash, ix, |&other| {
            FxBuildHasher.hash_one(resolve_in(arena, ends, other))
        });
        Ok(ix)
    }

    /// The index of an id already in its canonical spelling.
    fn find(&self, s: &str) -> Option<Ix> {
        let hash = FxBuildHasher.hash_one(s);
        self.table.find(hash, |&ix| self.resolve(ix) == s).copied()
    }

    /// Gives back the room reserved while building.
    pub fn shrink_to_fit(&mut self) {
        self.arena.shrink_to_fit();
        self.ends.shrink_to_fit();
        let Self {
            arena, ends, table, ..
        } = self;
        table.shrink_to_fit(|&ix| FxBuildHasher.hash_one(resolve_in(arena, ends, ix)));
    }

    /// Bytes allocated on the heap (capacities, not lengths).
    pub fn heap_bytes(&self) -> usize {
        self.arena.capacity()
            + self.ends.capacity() * 4
            + self.table.allocation_size()
            + self.spellings.len() * 56
    }
}

/// The spelling an id is kept under: a hyphenated UUID in lower case, anything else as given.
pub fn canonical(s: &str) -> Cow<'_, str> {
    let upper_uuid = s.len() == 36
        && s.bytes().any(|b| b.is_ascii_uppercase())
        && uuid::Uuid::try_parse(s).is_ok();
    if upper_uuid {
        Cow::Owned(s.to_ascii_lowercase())
    } else {
        Cow::Borrowed(s)
    }
}

/// `resolve` without borrowing the table, for rehashing during an insert.
fn resolve_in<'a>(arena: &'a str, ends: &[u32], ix: Ix) -> &'a str {
    let i = ix as usize;
    let end = ends.get(i).copied().unwrap_or(0) as usize;
    let start = i
        .checked_sub(1)
        .and_then(|p| ends.get(p))
        .copied()
        .unwrap_or(0) as usize;
    arena.get(start..end).unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_match_in_any_case_and_other_ids_exactly() {
        let mut i = Interner::default();
        let a = i.intern("550E8400-E29B-41D4-A716-446655440000").unwrap();
        assert_eq!(i.resolve(a), "550e8400-e29b-41d4-a716-446655440000");
        assert_eq!(i.get("550e8400-e29b-41d4-A716-446655440000"), Some(a));
        let b = i.intern("Acct-1").unwrap();
        assert_eq!(i.get("acct-1"), None);
        assert_eq!(i.get("Acct-1"), Some(b));
    }

    #[test]
    fn an_upper_case_uuid_keeps_its_spelling_for_the_store() {
        let mut i = Interner::default();
        let upper = "550E8400-E29B-41D4-A716-446655440000";
        let a = i.intern(upper).unwrap();
        assert_eq!(i.spelling(a), upper);
        assert_eq!(i.intern(&upper.to_ascii_lowercase()).unwrap(), a);
        assert_eq!(i.spelling(a), upper);
        let b = i.intern("6ba7b810-9dad-11d1-80b4-00c04fd430c8").unwrap();
        assert_eq!(i.spelling(b), "6ba7b810-9dad-11d1-80b4-00c04fd430c8");
    }

    #[test]
    fn interning_twice_returns_the_same_index_and_resolves_back() {
        let mut i = Interner::default();
        let a = i.intern("a").unwrap();
        let b = i.intern("bb").unwrap();
        assert_eq!(i.intern("a").unwrap(), a);
        assert_eq!((i.resolve(a), i.resolve(b)), ("a", "bb"));
        assert_eq!(i.get("c"), None);
        assert_eq!(i.len(), 2);
    }

    #[test]
    fn many_ids_survive_table_growth() {
        let mut i = Interner::default();
        for n in 0..10_000 {
            i.intern(&format!("id-{n}")).unwrap();
        }
        for n in 0..10_000u32 {
            assert_eq!(i.get(&format!("id-{n}")), Some(n));
        }
        assert_eq!(i.resolve(99_999), "");
    }
}
