//! The query-string grammar: every parser of a request's query string takes any text and
//! answers a request or a 400, never a panic. A list query that parses is also run against a
//! small ledger, so filters, sorts and counts on odd values reach the query engine.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "support.rs"]
mod support;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = call_api::query::parse_read(&text);
    let _ = call_api::query::parse_changes(&text);
    let _ = call_api::query::parse_log_page(&text);
    if let Ok(request) = call_api::query::parse_list(&text) {
        let _ = support::ledger().list(&request.query);
    }
});
