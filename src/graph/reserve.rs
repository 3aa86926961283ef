//! Reservations: the edge changes of jobs that passed validation and are being written, so that
//! jobs validated meanwhile see them. A reserved (field, parent) has two possible futures, its value
//! before the job and after it (the PATCH may still fail or be compensated), so a later job is
//! checked against two views of the pending work:
//! - [`Bound::Upper`]: every edge that may exist (before ∪ after, cascade delete if either says so);
//!   a job valid here is valid whatever the pending jobs end up doing, because every rule of SPEC §2
//!   can only be broken by adding edges or turning cascade delete on.
//! - [`Bound::Lower`]: only the edges that exist either way (before ∩ after); a job invalid here is
//!   invalid whatever they end up doing.
//!
//! Between the two, the verdict depends on how pending jobs end: the caller waits for them.

use rustc_hash::FxHashMap;

use super::intern::Ix;
use super::overlay::Key;
use super::plan::Plan;
use super::{Graph, fold::Set};
use crate::job::CascadeAction;

/// Which view of the pending work validation runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    Upper,
    Lower,
}

/// Identifies one job's reservation, to release it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ReservationId(u64);

#[derive(Debug, Clone)]
struct Pending {
    owner: ReservationId,
    before: Vec<Ix>,
    before_cascade: CascadeAction,
    after: Vec<Ix>,
    after_cascade: CascadeAction,
}

impl Pending {
    fn bound(&self, bound: Bound) -> (Vec<Ix>, CascadeAction) {
        let after = Set::new(&self.after);
        let before = Set::new(&self.before);
        let is_delete = |c: CascadeAction| c == CascadeAction::Delete;
        match bound {
            Bound::Upper => {
                let mut ids = self.before.clone();
                ids.extend(self.after.iter().copied().filter(|c| !before.contains(*c)));
                let delete = is_delete(self.before_cascade) || is_delete(self.after_cascade);
                (ids, pick(delete, self.after_cascade))
            }
            Bound::Lower => {
                let ids = self
                    .before
                    .iter()
                    .copied()
                    .filter(|c| after.contains(*c))
                    .collect();
                let delete = is_delete(self.before_cascade) && is_delete(self.after_cascade);
                (ids, pick(delete, self.after_cascade))
            }
        }
    }
}

/// `Delete` when `delete`, else a non-delete action (only delete matters to the rules).
fn pick(delete: bool, after: CascadeAction) -> CascadeAction {
    match (delete, after) {
        (true, _) => CascadeAction::Delete,
        (false, CascadeAction::Delete) => CascadeAction::Update,
        (false, other) => other,
    }
}

/// The pending reservations of one data store's graph.
#[derive(Debug, Default)]
pub struct Reservations {
    by_key: FxHashMap<Key, Pending>,
    by_parent: FxHashMap<Ix, ReservationId>,
    next: u64,
}

impl Reservations {
    /// Reserved (field, parent) entries.
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    /// True when another job's reservation holds `parent` (it is being written now).
    pub fn holds_parent(&self, graph: &Graph, parent: &str) -> bool {
        graph
            .ids
            .get(parent)
            .is_some_and(|ix| self.by_parent.contains_key(&ix))
    }

    /// Reserves what `plan` will write, with the graph's current values as "before". A plan
    /// naming a record or field the graph lacks reserves nothing for it (the validator admits
    /// neither).
    pub fn reserve(&mut self, graph: &Graph, plan: &Plan) -> ReservationId {
        self.next += 1;
        let owner = ReservationId(self.next);
        for patch in &plan.patches {
            let Some(p) = graph.ix(patch.parent.as_str()) else {
                continue;
            };
            self.by_parent.insert(p, owner);
            for value in &patch.fields {
                let Some(f) = graph.field_index(value.field.as_str()) else {
                    continue;
                };
                let (before, before_cascade) = graph
                    .fields
                    .get(f)
                    .map(|field| field.children.get(p))
                    .map(|(kids, cascade)| (kids.to_vec(), cascade))
                    .unwrap_or_default();
                let after = value
                    .ids
                    .iter()
                    .filter_map(|id| graph.ids.get(id.as_str()))
                    .collect();
                let pending = Pending {
                    owner,
                    before,
                    before_cascade,
                    after,
                    after_cascade: value.cascade,
                };
                self.by_key.insert((f, p), pending);
            }
        }
        owner
    }

    /// Forgets a reservation: its PATCHes landed (the graph holds them), failed or were undone.
    pub fn release(&mut self, owner: ReservationId) {
        self.by_key.retain(|_, pending| pending.owner != owner);
        self.by_parent.retain(|_, o| *o != owner);
    }

    /// The reserved entries as `bound` sees them.
    pub(crate) fn view(&self, bound: Bound) -> impl Iterator<Item = (Key, Vec<Ix>, CascadeAction)> {
        self.by_key.iter().map(move |(&key, pending)| {
            let (ids, cascade) = pending.bound(bound);
            (key, ids, cascade)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(before: &[Ix], after: &[Ix], bc: CascadeAction, ac: CascadeAction) -> Pending {
        Pending {
            owner: ReservationId(1),
            before: before.to_vec(),
            before_cascade: bc,
            after: after.to_vec(),
            after_cascade: ac,
        }
    }

    #[test]
    fn the_upper_bound_holds_every_edge_either_future_may_have() {
        let p = pending(&[1, 2], &[2, 3], CascadeAction::None, CascadeAction::Delete);
        let (ids, cascade) = p.bound(Bound::Upper);
        assert_eq!(ids, vec![1, 2, 3]);
        assert_eq!(cascade, CascadeAction::Delete);
    }

    #[test]
    fn the_lower_bound_holds_only_edges_both_futures_have() {
        let p = pending(&[1, 2], &[2, 3], CascadeAction::None, CascadeAction::Delete);
        let (ids, cascade) = p.bound(Bound::Lower);
        assert_eq!(ids, vec![2]);
        assert_ne!(cascade, CascadeAction::Delete);
    }
}
