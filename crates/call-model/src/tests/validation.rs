//! One test per validation rule of `parse_write`, each asserting the exact JSON pointers and the
//! kind (`TooLong` or `Invalid`) of the violations; tables where a rule has many cases.

use super::{ts, ORDINARY, VOICE};
use crate::{
    parse_write, AttrKind, AttrValue, Changes, DataConnection, Field, Ownership, RelValue,
    Relation, ResourceRef, Rights, Violation, ViolationKind, WriteInput, WriteMode,
};
use serde_json::{json, Value};
use ViolationKind::{Invalid, TooLong};

const CREATE: WriteMode = WriteMode::Create;

/// Validates `document` and asserts exactly these (pointer, kind) violations, in any order. Also
/// checks what every violation must satisfy: a detail saying what was expected, and a pointer
/// that names either a member of the document or a missing member of one.
#[track_caller]
fn check(document: &Value, mode: WriteMode, rights: Rights, expected: &[(&str, ViolationKind)]) {
    let result = parse_write(document, mode, rights);
    let mut got: Vec<(String, ViolationKind)> = match &result {
        Ok(_) => Vec::new(),
        Err(violations) => {
            assert!(!violations.is_empty(), "an error carries its violations");
            violations
                .iter()
                .for_each(|v| assert_well_formed(document, v));
            violations
                .iter()
                .map(|v| (v.pointer.clone(), v.kind))
                .collect()
        }
    };
    let mut expected: Vec<(String, ViolationKind)> = expected
        .iter()
        .map(|(pointer, kind)| ((*pointer).to_owned(), *kind))
        .collect();
    got.sort_by(|a, b| a.0.cmp(&b.0));
    expected.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(got, expected, "violations of {document}: {result:#?}");
}

#[track_caller]
fn assert_well_formed(document: &Value, violation: &Violation) {
    assert!(!violation.detail.is_empty(), "{violation:?} says nothing");
    let pointer = &violation.pointer;
    if document.pointer(pointer).is_some() {
        return;
    }
    let parent = &pointer[..pointer.rfind('/').unwrap_or(0)];
    assert!(
        document.pointer(parent).is_some_and(Value::is_object),
        "{pointer} names neither a member of {document} nor a missing member of an object"
    );
}

/// `{"data":{"type":"call","attributes":...}}`.
fn with_attributes(attributes: Value) -> Value {
    json!({"data": {"type": "call", "attributes": attributes}})
}

/// `{"data":{"type":"call","relationships":...}}`.
fn with_relationships(relationships: Value) -> Value {
    json!({"data": {"type": "call", "relationships": relationships}})
}

/// `{"data":{"type":"call","meta":...}}`.
fn with_meta(meta: Value) -> Value {
    json!({"data": {"type": "call", "meta": meta}})
}

/// Asserts each attributes object of the table gives exactly its violations.
#[track_caller]
fn check_attributes(rights: Rights, table: &[(Value, &[(&str, ViolationKind)])]) {
    for (attributes, expected) in table {
        check(
            &with_attributes(attributes.clone()),
            CREATE,
            rights,
            expected,
        );
    }
}

#[track_caller]
fn accepted(document: &Value, mode: WriteMode, rights: Rights) -> WriteInput {
    match parse_write(document, mode, rights) {
        Ok(input) => input,
        Err(violations) => panic!("{document} refused: {violations:#?}"),
    }
}

#[track_caller]
fn accepted_attribute(field: Field, value: Value) -> Option<AttrValue> {
    let document = with_attributes(json!({ field.name(): value }));
    let input = accepted(&document, CREATE, VOICE);
    input
        .changes
        .attributes
        .get(&field)
        .expect("the attribute")
        .clone()
}

fn pointer(field: Field) -> String {
    format!("/data/attributes/{}", field.name())
}

fn writable_fields() -> impl Iterator<Item = Field> {
    Field::ALL
        .iter()
        .copied()
        .filter(|f| f.ownership() != Ownership::Server)
}

#[test]
fn the_document_must_be_an_object_with_a_data_object() {
    let table: &[(Value, &[(&str, ViolationKind)])] = &[
        (json!(null), &[("", Invalid)]),
        (json!([]), &[("", Invalid)]),
        (json!([{"data": {}}]), &[("", Invalid)]),
        (json!("call"), &[("", Invalid)]),
        (json!(5), &[("", Invalid)]),
        (json!(true), &[("", Invalid)]),
        (json!({}), &[("/data", Invalid)]),
        (json!({"data": null}), &[("/data", Invalid)]),
        (json!({"data": []}), &[("/data", Invalid)]),
        (json!({"data": [{"type": "call"}]}), &[("/data", Invalid)]),
        (json!({"data": "call"}), &[("/data", Invalid)]),
        (json!({"data": 1e300}), &[("/data", Invalid)]),
    ];
    for (document, expected) in table {
        check(document, CREATE, ORDINARY, expected);
    }
}

#[test]
fn the_resource_type_must_be_call() {
    let table: &[(Value, &[(&str, ViolationKind)])] = &[
        (json!({"data": {}}), &[("/data/type", Invalid)]),
        (
            json!({"data": {"type": "calls"}}),
            &[("/data/type", Invalid)],
        ),
        (
            json!({"data": {"type": "Call"}}),
            &[("/data/type", Invalid)],
        ),
        (json!({"data": {"type": null}}), &[("/data/type", Invalid)]),
        (json!({"data": {"type": 1}}), &[("/data/type", Invalid)]),
        (
            json!({"data": {"type": ["call"]}}),
            &[("/data/type", Invalid)],
        ),
        (json!({"data": {"type": "call"}}), &[]),
    ];
    for (document, expected) in table {
        check(document, CREATE, ORDINARY, expected);
    }
}

