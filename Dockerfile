# syntax=docker/dockerfile:1.7
# datagate container image: a release build in a Rust builder, copied into a minimal
# non-root runtime (distroless, glibc; no shell, no package manager).
#
#   docker build -t datagate:0.1.0 .                      # the runtime image (default)
#   docker build --target static -t datagate:0.1.0-static .   # fully static musl binary on scratch
#
# The image runs `datagate run --config /etc/datagate/config/datagate.yaml`; mount the config,
# policies and keys there (deploy/kubernetes/ does). Ports: 8080 proxy, 9180 admin.

ARG RUST_VERSION=1.95

# ---- builder: glibc release build ------------------------------------------------------
FROM rust:${RUST_VERSION}-bookworm AS builder
# cmake: aws-lc-sys and libz-ng-sys build C libraries with it.
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake=3.25.1-1 \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin datagate \
 && install -D -m 0755 target/release/datagate /out/datagate

# ---- static-builder: x86_64-unknown-linux-musl -----------------------------------------
FROM rust:${RUST_VERSION}-bookworm AS static-builder
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake=3.25.1-1 musl-tools=1.2.3-1 \
 && rm -rf /var/lib/apt/lists/* \
 && rustup target add x86_64-unknown-linux-musl
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin datagate --target x86_64-unknown-linux-musl \
 && install -D -m 0755 target/x86_64-unknown-linux-musl/release/datagate /out/datagate

# ---- static: the musl binary alone -----------------------------------------------------
FROM scratch AS static
COPY --from=static-builder /out/datagate /usr/local/bin/datagate
USER 65532:65532
EXPOSE 8080 9180
ENTRYPOINT ["/usr/local/bin/datagate"]
CMD ["run", "--config", "/etc/datagate/config/datagate.yaml"]

# ---- runtime (default target) ------------------------------------------------------------
# distroless/cc: glibc, libgcc and CA certificates, user `nonroot` (65532).
FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
COPY --from=builder /out/datagate /usr/local/bin/datagate
USER 65532:65532
EXPOSE 8080 9180
ENTRYPOINT ["/usr/local/bin/datagate"]
CMD ["run", "--config", "/etc/datagate/config/datagate.yaml"]
