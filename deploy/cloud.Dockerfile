# Cloud node: gRPC ingest -> decode -> tail.onnx -> scores, alerts (SQLite or PostgreSQL) -> REST.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Named paths, not `COPY . .`, so a local .venv or build output never lands in the image.
COPY pyproject.toml README.md ./
COPY infocut ./infocut
COPY codec ./codec
COPY protos ./protos
COPY edge ./edge
COPY cloud ./cloud
COPY artifacts ./artifacts
COPY assets ./assets

# /data holds the SQLite database; a volume mounted there inherits this ownership.
RUN pip install ".[cloud]" \
    && rm -rf build ./*.egg-info \
    && useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin infocut \
    && mkdir -p /data && chown infocut /data

USER infocut
VOLUME ["/data"]
EXPOSE 8000 50051
ENTRYPOINT ["infocut"]
CMD ["cloud", "--help"]
