# ccmetrics container image.
#
#   docker build -t ccmetrics:0.1.0 .
#   docker run --rm -p 9898:9898 --stop-timeout 60 ccmetrics:0.1.0     # simulator demo
#
# See deploy/README.md for configuration, secrets and the Kubernetes manifests.

# ---------------------------------------------------------------------------------
# Build stage
# ---------------------------------------------------------------------------------
FROM rust:1.95-bookworm AS build

# rdkafka builds its bundled librdkafka with librdkafka's own ./configure + make (the
# "cmake-build" feature is off, so no cmake). The enabled features are rdkafka's
# defaults (libz, tokio): no OpenSSL, SASL/GSSAPI, zstd or curl, so only a C/C++
# toolchain, make, pkg-config and the zlib headers are needed (jemalloc, the allocator,
# is built the same way: configure + make). The rust image already
# ships them; installing them explicitly keeps the build working if that changes.
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential pkg-config zlib1g-dev \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /src

# Dependency cache: build every dependency against placeholder sources, so this layer
# is reused until Cargo.toml or Cargo.lock change. benches/engine.rs must exist because
# Cargo.toml declares that bench target.
COPY Cargo.toml Cargo.lock ./
# Build settings of the bundled SQLite (LIBSQLITE3_FLAGS), applied to the dependency
# layer too.
COPY .cargo ./.cargo
RUN mkdir -p src benches \
 && echo 'fn main() {}' > src/main.rs \
 && : > src/lib.rs \
 && echo 'fn main() {}' > benches/engine.rs \
 && cargo build --release --locked \
 && rm -rf src benches

# The real sources. sqlx::migrate! embeds migrations/ at compile time. COPY keeps the
# files' modification times, which may be older than the placeholder build: touch the
# crate roots so cargo rebuilds ccmetrics itself.
COPY build.rs ./
COPY src ./src
COPY migrations ./migrations
COPY benches ./benches
RUN touch src/lib.rs src/main.rs \
 && cargo build --release --locked \
 && ./target/release/ccmetrics --version

# The image's default configuration: config/ccmetrics.toml (every key documented) with
# two container-specific changes: listen on all interfaces (a container's loopback is
# unreachable from outside) on port 9898, and keep the SQLite store in the state
# directory. Done in the file, not with ENV, so that environment variables stay free
# for the operator and a mounted config file is not silently overridden. The greps
# fail the build if config/ccmetrics.toml changes its defaults and the edits no
# longer apply.
COPY config/ccmetrics.toml ./config/ccmetrics.toml
RUN sed -e 's|^url = "sqlite://data/ccmetrics.db"$|url = "sqlite:///var/lib/ccmetrics/ccmetrics.db"|' \
        -e 's|^listen = "127.0.0.1:9464"$|listen = "0.0.0.0:9898"|' \
        config/ccmetrics.toml > /src/ccmetrics.container.toml \
 && grep -qx 'url = "sqlite:///var/lib/ccmetrics/ccmetrics.db"' /src/ccmetrics.container.toml \
 && grep -qx 'listen = "0.0.0.0:9898"' /src/ccmetrics.container.toml \
 && ./target/release/ccmetrics check-config --config /src/ccmetrics.container.toml > /dev/null

# ---------------------------------------------------------------------------------
# Runtime stage
# ---------------------------------------------------------------------------------
FROM debian:bookworm-slim

# The binary links glibc, libgcc_s, libm and zlib (all in the base image); librdkafka
# is linked in statically. ca-certificates is there for TLS endpoints; note that this
# build has no TLS to Kafka or PostgreSQL yet (see deploy/README.md).
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*

# A fixed non-root uid/gid (10001), matching runAsUser in deploy/kubernetes. The state
# directory holds the SQLite store when one is used (PostgreSQL in production). It is
# not declared as a VOLUME, to avoid anonymous volumes piling up: mount a named volume
# there to keep SQLite data (docker run -v ccmetrics-data:/var/lib/ccmetrics ...).
RUN groupadd --system --gid 10001 ccmetrics \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/ccmetrics \
            --no-create-home --shell /usr/sbin/nologin ccmetrics \
 && install -d -o 10001 -g 10001 -m 0750 /var/lib/ccmetrics

COPY --from=build /src/target/release/ccmetrics /usr/local/bin/
COPY --from=build /src/ccmetrics.container.toml /etc/ccmetrics/ccmetrics.toml

WORKDIR /var/lib/ccmetrics
EXPOSE 9898
USER 10001:10001

# No HEALTHCHECK: the image has no HTTP client (no curl or wget in bookworm-slim, and
# adding one only for this is not worth it). Orchestrators probe GET /healthz
# (liveness) and GET /readyz (readiness) on port 9898 themselves.
#
# No init process is needed: ccmetrics runs no children and handles SIGTERM and SIGINT
# itself (stop consuming, commit every partition, exit). Give it time to do so:
# docker stop -t 60 / docker run --stop-timeout 60 (Docker's default is 10 s).
STOPSIGNAL SIGTERM
ENTRYPOINT ["ccmetrics"]
CMD ["serve", "--config", "/etc/ccmetrics/ccmetrics.toml"]
