//! Builds a [`Graph`] from a streamed record list: ids and edges are collected flat, then each
//! field's adjacency is laid out once (children CSR-like, parents one slot per record).

use std::borrow::Cow;

use super::adjacency::{Children, Parents};
use super::intern::{Interner, Ix};
use super::{ABSENT, FieldGraph, Graph, GraphError};
use crate::job::CascadeAction;
use crate::schema::Schema;

/// One `set_children` call, pointing into the flat edge buffer.
#[derive(Debug, Clone, Copy)]
struct List {
    field: u16,
    parent: Ix,
    cascade: CascadeAction,
    start: usize,
    len: usize,
}

/// Collects records page by page; `build` lays the adjacency out.
#[derive(Debug)]
pub struct GraphBuilder {
    ids: Interner,
    versions: Vec<u64>,
    field_names: Vec<String>,
    lists: Vec<List>,
    edges: Vec<Ix>,
}

impl GraphBuilder {
    pub fn new(schema: &Schema) -> Self {
        Self::with_capacity(schema, 0)
    }

    /// With room for `records` records (e.g. a count the data store reports).
    pub fn with_capacity(schema: &Schema, records: usize) -> Self {
        GraphBuilder {
            ids: Interner::with_capacity(records, records * 36),
            versions: Vec::with_capacity(records),
            field_names: schema
                .relationships()
                .iter()
                .map(|f| f.name.clone())
                .collect(),
            lists: Vec::new(),
            edges: Vec::with_capacity(records),
        }
    }

    /// True when `field` is one of the schema's relationship fields (others are not graph edges).
    pub fn has_field(&self, field: &str) -> bool {
        self.field_names.iter().any(|n| n == field)
    }

    /// A record and its `_version`.
    pub fn add_record(&mut self, id: &str, version: u64) -> Result<(), GraphError> {
        let ix = self.intern(id)?;
        if let Some(v) = self.versions.get_mut(ix as usize) {
            *v = version.min(ABSENT - 1);
        }
        Ok(())
    }

    /// The value of one relationship field of `parent`. Children may be records not seen yet
    /// (pages arrive in any order); a later call for the same (parent, field) wins.
    pub fn set_children<S: AsRef<str>>(
        &mut self,
        parent: &str,
        field: &str,
        children: &[S],
        cascade: CascadeAction,
    ) -> Result<(), GraphError> {
        let f = self
            .field_names
            .iter()
            .position(|n| n == field)
            .and_then(|f| u16::try_from(f).ok())
            .ok_or_else(|| GraphError::UnknownField(field.to_owned()))?;
        let parent = self.intern(parent)?;
        let start = self.edges.len();
        for c in children {
            let c = self.intern(c.as_ref())?;
            self.edges.push(c);
        }
        self.lists.push(List {
            field: f,
            parent,
            cascade,
            start,
            len: children.len(),
        });
        Ok(())
    }

    /// Lays out the adjacency of every field.
    pub fn build(self) -> Result<Graph, GraphError> {
        let records = self.ids.len();
        let mut fields = Vec::with_capacity(self.field_names.len());
        for f in 0..self.field_names.len() {
            fields.push(self.build_field(f, records)?);
        }
        let present = self.versions.iter().filter(|&&v| v != ABSENT).count();
        let mut versions = self.versions;
        versions.shrink_to_fit();
        let mut ids = self.ids;
        ids.shrink_to_fit();
        Ok(Graph {
            ids,
            versions,
            fields,
            field_names: self.field_names,
            present,
        })
    }

