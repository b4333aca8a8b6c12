//! The test harness itself: a throwaway nats-server starts, restarts with its
//! JetStream state intact, and stops.

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::time::Duration;

use call_ledger_tests::{wait_until, NatsServer};

fn greeting(port: u16) -> std::io::Result<String> {
    let stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line)?;
    Ok(line)
}

#[test]
fn nats_server_starts_restarts_and_stops() {
    let mut server = NatsServer::start();
    let port = server.port();
    assert_eq!(server.url(), format!("nats://127.0.0.1:{port}"));
    let info = greeting(port).expect("connect to the started server");
    assert!(info.starts_with("INFO "), "{info}");
    assert!(info.contains("\"jetstream\":true"), "{info}");

    server.restart();
    assert_eq!(server.port(), port, "restart keeps the port");
    assert!(greeting(port).is_ok(), "restarted server accepts clients");

    server.stop();
    assert!(!server.is_running());
    let refused = || TcpStream::connect(("127.0.0.1", port)).is_err();
    assert!(
        wait_until(Duration::from_secs(5), refused),
        "stopped server still accepts connections"
    );
    server.stop(); // stopping twice is harmless
}

#[test]
fn jetstream_messages_survive_restart() {
    let mut server = NatsServer::start();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let client = async_nats::connect(server.url()).await.unwrap();
        let js = async_nats::jetstream::new(client.clone());
        js.create_stream(async_nats::jetstream::stream::Config {
            name: "HARNESS".into(),
            subjects: vec!["harness.>".into()],
            ..Default::default()
        })
        .await
        .unwrap();
        js.publish("harness.one", "kept".into())
            .await
            .unwrap()
            .await
            .unwrap();
        client.drain().await.unwrap();
    });

    server.restart();

    let count = runtime.block_on(async {
        let client = async_nats::connect(server.url()).await.unwrap();
        let js = async_nats::jetstream::new(client);
        let mut stream = js.get_stream("HARNESS").await.unwrap();
        stream.info().await.unwrap().state.messages
    });
    assert_eq!(count, 1);
}

#[test]
fn each_server_gets_its_own_port_and_store() {
    let a = NatsServer::start();
    let b = NatsServer::start();
    assert_ne!(a.port(), b.port());
    assert_ne!(a.store_dir(), b.store_dir());
}

#[test]
fn callledger_binary_is_built_and_found() {
    let bin = call_ledger_tests::callledger_bin();
    assert!(bin.is_file(), "{}", bin.display());
    assert_eq!(call_ledger_tests::callledger_bin(), bin);
}
