//! Compact adjacency of one relationship field: children as spans into one pool (CSR-like, updated
//! in place), parents as one slot per record plus a side table for the rare second parent.

use rustc_hash::FxHashMap;

use super::GraphError;
use super::intern::Ix;
use crate::job::CascadeAction;

/// "No parent" in [`Parents::first`].
const NONE: Ix = Ix::MAX;
const CASCADE_SHIFT: u32 = 30;
const LEN_MASK: u32 = (1 << CASCADE_SHIFT) - 1;

/// A parent's children in the pool, its length sharing a word with the cascade action.
#[derive(Debug, Clone, Copy, Default)]
struct Span {
    start: u32,
    len_cascade: u32,
}

impl Span {
    fn len(self) -> usize {
        (self.len_cascade & LEN_MASK) as usize
    }

    fn cascade(self) -> CascadeAction {
        match self.len_cascade >> CASCADE_SHIFT {
            1 => CascadeAction::Update,
            2 => CascadeAction::Delete,
            _ => CascadeAction::None,
        }
    }

    fn new(start: usize, len: usize, cascade: CascadeAction) -> Result<Span, GraphError> {
        let start = u32::try_from(start).map_err(|_| GraphError::TooLarge)?;
        let len = u32::try_from(len)
            .ok()
            .filter(|&l| l <= LEN_MASK)
            .ok_or(GraphError::TooLarge)?;
        let tag = match cascade {
            CascadeAction::None => 0,
            CascadeAction::Update => 1,
            CascadeAction::Delete => 2,
        };
        Ok(Span {
            start,
            len_cascade: len | (tag << CASCADE_SHIFT),
        })
    }
}

/// Children of every parent in one field. Replacing a list writes in place when it fits and
/// appends otherwise; the pool is compacted when more than half of it is garbage.
#[derive(Debug, Clone, Default)]
pub struct Children {
    spans: Vec<Span>,
    pool: Vec<Ix>,
    garbage: usize,
}

impl Children {
    /// Builds from lists already grouped by parent: `lists[p]` = (children, cascade).
    pub fn from_lists<'a>(
        records: usize,
        lists: impl Iterator<Item = (Ix, &'a [Ix], CascadeAction)>,
        edges: usize,
    ) -> Result<Self, GraphError> {
        let mut c = Children {
            spans: vec![Span::default(); records],
            pool: Vec::with_capacity(edges),
            garbage: 0,
        };
        for (parent, children, cascade) in lists {
            let span = Span::new(c.pool.len(), children.len(), cascade)?;
            c.pool.extend_from_slice(children);
            if let Some(slot) = c.spans.get_mut(parent as usize) {
                *slot = span;
            }
        }
        Ok(c)
    }

    pub fn get(&self, parent: Ix) -> (&[Ix], CascadeAction) {
        match self.spans.get(parent as usize) {
            Some(&s) => {
                let start = s.start as usize;
                let kids = self.pool.get(start..start + s.len()).unwrap_or(&[]);
                (kids, s.cascade())
            }
            None => (&[], CascadeAction::None),
        }
    }

    /// Makes room for records interned after the build.
    pub fn grow(&mut self, records: usize) {
        if self.spans.len() < records {
            self.spans.resize(records, Span::default());
        }
    }

    pub fn set(
        &mut self,
        parent: Ix,
        kids: &[Ix],
        cascade: CascadeAction,
    ) -> Result<(), GraphError> {
        self.grow(parent as usize + 1);
        let Some(&old) = self.spans.get(parent as usize) else {
            return Err(GraphError::TooLarge);
        };
        let span = if kids.len() <= old.len() {
            let start = old.start as usize;
            if let Some(dst) = self.pool.get_mut(start..start + kids.len()) {
                dst.copy_from_slice(kids);
            }
            self.garbage += old.len() - kids.len();
            Span::new(start, kids.len(), cascade)?
        } else {
            let start = self.pool.len();
            self.pool.extend_from_slice(kids);
            self.garbage += old.len();
            Span::new(start, kids.len(), cascade)?
        };
        if let Some(slot) = self.spans.get_mut(parent as usize) {
            *slot = span;
        }
        if self.garbage > 1024 && self.garbage * 2 > self.pool.len() {
            self.compact()?;
        }
        Ok(())
    }

    fn compact(&mut self) -> Result<(), GraphError> {
        let mut pool = Vec::with_capacity(self.pool.len().saturating_sub(self.garbage));
        for span in &mut self.spans {
            let start = span.start as usize;
            let kids = self.pool.get(start..start + span.len()).unwrap_or(&[]);
            *span = Span::new(pool.len(), kids.len(), span.cascade())?;
            pool.extend_from_slice(kids);
        }
        self.pool = pool;
        self.garbage = 0;
        Ok(())
    }

