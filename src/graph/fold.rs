//! One operation applied to a field's current children: the fold that both the overlay and the
//! planner use, so what is validated is exactly what is sent.

use rustc_hash::FxHashSet;

use super::intern::Ix;
use crate::job::Mode;

/// The children after applying `mode` with `kids` over `current` (order kept: replace takes the
/// job's order, add appends the new ones, remove filters).
pub fn fold(current: &[Ix], mode: Mode, kids: &[Ix]) -> Vec<Ix> {
    match mode {
        Mode::Replace => kids.to_vec(),
        Mode::Add => {
            let mut out = current.to_vec();
            let present: Set = Set::new(current);
            out.extend(kids.iter().copied().filter(|c| !present.contains(*c)));
            out
        }
        Mode::Remove => {
            let gone = Set::new(kids);
            current
                .iter()
                .copied()
                .filter(|c| !gone.contains(*c))
                .collect()
        }
    }
}

/// Membership over a slice: linear for short ones, hashed for long ones.
pub enum Set<'a> {
    Small(&'a [Ix]),
    Hashed(FxHashSet<Ix>),
}

impl<'a> Set<'a> {
    pub fn new(ids: &'a [Ix]) -> Self {
        if ids.len() <= 16 {
            Set::Small(ids)
        } else {
            Set::Hashed(ids.iter().copied().collect())
        }
    }

    pub fn contains(&self, id: Ix) -> bool {
        match self {
            Set::Small(s) => s.contains(&id),
            Set::Hashed(h) => h.contains(&id),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replace_add_and_remove_fold_in_order() {
        assert_eq!(fold(&[1, 2], Mode::Replace, &[3, 1]), vec![3, 1]);
        assert_eq!(fold(&[1, 2], Mode::Add, &[2, 3]), vec![1, 2, 3]);
        assert_eq!(fold(&[1, 2, 3], Mode::Remove, &[2, 9]), vec![1, 3]);
        let many: Vec<Ix> = (0..100).collect();
        assert_eq!(fold(&many, Mode::Remove, &many[1..]), vec![0]);
    }
}
