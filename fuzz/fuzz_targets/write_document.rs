//! The JSON:API write parser with validation: any bytes, read as the service reads a write
//! (`JsonIn`), as a create, an update and an update of an existing call, with and without the
//! telephony right, give a write or the list of violations, never a panic; and the same answer
//! as a document read into a `serde_json::Value` (bytes refused by one are refused by the other).
#![no_main]

use call_model::{check_update, check_write, parse_update, parse_write, JsonIn, Rights, WriteMode};
use libfuzzer_sys::fuzz_target;

#[path = "support.rs"]
mod support;

fuzz_target!(|data: &[u8]| {
    let read = JsonIn::from_slice(data);
    let value = serde_json::from_slice::<serde_json::Value>(data);
    let (Ok(document), Ok(value)) = (read, value.as_ref()) else {
        assert_eq!(
            JsonIn::from_slice(data).is_ok(),
            value.is_ok(),
            "JsonIn and Value disagree on whether the bytes are JSON"
        );
        return;
    };
    assert_eq!(document, JsonIn::from_value(value));
    for rights in [Rights { voice: false }, Rights { voice: true }] {
        for mode in [WriteMode::Create, WriteMode::Update(1)] {
            assert_eq!(
                check_write(&document, mode, rights),
                parse_write(value, mode, rights)
            );
        }
        if let Some(call) = support::a_call() {
            assert_eq!(
                check_update(&document, &call, rights),
                parse_update(value, &call, rights)
            );
        }
    }
});
