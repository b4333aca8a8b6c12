//! `callledger calls ...`: a client of a running service. Speaks the API over NATS and prints
//! the JSON:API reply; an error reply exits non-zero with its title and detail.

use crate::cli::{ClientAction, ClientArgs, NatsArgs, WriteArgs};
use anyhow::Context;
use call_api::Operation;
use call_gateway::client::ApiCall;
use std::io::{IsTerminal, Read};
use std::process::ExitCode;
use std::time::Duration;

pub fn run(nats: &NatsArgs, args: ClientArgs) -> anyhow::Result<ExitCode> {
    let prefix = nats.prefix();
    let no_write = WriteArgs::default();
    let (operation, payload, write) = match &args.action {
        ClientAction::List { query } => (
            Operation::List,
            query.clone().unwrap_or_default(),
            &no_write,
        ),
        ClientAction::Get { id, query } => (
            Operation::Get(id.clone()),
            query.clone().unwrap_or_default(),
            &no_write,
        ),
        ClientAction::Create { document, write } => {
            (Operation::Create, read_document(document)?, write)
        }
        ClientAction::Update {
            id,
            document,
            write,
        } => (
            Operation::Update(id.clone()),
            read_document(document)?,
            write,
        ),
        ClientAction::Delete { id, write } => (Operation::Delete(id.clone()), String::new(), write),
        ClientAction::Changes { after, limit } => (
            Operation::Changes,
            format!("after={after}&limit={limit}"),
            &no_write,
        ),
    };
    let call = ApiCall {
        operation,
        payload: payload.into_bytes(),
        token: args.token.clone(),
        idempotency_key: write.idempotency_key.clone(),
        if_match: write.if_match,
    };
    let options = nats.options("callledger-client");
    let timeout = Duration::from_secs(args.timeout.max(1));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let reply = runtime.block_on(async move {
        let client = tokio::time::timeout(timeout, call_gateway::connect(options))
            .await
            .context("timed out connecting to NATS")??;
        let reply = call_gateway::client::call(&client, &prefix, call, timeout).await?;
        anyhow::Ok(reply)
    })?;
    print_reply(!reply.is_error(), &reply.body)
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
    let text = match &parsed {
        Some(value) if std::io::stdout().is_terminal() => serde_json::to_string_pretty(value)?,
        Some(value) => value.to_string(),
        None if !body.is_empty() => String::from_utf8_lossy(body).into_owned(),
        None => String::new(),
    };
    if !text.is_empty() {
        crate::out::line(&text)?;
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