#[test]
fn unknown_members_of_the_document_and_of_data_are_refused() {
    let table: &[(Value, &[(&str, ViolationKind)])] = &[
        (
            json!({"data": {"type": "call"}, "included": []}),
            &[("/included", Invalid)],
        ),
        (
            json!({"data": {"type": "call"}, "errors": null}),
            &[("/errors", Invalid)],
        ),
        (
            json!({"data": {"type": "call", "attribute": {}}}),
            &[("/data/attribute", Invalid)],
        ),
        (
            json!({"data": {"type": "call", "": 1}}),
            &[("/data/", Invalid)],
        ),
        // `jsonapi` at the top and `links` in the resource are JSON:API's own and ignored.
        (
            json!({"data": {"type": "call", "links": {"self": "x"}}, "jsonapi": {"version": "1.0"}}),
            &[],
        ),
    ];
    for (document, expected) in table {
        check(document, CREATE, ORDINARY, expected);
    }
}

#[test]
fn pointers_escape_slash_and_tilde() {
    check(
        &with_attributes(json!({"a/b~c": 1})),
        CREATE,
        ORDINARY,
        &[("/data/attributes/a~1b~0c", Invalid)],
    );
    check(
        &json!({"data": {"type": "call"}, "~": 1}),
        CREATE,
        ORDINARY,
        &[("/~0", Invalid)],
    );
}

#[test]
fn meta_members_at_the_top_of_the_document_are_refused_not_ignored() {
    let table: &[(Value, &[(&str, ViolationKind)])] = &[
        (
            json!({"data": {"type": "call"}, "meta": {"occurredAt": "2025-01-13T12:47:31Z"}}),
            &[("/meta/occurredAt", Invalid)],
        ),
        (
            json!({"data": {"type": "call"}, "meta": {"dataConnections": []}}),
            &[("/meta/dataConnections", Invalid)],
        ),
        (
            json!({"data": {"type": "call"}, "meta": {"x": 1}}),
            &[("/meta/x", Invalid)],
        ),
        (
            json!({"data": {"type": "call"}, "meta": []}),
            &[("/meta", Invalid)],
        ),
        (json!({"data": {"type": "call"}, "meta": {}}), &[]),
    ];
    for (document, expected) in table {
        check(document, CREATE, ORDINARY, expected);
    }
}

#[test]
fn a_create_must_not_name_an_id() {
    for id in [json!(1), json!("1"), json!(null), json!(0)] {
        check(
            &json!({"data": {"type": "call", "id": id}}),
            CREATE,
            ORDINARY,
            &[("/data/id", Invalid)],
        );
    }
}

#[test]
fn an_update_may_name_only_the_id_of_the_call_it_updates() {
    let update = WriteMode::Update(7);
    for id in [json!(7), json!("7"), json!("07")] {
        check(
            &json!({"data": {"type": "call", "id": id}}),
            update,
            ORDINARY,
            &[],
        );
    }
    check(&json!({"data": {"type": "call"}}), update, ORDINARY, &[]);
    let wrong = [
        json!(8),
        json!("8"),
        json!(-7),
        json!(7.0),
        json!(7.5),
        json!("+7"),
        json!(" 7"),
        json!("7 "),
        json!(""),
        json!("seven"),
        json!(null),
        json!(true),
        json!([7]),
        json!({"id": 7}),
        json!(1e300),
        json!(u64::MAX),
    ];
    for id in wrong {
        check(
            &json!({"data": {"type": "call", "id": id}}),
            update,
            ORDINARY,
            &[("/data/id", Invalid)],
        );
    }
}

#[test]
fn attributes_must_be_an_object() {
    for attributes in [
        json!([]),
        json!(null),
        json!("note"),
        json!(1),
        json!([{"note": "x"}]),
    ] {
        check(
            &with_attributes(attributes),
            CREATE,
            ORDINARY,
            &[("/data/attributes", Invalid)],
        );
    }
    check(&with_attributes(json!({})), CREATE, ORDINARY, &[]);
}

#[test]
fn unknown_attributes_are_refused() {
    check_attributes(
        VOICE,
        &[
            (
                json!({"color": "red"}),
                &[("/data/attributes/color", Invalid)],
            ),
            (
                json!({"Direction": "inbound"}),
                &[("/data/attributes/Direction", Invalid)],
            ),
            (json!({"id": 1}), &[("/data/attributes/id", Invalid)]),
            (json!({"": null}), &[("/data/attributes/", Invalid)]),
            (
                json!({"prospect": {"data": null}}),
                &[("/data/attributes/prospect", Invalid)],
            ),
        ],
    );
}

#[test]
fn server_set_attributes_are_refused_even_to_telephony() {
    let server_set: Vec<Field> = Field::ALL
        .iter()
        .copied()
        .filter(|f| f.ownership() == Ownership::Server)
        .collect();
    assert_eq!(
        server_set,
        [Field::CreatedAt, Field::StateChangedAt, Field::UpdatedAt]
    );
    for field in server_set {
        for value in [json!("2025-01-13T12:47:31.000Z"), json!(null), json!(5)] {
            for rights in [ORDINARY, VOICE] {
                check(
                    &with_attributes(json!({ field.name(): value })),
                    CREATE,
                    rights,
                    &[(&pointer(field), Invalid)],
                );
            }
        }
    }
}

#[test]
fn telephony_owned_attributes_need_the_voice_right() {
    let telephony: Vec<Field> = Field::ALL
        .iter()
        .copied()
        .filter(|f| f.ownership() == Ownership::Telephony)
        .collect();
    assert_eq!(
        telephony,
        [Field::State, Field::Uid, Field::VoicemailRecordingUrl]
    );
    for field in telephony {
        for value in [json!("https://example.com/v.mp3"), json!(null)] {
            let document = with_attributes(json!({ field.name(): value }));
            check(&document, CREATE, ORDINARY, &[(&pointer(field), Invalid)]);
            check(
                &document,
                WriteMode::Update(1),
                ORDINARY,
                &[(&pointer(field), Invalid)],
            );
            check(&document, CREATE, VOICE, &[]);
        }
    }
}

