//! The graph rules of SPEC §2, checked incrementally: a rule can only become broken through a
//! changed (field, parent) entry, so each rule looks only at the changes and what they touch.
//!
//! Precondition: the "before" state of the changes satisfies every rule (the data store's graph is
//! assumed valid; rules it already breaks elsewhere are not reported). Under it, the findings are
//! exactly the rules broken by the "after" state.

mod children;
mod cycles;
mod depth;
mod parents;

use super::intern::Ix;
use super::overlay::{Key, Overlay};
use super::verdict::ViolationCode;
use crate::job::CascadeAction;
use crate::schema::Constraints;

/// One changed (field, parent): its value before the change, sorted.
#[derive(Debug, Clone)]
pub struct Change {
    pub key: Key,
    pub before: Vec<Ix>,
    pub before_cascade: CascadeAction,
}

impl Change {
    /// Captures the current value of `key` in `view`, before it changes.
    pub fn capture(view: &Overlay<'_>, key: Key) -> Self {
        let mut before = view.children(key.0, key.1).to_vec();
        before.sort_unstable();
        Change {
            key,
            before,
            before_cascade: view.cascade(key.0, key.1),
        }
    }

    /// Children present after the change and not before.
    pub fn new_edges<'v>(&'v self, view: &'v Overlay<'_>) -> impl Iterator<Item = Ix> + 'v {
        let (f, p) = self.key;
        view.children(f, p)
            .iter()
            .copied()
            .filter(|c| self.before.binary_search(c).is_err())
    }
}

/// What made a finding: an edge (field, parent, child) or a whole (field, parent) entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blame {
    Edge(usize, Ix, Ix),
    Key(usize, Ix),
}

/// A broken rule, in graph indexes; `validate` turns it into a `Violation`.
#[derive(Debug, Clone)]
pub struct Finding {
    pub code: ViolationCode,
    pub message: String,
    pub records: Vec<Ix>,
    pub blame: Vec<Blame>,
}

/// What every rule reads.
pub struct Ctx<'a, 'g> {
    pub view: &'a Overlay<'g>,
    pub changes: &'a [Change],
    pub constraints: &'a [Constraints],
}

impl Ctx<'_, '_> {
    fn name(&self, ix: Ix) -> &str {
        self.view.graph.ids.resolve(ix)
    }

    fn field_name(&self, f: usize) -> &str {
        self.view
            .graph
            .field_names
            .get(f)
            .map(String::as_str)
            .unwrap_or("?")
    }

    fn constraints(&self, f: usize) -> Option<&Constraints> {
        self.constraints.get(f)
    }
}

type Rule = fn(&Ctx<'_, '_>) -> Vec<Finding>;

/// The rules in precedence order (matching `ViolationCode`'s order).
const RULES: [Rule; 5] = [
    cycles::check,
    children::check,
    parents::check_unique_parent,
    parents::check_ownership,
    depth::check,
];

/// Every finding of every rule.
pub fn check_all(ctx: &Ctx<'_, '_>) -> Vec<Finding> {
    RULES.iter().flat_map(|rule| rule(ctx)).collect()
}

/// The findings of the first rule that finds anything.
pub fn check_first(ctx: &Ctx<'_, '_>) -> Vec<Finding> {
    RULES
        .iter()
        .map(|rule| rule(ctx))
        .find(|f| !f.is_empty())
        .unwrap_or_default()
}
