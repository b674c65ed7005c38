"""The edge's configuration: one agent process, one or more cameras, each with its own pipeline.

Read from a YAML file (`infocut edge --config edge.yaml`) or built from the single-camera flags, then
overridden by environment variables, then validated (pydantic), so a typo fails at start with the
path of the bad field. Settings given at the top level (artifact, cloud, spool, ...) are defaults
that a camera may override.

Environment overrides: `INFOCUT_EDGE__<KEY>__<KEY>...=value`, keys separated by double
underscores, case-insensitive, list items by index; the value is read as YAML (`10` is a number,
`[a, b]` a list). `INFOCUT_EDGE__CAMERAS__0__SOURCE=rtsp://cam/1` sets the first camera's source,
`INFOCUT_EDGE__SPOOL__CAP_BYTES=500000000` the default spool cap.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from edge import providers as eps
from edge.source import is_live

ENV_PREFIX = "INFOCUT_EDGE__"
Policy = Literal["realtime", "lossless"]


class ConfigError(ValueError):
    """A configuration that cannot run, with every problem spelled out."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SpoolConfig(_Strict):
    """The durable on-disk spool (see edge/spool.py); each camera gets `dir/<camera id>/`."""

    dir: Path = Path("infocut-spool")
    cap_bytes: int = Field(1 << 30, ge=4096, description="bytes of segment files on disk, at most")
    ttl_s: float = Field(0.0, ge=0, description="drop frames older than this (0: keep until sent or full)")
    when_full: Literal["drop-oldest", "reject-new"] = "drop-oldest"
    fsync_interval_s: float = Field(1.0, ge=0, description="fsync at most this often (0: every frame)")
    mode: Literal["overflow", "always"] = Field(
        "overflow", description="overflow: frames go to the link from memory and reach the disk only when the "
                                "link is down or behind; always: every frame is written first (survives a crash)")


class TLSConfig(_Strict):
    """TLS to the cloud: `ca` signs the cloud's certificate (None: the system's roots); `cert` + `key`
    are this edge's client certificate when the cloud requires mutual TLS."""

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None


class _Link(_Strict):
    """What a camera's link to the cloud needs; set at the top level or per camera."""

    tls: TLSConfig | None = None
    token: SecretStr | None = Field(None, description="this camera's bearer token (prefer token_file)")
    token_file: Path | None = Field(None, description="a file holding the bearer token")
    providers: str | None = Field(None, description="onnxruntime providers: auto or a list of tensorrt,cuda,cpu")

    @field_validator("providers")
    @classmethod
    def _providers(cls, v: str | None) -> str | None:
        if v is not None:
            eps.parse(v)
        return v


class CameraConfig(_Link):
    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$",
                    description="camera id: letters, digits, '.', '_', '-' (it names the spool folder)")
    source: str = Field(min_length=1)
    artifact: Path | None = None
    cloud: str | None = None
    policy: Policy | None = Field(None, description="default: realtime for live sources, lossless for files")
    fps: float = Field(0.0, ge=0, description="pace a file source at this rate (0: as fast as it goes)")
    pace: bool = Field(False, description="pace a file source at its own frame rate")
    max_frames: int | None = Field(None, ge=1)
    queue_size: int = Field(8, ge=1, description="frames between two stages")
    max_inflight: int = Field(32, ge=1, description="frames sent and not yet acked")
    head_workers: int = Field(0, ge=0, le=16, description="head sessions running frames side by side, their results "
                              "put back in order (0: 2 on a CPU-only head with 2+ cores per camera of the process, "
                              "else 1). Whole frames in parallel need no sync between threads inside each op, which "
                              "on 2 cores beats one session on both (bench/edge.py); each frame takes longer, and "
                              "each session holds its own buffers")
    decode_threads: int = Field(1, ge=0, le=64, description="FFmpeg threads decoding a video file or stream (0: "
                                "FFmpeg's choice, about one per core). One costs the least CPU per frame, which the "
                                "head on the same cores needs; raise it for a stream one core cannot decode in time")
    threads: int = Field(0, ge=0, description="onnxruntime intra-op threads of each head session (0: the cores this "
                         "process may use, shared among its cameras and their head workers)")
    spin: bool = Field(False, description="onnxruntime's intra-op threads spin-wait between ops (sessions of 2+ "
                       "threads): fastest when the head has the CPU to itself; off (default) leaves the cores to "
                       "the pipeline's other stages")
    side_nice: int = Field(0, ge=0, le=19, description="niceness added to the capture and encode threads (and the "
                           "decoder threads they start; Linux), to favour the head where other work competes for "
                           "the CPU (bench/edge.py --side-nice: no measurable gain on 2 idle cores)")
    outbox_frames: int = Field(32, ge=1, description="frames held in memory for the link (sent or not) before "
                                                      "new ones overflow to the spool")
    stall_timeout_s: float = Field(10.0, ge=0, description="a live source silent this long is reopened (0: never)")
    test_head_delay_s: float = Field(0.0, ge=0, le=10, description="test only: a slower head, to force drops")
    key_interval: int | None = Field(None, ge=1, description="coders with delta frames: most frames between key "
                                     "frames (default: the artifact's; 1: every frame a key frame)")
    spool: SpoolConfig | None = None

    def bearer_token(self) -> str | None:
        """The token from `token` or `token_file` (read at start: a rotated file needs a restart)."""
        if self.token is not None:
            return self.token.get_secret_value().strip() or None
        if self.token_file is None:
            return None
        try:
            token = self.token_file.read_text().strip()
        except OSError as e:
            raise ConfigError(f"camera {self.id}: token_file {self.token_file}: {e.strerror}") from None
        if not token:
            raise ConfigError(f"camera {self.id}: token_file {self.token_file} is empty")
        return token

    @property
    def live(self) -> bool:
        return is_live(self.source)