#[test]
fn enumerations_accept_exactly_their_values() {
    let expected: &[(Field, &[&str])] = &[
        (Field::Direction, &["inbound", "outbound"]),
        (Field::Outcome, &["Answered", "Not Answered"]),
        (
            Field::SequenceAction,
            &["Advance", "Finish", "Finish - No Reply", "Finish - Replied"],
        ),
        (Field::UserCallType, &["bridge", "voip"]),
    ];
    let enums: Vec<Field> = Field::ALL
        .iter()
        .copied()
        .filter(|f| matches!(f.kind(), AttrKind::Enum(_)))
        .collect();
    assert_eq!(enums, expected.iter().map(|(f, _)| *f).collect::<Vec<_>>());
    for (field, values) in expected {
        assert_eq!(field.kind(), AttrKind::Enum(values));
        for value in *values {
            assert_eq!(
                accepted_attribute(*field, json!(value)),
                Some(AttrValue::Text((*value).into()))
            );
        }
        let wrong = [
            json!(values[0].to_uppercase()),
            json!(format!(" {}", values[0])),
            json!(""),
            json!(1),
            json!(true),
            json!([values[0]]),
            json!({}),
        ];
        for value in wrong {
            check(
                &with_attributes(json!({ field.name(): value })),
                CREATE,
                ORDINARY,
                &[(&pointer(*field), Invalid)],
            );
        }
    }
}

#[test]
fn string_lengths_are_counted_in_unicode_characters() {
    let limits: &[(Field, usize)] = &[
        (Field::ExternalVendor, 255),
        (Field::From, 255),
        (Field::To, 255),
        (Field::State, 255),
        (Field::Uid, 255),
        (Field::Note, 65535),
        (Field::RecordingUrl, 255),
        (Field::VoicemailRecordingUrl, 1024),
        (Field::VendorCallId, 63),
    ];
    let texts: Vec<(Field, usize)> = Field::ALL
        .iter()
        .filter_map(|f| match f.kind() {
            AttrKind::Text { max, .. } => Some((*f, max)),
            _ => None,
        })
        .collect();
    let mut sorted = limits.to_vec();
    sorted.sort();
    assert_eq!(texts, sorted, "the text attributes and their limits");
    // Two-, three- and four-byte characters: a limit in bytes would refuse the first value.
    for filler in ['é', '語', '📞'] {
        for (field, max) in limits {
            let url = matches!(field.kind(), AttrKind::Text { url: true, .. });
            let prefix = if url { "https://example.com/" } else { "" };
            let of_length = |n: usize| {
                let pad = n - prefix.chars().count();
                format!("{prefix}{}", filler.to_string().repeat(pad))
            };
            let longest = of_length(*max);
            assert!(longest.len() > *max);
            assert_eq!(
                accepted_attribute(*field, json!(longest)),
                Some(AttrValue::Text(longest.as_str().into()))
            );
            check(
                &with_attributes(json!({ field.name(): of_length(max + 1) })),
                CREATE,
                VOICE,
                &[(&pointer(*field), TooLong)],
            );
        }
    }
}

#[test]
fn strings_must_be_strings() {
    let texts = writable_fields().filter(|f| matches!(f.kind(), AttrKind::Text { .. }));
    for field in texts {
        for value in [
            json!(5),
            json!(1e300),
            json!(true),
            json!([]),
            json!({}),
            json!(["x"]),
        ] {
            check(
                &with_attributes(json!({ field.name(): value })),
                CREATE,
                VOICE,
                &[(&pointer(field), Invalid)],
            );
        }
    }
}

#[test]
fn urls_must_be_http_or_https() {
    let good = [
        "http://example.com",
        "https://example.com/recordings/1.mp3?sig=a%20b#t=1",
        "HTTPS://EXAMPLE.COM/",
        "https://user:pw@example.com:8443/x",
        "https://[2001:db8::1]:443/x",
        "http://127.0.0.1/x",
        "https://bücher.example/x",
    ];
    let bad = [
        "",
        "example.com/recording.mp3",
        "ftp://example.com/x",
        "javascript:alert(1)",
        "file:///etc/passwd",
        "https:/example.com",
        "https://",
        "https:///x",
        "https://?x",
        "https://#x",
        "https://:443/x",
        "https://user@/x",
        "https://example.com:port/x",
        "https://example.com:/x",
        "https://[::1/x",
        "https://exa mple.com/x",
        "https://example.com/a b",
        "https://example.com/\n",
        " https://example.com",
        "https://exa<mple.com/",
        "https://example.com/\u{7f}",
        "https://example.com/\u{a0}x",
        "https://example.com/\u{85}",
        "https://example.com/\u{2028}",
    ];
    for field in [Field::RecordingUrl, Field::VoicemailRecordingUrl] {
        for url in good {
            assert_eq!(
                accepted_attribute(field, json!(url)),
                Some(AttrValue::Text(url.into())),
                "{url}"
            );
        }
        for url in bad {
            check(
                &with_attributes(json!({ field.name(): url })),
                CREATE,
                VOICE,
                &[(&pointer(field), Invalid)],
            );
        }
    }
    // Other strings are not URLs.
    check(
        &with_attributes(json!({"note": "ftp://x"})),
        CREATE,
        ORDINARY,
        &[],
    );
}

#[test]
fn a_url_both_too_long_and_not_http_gets_both_violations() {
    let value = format!("ftp://{}", "x".repeat(300));
    check(
        &with_attributes(json!({ "recordingUrl": value })),
        CREATE,
        ORDINARY,
        &[
            ("/data/attributes/recordingUrl", TooLong),
            ("/data/attributes/recordingUrl", Invalid),
        ],
    );
}