    fn build_field(&self, f: usize, records: usize) -> Result<FieldGraph, GraphError> {
        // Stable sort by parent, then keep the last list of each parent.
        let mut lists: Vec<&List> = self
            .lists
            .iter()
            .filter(|l| usize::from(l.field) == f)
            .collect();
        lists.sort_by_key(|l| l.parent);
        let mut winners: Vec<(Ix, Cow<'_, [Ix]>, CascadeAction)> = Vec::with_capacity(lists.len());
        let mut parents = Parents::with_records(records);
        let mut edge_count = 0;
        for (i, l) in lists.iter().enumerate() {
            if lists.get(i + 1).is_some_and(|next| next.parent == l.parent) {
                continue;
            }
            let raw = self.edges.get(l.start..l.start + l.len).unwrap_or(&[]);
            let kids = dedup_in_order(raw);
            for &c in kids.iter() {
                parents.add(c, l.parent);
            }
            edge_count += kids.len();
            winners.push((l.parent, kids, l.cascade));
        }
        let children = Children::from_lists(
            records,
            winners.iter().map(|(p, k, c)| (*p, &**k, *c)),
            edge_count,
        )?;
        Ok(FieldGraph { children, parents })
    }

    fn intern(&mut self, id: &str) -> Result<Ix, GraphError> {
        let ix = self.ids.intern(id)?;
        if self.versions.len() < self.ids.len() {
            self.versions.resize(self.ids.len(), ABSENT);
        }
        Ok(ix)
    }
}

/// The store should never repeat a child, but one repeated edge must not count twice.
fn dedup_in_order(ids: &[Ix]) -> Cow<'_, [Ix]> {
    let repeats = match ids.len() {
        0 | 1 => false,
        n if n <= 16 => ids.iter().enumerate().any(|(i, c)| ids[..i].contains(c)),
        _ => {
            let mut seen = rustc_hash::FxHashSet::default();
            !ids.iter().all(|c| seen.insert(*c))
        }
    };
    if !repeats {
        return Cow::Borrowed(ids);
    }
    let mut seen = rustc_hash::FxHashSet::default();
    Cow::Owned(ids.iter().copied().filter(|c| seen.insert(*c)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::SchemaWire;

    pub(crate) fn schema() -> Schema {
        let wire: SchemaWire = serde_json::from_str(
            r#"{"fields":[{"name":"a","type":"relationship"},{"name":"b","type":"relationship"},
            {"name":"title","type":"string"}]}"#,
        )
        .unwrap();
        Schema::try_from(wire).unwrap()
    }

    #[test]
    fn records_and_edges_arrive_in_any_order_and_the_last_value_wins() {
        let mut b = GraphBuilder::new(&schema());
        b.set_children("p", "a", &["c1", "c2"], CascadeAction::Update)
            .unwrap();
        b.add_record("c1", 1).unwrap();
        b.set_children("p", "a", &["c2", "c2"], CascadeAction::Delete)
            .unwrap();
        b.add_record("p", 7).unwrap();
        b.add_record("c2", 2).unwrap();
        let g = b.build().unwrap();
        assert_eq!(g.record_count(), 3);
        assert_eq!(g.version("p"), Some(7));
        assert_eq!(
            g.children("p", "a"),
            Some((vec!["c2"], CascadeAction::Delete))
        );
        assert_eq!(g.children("p", "b"), Some((vec![], CascadeAction::None)));
    }

    #[test]
    fn a_non_relationship_field_is_refused() {
        let mut b = GraphBuilder::new(&schema());
        let err = b
            .set_children("p", "title", &["x"], CascadeAction::None)
            .unwrap_err();
        assert_eq!(err.code(), "unknown_field");
        assert!(b.has_field("a") && !b.has_field("title"));
    }

    #[test]
    fn apply_patch_updates_children_parents_and_version_in_place() {
        let mut b = GraphBuilder::new(&schema());
        for id in ["p", "q", "c"] {
            b.add_record(id, 1).unwrap();
        }
        b.set_children("p", "a", &["c"], CascadeAction::None)
            .unwrap();
        let mut g = b.build().unwrap();
        g.apply_patch("q", "a", &["c"], CascadeAction::Delete, 2)
            .unwrap();
        g.apply_patch("p", "a", &[] as &[&str], CascadeAction::None, 5)
            .unwrap();
        assert_eq!(g.version("p"), Some(5));
        assert_eq!(
            g.children("q", "a"),
            Some((vec!["c"], CascadeAction::Delete))
        );
        let ix = |id| g.ix(id).unwrap();
        let parents: Vec<_> = g.fields[0].parents.iter(ix("c")).collect();
        assert_eq!(parents, vec![ix("q")]);
    }

    #[test]
    fn removing_a_record_drops_its_edges_both_ways() {
        let mut b = GraphBuilder::new(&schema());
        for id in ["p", "c", "g"] {
            b.add_record(id, 1).unwrap();
        }
        b.set_children("p", "a", &["c"], CascadeAction::None)
            .unwrap();
        b.set_children("c", "b", &["g"], CascadeAction::None)
            .unwrap();
        let mut g = b.build().unwrap();
        g.remove_record("c");
        assert!(!g.contains("c"));
        assert_eq!(g.record_count(), 2);
        assert_eq!(g.children("p", "a"), Some((vec![], CascadeAction::None)));
        let gx = g.ids.get("g").unwrap();
        assert_eq!(g.fields[1].parents.iter(gx).count(), 0);
    }
}