class EdgeConfig(_Link):
    artifact: Path | None = None
    cloud: str = "localhost:50051"
    metrics_port: int = Field(0, ge=0, le=65535, description="Prometheus /metrics port (0: off)")
    metrics_host: str = "0.0.0.0"
    backoff_s: tuple[float, float] = Field((0.25, 10.0), description="first and longest reconnect wait")
    cpu_scheduling: Literal["batch", "normal"] = Field(
        "batch", description="Linux scheduling policy of the agent's threads: batch (SCHED_BATCH: a stage thread "
        "that wakes does not preempt the head; half the context switches, ~2.5 ms less CPU a frame on 2 cores, "
        "bench/edge.py) or normal (SCHED_OTHER: the lowest latency)")
    spool: SpoolConfig = Field(default_factory=SpoolConfig)
    cameras: list[CameraConfig] = Field(min_length=1)

    @model_validator(mode="after")
    def _resolve(self) -> EdgeConfig:
        """Fill each camera's unset fields from the top level; camera ids must be unique."""
        ids = [c.id for c in self.cameras]
        if len(set(ids)) != len(ids):
            raise ValueError(f"camera ids must be unique: {ids}")
        if not 0 < self.backoff_s[0] <= self.backoff_s[1]:
            raise ValueError(f"backoff_s must be (first, longest) with 0 < first <= longest, not {self.backoff_s}")
        for cam in self.cameras:
            cam.artifact = cam.artifact or self.artifact
            if cam.artifact is None:
                raise ValueError(f"camera {cam.id}: no artifact (set `artifact` at the top level or for the camera)")
            cam.cloud = cam.cloud or self.cloud
            cam.spool = cam.spool or self.spool
            cam.tls = cam.tls or self.tls
            if cam.token is None and cam.token_file is None:
                cam.token, cam.token_file = self.token, self.token_file
            cam.providers = cam.providers or self.providers or "auto"
            cam.policy = cam.policy or ("realtime" if cam.live else "lossless")
        return self


def apply_env(doc: dict[str, Any], environ: dict[str, str] | None = None) -> dict[str, Any]:
    """Apply `INFOCUT_EDGE__...` overrides to a raw config document (in place; returned)."""
    environ = os.environ if environ is None else environ
    for name in sorted(environ):
        if not name.upper().startswith(ENV_PREFIX):
            continue
        keys = [k.lower() for k in name[len(ENV_PREFIX):].split("__")]
        if not all(keys):
            raise ConfigError(f"{name}: empty key (keys are separated by exactly two underscores)")
        node: Any = doc
        for depth, key in enumerate(keys):
            last = depth == len(keys) - 1
            value = yaml.safe_load(environ[name]) if last else {}
            if isinstance(node, list):
                if not key.isdigit() or int(key) > len(node):
                    raise ConfigError(f"{name}: {key!r} is not an index of a list of {len(node)}")
                if int(key) == len(node):
                    node.append(value)
                elif last:
                    node[int(key)] = value
                node = node[int(key)]
            elif isinstance(node, dict):
                if last:
                    node[key] = value
                else:
                    node = node.setdefault(key, [] if keys[depth + 1].isdigit() else {})
            else:
                raise ConfigError(f"{name}: {'.'.join(keys[:depth])} is a value, not a section")
    return doc


def load(doc: dict[str, Any], origin: str, environ: dict[str, str] | None = None) -> EdgeConfig:
    """Validate a config document after environment overrides; ConfigError lists every problem."""
    try:
        return EdgeConfig.model_validate(apply_env(doc, environ))
    except ValidationError as e:
        lines = [f"  {'.'.join(map(str, err['loc'])) or '(top)'}: {err['msg']}" for err in e.errors()]
        raise ConfigError(f"invalid edge configuration ({origin}):\n" + "\n".join(lines)) from None


def load_file(path: Path, environ: dict[str, str] | None = None) -> EdgeConfig:
    try:
        doc = yaml.safe_load(path.read_text())
    except OSError as e:
        raise ConfigError(f"{path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: expected a mapping with a `cameras` list at the top")
    return load(doc, str(path), environ)
