//! Connecting to NATS: [`NatsOptions`] (URLs and credentials, as the binary gathered them) and
//! [`connect`], which returns a client that reconnects forever and logs its connection events
//! ([`connect_now`] when the first connection must succeed at once).
//! Also [`request`], the request-reply helper of the binary's `calls` client.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use async_nats::client::RequestErrorKind;
use async_nats::{Client, ConnectOptions, Event, ServerAddr};

use crate::error::{GatewayError, GatewayErrorKind};
use crate::headers;

/// How to reach and authenticate with NATS. At most one way to authenticate may be given
/// (a credentials file, a user and password, or a token); with none, the connection is anonymous
/// (or uses credentials in the URL).
#[derive(Clone)]
pub struct NatsOptions {
    /// One server URL, or several separated by commas (`nats://127.0.0.1:4222`).
    pub url: String,
    /// A `.creds` file (JWT and NKey seed).
    pub creds_file: Option<PathBuf>,
    /// A user name; needs `password`.
    pub user: Option<String>,
    /// The user's password.
    pub password: Option<String>,
    /// A token.
    pub token: Option<String>,
    /// The connection name the server shows (`call-ledger`).
    pub name: String,
}

impl fmt::Debug for NatsOptions {
    // Secrets are never printed, not even in debug output.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsOptions")
            .field("servers", &redacted_servers(&self.url))
            .field("creds_file", &self.creds_file)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("name", &self.name)
            .finish()
    }
}

/// Connects to NATS. The client connects in the background if the server is not up yet
/// (`retry_on_initial_connect`), reconnects without limit, and logs its connection events with
/// `tracing`. Fails only on unusable options: a bad URL, an unreadable credentials file, or
/// more than one way to authenticate.
pub async fn connect(options: NatsOptions) -> Result<Client, GatewayError> {
    let (servers, connect) = connect_options(&options).await?;
    tracing::info!(servers = %redacted_servers(&options.url), name = %options.name, "connecting to NATS");
    connect
        .retry_on_initial_connect()
        .connect(servers)
        .await
        .map_err(|e| {
            GatewayError::with_source(GatewayErrorKind::Connect, "cannot connect to NATS", e)
        })
}

/// Like [`connect`], but the first connection must succeed now: an unreachable server or
/// refused credentials fail at once, naming why (for what cannot start without NATS, such as
/// the log of record on JetStream). Once connected it reconnects without limit.
pub async fn connect_now(options: NatsOptions) -> Result<Client, GatewayError> {
    let (servers, connect) = connect_options(&options).await?;
    tracing::info!(servers = %redacted_servers(&options.url), name = %options.name, "connecting to NATS");
    connect.connect(servers).await.map_err(|e| {
        GatewayError::with_source(
            GatewayErrorKind::Connect,
            format!(
                "cannot connect to NATS at {}",
                redacted_servers(&options.url)
            ),
            e,
        )
    })
}

/// The servers and connect options of `options`: credentials applied, unlimited reconnects,
/// connection events logged.
async fn connect_options(
    options: &NatsOptions,
) -> Result<(Vec<ServerAddr>, ConnectOptions), GatewayError> {
    let servers = parse_servers(&options.url)?;
    let mut connect = ConnectOptions::new()
        .name(&options.name)
        .max_reconnects(None)
        .event_callback(|event| async move { log_event(event) });

    let methods = usize::from(options.creds_file.is_some())
        + usize::from(options.user.is_some() || options.password.is_some())
        + usize::from(options.token.is_some());
    if methods > 1 {
        return Err(GatewayError::new(
            GatewayErrorKind::Config,
            "give only one of a credentials file, a user and password, or a token",
        ));
    }
    if let Some(path) = &options.creds_file {
        connect = connect.credentials_file(path).await.map_err(|e| {
            GatewayError::with_source(
                GatewayErrorKind::Config,
                format!("cannot read the NATS credentials file {}", path.display()),
                e,
            )
        })?;
    }
    match (&options.user, &options.password) {
        (Some(user), Some(password)) => {
            connect = connect.user_and_password(user.clone(), password.clone());
        }
        (None, None) => {}
        _ => {
            return Err(GatewayError::new(
                GatewayErrorKind::Config,
                "a NATS user needs a password, and a password needs a user",
            ))
        }
    }
    if let Some(token) = &options.token {
        connect = connect.token(token.clone());
    }
    Ok((servers, connect))
}

