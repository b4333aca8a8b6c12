//! The API's errors: JSON:API error objects with Outreach's ids and titles (their only home),
//! the status they answer with, and the reply that carries them.

use crate::header_names::{CONTENT_TYPE as CONTENT_TYPE_HEADER, RETRY_AFTER};
use crate::json::ObjectWriter;
use crate::{Response, CONTENT_TYPE};

/// What part of the request an error object blames (JSON:API `source`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ErrorSource {
    /// A query parameter, e.g. `filter[colour]`.
    Parameter(String),
    /// A JSON pointer into the request document, e.g. `/data/attributes/direction`.
    Pointer(String),
    /// A request header, e.g. `If-Match` (JSON:API 1.1 `source.header`).
    Header(String),
}

/// One JSON:API error object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErrorObject {
    /// Outreach's error id, e.g. `validationError`.
    pub id: &'static str,
    /// A short, fixed title, e.g. `Validation Error`.
    pub title: &'static str,
    /// What went wrong with this request, in a sentence.
    pub detail: String,
    /// What it blames, if one part of the request.
    pub source: Option<ErrorSource>,
}

/// A refused or failed request: a status and at least one error object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    /// The status code (400, 401, 403, 404, 409, 413, 422, 500 or 503).
    pub status: u16,
    /// The error objects, at least one.
    pub errors: Vec<ErrorObject>,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status, status_title(self.status))?;
        for error in &self.errors {
            write!(f, ": {}", error.detail)?;
        }
        Ok(())
    }
}

impl std::error::Error for ApiError {}

/// The title a status is known by, as Outreach names it; the transport may carry it beside the
/// status (see [`Response::error_title`]).
pub(crate) fn status_title(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Unauthorized OAuth Scope",
        404 => "Resource Not Found",
        409 => "Conflict",
        413 => "Request Too Large",
        422 => "Validation Error",
        429 => "Rate Limit Exceeded",
        503 => "Service Unavailable",
        _ => "Internal Server Error",
    }
}

impl ApiError {
    fn single(
        status: u16,
        id: &'static str,
        detail: String,
        source: Option<ErrorSource>,
    ) -> ApiError {
        ApiError {
            status,
            errors: vec![ErrorObject {
                id,
                title: status_title(status),
                detail,
                source,
            }],
        }
    }

    /// 400: a query parameter is unknown, not offered, or has a bad value.
    pub fn parameter(parameter: impl Into<String>, detail: impl Into<String>) -> ApiError {
        ApiError::single(
            400,
            "validationError",
            detail.into(),
            Some(ErrorSource::Parameter(parameter.into())),
        )
    }

    /// 400: the request as a whole cannot be read (not UTF-8, not JSON, ...).
    pub fn bad_request(detail: impl Into<String>, source: Option<ErrorSource>) -> ApiError {
        ApiError::single(400, "validationError", detail.into(), source)
    }

    /// 400: a request header has a bad value.
    pub fn header(header: &str, detail: impl Into<String>) -> ApiError {
        ApiError::single(
            400,
            "validationError",
            detail.into(),
            Some(ErrorSource::Header(header.to_owned())),
        )
    }

    /// 401: no bearer token, or one that is not known.
    pub fn unauthorized(detail: impl Into<String>) -> ApiError {
        ApiError::single(401, "unauthorized", detail.into(), None)
    }

    /// 403: the token lacks the scope the operation needs.
    pub fn missing_scope(scope: &str) -> ApiError {
        ApiError::single(
            403,
            "unauthorizedOauthScope",
            format!("Your authorization does not include the required scope '{scope}'."),
            None,
        )
    }

    /// 404: no live call has this id (`token` is the id as the request spelled it).
    pub fn not_found(token: &str) -> ApiError {
        ApiError::single(
            404,
            "resourceNotFound",
            format!("Could not find 'call' with ID '{token}'."),
            None,
        )
    }

    /// 409: a version conflict, a reused idempotency key or a stale state change.
    pub fn conflict(detail: impl Into<String>) -> ApiError {
        ApiError::single(409, "conflict", detail.into(), None)
    }

