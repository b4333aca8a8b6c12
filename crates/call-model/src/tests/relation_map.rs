//! [`RelationMap`] answers as the `BTreeMap<Relation, _>` it replaced: the same entries, in the
//! same order, after any sequence of inserts and removals.

use crate::{Relation, RelationMap};
use std::collections::BTreeMap;

/// Inserts and removals in any order read back as a `BTreeMap` of the same entries does.
#[test]
fn it_agrees_with_a_btree_map() {
    let mut map = RelationMap::new();
    let mut model = BTreeMap::new();
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    for step in 0..2_000u32 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let relation = Relation::ALL[(state % Relation::ALL.len() as u64) as usize];
        if state >> 40 & 3 == 0 {
            assert_eq!(map.remove(&relation), model.remove(&relation));
        } else {
            assert_eq!(map.insert(relation, step), model.insert(relation, step));
        }
        assert_eq!(map.get(&relation), model.get(&relation));
        assert_eq!(map.len(), model.len());
        assert!(map.iter().eq(model.iter()));
    }
    map.retain(|_, value| *value % 2 == 0);
    model.retain(|_, value| *value % 2 == 0);
    assert!(map.clone().into_iter().eq(model.clone()));
    assert_eq!(format!("{map:?}"), format!("{model:?}"));
}