#[test]
fn date_times_must_be_rfc3339() {
    let good = [
        ("2025-01-13T12:47:31.000Z", "2025-01-13T12:47:31.000Z"),
        ("2025-01-13T12:47:31Z", "2025-01-13T12:47:31.000Z"),
        ("2025-01-13t12:47:31z", "2025-01-13T12:47:31.000Z"),
        (
            "2025-01-13T13:47:31.123456789+01:00",
            "2025-01-13T12:47:31.123Z",
        ),
        ("2025-01-13T07:17:31.9999-05:30", "2025-01-13T12:47:31.999Z"),
        ("1969-12-31T23:59:59.999Z", "1969-12-31T23:59:59.999Z"),
    ];
    let bad = [
        json!("2025-01-13"),
        json!("12:47:31"),
        json!("2025-01-13T12:47:31"),
        json!("2025-01-13T12:47Z"),
        json!("2025-13-01T00:00:00Z"),
        json!("2025-02-30T00:00:00Z"),
        json!("2025-01-13T25:00:00Z"),
        json!("13/01/2025 12:47"),
        json!("yesterday"),
        json!(""),
        json!(1736772451000_i64),
        json!(true),
        json!(["2025-01-13T12:47:31Z"]),
        json!({"at": "2025-01-13T12:47:31Z"}),
    ];
    let times = writable_fields().filter(|f| f.kind() == AttrKind::Time);
    let times: Vec<Field> = times.collect();
    assert_eq!(
        times,
        [
            Field::AnsweredAt,
            Field::CompletedAt,
            Field::DialedAt,
            Field::ReturnedAt
        ]
    );
    for field in times {
        for (text, normalised) in good {
            assert_eq!(
                accepted_attribute(field, json!(text)),
                Some(AttrValue::Time(ts(normalised))),
                "{text}"
            );
        }
        for value in &bad {
            check(
                &with_attributes(json!({ field.name(): value })),
                CREATE,
                ORDINARY,
                &[(&pointer(field), Invalid)],
            );
        }
    }
}

#[test]
fn should_record_call_must_be_a_boolean() {
    assert_eq!(
        accepted_attribute(Field::ShouldRecordCall, json!(true)),
        Some(AttrValue::Bool(true))
    );
    assert_eq!(
        accepted_attribute(Field::ShouldRecordCall, json!(false)),
        Some(AttrValue::Bool(false))
    );
    for value in [json!("true"), json!(1), json!(0), json!([true]), json!({})] {
        check(
            &with_attributes(json!({ "shouldRecordCall": value })),
            CREATE,
            ORDINARY,
            &[("/data/attributes/shouldRecordCall", Invalid)],
        );
    }
}

#[test]
fn tags_must_be_an_array_of_at_most_100_strings_of_at_most_255_characters() {
    assert_eq!(
        accepted_attribute(Field::Tags, json!(["Interested", "Meeting Booked", ""])),
        Some(AttrValue::Tags(vec![
            "Interested".into(),
            "Meeting Booked".into(),
            "".into()
        ]))
    );
    assert_eq!(
        accepted_attribute(Field::Tags, json!(vec!["é".repeat(255); 100])),
        Some(AttrValue::Tags(vec!["é".repeat(255).into(); 100]))
    );
    check_attributes(
        ORDINARY,
        &[
            (
                json!({"tags": "Interested"}),
                &[("/data/attributes/tags", Invalid)],
            ),
            (
                json!({"tags": {"0": "x"}}),
                &[("/data/attributes/tags", Invalid)],
            ),
            (json!({"tags": 1}), &[("/data/attributes/tags", Invalid)]),
            (
                json!({"tags": [1, "ok", null, ["x"]]}),
                &[
                    ("/data/attributes/tags/0", Invalid),
                    ("/data/attributes/tags/2", Invalid),
                    ("/data/attributes/tags/3", Invalid),
                ],
            ),
            (
                json!({"tags": ["ok", "é".repeat(256)]}),
                &[("/data/attributes/tags/1", TooLong)],
            ),
            (
                json!({"tags": vec!["x"; 101]}),
                &[("/data/attributes/tags", Invalid)],
            ),
        ],
    );
}

#[test]
fn null_clears_an_attribute() {
    let document = with_attributes(json!({"note": null, "tags": null, "answeredAt": null}));
    let input = accepted(&document, WriteMode::Update(3), ORDINARY);
    let cleared = [Field::AnsweredAt, Field::Note, Field::Tags];
    assert_eq!(
        input.changes.attributes,
        cleared.into_iter().map(|f| (f, None)).collect()
    );
}

#[test]
fn relationships_must_be_an_object_of_data_members() {
    let table: &[(Value, &[(&str, ViolationKind)])] = &[
        (json!([]), &[("/data/relationships", Invalid)]),
        (json!(null), &[("/data/relationships", Invalid)]),
        (
            json!({"prospect": 5}),
            &[("/data/relationships/prospect", Invalid)],
        ),
        (
            json!({"prospect": null}),
            &[("/data/relationships/prospect", Invalid)],
        ),
        (
            json!({"prospect": {}}),
            &[("/data/relationships/prospect", Invalid)],
        ),
        (
            json!({"prospect": {"data": null, "links": {}}}),
            &[("/data/relationships/prospect", Invalid)],
        ),
        (
            json!({"prospect": {"type": "prospect", "id": 5}}),
            &[("/data/relationships/prospect", Invalid)],
        ),
        (json!({}), &[]),
    ];
    for (relationships, expected) in table {
        check(
            &with_relationships(relationships.clone()),
            CREATE,
            ORDINARY,
            expected,
        );
    }
}

#[test]
fn unknown_relationships_are_refused() {
    for name in ["account", "Prospect", "prospects", "associated_id", ""] {
        check(
            &with_relationships(json!({ name: {"data": null} })),
            CREATE,
            VOICE,
            &[(&format!("/data/relationships/{name}"), Invalid)],
        );
    }
}