    /// 413: the payload is larger than the server accepts.
    pub fn too_large(size: usize, max: usize) -> ApiError {
        ApiError::single(
            413,
            "requestTooLarge",
            format!("The request is {size} bytes; the server accepts at most {max}."),
            None,
        )
    }

    /// 422: the document is well-formed but breaks these rules.
    pub fn violations(violations: &[call_model::Violation]) -> ApiError {
        let errors = violations
            .iter()
            .map(|violation| {
                let (id, title) = match violation.kind {
                    call_model::ViolationKind::TooLong => {
                        ("validationDataTooLongError", "Data Too Long")
                    }
                    call_model::ViolationKind::Invalid => ("validationError", "Validation Error"),
                };
                ErrorObject {
                    id,
                    title,
                    detail: violation.detail.clone(),
                    source: Some(ErrorSource::Pointer(violation.pointer.clone())),
                }
            })
            .collect::<Vec<_>>();
        if errors.is_empty() {
            // `parse_write` never reports an empty list, but a reply must carry an error.
            return ApiError::single(
                422,
                "validationError",
                "The request is invalid.".into(),
                None,
            );
        }
        ApiError {
            status: 422,
            errors,
        }
    }

    /// 500: something failed inside; the detail never says what (the cause is logged).
    pub fn internal() -> ApiError {
        ApiError::single(
            500,
            "internalServerError",
            "The server could not handle the request; it has been logged.".into(),
            None,
        )
    }

    /// 429: the caller has used its budget of `limit` requests until `reset` (RFC 3339), in
    /// Outreach's words.
    pub fn rate_limited(limit: u64, reset: &str) -> ApiError {
        ApiError::single(
            429,
            "rateLimitExceeded",
            format!(
                "You have exceeded your permitted rate limit of {}; please try again at {reset}.",
                thousands(limit)
            ),
            None,
        )
    }

    /// 503: the ledger cannot take the request now; retry later.
    pub fn unavailable(detail: impl Into<String>) -> ApiError {
        ApiError::single(503, "serviceUnavailable", detail.into(), None)
    }

    /// 400: a command names no operation the API has (the transport's words in `detail`).
    pub fn no_such_operation(detail: impl Into<String>) -> ApiError {
        ApiError::bad_request(detail, None)
    }

    /// The JSON:API error document, members in the order `id`, `title`, `detail`, `source`.
    /// Echoed input is cut to [`MAX_ECHO_CHARS`](crate::json::MAX_ECHO_CHARS) characters and at
    /// most [`MAX_ERROR_OBJECTS`] objects are listed (the last saying how many were left out),
    /// so an error about a huge request never outgrows the reply it has to fit in.
    pub fn to_body(&self) -> Vec<u8> {
        let mut errors: Vec<String> = self
            .errors
            .iter()
            .take(MAX_ERROR_OBJECTS)
            .map(|error| {
                let mut object = ObjectWriter::new();
                object
                    .value("id", &error.id)
                    .value("title", &error.title)
                    .echo("detail", &error.detail);
                if let Some(source) = &error.source {
                    let (key, value) = match source {
                        ErrorSource::Parameter(name) => ("parameter", name),
                        ErrorSource::Pointer(pointer) => ("pointer", pointer),
                        ErrorSource::Header(name) => ("header", name),
                    };
                    let mut blamed = ObjectWriter::new();
                    blamed.echo(key, value);
                    object.raw("source", &blamed.finish());
                }
                object.finish()
            })
            .collect();
        if let (Some(first), true) = (self.errors.first(), self.errors.len() > MAX_ERROR_OBJECTS) {
            let mut object = ObjectWriter::new();
            object
                .value("id", &first.id)
                .value("title", &first.title)
                .value(
                    "detail",
                    &format!(
                        "{} more errors are not listed",
                        self.errors.len() - MAX_ERROR_OBJECTS
                    ),
                );
            errors.push(object.finish());
        }
        let mut document = ObjectWriter::new();
        document.raw("errors", &format!("[{}]", errors.join(",")));
        document.finish().into_bytes()
    }

