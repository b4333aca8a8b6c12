//! The JSON:API write parser with validation: any bytes that are JSON, as a create, an update
//! and an update of an existing call, with and without the telephony right, give a write or
//! the list of violations, never a panic.
#![no_main]

use call_model::{parse_update, parse_write, Rights, WriteMode};
use libfuzzer_sys::fuzz_target;

#[path = "support.rs"]
mod support;

fuzz_target!(|data: &[u8]| {
    let Ok(document) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    for rights in [Rights { voice: false }, Rights { voice: true }] {
        let _ = parse_write(&document, WriteMode::Create, rights);
        let _ = parse_write(&document, WriteMode::Update(1), rights);
        if let Some(call) = support::a_call() {
            let _ = parse_update(&document, &call, rights);
        }
    }
});
