# The slimforge operator's own image: one static musl binary and a CA bundle
# on scratch, run as a numeric non-root user.
#
# Two ways to get the binary, chosen with the BINARY build argument:
#
#   BINARY=build (default): compiled here, in the official Rust image, for the
#     platform asked (TARGETARCH amd64 or arm64). The build stage runs on that
#     platform (emulated when it is not the builder's own), so the native
#     musl-tools suffice. Context: this repository (see .dockerignore).
#       docker buildx build --platform linux/amd64,linux/arm64 -t IMAGE .
#
#   BINARY=host: a binary built beforehand, e.g. on a machine that cannot pull
#     the Rust image (scripts/operator-image does this). The context is then a
#     directory holding exactly two files:
#       slimforge            the static musl binary for the target platform
#                            (cargo build --release --target <arch>-unknown-linux-musl)
#       ca-certificates.crt  a PEM CA bundle (e.g. /etc/ssl/certs/ca-certificates.crt)
#     and the Dockerfile is passed with -f:
#       buildah bud --build-arg BINARY=host -f /path/to/slimforge/Dockerfile -t IMAGE CONTEXT
#     Stages the final image does not need are skipped (BuildKit always;
#     buildah with its default --skip-unused-stages), so the Rust image is
#     never pulled.
#
# The final image holds /slimforge and /etc/ssl/certs/ca-certificates.crt
# (the registry client needs trust roots) and nothing else.

ARG BINARY=build
ARG RUST_IMAGE=docker.io/library/rust:1.95-bookworm

# ---------------------------------------------------------------------------
# BINARY=build: compile the static binary in the Rust image.
FROM ${RUST_IMAGE} AS binary-build
# Set by BuildKit and by buildah (from --platform, else the host's); the
# legacy builder leaves it empty, and then the image's own architecture counts.
ARG TARGETARCH
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends musl-tools \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# The target dir and the registry are cache mounts (kept between builds by
# BuildKit and buildah alike), so the binary is copied out of them into /out
# within the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    set -eu; \
    arch="${TARGETARCH:-$(dpkg --print-architecture)}"; \
    case "$arch" in \
      amd64) triple=x86_64-unknown-linux-musl ;; \
      arm64) triple=aarch64-unknown-linux-musl ;; \
      *) echo "unsupported target architecture: $arch" >&2; exit 1 ;; \
    esac; \
    rustup target add "$triple"; \
    cargo build --release --locked --target "$triple" --bin slimforge; \
    mkdir -p /out; \
    cp "target/$triple/release/slimforge" /out/slimforge; \
    cp /etc/ssl/certs/ca-certificates.crt /out/ca-certificates.crt

# ---------------------------------------------------------------------------
# BINARY=host: take the binary and the CA bundle from the context.
FROM scratch AS binary-host
COPY slimforge ca-certificates.crt /out/

# ---------------------------------------------------------------------------
# The variant chosen: its /out holds slimforge and ca-certificates.crt.
FROM binary-${BINARY} AS binary
# Not a no-op for buildah 1.28: a stage that is only a FROM leaves its working
# container and the intermediate image behind after the build.
WORKDIR /out

# ---------------------------------------------------------------------------
FROM scratch
LABEL org.opencontainers.image.title="slimforge" \
      org.opencontainers.image.description="A Kubernetes operator that builds slim container images from multi-stage builds, without a Docker daemon" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=binary /out/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=binary /out/slimforge /slimforge
USER 65532:65532
ENTRYPOINT ["/slimforge"]