#[test]
fn associated_id_needs_the_voice_right_and_names_an_account_or_opportunity() {
    for kind in ["account", "opportunity"] {
        let document =
            with_relationships(json!({"associatedId": {"data": {"type": kind, "id": 9}}}));
        check(
            &document,
            CREATE,
            ORDINARY,
            &[("/data/relationships/associatedId", Invalid)],
        );
        let input = accepted(&document, CREATE, VOICE);
        assert_eq!(
            input.changes.relationships[&Relation::AssociatedId],
            Some(RelValue::One(ResourceRef {
                kind: kind.into(),
                id: 9
            }))
        );
    }
    // With two possible types the type must be named, and saying so does not hide another error.
    let type_at = "/data/relationships/associatedId/data/type";
    let id_at = "/data/relationships/associatedId/data/id";
    let table: &[(Value, &[(&str, ViolationKind)])] = &[
        (json!({"type": "prospect", "id": 9}), &[(type_at, Invalid)]),
        (json!({"id": 9}), &[(type_at, Invalid)]),
        (json!({"id": 0}), &[(type_at, Invalid), (id_at, Invalid)]),
        (json!({}), &[(type_at, Invalid), (id_at, Invalid)]),
    ];
    for (data, expected) in table {
        check(
            &with_relationships(json!({"associatedId": {"data": data}})),
            CREATE,
            VOICE,
            expected,
        );
    }
}

#[test]
fn a_to_one_linkage_names_its_type_and_a_positive_integer_id() {
    let at = "/data/relationships/prospect/data";
    let type_at = "/data/relationships/prospect/data/type";
    let id_at = "/data/relationships/prospect/data/id";
    // The type may be left out where only one fits.
    let implicit = with_relationships(json!({"prospect": {"data": {"id": 5}}}));
    assert_eq!(
        accepted(&implicit, CREATE, ORDINARY).changes.relationships[&Relation::Prospect],
        Some(RelValue::One(ResourceRef {
            kind: "prospect".into(),
            id: 5
        }))
    );
    for id in [json!(5), json!("5"), json!("005")] {
        let document =
            with_relationships(json!({"prospect": {"data": {"type": "prospect", "id": id}}}));
        assert_eq!(
            accepted(&document, CREATE, ORDINARY).changes.relationships[&Relation::Prospect],
            Some(RelValue::One(ResourceRef {
                kind: "prospect".into(),
                id: 5
            }))
        );
    }
    let bad_ids = [
        json!(0),
        json!(-1),
        json!("0"),
        json!("-5"),
        json!("+5"),
        json!(""),
        json!("abc"),
        json!("5.0"),
        json!(5.5),
        json!(5.0),
        json!(1e30),
        json!(u64::MAX),
        json!("99999999999999999999"),
        json!(null),
        json!(true),
        json!([5]),
        json!({"id": 5}),
    ];
    for id in bad_ids {
        check(
            &with_relationships(json!({"prospect": {"data": {"type": "prospect", "id": id}}})),
            CREATE,
            ORDINARY,
            &[(id_at, Invalid)],
        );
    }
    let table: &[(Value, &[(&str, ViolationKind)])] = &[
        (json!({"type": "user", "id": 5}), &[(type_at, Invalid)]),
        (json!({"type": "prospects", "id": 5}), &[(type_at, Invalid)]),
        (json!({"type": null, "id": 5}), &[(type_at, Invalid)]),
        (json!({"type": "prospect"}), &[(id_at, Invalid)]),
        (json!({}), &[(id_at, Invalid)]),
        // Every broken rule of one linkage is reported, not only the first.
        (
            json!({"type": "user", "id": "x"}),
            &[(type_at, Invalid), (id_at, Invalid)],
        ),
        (
            json!({"type": "prospect", "id": 5, "meta": {}}),
            &[("/data/relationships/prospect/data/meta", Invalid)],
        ),
        (json!([{"type": "prospect", "id": 5}]), &[(at, Invalid)]),
        (json!(5), &[(at, Invalid)]),
        (json!("prospect:5"), &[(at, Invalid)]),
    ];
    for (data, expected) in table {
        check(
            &with_relationships(json!({"prospect": {"data": data}})),
            CREATE,
            ORDINARY,
            expected,
        );
    }
}

#[test]
fn every_to_one_relationship_takes_its_own_type() {
    for relation in Relation::ALL.iter().copied() {
        if relation.is_to_many() || relation.ownership() != Ownership::Writable {
            continue;
        }
        let [kind] = relation.target_types() else {
            panic!("{relation} has one target type");
        };
        let document =
            with_relationships(json!({ relation.name(): {"data": {"type": kind, "id": 1}} }));
        let input = accepted(&document, CREATE, ORDINARY);
        assert_eq!(
            input.changes.relationships[&relation],
            Some(RelValue::One(ResourceRef {
                kind: (*kind).into(),
                id: 1
            }))
        );
        let cleared = with_relationships(json!({ relation.name(): {"data": null} }));
        let input = accepted(&cleared, WriteMode::Update(1), ORDINARY);
        assert_eq!(input.changes.relationships[&relation], None);
    }
}

#[test]
fn batches_is_a_list_of_batch_linkages_and_an_empty_list_clears_it() {
    // `batches` is read-only to ordinary writers (see the next test); the system writes it.
    let document = with_relationships(
        json!({"batches": {"data": [{"type": "batch", "id": 1}, {"type": "batch", "id": "2"}]}}),
    );
    assert_eq!(
        accepted(&document, CREATE, VOICE).changes.relationships[&Relation::Batches],
        Some(RelValue::Many(vec![
            ResourceRef {
                kind: "batch".into(),
                id: 1
            },
            ResourceRef {
                kind: "batch".into(),
                id: 2
            },
        ]))
    );
    for data in [json!([]), json!(null)] {
        let document = with_relationships(json!({"batches": {"data": data}}));
        assert_eq!(
            accepted(&document, WriteMode::Update(1), VOICE)
                .changes
                .relationships[&Relation::Batches],
            None
        );
    }
    let table: &[(Value, &[(&str, ViolationKind)])] = &[
        (
            json!({"type": "batch", "id": 1}),
            &[("/data/relationships/batches/data", Invalid)],
        ),
        (
            json!([{"type": "batch", "id": 1}, {"type": "batch", "id": 0}, 5, {"type": "task", "id": 1}]),
            &[
                ("/data/relationships/batches/data/1/id", Invalid),
                ("/data/relationships/batches/data/2", Invalid),
                ("/data/relationships/batches/data/3/type", Invalid),
            ],
        ),
    ];
    for (data, expected) in table {
        check(
            &with_relationships(json!({"batches": {"data": data}})),
            CREATE,
            VOICE,
            expected,
        );
    }
}

