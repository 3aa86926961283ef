//! Record ids interned to dense `u32`s: one string arena, one end offset per id, one hash table of
//! indexes (no second copy of any string), so a UUID costs ~36 + 4 + ~10 bytes.

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
}

impl Interner {
    pub fn with_capacity(records: usize, bytes: usize) -> Self {
        Interner {
            arena: String::with_capacity(bytes),
            ends: Vec::with_capacity(records),
            table: HashTable::with_capacity(records),
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
        let hash = FxBuildHasher.hash_one(s);
        self.table.find(hash, |&ix| self.resolve(ix) == s).copied()
    }

    /// The index of `s`, adding it when new.
    pub fn intern(&mut self, s: &str) -> Result<Ix, GraphError> {
        if let Some(ix) = self.get(s) {
            return Ok(ix);
        }
        let ix = Ix::try_from(self.ends.len()).map_err(|_| GraphError::TooLarge)?;
        let end = u32::try_from(self.arena.len() + s.len()).map_err(|_| GraphError::TooLarge)?;
        self.arena.push_str(s);
        self.ends.push(end);
        let hash = FxBuildHasher.hash_one(s);
        let Self { arena, ends, table } = self;
        table.insert_unique(hash, ix, |&other| {
            FxBuildHasher.hash_one(resolve_in(arena, ends, other))
        });
        Ok(ix)
    }

    /// Gives back the room reserved while building.
    pub fn shrink_to_fit(&mut self) {
        self.arena.shrink_to_fit();
        self.ends.shrink_to_fit();
        let Self { arena, ends, table } = self;
        table.shrink_to_fit(|&ix| FxBuildHasher.hash_one(resolve_in(arena, ends, ix)));
    }

    /// Bytes allocated on the heap (capacities, not lengths).
    pub fn heap_bytes(&self) -> usize {
        self.arena.capacity() + self.ends.capacity() * 4 + self.table.allocation_size()
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