    /// The reply: its status, `Content-Type`, `Retry-After` when retrying later may succeed
    /// (503, 429), and the JSON:API body.
    pub fn to_response(&self) -> Response {
        let mut headers = vec![(CONTENT_TYPE_HEADER.into(), CONTENT_TYPE.into())];
        if matches!(self.status, 429 | 503) {
            headers.push((RETRY_AFTER.into(), RETRY_AFTER_SECS.to_string()));
        }
        Response {
            status: self.status,
            headers,
            body: self.to_body(),
        }
    }
}

/// `10000` as `10,000`, as Outreach writes its limit.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

/// The seconds a 503 or 429 asks the client to wait before retrying (`Retry-After`): the
/// ledger's overloads and restarts pass in about that long.
pub const RETRY_AFTER_SECS: u64 = 1;

/// The most error objects one reply lists.
pub const MAX_ERROR_OBJECTS: usize = 100;
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rate_limit_refusal_reads_as_outreachs() {
        let refused = ApiError::rate_limited(10_000, "2026-12-02T17:00:00.000Z").to_response();
        assert_eq!(refused.status, 429);
        let body: serde_json::Value = serde_json::from_slice(&refused.body).unwrap();
        assert_eq!(body["errors"][0]["id"], "rateLimitExceeded");
        assert_eq!(body["errors"][0]["title"], "Rate Limit Exceeded");
        assert_eq!(
            body["errors"][0]["detail"],
            "You have exceeded your permitted rate limit of 10,000; please try again at \
             2026-12-02T17:00:00.000Z."
        );
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(thousands(999), "999");
    }

    #[test]
    fn error_replies_carry_an_ordered_body_and_say_what_they_mean() {
        let response = ApiError::parameter("filter[colour]", "Unknown.").to_response();
        assert_eq!(response.status, 400);
        assert_eq!(
            response.headers,
            vec![("Content-Type".to_owned(), CONTENT_TYPE.to_owned())]
        );
        assert_eq!(response.error_title(), Some("Bad Request"));
        assert_eq!(response.outcome(), crate::Outcome::Rejected);
        assert_eq!(
            String::from_utf8(response.body).unwrap(),
            r#"{"errors":[{"id":"validationError","title":"Bad Request","detail":"Unknown.","source":{"parameter":"filter[colour]"}}]}"#
        );
        let busy = ApiError::unavailable("Busy.").to_response();
        assert_eq!(busy.error_title(), Some("Service Unavailable"));
        assert_eq!(busy.header("Retry-After"), Some("1"));
        assert_eq!(
            ApiError::parameter("x", "y")
                .to_response()
                .header("Retry-After"),
            None
        );
        assert_eq!(busy.outcome(), crate::Outcome::Unavailable);
        assert_eq!(
            String::from_utf8(busy.body).unwrap(),
            r#"{"errors":[{"id":"serviceUnavailable","title":"Service Unavailable","detail":"Busy."}]}"#
        );
        let conflict = ApiError::conflict("Lost.").to_response();
        assert_eq!(conflict.outcome(), crate::Outcome::Conflict);
    }
}

#[cfg(test)]
mod bounds_tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn an_error_about_a_huge_request_stays_small() {
        let name = "x".repeat(524_288);
        let mut error = ApiError::single(
            400,
            "validationError",
            format!("unknown parameter '{name}'"),
            Some(ErrorSource::Parameter(name)),
        );
        let violation = error.errors[0].clone();
        error.errors.extend(std::iter::repeat_n(violation, 5000));
        let body = error.to_body();
        assert!(body.len() < 200_000, "body is {} bytes", body.len());
        let parsed: Value = serde_json::from_slice(&body).unwrap();
        let errors = parsed["errors"].as_array().unwrap();
        assert_eq!(errors.len(), MAX_ERROR_OBJECTS + 1);
        assert_eq!(
            errors[MAX_ERROR_OBJECTS]["detail"],
            "4901 more errors are not listed"
        );
        assert!(errors[0]["source"]["parameter"]
            .as_str()
            .unwrap()
            .ends_with('…'));
    }
}
