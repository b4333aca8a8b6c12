//! The client for people: one API operation sent to a running service over NATS, and its reply
//! read back (status from the micro service's error headers). The `callledger calls` commands
//! are built on it, so they speak exactly what the service serves.

use std::time::Duration;

use async_nats::Client;
use call_api::header_names::{AUTHORIZATION, IDEMPOTENCY_KEY, IF_MATCH};
use call_api::Operation;

use crate::error::{GatewayError, GatewayErrorKind};
use crate::headers;

/// One API operation as a person sends it.
#[derive(Clone, Debug)]
pub struct ApiCall {
    /// What to do; its id, if any, goes in the subject.
    pub operation: Operation,
    /// The query string or the JSON:API document.
    pub payload: Vec<u8>,
    /// The bearer token, if the service has a tokens file.
    pub token: Option<String>,
    /// `Idempotency-Key`, for writes.
    pub idempotency_key: Option<String>,
    /// `If-Match`: the version the write expects.
    pub if_match: Option<u64>,
}

/// The service's reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiReply {
    /// The status: `Nats-Service-Error-Code` on an error, else 200.
    pub status: u16,
    /// Every header of the reply.
    pub headers: Vec<(String, String)>,
    /// The JSON:API document (empty for a delete).
    pub body: Vec<u8>,
}

impl ApiReply {
    /// Whether the service answered with an error.
    pub fn is_error(&self) -> bool {
        self.status >= 400
    }
}

/// Sends `call` to the service on `<prefix>.api.*` and waits up to `timeout` for its reply.
/// Only transport failures and an id that cannot be a subject token are errors
/// ([`GatewayErrorKind::NoResponders`](crate::GatewayErrorKind)
/// when no service listens); an error reply is a reply.
pub async fn call(
    client: &Client,
    prefix: &str,
    call: ApiCall,
    timeout: Duration,
) -> Result<ApiReply, GatewayError> {
    let mut pairs: Vec<(String, String)> = Vec::new();
    if let Some(token) = &call.token {
        pairs.push((AUTHORIZATION.into(), format!("Bearer {token}")));
    }
    if let Some(key) = &call.idempotency_key {
        pairs.push((IDEMPOTENCY_KEY.into(), key.clone()));
    }
    if let Some(version) = call.if_match {
        pairs.push((IF_MATCH.into(), version.to_string()));
    }
    if let Operation::Get(id) | Operation::Update(id) | Operation::Delete(id) = &call.operation {
        if !is_subject_token(id) {
            // Sent as it is, such an id makes another subject (or none), and the reply was
            // "no responders" from a service that is running.
            return Err(GatewayError::new(
                GatewayErrorKind::Request,
                format!("{id:?} is not a call id: ids are positive integers, e.g. 42"),
            ));
        }
    }
    let subject = crate::service::api_subject(prefix, &call.operation);
    let (reply_headers, body) =
        crate::connect::request(client, subject, pairs, call.payload, timeout).await?;
    let status = headers::find(&reply_headers, headers::SERVICE_ERROR_CODE)
        .and_then(|code| code.trim().parse().ok())
        .unwrap_or(200);
    Ok(ApiReply {
        status,
        headers: reply_headers,
        body,
    })
}

/// Whether `id` is one token of a NATS subject, as the service's endpoints take an id: not
/// empty, and without the separator, the wildcards or white space.
fn is_subject_token(id: &str) -> bool {
    !id.is_empty()
        && !id
            .chars()
            .any(|c| c == '.' || c == '*' || c == '>' || c.is_whitespace())
}

#[cfg(test)]
mod tests {
    use super::is_subject_token;

    #[test]
    fn an_id_must_be_one_subject_token() {
        for id in ["42", "abc", "0", "-5"] {
            assert!(is_subject_token(id), "{id}");
        }
        for id in ["", "1.2", "*", ">", "1 ", "a\tb", "4>"] {
            assert!(!is_subject_token(id), "{id:?}");
        }
    }
}
