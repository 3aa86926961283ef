//! The graph as it would be after (part of) a job, without copying it: only the changed
//! (field, parent) entries are stored, plus the reverse index of the edges they add.

use rustc_hash::FxHashMap;

use super::Graph;
use super::fold::{Set, fold};
use super::intern::Ix;
use super::reserve::{Bound, Reservations};
use crate::job::{CascadeAction, Mode};

/// The changed value of one (field, parent) and the operations that produced it.
#[derive(Debug, Clone)]
pub struct OverlayEntry {
    pub children: Vec<Ix>,
    sorted: Vec<Ix>,
    pub cascade: CascadeAction,
    /// Indexes of the job's operations folded into this entry, in order.
    pub ops: Vec<usize>,
    /// Another job's reservation, seen through a [`Bound`]: context, not a change of this job.
    reserved: bool,
}

/// Key of an entry: (field index, parent).
pub type Key = (usize, Ix);

/// Base graph + changed entries, answering the same questions as the graph.
pub struct Overlay<'g> {
    pub graph: &'g Graph,
    entries: FxHashMap<Key, OverlayEntry>,
    /// (field, child) → parents that gained `child` relative to the base graph.
    added_parents: FxHashMap<Key, Vec<Ix>>,
}

impl<'g> Overlay<'g> {
    pub fn new(graph: &'g Graph) -> Self {
        Overlay {
            graph,
            entries: FxHashMap::default(),
            added_parents: FxHashMap::default(),
        }
    }

    /// The graph with other jobs' pending reservations seen through `bound`.
    pub fn with_reservations(graph: &'g Graph, pending: &Reservations, bound: Bound) -> Self {
        Self::with_context(graph, pending.view(bound))
    }

    /// The graph with `values` in place of its own for their (field, parent): state the job is
    /// checked against, not changes of the job.
    pub fn with_context(
        graph: &'g Graph,
        values: impl IntoIterator<Item = (Key, Vec<Ix>, CascadeAction)>,
    ) -> Self {
        let mut overlay = Overlay::new(graph);
        for (key, children, cascade) in values {
            let mut sorted = children.clone();
            sorted.sort_unstable();
            let entry = OverlayEntry {
                children,
                sorted,
                cascade,
                ops: Vec::new(),
                reserved: true,
            };
            overlay.set(key, Some(entry));
        }
        overlay
    }

    fn base(&self, f: usize, p: Ix) -> (&'g [Ix], CascadeAction) {
        let graph: &'g Graph = self.graph;
        match graph.fields.get(f) {
            Some(field) => field.children.get(p),
            None => (&[], CascadeAction::None),
        }
    }

    pub fn children(&self, f: usize, p: Ix) -> &[Ix] {
        match self.entries.get(&(f, p)) {
            Some(e) => &e.children,
            None => self.base(f, p).0,
        }
    }

    pub fn cascade(&self, f: usize, p: Ix) -> CascadeAction {
        match self.entries.get(&(f, p)) {
            Some(e) => e.cascade,
            None => self.base(f, p).1,
        }
    }

    pub fn entry(&self, key: Key) -> Option<&OverlayEntry> {
        self.entries.get(&key)
    }

    /// Keys this job changed (any order); reserved entries of other jobs are not among them.
    pub fn keys(&self) -> impl Iterator<Item = Key> + '_ {
        self.entries
            .iter()
            .filter(|(_, e)| !e.reserved)
            .map(|(k, _)| *k)
    }

    pub fn field_count(&self) -> usize {
        self.graph.fields.len()
    }

    /// Parents of `c` in field `f` after the overlay, each once.
    pub fn parents(&self, f: usize, c: Ix) -> Vec<Ix> {
        let mut out: Vec<Ix> = Vec::new();
        if let Some(field) = self.graph.fields.get(f) {
            for p in field.parents.iter(c) {
                let kept = match self.entries.get(&(f, p)) {
                    Some(e) => e.sorted.binary_search(&c).is_ok(),
                    None => true,
                };
                if kept {
                    out.push(p);
                }
            }
        }
        if let Some(added) = self.added_parents.get(&(f, c)) {
            for &p in added {
                if !out.contains(&p) {
                    out.push(p);
                }
            }
        }
        out
    }

    /// Folds one operation into the entry of (f, p); returns the previous entry for `restore`.
    pub fn apply(
        &mut self,
        key: Key,
        op: usize,
        mode: Mode,
        cascade: impl FnOnce(CascadeAction) -> CascadeAction,
        kids: &[Ix],
    ) -> Option<OverlayEntry> {
        let (f, p) = key;
        let children = fold(self.children(f, p), mode, kids);
        let cascade = cascade(self.cascade(f, p));
        let mut ops = self
            .entries
            .get(&key)
            .map(|e| e.ops.clone())
            .unwrap_or_default();
        ops.push(op);
        let mut sorted = children.clone();
        sorted.sort_unstable();
        let entry = OverlayEntry {
            children,
            sorted,
            cascade,
            ops,
            reserved: false,
        };
        self.set(key, Some(entry))
    }

    /// Puts back what `apply` returned.
    pub fn restore(&mut self, key: Key, previous: Option<OverlayEntry>) {
        self.set(key, previous);
    }

    fn set(&mut self, key: Key, new: Option<OverlayEntry>) -> Option<OverlayEntry> {
        let (f, p) = key;
        let base = Set::new(self.base(f, p).0);
        let old = self.entries.remove(&key);
        if let Some(old) = &old {
            for &c in old.children.iter().filter(|&&c| !base.contains(c)) {
                if let Some(list) = self.added_parents.get_mut(&(f, c)) {
                    list.retain(|&q| q != p);
                }
            }
        }
        if let Some(new) = new {
            for &c in new.children.iter().filter(|&&c| !base.contains(c)) {
                self.added_parents.entry((f, c)).or_default().push(p);
            }
            self.entries.insert(key, new);
        }
        old
    }
}
