//! The change feed: the calls created or changed and the calls deleted after a log position,
//! merged in log order from the in-memory feed and the stored deletion rows.

use crate::error::ProjectionError;
use crate::query::ChangesPage;
use crate::store::{Deletions, View};

/// The changes after `after` in one view, up to `limit` items (at least one); see
/// [`Projection::changes`](crate::Projection::changes).
pub(crate) fn changes(
    view: &View,
    after: u64,
    limit: usize,
) -> Result<ChangesPage, ProjectionError> {
    let limit = limit.max(1);
    let checkpoint = view.meta.checkpoint;
    let mut page = ChangesPage {
        calls: Vec::new(),
        deleted: Vec::new(),
        next_after: checkpoint.max(after),
        more: false,
    };
    let Some(first) = after.checked_add(1) else {
        return Ok(page);
    };
    // Live calls come from the in-memory feed, deletions from their stored rows; both are in
    // position order, and merged.
    let mut changed = view.indexes.changes.since(first).peekable();
    let mut deleted = Deletions::new(&view.tree, first).peekable();
    let mut items = 0;
    loop {
        let next_deletion = match deleted.peek() {
            Some(Ok(deletion)) => Some(deletion.position),
            // Taken below, where its error is returned.
            Some(Err(_)) => Some(0),
            None => None,
        };
        let take_change = match (changed.peek(), next_deletion) {
            (None, None) => break,
            (Some((c, _)), Some(d)) => *c <= d,
            (Some(_), None) => true,
            (None, Some(_)) => false,
        };
        if items == limit {
            page.more = true;
            break;
        }
        if take_change {
            let Some((position, id)) = changed.next() else {
                break;
            };
            let call = view
                .load_call(id)?
                .ok_or_else(|| ProjectionError::Corrupt {
                    key: format!("view of call {id}"),
                    reason: format!(
                        "the change feed names it at position {position}, but it is not stored"
                    ),
                })?;
            page.next_after = position;
            page.calls.push(call);
        } else {
            let Some(deletion) = deleted.next() else {
                break;
            };
            let deletion = deletion?;
            page.next_after = deletion.position;
            page.deleted.push(deletion);
        }
        items += 1;
    }
    if !page.more {
        page.next_after = checkpoint.max(after);
    }
    Ok(page)
}
