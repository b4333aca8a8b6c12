//! `callledger calls ...`: a client of a running service. Speaks the API over NATS and prints
//! the JSON:API reply; an error reply exits non-zero with its title and detail.

use crate::cli::{ClientAction, ClientArgs, WriteArgs};
use anyhow::Context;
use call_gateway::NatsOptions;
use std::io::{IsTerminal, Read};
use std::process::ExitCode;
use std::time::Duration;

pub fn run(args: ClientArgs) -> anyhow::Result<ExitCode> {
    let prefix = args
        .nats
        .subject_prefix
        .clone()
        .unwrap_or_else(|| "calls".into());
    let mut headers: Vec<(String, String)> = Vec::new();
    if let Some(token) = &args.token {
        headers.push(("Authorization".into(), format!("Bearer {token}")));
    }
    let write_headers = |headers: &mut Vec<(String, String)>, write: &WriteArgs| {
        if let Some(key) = &write.idempotency_key {
            headers.push(("Idempotency-Key".into(), key.clone()));
        }
        if let Some(version) = write.if_match {
            headers.push(("If-Match".into(), version.to_string()));
        }
    };
    let (subject, payload) = match &args.action {
        ClientAction::List { query } => (
            format!("{prefix}.api.list"),
            query.clone().unwrap_or_default(),
        ),
        ClientAction::Get { id, query } => (
            format!("{prefix}.api.get.{id}"),
            query.clone().unwrap_or_default(),
        ),
        ClientAction::Create { document, write } => {
            write_headers(&mut headers, write);
            (format!("{prefix}.api.create"), read_document(document)?)
        }
        ClientAction::Update {
            id,
            document,
            write,
        } => {
            write_headers(&mut headers, write);
            (
                format!("{prefix}.api.update.{id}"),
                read_document(document)?,
            )
        }
        ClientAction::Delete { id, write } => {
            write_headers(&mut headers, write);
            (format!("{prefix}.api.delete.{id}"), String::new())
        }
        ClientAction::Changes { after, limit } => (
            format!("{prefix}.api.changes"),
            format!("after={after}&limit={limit}"),
        ),
    };
    let nats = &args.nats;
    let options = NatsOptions {
        url: nats
            .nats_url
            .clone()
            .unwrap_or_else(|| "nats://127.0.0.1:4222".into()),
        creds_file: nats.nats_creds.clone(),
        user: nats.nats_user.clone(),
        password: nats.nats_password.clone(),
        token: nats.nats_token.clone(),
        name: "callledger-client".into(),
    };
    let timeout = Duration::from_secs(args.timeout.max(1));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let (reply_headers, body) = runtime.block_on(async move {
        let client = tokio::time::timeout(timeout, call_gateway::connect(options))
            .await
            .context("timed out connecting to NATS")??;
        let reply =
            call_gateway::request(&client, subject, headers, payload.into_bytes(), timeout).await?;
        anyhow::Ok(reply)
    })?;
    let failed = reply_headers
        .iter()
        .any(|(name, _)| name.eq_ignore_ascii_case("Nats-Service-Error-Code"));
    print_reply(!failed, &body)
}

fn read_document(argument: &str) -> anyhow::Result<String> {
    if argument == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("cannot read the document from stdin")?;
        Ok(text)
    } else {
        Ok(argument.to_owned())
    }
}

/// Prints a reply body (pretty on a terminal); for an error, also says its title and detail on
/// stderr and returns a failing exit code.
pub fn print_reply(ok: bool, body: &[u8]) -> anyhow::Result<ExitCode> {
    let parsed: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    match &parsed {
        Some(value) if std::io::stdout().is_terminal() => {
            println!("{}", serde_json::to_string_pretty(value)?)
        }
        Some(value) => println!("{value}"),
        None if !body.is_empty() => println!("{}", String::from_utf8_lossy(body)),
        None => {}
    }
    if ok {
        return Ok(ExitCode::SUCCESS);
    }
    let errors = parsed
        .as_ref()
        .and_then(|value| value.get("errors"))
        .and_then(|errors| errors.as_array())
        .cloned()
        .unwrap_or_default();
    for error in &errors {
        let title = error
            .get("title")
            .and_then(|t| t.as_str())
            .unwrap_or("Error");
        let detail = error.get("detail").and_then(|d| d.as_str()).unwrap_or("");
        eprintln!("error: {title}: {detail}");
    }
    if errors.is_empty() {
        eprintln!("error: the service answered with an error");
    }
    Ok(ExitCode::FAILURE)
}