#[test]
fn batches_and_kaia_crm_recording_are_read_only_to_ordinary_writers() {
    for (name, data) in [
        ("batches", json!([{"type": "batch", "id": 1}])),
        (
            "kaiaCrmRecording",
            json!({"type": "kaiaCrmRecording", "id": 1}),
        ),
        ("associatedId", json!({"type": "account", "id": 1})),
    ] {
        let document = with_relationships(json!({ name: {"data": data} }));
        check(
            &document,
            CREATE,
            ORDINARY,
            &[(&format!("/data/relationships/{name}"), Invalid)],
        );
        accepted(&document, CREATE, VOICE);
    }
}

#[test]
fn data_meta_must_be_an_object_of_known_members() {
    let table: &[(Value, &[(&str, ViolationKind)])] = &[
        (json!([]), &[("/data/meta", Invalid)]),
        (json!(null), &[("/data/meta", Invalid)]),
        (
            json!({"canWrite": true}),
            &[("/data/meta/canWrite", Invalid)],
        ),
        (
            json!({"canDelete": false}),
            &[("/data/meta/canDelete", Invalid)],
        ),
        (json!({"source": "x"}), &[("/data/meta/source", Invalid)]),
        (json!({}), &[]),
    ];
    for (meta, expected) in table {
        check(&with_meta(meta.clone()), CREATE, ORDINARY, expected);
    }
}

#[test]
fn meta_occurred_at_is_an_rfc3339_date_time() {
    let input = accepted(
        &with_meta(json!({"occurredAt": "2025-01-13T13:47:31.5+01:00"})),
        CREATE,
        ORDINARY,
    );
    assert_eq!(input.occurred_at, Some(ts("2025-01-13T12:47:31.500Z")));
    let input = accepted(&with_meta(json!({"occurredAt": null})), CREATE, ORDINARY);
    assert_eq!(input.occurred_at, None);
    for value in [
        json!("2025-01-13"),
        json!("soon"),
        json!(1736772451000_i64),
        json!({}),
    ] {
        check(
            &with_meta(json!({ "occurredAt": value })),
            CREATE,
            ORDINARY,
            &[("/data/meta/occurredAt", Invalid)],
        );
    }
}

#[test]
fn meta_data_connections_is_a_list_of_connection_objects() {
    let input = accepted(
        &with_meta(json!({"dataConnections": [
            {"connection": "salesforce", "type": "Task", "id": "00T1", "url": "https://x.example/00T1"},
            {"connection": "hubspot", "id": 42},
            {}
        ]})),
        CREATE,
        ORDINARY,
    );
    assert_eq!(
        input.changes.data_connections,
        Some(vec![
            DataConnection {
                connection: Some("salesforce".into()),
                kind: Some("Task".into()),
                id: Some("00T1".into()),
                url: Some("https://x.example/00T1".into()),
            },
            DataConnection {
                connection: Some("hubspot".into()),
                kind: None,
                id: Some("42".into()),
                url: None,
            },
            DataConnection {
                connection: None,
                kind: None,
                id: None,
                url: None,
            },
        ])
    );
    for cleared in [json!(null), json!([])] {
        let input = accepted(
            &with_meta(json!({ "dataConnections": cleared })),
            WriteMode::Update(1),
            ORDINARY,
        );
        assert_eq!(input.changes.data_connections, Some(Vec::new()));
    }
    let at = "/data/meta/dataConnections";
    let table: &[(Value, &[(&str, ViolationKind)])] = &[
        (json!("salesforce"), &[(at, Invalid)]),
        (json!({"connection": "x"}), &[(at, Invalid)]),
        (Value::Array(vec![json!({}); 101]), &[(at, Invalid)]),
        (
            json!([5, null, []]),
            &[
                ("/data/meta/dataConnections/0", Invalid),
                ("/data/meta/dataConnections/1", Invalid),
                ("/data/meta/dataConnections/2", Invalid),
            ],
        ),
        (
            json!([{"connection": 1, "type": true, "id": 1.5, "url": []}]),
            &[
                ("/data/meta/dataConnections/0/connection", Invalid),
                ("/data/meta/dataConnections/0/type", Invalid),
                ("/data/meta/dataConnections/0/id", Invalid),
                ("/data/meta/dataConnections/0/url", Invalid),
            ],
        ),
        (
            json!([{"url": "ftp://x.example/1"}]),
            &[("/data/meta/dataConnections/0/url", Invalid)],
        ),
        (
            json!([{"connection": "é".repeat(1025), "id": "é".repeat(1024)}]),
            &[("/data/meta/dataConnections/0/connection", TooLong)],
        ),
        // An unknown member is reported as unknown, whatever its value.
        (
            json!([{"name": "x".repeat(2000)}, {"name": 5}]),
            &[
                ("/data/meta/dataConnections/0/name", Invalid),
                ("/data/meta/dataConnections/1/name", Invalid),
            ],
        ),
    ];
    for (connections, expected) in table {
        check(
            &with_meta(json!({ "dataConnections": connections })),
            CREATE,
            ORDINARY,
            expected,
        );
    }
}

#[test]
fn every_violation_is_reported_at_once() {
    let document = json!({
        "data": {
            "type": "calls",
            "id": 3,
            "attributes": {
                "direction": "sideways",
                "note": "é".repeat(65536),
                "recordingUrl": "ftp://example.com/1",
                "state": "ringing",
                "createdAt": "2025-01-13T12:47:31Z",
                "answeredAt": "noon",
                "shouldRecordCall": "yes",
                "tags": ["ok", 7],
                "colour": "red",
                "from": "+1 555 0100"
            },
            "relationships": {
                "prospect": {"data": {"type": "prospect", "id": -1}},
                "sequence": {"data": [{"type": "sequence"}]},
                "account": {"data": null}
            },
            "meta": {"occurredAt": "later", "dataConnections": [{"url": "x"}]}
        },
        "extra": true
    });
    check(
        &document,
        CREATE,
        ORDINARY,
        &[
            ("/extra", Invalid),
            ("/data/type", Invalid),
            ("/data/id", Invalid),
            ("/data/attributes/direction", Invalid),
            ("/data/attributes/note", TooLong),
            ("/data/attributes/recordingUrl", Invalid),
            ("/data/attributes/state", Invalid),
            ("/data/attributes/createdAt", Invalid),
            ("/data/attributes/answeredAt", Invalid),
            ("/data/attributes/shouldRecordCall", Invalid),
            ("/data/attributes/tags/1", Invalid),
            ("/data/attributes/colour", Invalid),
            ("/data/relationships/prospect/data/id", Invalid),
            ("/data/relationships/sequence/data", Invalid),
            ("/data/relationships/account", Invalid),
            ("/data/meta/occurredAt", Invalid),
            ("/data/meta/dataConnections/0/url", Invalid),
        ],
    );
}