    pub fn heap_bytes(&self) -> usize {
        self.spans.capacity() * size_of::<Span>() + self.pool.capacity() * size_of::<Ix>()
    }
}

/// Parents of every child in one field: most records have at most one, so one slot each, and a
/// side table for the others.
#[derive(Debug, Clone, Default)]
pub struct Parents {
    first: Vec<Ix>,
    extra: FxHashMap<Ix, Vec<Ix>>,
}

impl Parents {
    pub fn with_records(records: usize) -> Self {
        Parents {
            first: vec![NONE; records],
            extra: FxHashMap::default(),
        }
    }

    pub fn grow(&mut self, records: usize) {
        if self.first.len() < records {
            self.first.resize(records, NONE);
        }
    }

    pub fn iter(&self, child: Ix) -> impl Iterator<Item = Ix> + '_ {
        let first = self
            .first
            .get(child as usize)
            .copied()
            .filter(|&p| p != NONE);
        let extra = self.extra.get(&child).map(Vec::as_slice).unwrap_or(&[]);
        first.into_iter().chain(extra.iter().copied())
    }

    pub fn add(&mut self, child: Ix, parent: Ix) {
        self.grow(child as usize + 1);
        match self.first.get_mut(child as usize) {
            Some(slot) if *slot == NONE => *slot = parent,
            _ => self.extra.entry(child).or_default().push(parent),
        }
    }

    pub fn remove(&mut self, child: Ix, parent: Ix) {
        let Some(&first) = self.first.get(child as usize) else {
            return;
        };
        if first == parent {
            let next = self.pop_extra(child).unwrap_or(NONE);
            if let Some(slot) = self.first.get_mut(child as usize) {
                *slot = next;
            }
        } else if let Some(list) = self.extra.get_mut(&child) {
            if let Some(pos) = list.iter().position(|&p| p == parent) {
                list.swap_remove(pos);
            }
            if list.is_empty() {
                self.extra.remove(&child);
            }
        }
    }

    fn pop_extra(&mut self, child: Ix) -> Option<Ix> {
        let list = self.extra.get_mut(&child)?;
        let p = list.pop();
        if list.is_empty() {
            self.extra.remove(&child);
        }
        p
    }

    pub fn heap_bytes(&self) -> usize {
        let table = self.extra.capacity() * (size_of::<(Ix, Vec<Ix>)>() + 1);
        let lists: usize = self.extra.values().map(|v| v.capacity() * 4).sum();
        self.first.capacity() * 4 + table + lists
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replacing_children_in_place_and_by_append_keeps_every_list_right() {
        let lists: Vec<(Ix, Vec<Ix>)> = vec![(0, vec![1, 2]), (1, vec![3])];
        let mut c = Children::from_lists(
            4,
            lists
                .iter()
                .map(|(p, k)| (*p, k.as_slice(), CascadeAction::Update)),
            3,
        )
        .unwrap();
        c.set(0, &[2], CascadeAction::Delete).unwrap();
        c.set(1, &[0, 2, 3], CascadeAction::None).unwrap();
        assert_eq!(c.get(0), (&[2][..], CascadeAction::Delete));
        assert_eq!(c.get(1), (&[0, 2, 3][..], CascadeAction::None));
        assert_eq!(c.get(9), (&[][..], CascadeAction::None));
    }

    #[test]
    fn compaction_preserves_lists() {
        let mut c = Children::default();
        for round in 0..3000u32 {
            c.set(
                round % 7,
                &[round, round + 1, round + 2][..(round % 3) as usize + 1],
                CascadeAction::None,
            )
            .unwrap();
        }
        for p in 0..7u32 {
            let (kids, _) = c.get(p);
            assert!(!kids.is_empty());
        }
        assert!(c.pool.len() < 3000);
    }

    #[test]
    fn a_second_parent_goes_to_the_side_table_and_comes_back() {
        let mut p = Parents::with_records(3);
        p.add(2, 0);
        p.add(2, 1);
        assert_eq!(p.iter(2).collect::<Vec<_>>(), vec![0, 1]);
        p.remove(2, 0);
        assert_eq!(p.iter(2).collect::<Vec<_>>(), vec![1]);
        p.remove(2, 1);
        assert_eq!(p.iter(2).count(), 0);
        assert!(p.extra.is_empty());
    }
}
