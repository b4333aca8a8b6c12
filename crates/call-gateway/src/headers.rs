//! NATS headers: the names of those the service reads and writes (their one home), the reply
//! headers of an API response, and conversions between NATS header maps and the plain
//! `(name, value)` pairs that `call-api` speaks, without panicking on names or values NATS
//! cannot carry.

use std::str::FromStr;

use async_nats::{HeaderMap, HeaderName, HeaderValue};
use call_api::Response;

/// The pairs of a message's headers, every value of every name; empty without headers.
///
/// The order of names is the header map's (unspecified); the values of one name keep their
/// order.
pub(crate) fn to_pairs(headers: Option<&HeaderMap>) -> Vec<(String, String)> {
    let Some(headers) = headers else {
        return Vec::new();
    };
    let mut pairs = Vec::with_capacity(headers.len());
    for (name, values) in headers.iter() {
        for value in values {
            pairs.push((name.to_string(), value.as_str().to_string()));
        }
    }
    pairs
}

/// A header map with the pairs, in order.
///
/// `HeaderMap::insert` with strings panics on a name or value NATS cannot carry (a value with a
/// line break, a name with `:`), so both are parsed here; a pair that does not parse is
/// returned as the error, for the caller to drop or refuse.
pub(crate) fn to_header_map<'a, I>(pairs: I) -> Result<HeaderMap, (&'a str, &'a str)>
where
    I: IntoIterator<Item = (&'a str, &'a str)>,
{
    let mut headers = HeaderMap::new();
    for (name, value) in pairs {
        let (Ok(header_name), Ok(header_value)) =
            (HeaderName::from_str(name), HeaderValue::from_str(value))
        else {
            return Err((name, value));
        };
        headers.append(header_name, header_value);
    }
    Ok(headers)
}

/// Appends the pair to `headers`, or leaves it out (and logs it) when NATS cannot carry it: for
/// replies, where a reply without one header beats no reply.
fn append_lossy(headers: &mut HeaderMap, name: impl TryInto<HeaderName>, value: &str) {
    match (name.try_into(), HeaderValue::from_str(value)) {
        (Ok(header_name), Ok(header_value)) => headers.append(header_name, header_value),
        _ => tracing::warn!(value, "dropping a header NATS cannot carry"),
    }
}

/// The NATS micro service's error headers: on an error reply, its status and title.
pub(crate) const SERVICE_ERROR_CODE: &str = "Nats-Service-Error-Code";
/// See [`SERVICE_ERROR_CODE`].
pub(crate) const SERVICE_ERROR: &str = "Nats-Service-Error";
/// JetStream's message id, which producers set to deduplicate: the command's idempotency key.
pub(crate) const MSG_ID: &str = "Nats-Msg-Id";
/// The producer's name, the actor of its commands.
pub(crate) const PRODUCER: &str = "Nats-Producer";

/// The instance that answered, by its id in `$SRV.INFO` and `$SRV.STATS`.
pub(crate) const INSTANCE: &str = "Call-Ledger-Instance";

/// Whether `name` is one of NATS's own headers (`Nats-...`), which steer the server.
pub(crate) fn is_nats_header(name: &str) -> bool {
    name.get(..5)
        .is_some_and(|start| start.eq_ignore_ascii_case("Nats-"))
}

/// The headers of the NATS reply to `response` from `instance`: the micro service's error
/// headers first on an error (as a NATS client expects them), then the API's own, then which
/// instance answered. A pair NATS cannot carry is left out and logged.
pub(crate) fn reply_headers(response: &Response, instance: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    if let Some(title) = response.error_title() {
        append_lossy(
            &mut headers,
            HeaderName::from_static(SERVICE_ERROR_CODE),
            &response.status.to_string(),
        );
        append_lossy(&mut headers, HeaderName::from_static(SERVICE_ERROR), title);
    }
    for (name, value) in &response.headers {
        match api_header_name(name) {
            Some(known) => append_lossy(&mut headers, known, value),
            None => append_lossy(&mut headers, name.as_str(), value),
        }
    }
    append_lossy(&mut headers, HeaderName::from_static(INSTANCE), instance);
    headers
}

/// The header names `call-api` writes in replies, as NATS header names made from their static
/// text: no name is parsed or allocated per reply.
fn api_header_name(name: &str) -> Option<HeaderName> {
    use call_api::header_names::{CONTENT_TYPE, ETAG, IDEMPOTENT_REPLAYED, RETRY_AFTER};
    use call_api::rate::{LIMIT_HEADER, REMAINING_HEADER, RESET_HEADER};
    [
        CONTENT_TYPE,
        ETAG,
        IDEMPOTENT_REPLAYED,
        RETRY_AFTER,
        LIMIT_HEADER,
        REMAINING_HEADER,
        RESET_HEADER,
    ]
    .into_iter()
    .find(|known| *known == name)
    .map(HeaderName::from_static)
}

/// The first value of the header `name`, compared without regard to case.
pub(crate) fn find<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_headers_carry_the_apis_names_and_any_other() {
        let response = Response {
            status: 429,
            headers: vec![
                ("Content-Type".into(), call_api::CONTENT_TYPE.into()),
                ("ETag".into(), "3".into()),
                ("Retry-After".into(), "7".into()),
                ("X-RateLimit-Limit".into(), "10000".into()),
                ("X-Not-Known-Here".into(), "kept".into()),
            ],
            body: Vec::new(),
        };
        let map = reply_headers(&response, "instance-1");
        let mut pairs = to_pairs(Some(&map));
        pairs.sort();
        let value = |name: &str| find(&pairs, name).map(str::to_owned);
        assert_eq!(
            value("content-type").as_deref(),
            Some(call_api::CONTENT_TYPE)
        );
        assert_eq!(value("etag").as_deref(), Some("3"));
        assert_eq!(value("retry-after").as_deref(), Some("7"));
        assert_eq!(value("x-ratelimit-limit").as_deref(), Some("10000"));
        assert_eq!(value("x-not-known-here").as_deref(), Some("kept"));
        assert_eq!(value(INSTANCE).as_deref(), Some("instance-1"));
        assert_eq!(value(SERVICE_ERROR_CODE).as_deref(), Some("429"));
    }

    #[test]
    fn pairs_round_trip_through_a_header_map() {
        let pairs = vec![
            ("Idempotency-Key".to_string(), "k-1".to_string()),
            ("X-Many".to_string(), "a".to_string()),
            ("X-Many".to_string(), "b".to_string()),
        ];
        let map = to_header_map(pairs.iter().map(|(n, v)| (n.as_str(), v.as_str())))
            .expect("valid headers");
        let mut back = to_pairs(Some(&map));
        back.sort();
        let mut expected = pairs.clone();
        expected.sort();
        assert_eq!(back, expected);
        assert_eq!(find(&back, "idempotency-key"), Some("k-1"));
    }

    #[test]
    fn a_value_with_a_line_break_is_refused_not_a_panic() {
        let bad = [("X-Bad", "a\r\nb")];
        assert_eq!(to_header_map(bad).err(), Some(("X-Bad", "a\r\nb")));
        let mut lossy = HeaderMap::new();
        append_lossy(&mut lossy, "X-Bad", "a\nb");
        append_lossy(&mut lossy, "X-Good", "ok");
        assert_eq!(lossy.len(), 1);
        let bad_name = [("Bad:Name", "v")];
        assert!(to_header_map(bad_name).is_err());
    }
}
