"""Per-camera counters of the edge, and their Prometheus exposition.

`CameraStats` is the one place a frame's fate is counted; `/metrics` reads it at scrape time (a
custom collector), so the log lines and Prometheus can never disagree. Every captured frame ends up
in exactly one bucket: acked, rejected by the cloud, dropped (by reason) or still pending in the
pipeline or the spool. fps are `rate()` of the counters.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from prometheus_client import REGISTRY, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

if TYPE_CHECKING:
    from edge.outbox import Outbox

HEAD_SECONDS = Histogram(
    "infocut_edge_head_seconds", "head.onnx time per frame, in seconds (the resize is the capture thread's).", ["camera_id"],
    buckets=[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5],
)
FRAME_BYTES = Histogram(
    "infocut_edge_frame_bytes", "Size of one encoded frame, in bytes.", ["camera_id"],
    buckets=[2**k for k in range(8, 23)],
)


@dataclass
class CameraStats:
    camera_id: str
    outbox: Outbox | None = None
    providers: str = ""  # onnxruntime providers of the head, short names
    captured: int = 0
    processed: int = 0  # through the head
    sent: int = 0  # stream writes, resends included
    acked: int = 0
    rejected: int = 0
    duplicates: int = 0  # acks of frames the cloud already held (resends)
    anomalous: int = 0
    encoded_bytes: int = 0
    reconnects: int = 0
    source_reopens: int = 0  # live source closed and opened again (stalled or lost)
    stage_dropped: Counter[str] = field(default_factory=Counter)
    started: float = field(default_factory=time.monotonic)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, name: str, n: int = 1) -> None:
        with self.lock:
            setattr(self, name, getattr(self, name) + n)

    def drop(self, reason: str) -> None:
        with self.lock:
            self.stage_dropped[reason] += 1

    @property
    def dropped(self) -> Counter[str]:
        """Frames dropped, by reason: in the pipeline (`behind_*`) and in the outbox and spool."""
        with self.lock:
            out = Counter(self.stage_dropped)
        if self.outbox is not None:
            out.update(self.outbox.drop_counts())
        return out

    @property
    def pending(self) -> int:
        return self.outbox.depth[0] if self.outbox is not None else 0

    def fields(self) -> dict[str, object]:
        dt = max(time.monotonic() - self.started, 1e-9)
        dropped = self.dropped
        frames, nbytes = self.outbox.depth if self.outbox is not None else (0, 0)
        return {
            "camera": self.camera_id, "captured": self.captured, "processed": self.processed,
            "acked": self.acked, "rejected": self.rejected, "dropped": sum(dropped.values()),
            **{f"dropped_{k}": v for k, v in sorted(dropped.items())},
            "pending": frames, "spool_bytes": nbytes, "duplicates": self.duplicates,
            "anomalous": self.anomalous, "fps": round(self.captured / dt, 1),
            "bytes_per_frame": round(self.encoded_bytes / self.processed) if self.processed else 0,
            "reconnects": self.reconnects, "source_reopens": self.source_reopens,
        }

    def line(self, event: str) -> str:
        """One key=value log line with every counter."""
        return " ".join([f"event={event}", *(f"{k}={v}" for k, v in self.fields().items())])


class _Collector:
    """Exposes the counters of every registered camera at scrape time."""

    def __init__(self) -> None:
        self.cameras: dict[str, CameraStats] = {}

    def collect(self):
        def family(kind, name, doc, labels=("camera_id",)):
            return kind(name, doc, labels=list(labels))

        fams = {
            "captured": family(CounterMetricFamily, "infocut_edge_frames_captured", "Frames read from the source."),
            "processed": family(CounterMetricFamily, "infocut_edge_frames_processed", "Frames through the head."),
            "acked": family(CounterMetricFamily, "infocut_edge_frames_acked", "Frames the cloud stored and acked."),
            "rejected": family(CounterMetricFamily, "infocut_edge_frames_rejected",
                               "Frames the cloud answered with an error."),
            "reconnects": family(CounterMetricFamily, "infocut_edge_reconnects", "Links to the cloud lost."),
            "source_reopens": family(CounterMetricFamily, "infocut_edge_source_reopens",
                                     "Live sources closed and reopened (stalled or lost)."),
        }
        dropped = family(CounterMetricFamily, "infocut_edge_frames_dropped", "Frames dropped, by reason.",
                         ("camera_id", "reason"))
        spool_frames = family(GaugeMetricFamily, "infocut_edge_spool_frames", "Frames in the spool, not yet acked.")
        spool_bytes = family(GaugeMetricFamily, "infocut_edge_spool_bytes", "Bytes of spool files on disk.")
        memory = family(GaugeMetricFamily, "infocut_edge_outbox_frames", "Frames held in memory for the link.")
        info = family(GaugeMetricFamily, "infocut_edge_providers_info",
                      "onnxruntime execution providers of the head (value 1).", ("camera_id", "providers"))
        for cam, st in list(self.cameras.items()):
            for name, fam in fams.items():
                fam.add_metric([cam], getattr(st, name))
            for reason, n in st.dropped.items():
                dropped.add_metric([cam, reason], n)
            if st.outbox is not None:
                frames, nbytes = st.outbox.spool.depth
                spool_frames.add_metric([cam], frames)
                spool_bytes.add_metric([cam], nbytes)
                memory.add_metric([cam], st.outbox.in_memory)
            if st.providers:
                info.add_metric([cam, st.providers], 1)
        yield from fams.values()
        yield from (dropped, spool_frames, spool_bytes, memory, info)


COLLECTOR = _Collector()
REGISTRY.register(COLLECTOR)


def register(stats: CameraStats) -> None:
    COLLECTOR.cameras[stats.camera_id] = stats


def serve(port: int, host: str = "0.0.0.0") -> None:
    """Serve /metrics on a background thread (0: off)."""
    if port:
        start_http_server(port, addr=host)