#[test]
fn a_valid_write_yields_exactly_its_typed_changes() {
    let document = json!({
        "data": {
            "type": "call",
            "attributes": {
                "direction": "outbound",
                "dialedAt": "2025-01-13T12:47:31Z",
                "from": "+15550100",
                "note": null,
                "shouldRecordCall": true,
                "tags": ["Interested"],
                "state": "dialing"
            },
            "relationships": {
                "prospect": {"data": {"type": "prospect", "id": "5"}},
                "task": {"data": null}
            },
            "meta": {"occurredAt": "2025-01-13T12:47:30Z", "dataConnections": null}
        }
    });
    let input = accepted(&document, CREATE, VOICE);
    let mut expected = Changes::default();
    expected.attributes.extend([
        (
            Field::DialedAt,
            Some(AttrValue::Time(ts("2025-01-13T12:47:31Z"))),
        ),
        (Field::Direction, Some(AttrValue::Text("outbound".into()))),
        (Field::From, Some(AttrValue::Text("+15550100".into()))),
        (Field::Note, None),
        (Field::ShouldRecordCall, Some(AttrValue::Bool(true))),
        (Field::State, Some(AttrValue::Text("dialing".into()))),
        (
            Field::Tags,
            Some(AttrValue::Tags(vec!["Interested".into()])),
        ),
    ]);
    expected.relationships.extend([
        (
            Relation::Prospect,
            Some(RelValue::One(ResourceRef {
                kind: "prospect".into(),
                id: 5,
            })),
        ),
        (Relation::Task, None),
    ]);
    expected.data_connections = Some(Vec::new());
    assert_eq!(
        input,
        WriteInput {
            changes: expected,
            occurred_at: Some(ts("2025-01-13T12:47:30Z")),
        }
    );
}

#[test]
fn odd_json_is_refused_with_violations_never_a_panic() {
    // Cloning and dropping a `Value` recurse (in serde_json, not here), so the deepest value gets a
    // larger stack than a test thread's default.
    std::thread::Builder::new()
        .stack_size(64 << 20)
        .spawn(odd_json)
        .unwrap()
        .join()
        .unwrap();
}

fn odd_json() {
    // The deepest nesting serde_json parses (its recursion limit is 128), in every position.
    let deep = format!("{}{}", "[".repeat(126), "]".repeat(126));
    let deep: Value = serde_json::from_str(&deep).unwrap();
    // Deeper still, built without the parser.
    // Built by hand: `json!` would copy the inner value at every level.
    let mut deeper = json!({});
    for _ in 0..1000 {
        let mut object = serde_json::Map::new();
        object.insert("a".into(), Value::Array(vec![deeper]));
        deeper = Value::Object(object);
    }
    let huge = serde_json::from_str::<Value>("1e308").unwrap();
    let odd = [
        deep,
        deeper,
        huge,
        json!(u64::MAX),
        json!(i64::MIN),
        json!(-0.0),
        json!({}),
        json!([]),
        json!(""),
        json!("\u{0}"),
    ];
    for value in &odd {
        let documents = [
            value.clone(),
            json!({ "data": value }),
            json!({ "data": {"type": value} }),
            json!({ "data": {"type": "call", "id": value} }),
            with_attributes(value.clone()),
            with_relationships(value.clone()),
            with_meta(value.clone()),
            json!({ "meta": value, "data": {"type": "call"} }),
        ];
        for document in documents {
            for mode in [CREATE, WriteMode::Update(1)] {
                for rights in [ORDINARY, VOICE] {
                    assert_total(&document, mode, rights);
                }
            }
        }
        for field in Field::ALL {
            assert_total(
                &with_attributes(json!({ field.name(): value })),
                CREATE,
                VOICE,
            );
        }
        for relation in Relation::ALL {
            let name = relation.name();
            assert_total(&with_relationships(json!({ name: value })), CREATE, VOICE);
            assert_total(
                &with_relationships(json!({ name: {"data": value} })),
                CREATE,
                VOICE,
            );
            assert_total(
                &with_relationships(json!({ name: {"data": {"type": value, "id": value}} })),
                CREATE,
                VOICE,
            );
            assert_total(
                &with_relationships(json!({ name: {"data": [value, {"id": value}]} })),
                CREATE,
                VOICE,
            );
        }
        assert_total(
            &with_meta(json!({"occurredAt": value, "dataConnections": value})),
            CREATE,
            VOICE,
        );
        assert_total(
            &with_meta(json!({"dataConnections": [value, {"id": value, "url": value}]})),
            CREATE,
            VOICE,
        );
    }
}

/// Pseudo-random documents built from the vocabulary of a write, so that most of them reach deep
/// into the validation: none may panic, and every refusal must be well formed.
#[test]
fn random_documents_never_panic() {
    let mut random = XorShift(0x9E37_79B9_7F4A_7C15);
    for _ in 0..20_000 {
        let document = random_value(&mut random, 0);
        let wrapped = json!({"data": {
            "type": "call",
            "attributes": random_value(&mut random, 1),
            "relationships": random_value(&mut random, 1),
            "meta": random_value(&mut random, 1),
        }});
        for document in [document, wrapped] {
            for mode in [CREATE, WriteMode::Update(1)] {
                let rights = if random.next().is_multiple_of(2) {
                    ORDINARY
                } else {
                    VOICE
                };
                assert_total(&document, mode, rights);
            }
        }
    }
}

