"""The artifact: the one contract between splitter, edge and cloud.

A directory with manifest.json, head.onnx and tail.onnx. The manifest records every file's
sha256; the artifact id is the sha256 of the canonical manifest (without the id itself), so
two nodes agree on the id only when they hold the same bytes. Loading verifies all of it:
a tampered or mismatched artifact is refused before any session is built.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from codec import CodecError, EntropyModel, needs_model

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"


class ArtifactError(ValueError):
    """The artifact is missing, malformed, tampered with or of an unsupported schema."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


def artifact_id(manifest: dict) -> str:
    body = {k: v for k, v in manifest.items() if k != "artifact_id"}
    return hashlib.sha256(canonical(body)).hexdigest()[:32]


@dataclass(frozen=True)
class Artifact:
    root: Path
    manifest: dict

    @property
    def id(self) -> str:
        return self.manifest["artifact_id"]

    @property
    def head_path(self) -> Path:
        return self.root / self.manifest["files"]["head"]["path"]

    @property
    def tail_path(self) -> Path:
        return self.root / self.manifest["files"]["tail"]["path"]

    @property
    def threshold(self) -> float:
        """The anomaly threshold; +inf for an artifact without a scorer (nothing is ever anomalous)."""
        value = self.manifest["scorer"]["threshold"]
        return float("inf") if value is None else float(value)

    @property
    def bits(self) -> int:
        return int(self.manifest["quantizer"]["bits"])

    @property
    def coder(self) -> str:
        return self.manifest["coder"]["name"]

    @property
    def entropy_models(self) -> list[EntropyModel] | None:
        """The coder's entropy model per cut tensor (codec.EntropyModel), or None for a coder without one."""
        if not needs_model(self.coder):
            return None
        return [EntropyModel.from_json(t) for t in self.manifest["coder"]["tensors"]]

    @property
    def key_interval(self) -> int:
        """Coders with delta frames: the artifact's default for the most frames between key frames."""
        return int(self.manifest["coder"].get("key_interval", 1))

    @property
    def cut_shapes(self) -> list[tuple[int, ...]]:
        """Per-frame shapes of the tensors crossing the cut (without the batch axis)."""
        return [tuple(t["shape"]) for t in self.manifest["cut"]["tensors"]]

    @property
    def cut_names(self) -> list[str]:
        """The names of the cut's codes, head.onnx's outputs and tail.onnx's first inputs, in frame order."""
        return [t["name"] for t in self.manifest["cut"]["tensors"]]

    @property
    def input_size(self) -> tuple[int, int]:
        inp = self.manifest["input"]
        return int(inp["height"]), int(inp["width"])


def write_manifest(root: Path, manifest: dict) -> dict:
    """Fill in file hashes and the artifact id, write manifest.json, return the final manifest."""
    manifest = dict(manifest, schema_version=SCHEMA_VERSION)
    for entry in manifest["files"].values():
        entry["sha256"] = sha256_file(root / entry["path"])
        entry["bytes"] = (root / entry["path"]).stat().st_size
    manifest["artifact_id"] = artifact_id(manifest)
    (root / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True, allow_nan=False) + "\n")
    return manifest


def load_artifact(root: str | Path, verify: bool = True) -> Artifact:
    root = Path(root)
    path = root / MANIFEST
    if not path.is_file():
        raise ArtifactError(f"{root} is not an infocut artifact: {MANIFEST} is missing")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{path}: not valid JSON ({e})") from e
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise ArtifactError(
            f"{path}: schema version {manifest.get('schema_version')!r}, this build reads {SCHEMA_VERSION}"
        )
    for key in ("artifact_id", "files", "cut", "quantizer", "coder", "scorer", "input"):
        if key not in manifest:
            raise ArtifactError(f"{path}: required field {key!r} is missing")
    tensors = manifest["cut"].get("tensors")
    if not tensors or not all(isinstance(t, dict) and {"name", "shape"} <= t.keys() for t in tensors):
        raise ArtifactError(f"{path}: cut.tensors must give the name and shape of every tensor crossing the cut")
    if "bits" not in manifest["quantizer"]:
        raise ArtifactError(f"{path}: required field 'quantizer.bits' is missing")
    if len(manifest["quantizer"].get("tensors", tensors)) != len(tensors):
        raise ArtifactError(f"{path}: quantizer.tensors must give one quantizer per cut tensor")
    _check_coder(path, manifest)
    if verify:
        if artifact_id(manifest) != manifest["artifact_id"]:
            raise ArtifactError(f"{path}: artifact id does not match the manifest's content (edited?)")
        for name, entry in manifest["files"].items():
            file = root / entry["path"]
            if not file.is_file():
                raise ArtifactError(f"{root}: {name} file {entry['path']} is missing")
            if sha256_file(file) != entry["sha256"]:
                raise ArtifactError(f"{root}: {entry['path']} does not match its sha256 in the manifest")
    return Artifact(root=root, manifest=manifest)


def _check_coder(path: Path, manifest: dict) -> None:
    """The coder must be known and its tables (if it codes against any) valid for the cut."""
    coder = manifest["coder"]
    try:
        if not isinstance(coder, dict) or not needs_model(coder.get("name", "")):
            return
        tables = coder.get("tensors")
        if not isinstance(tables, list) or len(tables) != len(manifest["cut"]["tensors"]):
            raise CodecError("the coder needs one entropy model per cut tensor")
        for t, m in zip(manifest["cut"]["tensors"], tables, strict=True):
            model = EntropyModel.from_json(m)
            if model.bits != manifest["quantizer"]["bits"] or model.channels != t["shape"][0]:
                raise CodecError(f"entropy model of {t['name']} is for {model.channels} channels at {model.bits} "
                                 f"bits, the cut tensor is {t['shape']} at {manifest['quantizer']['bits']} bits")
    except CodecError as e:
        raise ArtifactError(f"{path}: coder {coder.get('name')!r}: {e}") from None
