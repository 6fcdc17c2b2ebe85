# datagate — the two commands a newcomer needs:
#   make demo   build and run datagate in front of the demo upstream, print curl commands
#   make test   everything CI runs: format, lints, unit, integration and differential tests,
#               and the shipped policies' own tests (`datagate test`, policies/tests/)

CARGO ?= cargo

.PHONY: demo test lint fmt bench deps

deps:
	./deploy/install-deps.sh

demo:
	./deploy/install-deps.sh --build-only
	./deploy/demo.sh

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings

# Benches compile under lint (clippy --all-targets); they are run by `make bench`, since
# criterion binaries do not take libtest's arguments.
test: deps lint
	$(CARGO) test --lib --bins --tests -- --test-threads 2
	$(CARGO) test --doc
	$(CARGO) run --quiet --bin datagate -- test --config deploy/datagate.example.yaml

bench:
	$(CARGO) bench --bench decision
	$(CARGO) bench --bench rls
	$(CARGO) bench --bench credentials
	./benches/load.sh

fmt:
	$(CARGO) fmt
