# The CPU image: coordinator, autoscaler, moderation CronJobs and CPU workers.
#   docker build -t REGISTRY/vidx:0.1.0 .
# Two stages: the build (Rust, clang, FFmpeg headers) and the runtime, which holds only the
# binary, FFmpeg's shared libraries and CA certificates, and runs as an unprivileged user.

ARG DEBIAN_RELEASE=bookworm

FROM rust:1.95-slim-bookworm AS build
# Versions come with the base image's Debian release; pinning each package would break the
# build whenever a Debian security update replaces one.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        pkg-config clang libclang-dev protobuf-compiler \
        libavcodec-dev libavformat-dev libavutil-dev libswscale-dev libswresample-dev \
        libavfilter-dev libavdevice-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin vidx \
    && install -m 0755 target/release/vidx /usr/local/bin/vidx

FROM debian:${DEBIAN_RELEASE}-slim AS runtime
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="vidx" \
      org.opencontainers.image.description="vidx: distributed batch video indexing and moderation (CPU)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://example.invalid/vidx"
# The runtime libraries `vidx` links (tests/images.rs checks this list against ldd).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        ca-certificates \
        libavcodec59 libavformat59 libavutil57 libswscale6 libswresample4 libavfilter8 \
        libavdevice59 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 10001 vidx \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin vidx
COPY --from=build /usr/local/bin/vidx /usr/local/bin/vidx
USER 10001:10001
WORKDIR /tmp
ENTRYPOINT ["vidx"]
CMD ["--help"]
