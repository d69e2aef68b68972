# shout-proxy container image.
#
#   docker build -t shout-proxy .          (or: make build-docker)
#   docker run --rm -p 8080:8080 -p 8081:8081 shout-proxy
#
# Three build stages share one Rust toolchain image so that the dependency layer
# cargo-chef "cooks" is reused by the final `cargo build`: a change to src/ rebuilds
# only the crate itself, a change to Cargo.lock rebuilds the dependencies.
# The runtime is distroless: glibc, libgcc, CA certificates and a `nonroot` user, no
# shell, no package manager. reqwest is built without TLS, so no OpenSSL either.
#
# Base images are pinned by tag and by the digest of that tag's multi-platform index
# as seen in public Dockerfiles (docs/deployment.md "Base images"); bump both
# together, e.g. from `docker buildx imagetools inspect <image>:<tag>`.

FROM rust:1.95.0-slim-bookworm@sha256:d7482085ff5b415f84dba5647ae71606650bdef00db7aeb69f4b3d170c3e4082 AS chef
WORKDIR /app
RUN cargo install cargo-chef --locked --version 0.1.78

# The recipe is the dependency graph only (manifests and lock file), so this
# stage's output, and every layer below that uses it, changes only when they do.
FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
COPY --from=planner /app/recipe.json recipe.json
RUN cargo chef cook --release --locked --recipe-path recipe.json --bin shout-proxy
COPY . .
# The commit the image is built from. build.rs bakes it into the binary, which
# exports it as shout_build_info{revision}: the dashboard marks a deploy where it
# changes. Declared after the dependency layer so that a new commit does not
# invalidate it. (.git is not in the build context, hence an argument.)
ARG SHOUT_GIT_REVISION=unknown
RUN SHOUT_GIT_REVISION="${SHOUT_GIT_REVISION}" cargo build --release --locked --bin shout-proxy \
    && install -D -m 0755 target/release/shout-proxy /out/shout-proxy

# Debian 12 on both sides: the binary links against the builder's glibc 2.36.
FROM gcr.io/distroless/cc-debian12:nonroot@sha256:9dac0a79194e45a7da0158a9c6da57b217585af0786db3845d1f0ec1a0dd182f AS runtime

ARG VERSION=0.1.0
ARG SHOUT_GIT_REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="shout-proxy" \
      org.opencontainers.image.description="Resilient proxy that reverses strings and has shoutcloud capitalize them, with a local fallback" \
      org.opencontainers.image.source="https://github.com/shout-proxy/shout-proxy" \
      org.opencontainers.image.url="https://github.com/shout-proxy/shout-proxy" \
      org.opencontainers.image.documentation="https://github.com/shout-proxy/shout-proxy/blob/main/docs/deployment.md" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.vendor="shout-proxy" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${SHOUT_GIT_REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.base.name="gcr.io/distroless/cc-debian12:nonroot"

COPY --from=builder /out/shout-proxy /usr/local/bin/shout-proxy

# 65532 is `nonroot` in distroless; numeric so that Kubernetes' runAsNonRoot can
# verify it without reading /etc/passwd.
USER 65532:65532

# 8080: public API. 8081: admin (/livez, /readyz, /metrics, /status).
EXPOSE 8080 8081

# No shell in the image: the binary probes its own admin port
# (GET /livez on 127.0.0.1:<admin port>, exit 0 on 200).
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["/usr/local/bin/shout-proxy", "healthcheck"]

ENTRYPOINT ["/usr/local/bin/shout-proxy"]
