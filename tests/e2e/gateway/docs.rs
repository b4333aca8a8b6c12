//! The documentation's CLI examples, run exactly as written: every `callledger calls ...` line
//! of the shell blocks of docs/api.md and README.md (continuation lines joined) is handed to
//! `bash -c` against a real `callledger serve`, and must exit 0 with a JSON reply (a delete:
//! nothing). The state the examples assume (calls 1 to 3 of prospect 42) is written first.

use std::path::{Path, PathBuf};
use std::process::Command;

use call_ledger_tests::{callledger_bin, NatsServer};
use serde_json::{json, Value};

use super::process::{wait_until_serving, Serve};
use super::{blocking, bounded, Caller, ADMIN, TEST_TIMEOUT, TOKENS_TOML, WRITER};

/// The repository's root, where the documents are.
fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The `callledger calls` commands of a markdown file's `sh` blocks, in order, each with its
/// continuation lines joined.
fn cli_examples(markdown: &str) -> Vec<String> {
    let mut examples = Vec::new();
    let mut in_shell = false;
    let mut pending: Option<String> = None;
    for line in markdown.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with("```") {
            in_shell = !in_shell && trimmed == "```sh";
            continue;
        }
        if !in_shell {
            continue;
        }
        if let Some(command) = pending.as_mut() {
            command.push(' ');
            command.push_str(trimmed.trim_end_matches('\\').trim());
            if !trimmed.ends_with('\\') {
                examples.extend(pending.take());
            }
            continue;
        }
        if trimmed.contains("callledger calls ") {
            let command = trimmed.trim_end_matches('\\').trim().to_owned();
            if trimmed.ends_with('\\') {
                pending = Some(command);
            } else {
                examples.push(command);
            }
        }
    }
    examples
}

/// Runs `command` with bash in `dir`, `callledger` first on `PATH`; returns stdout, or panics
/// with everything it printed.
fn run_example(command: &str, dir: &Path, bin_dir: &Path, env: &[(&str, String)]) -> String {
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let output = Command::new("bash")
        .args(["-c", command])
        .current_dir(dir)
        .env("PATH", path)
        .envs(env.iter().map(|(name, value)| (*name, value.as_str())))
        .output()
        .expect("bash runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "`{command}` exited with {}\nstdout: {stdout}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// A `callledger` on `PATH` and a `target/release/callledger` below the returned directory, as
/// the documents name it.
fn binaries(bin: &Path, root: &Path) -> PathBuf {
    let bin_dir = root.join("bin");
    let release = root.join("target/release");
    std::fs::create_dir_all(&bin_dir).expect("a bin directory");
    std::fs::create_dir_all(&release).expect("a target/release directory");
    std::os::unix::fs::symlink(bin, bin_dir.join("callledger")).expect("link callledger");
    std::os::unix::fs::symlink(bin, release.join("callledger")).expect("link callledger");
    bin_dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_cli_example_in_the_docs_runs_as_written() {
    let bin = blocking(callledger_bin);
    let root = repo_root();
    let api_md = std::fs::read_to_string(root.join("docs/api.md")).expect("docs/api.md");
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README.md");
    let api_examples = cli_examples(&api_md);
    let readme_examples = cli_examples(&readme);
    // Found, so that a change of the documents' layout cannot make this test vacuous.
    assert!(api_examples.len() >= 7, "docs/api.md: {api_examples:#?}");
    assert!(
        readme_examples.len() >= 2,
        "README.md: {readme_examples:#?}"
    );
    bounded("the test", TEST_TIMEOUT, async {
        let nats = blocking(NatsServer::start);
        let dir = tempfile::tempdir().expect("a temporary directory");
        let bin_dir = binaries(&bin, dir.path());
        let tokens = dir.path().join("tokens.toml");
        std::fs::write(&tokens, TOKENS_TOML).expect("the tokens file");
        let client = async_nats::connect(nats.url()).await.expect("a client");

        // docs/api.md: a service with a tokens file; $TOKEN reads and writes, $ADMIN_TOKEN
        // holds calls.all.
        let mut secured = blocking(|| {
            Serve::start(
                &bin,
                &dir.path().join("data-api"),
                &nats.url(),
                &["--tokens", tokens.to_str().expect("a UTF-8 path")],
                dir.path().join("serve-api.log"),
            )
        });
        let admin = Caller::new(client.clone(), Some(ADMIN));
        wait_until_serving(&admin, &secured).await;
        for to in ["+15550199", "+15550199", "+15550142"] {
            let document = json!({"data": {"type": "call",
                "attributes": {"direction": "outbound", "to": to},
                "relationships": {"prospect": {"data": {"type": "prospect", "id": 42}}}}});
            let reply = admin
                .request("calls.api.create", &[], document.to_string())
                .await;
            assert!(reply.is_success(), "{reply}");
        }
        let env = [
            ("NATS_URL", nats.url()),
            ("TOKEN", WRITER.to_owned()),
            ("ADMIN_TOKEN", ADMIN.to_owned()),
            (
                "document",
                r#"{"data":{"type":"call","attributes":{"direction":"inbound"}}}"#.to_owned(),
            ),
        ];
        for example in &api_examples {
            let (example, path) = (example.clone(), dir.path().to_path_buf());
            let (bin_dir, env) = (bin_dir.clone(), env.clone());
            let stdout = blocking(move || run_example(&example, &path, &bin_dir, &env));
            if !example_is_delete(&stdout) {
                let reply: Value = serde_json::from_str(stdout.trim())
                    .unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"));
                assert!(reply.get("data").is_some(), "{reply}");
            }
        }
        secured.terminate();
        let status = blocking(|| secured.wait(std::time::Duration::from_secs(30)));
        assert!(status.success(), "{status}; its log:\n{}", secured.logs());

        // README.md: `make run`'s service, without a tokens file.
        let mut open = blocking(|| {
            Serve::start(
                &bin,
                &dir.path().join("data-readme"),
                &nats.url(),
                &[],
                dir.path().join("serve-readme.log"),
            )
        });
        wait_until_serving(&Caller::new(client.clone(), None), &open).await;
        let env = [("NATS_URL", nats.url())];
        for example in &readme_examples {
            let (example, path) = (example.clone(), dir.path().to_path_buf());
            let (bin_dir, env) = (bin_dir.clone(), env.clone());
            let stdout = blocking(move || run_example(&example, &path, &bin_dir, &env));
            let reply: Value = serde_json::from_str(stdout.trim())
                .unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"));
            assert!(reply.get("data").is_some(), "{reply}");
        }
        open.terminate();
        let status = blocking(|| open.wait(std::time::Duration::from_secs(30)));
        assert!(status.success(), "{status}; its log:\n{}", open.logs());
    })
    .await;
}

/// A delete prints nothing.
fn example_is_delete(stdout: &str) -> bool {
    stdout.trim().is_empty()
}

#[test]
fn examples_are_extracted_with_their_continuation_lines() {
    let markdown = "text\n```sh\nnats req x \\\n  -H y\ncallledger calls create --token \"$TOKEN\" \\\n  '{\"a\":1}'\necho \"$d\" | callledger calls create -\n```\n```json\ncallledger calls list\n```\n";
    assert_eq!(
        cli_examples(markdown),
        vec![
            "callledger calls create --token \"$TOKEN\" '{\"a\":1}'".to_owned(),
            "echo \"$d\" | callledger calls create -".to_owned(),
        ]
    );
}
