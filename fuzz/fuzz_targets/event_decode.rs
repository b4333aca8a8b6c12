//! The event decoder: any bytes as a stored record (current and older schema versions) and
//! any JSON as the documented event form decode to an event or an error, never a panic; what
//! decodes encodes and decodes again to the same event.
#![no_main]

use call_model::Event;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(event) = Event::decode(7, 3, 2, data) {
        let again =
            Event::decode(7, 3, 2, &event.stored.encode()).expect("what decoded re-decodes");
        assert_eq!(again, event);
    }
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) {
        if let Ok(event) = Event::from_json(&value) {
            let again = Event::from_json(&event.to_json()).expect("the documented form re-reads");
            assert_eq!(again, event);
        }
    }
});
