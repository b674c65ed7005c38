# Edge node: capture -> head.onnx -> entropy coder -> gRPC. No torch, no compiler: every dependency of
# the `edge` extra (onnxruntime, grpcio, opencv-python-headless, numpy, zstandard) ships manylinux
# wheels for both amd64 and arm64, so the same file builds for a PC and a 64-bit Raspberry Pi:
#   docker buildx build --platform linux/arm64 -f deploy/edge.Dockerfile -t infocut-edge .
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Only what the edge runs: the code it imports, the demo artifact and clip.
# (Named paths, not `COPY . .`, so a local .venv or build output never lands in the image.)
COPY pyproject.toml README.md ./
COPY infocut ./infocut
COPY codec ./codec
COPY protos ./protos
COPY edge ./edge
COPY artifacts ./artifacts
COPY assets ./assets

RUN pip install ".[edge]" \
    && rm -rf build ./*.egg-info \
    && useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin infocut \
    && install -d -o infocut -g infocut /var/lib/infocut-edge

# The durable spool (frames not yet acked by the cloud) lives here; mount a volume to keep it across containers.
ENV INFOCUT_EDGE__SPOOL__DIR=/var/lib/infocut-edge/spool
VOLUME /var/lib/infocut-edge
USER infocut
ENTRYPOINT ["infocut"]
CMD ["edge", "--help"]
