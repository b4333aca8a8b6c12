# Each target is one short command; the logic lives in scripts/ and .ci/.
# `make test` and `make run` work on a fresh clone with only a Rust toolchain:
# nats-server is installed with apt-get if it is missing.

.PHONY: run test check fmt lint doc layering bench import-demo nats-server nats-server-2.15 cluster cluster-stop bench-peers fuzz fuzz-short soak

run:            ## build release, start a local nats-server if none is running, serve
	scripts/run.sh

test: nats-server nats-server-2.15 ## every test of the workspace, end-to-end ones included, and the gateway's contract suite again on the JetStream engine of the log
	cargo test --workspace --locked
	CALL_LEDGER_TEST_LOG=jetstream cargo test --locked -p call-ledger-tests --test e2e -- gateway::endpoints gateway::queries gateway::writes

check:          ## everything CI checks
	.ci/run

fmt:
	cargo fmt --all

lint:
	cargo clippy --workspace --all-targets --locked -- -D warnings

doc:
	RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked

layering:       ## which crates may depend on sled, async-nats, tokio
	.ci/check-layering.sh

bench: nats-server nats-server-2.15
	cargo bench -p call-ledger-tests

bench-peers: nats-server nats-server-2.15 ## call-ledger beside JetStream used directly and PostgreSQL as event stores, same events, fsynced
	cargo bench -p call-ledger-tests --bench peers

SOAK_SECONDS ?= 600
soak: nats-server ## ten minutes of mixed load on callledger serve: RSS flat within 10%, p99 per minute (SOAK_SECONDS, SOAK_RATE)
	SOAK_SECONDS=$(SOAK_SECONDS) cargo bench -p call-ledger-tests --bench soak

FUZZ_SECONDS ?= 600
fuzz:           ## every fuzz target for FUZZ_SECONDS (600) each; installs cargo-fuzz if missing
	scripts/fuzz.sh $(FUZZ_SECONDS)

fuzz-short:     ## every fuzz target for 30 s each, as .ci/run does
	scripts/fuzz.sh 30

import-demo:    ## 100k generated calls: import, rebuild, verify, timed
	scripts/import-demo.sh 100000

nats-server:    ## print the nats-server path, installing it if missing
	@scripts/ensure-nats-server.sh

nats-server-2.15: ## install the official nats-server 2.15.1 (pinned by hash) into .tools/; the cluster test then fsyncs every write
	@scripts/ensure-nats-server-2.15.sh

cluster:        ## a three-node NATS cluster (2.15.1, every write fsynced) and three instances on the JetStream log, R3, in .cluster/
	deploy/cluster/cluster.sh start

cluster-stop:   ## stop the instances (drained), then the nodes
	deploy/cluster/cluster.sh stop
