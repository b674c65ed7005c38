"""Prometheus metrics of the cloud node, in the default registry that ``GET /metrics`` exposes.

The gRPC side counts frames, errors, duplicates and opened alerts as it handles them; the store counts
nothing, so every event is counted exactly once.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

FRAMES = Counter("infocut_frames_total", "Frames scored and stored, per camera.", ["camera_id"])
FRAME_ERRORS = Counter(
    "infocut_frame_errors_total", "Frames rejected, by reason (corrupt, artifact mismatch, ...).", ["reason"]
)
DUPLICATES = Counter(
    "infocut_duplicate_frames_total",
    "Frames received again (edge retries) and not stored twice.",
    ["camera_id"],
)
FRAME_BYTES = Histogram(
    "infocut_frame_bytes",
    "Size of one encoded frame on the wire, in bytes.",
    buckets=[2**k for k in range(6, 22)],
)
TAIL_SECONDS = Histogram(
    "infocut_tail_seconds",
    "Time to decode and run the tail on one batch, in seconds.",
    buckets=[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5],
)
E2E_SECONDS = Histogram(
    "infocut_capture_to_score_seconds",
    "From capture at the edge to score in the cloud, in seconds (includes clock skew between nodes).",
    buckets=[0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0],
)
ALERTS_OPENED = Counter("infocut_alerts_opened_total", "Alerts opened, per camera.", ["camera_id"])
STREAMS = Gauge("infocut_active_streams", "Edge streams connected now.")
PROVIDERS = Gauge("infocut_tail_providers_info", "onnxruntime execution providers of the tail (value 1).",
                  ["providers"])
