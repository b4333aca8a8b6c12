//! The query engine: validates a [`ListQuery`](crate::ListQuery), picks a plan that reads
//! candidates in the list's order from the in-memory indexes, and reads only the stored rows it
//! returns. Its rooms: [`order`] (sort order and row keys), [`filter`] (filters resolved against
//! the indexes), [`walk`] (iterators over the indexes), [`plan`] (which walk answers a list),
//! [`run`] (the executor: pages, counts, cursors), [`cursor`] (the cursor format) and
//! [`changes`] (the change feed).
//!
//!
//! # Plans
//!
//! The order is the sort keys, then `id` (in the direction of the last sort key unless `id` is
//! named). Every plan yields candidate ids already in that order, starting at the cursor, so a
//! page costs about `page size / selectivity` cheap in-memory checks plus `page size` row reads:
//!
//! * **Fixed**: some filter names a small set of calls (a prospect's calls, a few ids, a narrow
//!   date range). Its ids are collected, ordered in memory from the sort columns, and walked
//!   from the cursor. Used when the set is below a limit that grows with the square root of the
//!   number of live calls (where ordering the set costs about what walking the sort index would).
//! * **Merge** (order by id): a k-way merge, in id order, of the per-value ranges of an equality
//!   filter's index (`prospect` in 1,2,3; `direction=inbound`).
//! * **Sorted** (order by an attribute): the first sort key's index, in value order, restricted
//!   to the range its own filters allow. With more sort keys, the calls sharing a first value
//!   form a group: a small group is ordered in memory by the remaining keys; a large one (a
//!   `state` or `outcome` shared by many calls), when the order is two keys, is read from the
//!   second key's index in order, keeping the group's members. Orders of three or more keys
//!   sort large groups in memory, O(group) per page.
//! * **AllIds** (order by id, nothing selective): the live ids in order, within any id range.
//!
//! Each candidate is checked against every filter, in memory where the indexes can answer
//! (columns for sortable attributes, set membership for equality filters) and on the stored row
//! where they cannot (`null` on a filter-only attribute, `tags`, a note's text).
pub(crate) mod changes;
pub(crate) mod cursor;
mod filter;
mod order;
mod plan;
mod run;
mod walk;

pub(crate) use run::{cursor_beside, cursor_for, list};

#[cfg(test)]
mod tests;