#[track_caller]
fn assert_total(document: &Value, mode: WriteMode, rights: Rights) {
    if let Err(violations) = parse_write(document, mode, rights) {
        assert!(!violations.is_empty());
        for violation in &violations {
            assert_well_formed(document, violation);
        }
    }
}

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[(self.next() % items.len() as u64) as usize]
    }
}

fn random_value(random: &mut XorShift, depth: usize) -> Value {
    const KEYS: &[&str] = &[
        "data",
        "type",
        "id",
        "attributes",
        "relationships",
        "meta",
        "links",
        "occurredAt",
        "dataConnections",
        "connection",
        "url",
        "direction",
        "note",
        "tags",
        "state",
        "recordingUrl",
        "createdAt",
        "dialedAt",
        "shouldRecordCall",
        "prospect",
        "batches",
        "associatedId",
        "canWrite",
        "a/b",
        "~",
    ];
    const STRINGS: &[&str] = &[
        "call",
        "prospect",
        "batch",
        "account",
        "inbound",
        "Answered",
        "5",
        "-1",
        "0",
        "",
        "https://example.com/x",
        "ftp://x",
        "2025-01-13T12:47:31Z",
        "not a date",
        "é",
        "📞",
    ];
    let choice = if depth > 4 {
        random.next() % 6
    } else {
        random.next() % 8
    };
    match choice {
        0 => Value::Null,
        1 => Value::Bool(random.next().is_multiple_of(2)),
        2 => json!(random.next() as i64 >> (random.next() % 64)),
        3 => json!(f64::from_bits(random.next()) % 1e6),
        4 | 5 => json!(random.pick(STRINGS)),
        6 => Value::Array(
            (0..random.next() % 4)
                .map(|_| random_value(random, depth + 1))
                .collect(),
        ),
        _ => Value::Object(
            (0..random.next() % 5)
                .map(|_| {
                    (
                        random.pick(KEYS).to_owned(),
                        random_value(random, depth + 1),
                    )
                })
                .collect(),
        ),
    }
}

/// A call as `get` shows it: server-set timestamps, a telephony-set state, a read-only
/// relationship.
fn current_call() -> crate::Call {
    let at = |text: &str| AttrValue::Time(crate::Timestamp::parse(text).unwrap());
    let mut call = crate::Call {
        id: 7,
        version: 3,
        position: 9,
        attributes: Default::default(),
        relationships: Default::default(),
        data_connections: Vec::new(),
    };
    call.attributes
        .insert(Field::CreatedAt, at("2025-01-13T12:00:00.000Z"));
    call.attributes
        .insert(Field::UpdatedAt, at("2025-01-13T12:05:00.000Z"));
    call.attributes
        .insert(Field::StateChangedAt, at("2025-01-13T12:01:00.000Z"));
    call.attributes
        .insert(Field::State, AttrValue::Text("completed".into()));
    call.attributes
        .insert(Field::Direction, AttrValue::Text("outbound".into()));
    call.relationships.insert(
        Relation::Batches,
        RelValue::Many(vec![ResourceRef {
            kind: "batch".into(),
            id: 4,
        }]),
    );
    call
}

#[test]
fn an_update_may_send_back_what_it_does_not_own_unchanged() {
    let call = current_call();
    let document = json!({"data": {"type": "call", "id": "7",
        "attributes": {
            "createdAt": "2025-01-13T12:00:00.000Z", "updatedAt": "2025-01-13T12:05:00Z",
            "stateChangedAt": "2025-01-13T12:01:00.000Z", "state": "completed", "uid": null,
            "voicemailRecordingUrl": null, "direction": "outbound", "note": "changed"
        },
        "relationships": {
            "associatedId": {"data": null}, "kaiaCrmRecording": {"data": null},
            "batches": {"data": [{"type": "batch", "id": 4}]}, "prospect": {"data": null}
        },
        "links": {"self": "calls.api.get.7"},
        "meta": {"canWrite": true, "canDelete": false, "dataConnections": []}
    }});
    let input = crate::parse_update(&document, &call, ORDINARY).expect("accepted");
    // Only the writable members are in the changes; the guarded ones are dropped.
    let attributes: Vec<Field> = input.changes.attributes.keys().copied().collect();
    assert_eq!(attributes, vec![Field::Direction, Field::Note]);
    let relationships: Vec<Relation> = input.changes.relationships.keys().copied().collect();
    assert_eq!(relationships, vec![Relation::Prospect]);
    // Without the call to compare with, the same document is refused as before.
    assert!(parse_write(&document, WriteMode::Update(7), ORDINARY).is_err());
}

#[test]
fn an_update_that_changes_what_it_does_not_own_names_each_member() {
    let call = current_call();
    let document = json!({"data": {"type": "call",
        "attributes": {
            "createdAt": "2025-01-14T00:00:00Z", "state": "ringing", "uid": "trace",
            "updatedAt": "2025-01-13T12:05:00.000Z", "note": "fine"
        },
        "relationships": {"batches": {"data": []}, "associatedId": {"data": {"type": "account", "id": 1}}},
        "meta": {"canWrite": "yes"}
    }});
    let violations = crate::parse_update(&document, &call, ORDINARY).expect_err("refused");
    let pointers: Vec<&str> = violations.iter().map(|v| v.pointer.as_str()).collect();
    assert_eq!(
        pointers,
        vec![
            "/data/attributes/createdAt",
            "/data/attributes/state",
            "/data/attributes/uid",
            "/data/relationships/batches",
            "/data/relationships/associatedId",
            "/data/meta/canWrite",
        ]
    );
    // The telephony system may change them.
    let voiced = json!({"data": {"type": "call", "attributes": {"state": "ringing", "uid": "t"}}});
    assert!(crate::parse_update(&voiced, &call, VOICE).is_ok());
}
