//! The cursor decoder: any text as `page[after]` or `page[before]`, for the sorts the API
//! offers, is a page or a 400 (a cursor of another query, a malformed one), never a panic.
#![no_main]

use call_projections::PageCursor;
use libfuzzer_sys::fuzz_target;

#[path = "support.rs"]
mod support;

const QUERIES: [&str; 4] = [
    "",
    "sort=-createdAt",
    "sort=recordingUrl,-dialedAt&filter[direction]=inbound",
    "sort=state,-id&filter[prospect][id]=5",
];

fuzz_target!(|data: &[u8]| {
    let Some((selector, rest)) = data.split_first() else {
        return;
    };
    let cursor = String::from_utf8_lossy(rest).into_owned();
    let Ok(request) = call_api::query::parse_list(QUERIES[usize::from(*selector) % QUERIES.len()])
    else {
        return;
    };
    let mut query = request.query;
    query.cursor = Some(if selector & 0x80 == 0 {
        PageCursor::After(cursor.clone())
    } else {
        PageCursor::Before(cursor.clone())
    });
    let ledger = support::ledger();
    let _ = ledger.list(&query);
    let _ = ledger.cursor_beside(&query, &cursor, selector & 0x40 == 0);
});