/// Sends a request with headers and waits up to `timeout` for the reply; returns the reply's
/// headers and payload. An error reply of the service is a reply like any other (its headers
/// carry `Nats-Service-Error-Code`); only transport failures are errors, among them
/// [`GatewayErrorKind::NoResponders`] when no call-ledger service listens on `subject`.
pub(crate) async fn request(
    client: &Client,
    subject: String,
    headers: Vec<(String, String)>,
    payload: Vec<u8>,
    timeout: Duration,
) -> Result<(Vec<(String, String)>, Vec<u8>), GatewayError> {
    let header_map = headers::to_header_map(headers.iter().map(|(n, v)| (n.as_str(), v.as_str())))
        .map_err(|(name, _)| {
            GatewayError::new(
                GatewayErrorKind::Config,
                format!("header {name:?} cannot be sent over NATS (a line break or a bad name)"),
            )
        })?;
    let request = async_nats::Request::new()
        .headers(header_map)
        .payload(payload.into())
        .timeout(Some(timeout));
    match client.send_request(subject.clone(), request).await {
        Ok(reply) => Ok((
            headers::to_pairs(reply.headers.as_ref()),
            reply.payload.to_vec(),
        )),
        Err(error) => Err(match error.kind() {
            RequestErrorKind::NoResponders => GatewayError::new(
                GatewayErrorKind::NoResponders,
                format!("no call-ledger service answers on {subject}"),
            ),
            // The client connects in the background, so a server that is down shows as a
            // request that never left.
            RequestErrorKind::TimedOut
                if client.connection_state() != async_nats::connection::State::Connected =>
            {
                GatewayError::new(
                    GatewayErrorKind::Connect,
                    format!("not connected to NATS after {timeout:?}; is the server up?"),
                )
            }
            RequestErrorKind::TimedOut => GatewayError::new(
                GatewayErrorKind::TimedOut,
                format!("no reply on {subject} within {timeout:?}"),
            ),
            RequestErrorKind::InvalidSubject => GatewayError::with_source(
                GatewayErrorKind::Config,
                format!("{subject:?} is not a valid subject"),
                error,
            ),
            _ => GatewayError::with_source(
                GatewayErrorKind::Request,
                format!("request on {subject} failed"),
                error,
            ),
        }),
    }
}

/// The server addresses in `url` (comma-separated).
fn parse_servers(url: &str) -> Result<Vec<ServerAddr>, GatewayError> {
    let servers = url
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            ServerAddr::from_str(s).map_err(|e| {
                GatewayError::with_source(
                    GatewayErrorKind::Config,
                    format!("{:?} is not a NATS server URL", redact_url(s)),
                    e,
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    if servers.is_empty() {
        return Err(GatewayError::new(
            GatewayErrorKind::Config,
            "no NATS server URL given",
        ));
    }
    Ok(servers)
}

/// The URLs without any user information (a URL may carry a password or token).
fn redacted_servers(url: &str) -> String {
    url.split(',')
        .map(|s| redact_url(s.trim()))
        .collect::<Vec<_>>()
        .join(",")
}

/// `scheme://user:pass@host:port` becomes `scheme://host:port`.
fn redact_url(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, url),
    };
    let rest = match rest.rsplit_once('@') {
        Some((_, host)) => host,
        None => rest,
    };
    match scheme {
        Some(scheme) => format!("{scheme}://{rest}"),
        None => rest.to_string(),
    }
}

/// Logs one connection event.
fn log_event(event: Event) {
    match event {
        Event::Connected => tracing::info!("connected to NATS"),
        Event::Disconnected => tracing::warn!("disconnected from NATS; reconnecting"),
        Event::LameDuckMode => tracing::warn!("the NATS server entered lame duck mode"),
        Event::Draining => tracing::info!("draining the NATS connection"),
        Event::Closed => tracing::info!("NATS connection closed"),
        Event::SlowConsumer(sid) => {
            tracing::warn!(sid, "NATS slow consumer: a subscription dropped messages")
        }
        Event::ServerError(error) => tracing::error!(%error, "NATS server error"),
        Event::ClientError(error) => tracing::warn!(%error, "NATS client error"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_information_is_never_shown() {
        assert_eq!(
            redacted_servers("nats://alice:secret@host:4222, tls://tok@other:4443"),
            "nats://host:4222,tls://other:4443"
        );
        let options = NatsOptions {
            url: "nats://u:p@h:1".into(),
            creds_file: None,
            user: Some("u".into()),
            password: Some("hunter2".into()),
            token: Some("s3cret".into()),
            name: "call-ledger".into(),
        };
        let shown = format!("{options:?}");
        assert!(!shown.contains("hunter2") && !shown.contains("s3cret") && !shown.contains(":p@"));
    }

    #[test]
    fn bad_urls_are_config_errors() {
        assert_eq!(
            parse_servers(" , ").err().map(|e| e.kind()),
            Some(GatewayErrorKind::Config)
        );
        assert!(parse_servers("nats://127.0.0.1:4222,nats://127.0.0.1:4223").is_ok());
    }

    #[tokio::test]
    async fn two_ways_to_authenticate_are_refused() {
        let options = NatsOptions {
            url: "nats://127.0.0.1:1".into(),
            creds_file: None,
            user: Some("u".into()),
            password: Some("p".into()),
            token: Some("t".into()),
            name: "call-ledger".into(),
        };
        let refused = connect(options).await.err().map(|e| e.kind());
        assert_eq!(refused, Some(GatewayErrorKind::Config));
    }
}
