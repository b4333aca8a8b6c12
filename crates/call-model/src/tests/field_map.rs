//! [`FieldMap`] answers as the `BTreeMap<Field, _>` it replaced: the same entries, in the same
//! order, through every method, after any sequence of inserts and removals.

use crate::{AttrValue, Field, FieldMap};
use std::collections::BTreeMap;

#[test]
fn a_fields_slot_is_its_place_in_the_list_of_fields() {
    for (index, field) in Field::ALL.iter().enumerate() {
        assert_eq!(*field as usize, index, "{field}");
    }
    let mut sorted = Field::ALL.to_vec();
    sorted.sort();
    assert_eq!(sorted, Field::ALL, "the list is in `Field`'s order");
}

/// The entries, copied out (the two maps' borrows need not live as long).
fn entries<'f, 'v>(iter: impl Iterator<Item = (&'f Field, &'v u32)>) -> Vec<(Field, u32)> {
    iter.map(|(field, value)| (*field, *value)).collect()
}

#[test]
fn it_answers_as_a_btree_map_after_any_inserts_and_removals() {
    let mut map = FieldMap::new();
    let mut model = BTreeMap::new();
    assert!(map.is_empty());
    // A fixed pseudo-random walk over every field: inserts, replacements and removals.
    let mut seed = 7u64;
    for step in 0..2000u32 {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let field = Field::ALL[(seed >> 33) as usize % Field::ALL.len()];
        if (seed >> 20).is_multiple_of(3) {
            assert_eq!(map.remove(&field), model.remove(&field), "step {step}");
        } else {
            assert_eq!(
                map.insert(field, step),
                model.insert(field, step),
                "step {step}"
            );
        }
        assert_eq!(map.len(), model.len());
        assert_eq!(map.is_empty(), model.is_empty());
        assert_eq!(map.get(&field), model.get(&field));
        assert_eq!(map.contains_key(&field), model.contains_key(&field));
        assert_eq!(entries(map.iter()), entries(model.iter()), "step {step}");
    }
    assert_eq!(
        map.keys().copied().collect::<Vec<_>>(),
        model.keys().copied().collect::<Vec<_>>()
    );
    assert_eq!(
        map.values().collect::<Vec<_>>(),
        model.values().collect::<Vec<_>>()
    );
    assert_eq!(format!("{map:?}"), format!("{model:?}"));
    if let (Some(ours), Some(theirs)) = (map.get_mut(&Field::Note), model.get_mut(&Field::Note)) {
        *ours += 1;
        *theirs += 1;
    }
    map.retain(|field, value| *value % 2 == 0 || *field == Field::Tags);
    model.retain(|field, value| *value % 2 == 0 || *field == Field::Tags);
    assert_eq!(entries(map.iter()), entries(model.iter()));
    let rebuilt: FieldMap<u32> = model.clone().into_iter().collect();
    assert_eq!(rebuilt, map);
    assert!(map.clone().into_iter().eq(model.clone()));
    map.extend([(Field::To, 1), (Field::From, 2)]);
    model.extend([(Field::To, 1), (Field::From, 2)]);
    assert_eq!(entries((&map).into_iter()), entries(model.iter()));
}

/// A create's changes become its call's attributes in their own allocation (the slots of
/// `Option<Option<AttrValue>>` and `Option<AttrValue>` are the same size, so the collect
/// reuses it), the cleared fields dropped.
#[test]
fn changes_become_the_values_they_set_in_place() {
    let mut changes: FieldMap<Option<AttrValue>> = FieldMap::new();
    changes.insert(Field::Note, Some(AttrValue::Text("hello".into())));
    changes.insert(Field::Outcome, None);
    changes.insert(Field::ShouldRecordCall, Some(AttrValue::Bool(true)));
    let before = changes.allocation();
    let present = changes.into_present();
    assert_eq!(present.allocation(), before, "the same allocation");
    let entries: Vec<(Field, AttrValue)> = present.into_iter().collect();
    assert_eq!(
        entries,
        vec![
            (Field::Note, AttrValue::Text("hello".into())),
            (Field::ShouldRecordCall, AttrValue::Bool(true)),
        ]
    );
}
