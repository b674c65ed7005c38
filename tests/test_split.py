"""The split is faithful: head.onnx -> codec -> tail.onnx computes what the torch model computes.

Classify task (ResNet-20 at 32x32, its CIFAR resolution, so logits mean something): at several cuts the
ONNX path on real images (the 4 test photos and Ped2 test frames) is compared with
  - the float torch model (top-1 agreement; how far quantization moves the logits),
  - the same split with the quantizer applied in numpy (codec.quantize/dequantize) between the torch
    head and tail: the ONNX path must match this "fake-quant" path to float rounding, while the
    quantization error itself is orders of magnitude larger.
The head's codes are checked against codec.quantize of the torch activations at the cut.

Anomaly task: the manifest carries every field of the contract (shared/DESIGN.md), loading verifies
it and refuses tampered or incomplete artifacts, and the in-process pipeline is finite and deterministic.

Exports are shared by all tests of this module (module-scoped fixtures); the calibration pass of a cut
(the expensive part) runs once per cut and is reused for every bit depth.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import needs_shared

SIZE = (32, 32)
CUTS = ("stem", "layer1_2", "layer2_0", "layer3_2")
BITS = (8, 4)
PHOTOS = ("models", "mobilenet_imagenet_tflite", "test_images")
PED2_PER_VIDEO = 12  # 6 test videos -> 72 frames
N_PHOTOS = 4

# Filled by the parity test, printed by test_report_agreement at the end of the module.
AGREEMENT: dict[tuple[str, int], dict[str, float]] = {}


# -- shared fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return photos_and_ped2(SIZE)


def photos_and_ped2(size: tuple[int, int]) -> np.ndarray:
    """(N, h, w, 3) uint8 RGB: the 4 test photos first, then Ped2 test frames spread over each video."""
    if needs_shared.args[0]:  # the skipif condition: ../shared is missing
        pytest.skip(needs_shared.kwargs["reason"])
    import cv2

    from edge.preprocess import to_input
    from infocut import ped2
    from infocut.settings import require_shared

    photos = sorted(p for p in require_shared(*PHOTOS).iterdir() if p.suffix in (".bmp", ".jpg", ".png"))
    assert len(photos) == N_PHOTOS, photos
    out = [to_input(cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB), size) for p in photos]
    for paths in ped2.videos("testing").values():
        step = len(paths) // PED2_PER_VIDEO
        out += [ped2.read_rgb(p, size) for p in paths[::step][:PED2_PER_VIDEO]]
    x = np.stack(out)
    assert x.shape[1:] == (*size, 3) and x.dtype == np.uint8 and len(x) - N_PHOTOS >= 60
    return x


def _memo_splitter_class():
    import codec
    from splitter.cuts import split
    from splitter.export import Splitter
    from splitter.features import run_videos

    class MemoSplitter(Splitter):
        """Splitter.calibrate with the activations of the calibration frames kept per cut: they do not
        depend on the bit depth, so a 4-bit export of a cut costs no second pass over Ped2.
        test_memo_calibration_equals_splitter checks it returns exactly what Splitter.calibrate does."""

        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self._acts: dict[str, np.ndarray] = {}

        def calibrate(self, cut, bits):
            if cut.name not in self._acts:
                import torch

                net = torch.nn.Sequential(self.preprocess, split(self.model, cut)[0]).eval()
                vids = {k: v[:: self.cfg.calib_stride] for k, v in self.training_videos(False).items()}
                runs = run_videos(net, vids, self.size, "calibrate", quiet=True)
                self._acts[cut.name] = np.concatenate([a for _, a in runs])
            return [codec.calibrate(
                self._acts[cut.name], bits, per_channel=self.cfg.per_channel, percentile=self.cfg.percentile
            )]

    return MemoSplitter


@pytest.fixture(scope="module")
def splitter(images):
    from splitter.export import SplitConfig

    return _memo_splitter_class()(SplitConfig(task="classify", input_size=SIZE, bits=8), quiet=True)


@pytest.fixture(scope="module")
def exported(splitter, tmp_path_factory):
    """(cut, bits) -> loaded classify Artifact, exported on first use."""
    from infocut.artifact import load_artifact

    cache = {}

    def get(cut: str, bits: int):
        if (cut, bits) not in cache:
            out = tmp_path_factory.mktemp(f"classify_{cut}_{bits}")
            splitter.export(out, cut, bits)
            cache[cut, bits] = load_artifact(out)
        return cache[cut, bits]

    return get


@pytest.fixture(scope="module")
def torch_ref(splitter, images):
    """Float logits of the whole torch model and, per cut, the float activations at the cut."""
    import torch

    from splitter.cuts import find_cut, split

    x = torch.from_numpy(images)
    acts = {}
    with torch.no_grad():
        logits = torch.nn.Sequential(splitter.preprocess, splitter.model)(x).numpy()
        for name in CUTS:
            head, _ = split(splitter.model, find_cut(splitter.cuts, name))
            acts[name] = torch.nn.Sequential(splitter.preprocess, head)(x).numpy()
    return logits, acts


def _tail_torch(splitter, cut: str, cut_tensor: np.ndarray) -> np.ndarray:
    """The torch tail (everything after the cut) on a float cut tensor."""
    import torch

    from splitter.cuts import find_cut, split

    _, tail = split(splitter.model, find_cut(splitter.cuts, cut))
    with torch.no_grad():
        return tail(torch.from_numpy(np.ascontiguousarray(cut_tensor, dtype=np.float32))).numpy()


def onnx_path(art, images: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """head.onnx -> encode_frame/decode_frame (one frame per image, the artifact's coder) -> tail.onnx of a
    classify artifact: (the codes of each cut tensor, logits)."""
    from codec import decode_frame, encode_frame
    from edge.head import Head, session

    codes = Head(art, threads=2)(images)
    assert [c.shape for c in codes] == [(len(images), *s) for s in art.cut_shapes]
    assert all(c.dtype == np.uint8 for c in codes)
    decoded = []
    for i in range(len(images)):
        frame = encode_frame([c[i : i + 1] for c in codes], art.bits, art.coder)
        got = decode_frame(frame)
        assert got.coder == art.coder == "zstd" and got.bits == art.bits
        decoded.append(got.tensors)
    decoded = [np.concatenate(t) for t in zip(*decoded)]
    for d, c in zip(decoded, codes, strict=True):
        np.testing.assert_array_equal(d, c)
    logits = session(art.tail_path, threads=2).run(None, dict(zip(art.cut_names, decoded, strict=True)))[0]
    return codes, logits


# -- classify: parity of the split ------------------------------------------------------------------


@needs_shared
def test_memo_calibration_equals_splitter(splitter):
    """The memoizing calibration the module uses returns exactly Splitter.calibrate's parameters."""
    from splitter.cuts import find_cut
    from splitter.export import Splitter

    cut = find_cut(splitter.cuts, "stem")
    for bits in BITS:
        assert splitter.calibrate(cut, bits) == Splitter.calibrate(splitter, cut, bits)


@needs_shared
def test_classify_cuts_run_to_layer3_2(splitter):
    names = [c.name for c in splitter.stage_cuts]
    assert names[-1] == "layer3_2" and set(CUTS) <= set(names)
    assert splitter.stage_cuts[-1].shape == (64, 8, 8)
    assert set(splitter.stage_cuts) < set(splitter.cuts)  # the cuts inside stages are candidates too


@needs_shared
@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("cut", CUTS)
def test_classify_parity(cut, bits, exported, splitter, images, torch_ref):
    from codec import QuantParams, dequantize, quantize

    art = exported(cut, bits)
    assert art.manifest["task"] == "classify" and art.manifest["cut"]["name"] == cut and art.bits == bits
    [q] = [QuantParams.from_json(t) for t in art.manifest["quantizer"]["tensors"]]
    ref, acts = torch_ref
    [codes], logits = onnx_path(art, images)
    assert logits.shape == ref.shape and np.all(np.isfinite(logits))

    # 1. the ONNX tail is the torch tail behind the numpy dequantizer: same codes in, same logits out
    same_codes = _tail_torch(splitter, cut, dequantize(codes, q))
    np.testing.assert_allclose(logits, same_codes, rtol=1e-5, atol=1e-4)

    # 2. against the pure numpy fake-quant split (torch head -> codec.quantize -> dequantize -> torch tail).
    # The quantization error (fake vs float) is orders of magnitude above the parity tolerance. The two
    # paths can only differ where head.onnx rounded a value sitting on a .5 boundary the other way
    # (test_head_codes_equal_numpy_quantizer): images without such a code match to float rounding; in
    # an image with one, that single code moves the logits by a fraction of the image's quantization error.
    fq_codes = quantize(acts[cut], q)
    fake = _tail_torch(splitter, cut, dequantize(fq_codes, q))
    quant_err = np.abs(fake - ref).max(axis=1)
    onnx_err = np.abs(logits - fake).max(axis=1)
    assert np.median(quant_err) > 30 * 1e-4, quant_err
    clean = (codes == fq_codes).reshape(len(codes), -1).all(axis=1)
    assert clean.mean() >= 0.5, clean.mean()
    np.testing.assert_allclose(logits[clean], fake[clean], rtol=1e-5, atol=1e-4)
    assert np.all(onnx_err <= 0.25 * quant_err + 1e-4), (onnx_err[~clean], quant_err[~clean])
    np.testing.assert_array_equal(logits.argmax(1), fake.argmax(1))

    # 3. against the float model: top-1 agreement
    agree = logits.argmax(1) == ref.argmax(1)
    AGREEMENT[cut, bits] = {
        "all": float(agree.mean()),
        "photos": float(agree[:N_PHOTOS].mean()),
        "ped2": float(agree[N_PHOTOS:].mean()),
        "max_logit_err": float(np.abs(logits - ref).max()),
        "onnx_vs_fakequant": float(onnx_err.max()),
        "flipped_images": int((~clean).sum()),
    }
    if bits == 8:
        # Ped2 is what the splitter calibrates on; there every top-1 survives 8 bits. The photos lie
        # outside that range (a few % of their activations clip) and are only reported.
        assert agree[N_PHOTOS:].all(), np.flatnonzero(~agree[N_PHOTOS:])


@needs_shared
@pytest.mark.parametrize("cut", CUTS)
def test_photo_flips_come_from_clipping(cut, exported, splitter, images, torch_ref, tmp_path, monkeypatch):
    """The photos whose top-1 changes at 8 bits do so because the splitter calibrates on Ped2 only:
    their activations leave the calibrated range far more often than Ped2's. Calibrated on Ped2 plus
    the photos (same percentile), every photo keeps its top-1 at 8 bits through the ONNX path."""
    import codec
    from infocut.artifact import load_artifact
    from splitter.cuts import find_cut

    ref, acts = torch_ref
    [q] = [codec.QuantParams.from_json(t) for t in exported(cut, 8).manifest["quantizer"]["tensors"]]
    t = acts[cut] / q.scale.reshape(1, -1, 1, 1) + q.zero_point.reshape(1, -1, 1, 1)
    clipped = ((t < -0.5) | (t > q.qmax + 0.5)).reshape(len(t), -1).mean(axis=1)
    assert clipped[:N_PHOTOS].mean() > 10 * clipped[N_PHOTOS:].mean(), clipped

    c = find_cut(splitter.cuts, cut)
    splitter.calibrate(c, 8)  # the Ped2 calibration activations, kept by the module's splitter
    calib = np.concatenate([splitter._acts[cut], acts[cut][:N_PHOTOS]])
    covering = codec.calibrate(calib, 8, per_channel=splitter.cfg.per_channel, percentile=splitter.cfg.percentile)
    monkeypatch.setattr(splitter, "calibrate", lambda cut_, bits: [covering])
    splitter.export(tmp_path, cut, 8)
    _, logits = onnx_path(load_artifact(tmp_path), images[:N_PHOTOS])
    np.testing.assert_array_equal(logits.argmax(1), ref[:N_PHOTOS].argmax(1))


@needs_shared
@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("cut", CUTS)
def test_head_codes_equal_numpy_quantizer(cut, bits, exported, images, torch_ref):
    """head.onnx's codes = codec.quantize(torch activations at the cut), up to .5-boundary flips."""
    from codec import QuantParams, dequantize, quantize
    from edge.head import Head

    art = exported(cut, bits)
    [q] = [QuantParams.from_json(t) for t in art.manifest["quantizer"]["tensors"]]
    act = torch_ref[1][cut]
    codes = Head(art, threads=2)(images)[0]
    expected = quantize(act, q)
    diff = np.abs(codes.astype(np.int16) - expected.astype(np.int16))
    assert diff.max() <= 1
    assert (diff == 0).mean() >= 0.999, (diff == 0).mean()
    # a flipped code sits on a rounding boundary: the float value there is within float rounding of .5 step
    scale = q.scale.reshape(1, -1, 1, 1)
    zp = q.zero_point.reshape(1, -1, 1, 1)
    t = act / scale + zp
    flipped = diff == 1
    assert np.all(np.abs(np.abs(t[flipped] - np.round(t[flipped])) - 0.5) < 1e-3)
    # the derived bound at the cut: inside the calibrated range the error is at most half a step
    inside = (t > -0.5) & (t < q.qmax + 0.5)
    err = np.abs(dequantize(codes, q) - act)
    bound = np.broadcast_to(scale, act.shape)[inside] * (0.5 + 1e-3) + 1e-6
    assert np.all(err[inside] <= bound)


@needs_shared
def test_report_agreement(capsys):
    """Print the agreement table (8 and 4 bits) gathered by test_classify_parity.

    max|dlogit|: largest logit error against the float model; onnx-fq: largest logit difference between
    the ONNX path and the numpy fake-quant path; flips: images where some head code is off by one.
    """
    if not AGREEMENT:
        pytest.skip("test_classify_parity did not run")
    lines = ["", "top-1 agreement with the float model (ResNet-20, 32x32, zstd):"]
    lines.append(
        f"{'cut':<9} {'bits':>4} {'all':>6} {'photos':>6} {'ped2':>6} {'max|dlogit|':>11} {'onnx-fq':>9} {'flips':>5}"
    )
    for (cut, bits), r in sorted(AGREEMENT.items(), key=lambda kv: (-kv[0][1], CUTS.index(kv[0][0]))):
        lines.append(
            f"{cut:<9} {bits:>4} {r['all']:>6.1%} {r['photos']:>6.0%} {r['ped2']:>6.1%} "
            f"{r['max_logit_err']:>11.3f} {r['onnx_vs_fakequant']:>9.1e} {r['flipped_images']:>5}"
        )
    with capsys.disabled():
        print("\n".join(lines))


# -- anomaly artifact: the manifest contract, verification, the pipeline ----------------------------


def test_manifest_has_every_contract_field(small_artifact):
    from codec import EntropyModel, QuantParams
    from edge.head import Head
    from infocut.artifact import SCHEMA_VERSION, artifact_id, load_artifact, sha256_file

    art = load_artifact(small_artifact)
    m = json.loads((small_artifact / "manifest.json").read_text())
    assert m == art.manifest
    assert m["schema_version"] == SCHEMA_VERSION
    assert m["model"]["name"] == "resnet20" and m["model"]["factory"] and len(m["model"]["weights_sha256"]) == 64
    inp = m["input"]
    assert (inp["height"], inp["width"]) == (120, 180)
    assert inp["layout"] == "NHWC" and inp["dtype"] == "uint8" and inp["color"] == "RGB"
    assert len(inp["mean"]) == len(inp["std"]) == 3 and inp["resize"]
    assert m["cut"]["name"] == "layer2_1" and m["cut"]["stage"] is True
    [tensor] = m["cut"]["tensors"]
    assert tensor == {"name": "codes", "shape": [32, 60, 90], "dtype": "uint8"}
    assert m["cut"]["elements"] == math.prod(tensor["shape"]) and m["cut"]["float_bytes"] == 4 * m["cut"]["elements"]
    assert m["quantizer"]["kind"] == "uniform-affine" and m["quantizer"]["bits"] == 4
    assert m["quantizer"]["per_channel"] is True and m["quantizer"]["percentile"] == 99.99
    [q] = [QuantParams.from_json(t) for t in m["quantizer"]["tensors"]]
    assert q.bits == 4 and q.axis == 1 and q.scale.shape == (32,)
    assert m["coder"]["name"] == "ans" and m["coder"]["key_interval"] == 8
    [model] = [EntropyModel.from_json(t) for t in m["coder"]["tensors"]]  # fitted on the held-out video
    assert model.bits == 4 and model.intra.shape == (32, 16) and model.inter.shape == (32, 16, 16)
    assert m["task"] == "anomaly" and m["scorer"]["kind"] == "knn-motion"
    assert math.isfinite(m["scorer"]["threshold"]) and m["scorer"]["threshold"] > 0
    assert set(m["files"]) == {"head", "tail"}
    for entry in m["files"].values():
        path = small_artifact / entry["path"]
        assert entry["sha256"] == sha256_file(path) and entry["bytes"] == path.stat().st_size
    assert m["artifact_id"] == artifact_id(m) and len(m["artifact_id"]) == 32
    assert m["split_config"]["cut"] == "layer2_1" and m["split_config"]["bits"] == 4
    # the recorded cut shape is what head.onnx really emits
    codes = Head(art)(np.zeros((2, 120, 180, 3), np.uint8))
    assert [c.shape[1:] for c in codes] == art.cut_shapes and codes[0].dtype == np.uint8


@pytest.fixture
def artifact_copy(small_artifact, tmp_path) -> Path:
    dst = tmp_path / "artifact"
    shutil.copytree(small_artifact, dst)
    return dst


def test_tampered_tail_is_refused(artifact_copy):
    from infocut.artifact import ArtifactError, load_artifact

    path = artifact_copy / "tail.onnx"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="sha256"):
        load_artifact(artifact_copy)
    load_artifact(artifact_copy, verify=False)  # structure alone is still readable


def test_edited_threshold_is_refused(artifact_copy):
    from infocut.artifact import ArtifactError, load_artifact

    path = artifact_copy / "manifest.json"
    m = json.loads(path.read_text())
    m["scorer"]["threshold"] = m["scorer"]["threshold"] * 0.5
    path.write_text(json.dumps(m, indent=2, sort_keys=True))
    with pytest.raises(ArtifactError, match="artifact id"):
        load_artifact(artifact_copy)


@pytest.mark.parametrize("name", ["head.onnx", "tail.onnx", "manifest.json"])
def test_missing_file_is_refused(artifact_copy, name):
    from infocut.artifact import ArtifactError, load_artifact

    (artifact_copy / name).unlink()
    with pytest.raises(ArtifactError, match="missing"):
        load_artifact(artifact_copy)


def test_pipeline_scores_finite_and_repeatable(small_artifact):
    from infocut import ped2
    from infocut.artifact import load_artifact
    from infocut.pipeline import Pipeline

    art = load_artifact(small_artifact)
    paths = ped2.videos("testing")["01"][:24]
    frames = [ped2.read_rgb(p, art.input_size) for p in paths]
    first = Pipeline(art, threads=2).run(frames)
    second = Pipeline(art, threads=2).run(frames)
    assert len(first.scores) == len(frames)
    assert np.all(np.isfinite(first.scores)) and min(first.scores) >= 0
    assert first.scores == second.scores  # bit for bit
    assert first.frame_bytes == second.frame_bytes
    assert max(first.frame_bytes) < math.prod(art.cut_shapes[0])  # coded 4-bit codes beat raw bytes


# -- the CLI's list of cuts -------------------------------------------------------------------------

ANOMALY_CUTS = [
    ("stem", (16, 120, 180)),
    ("layer1_0", (16, 120, 180)),
    ("layer1_1", (16, 120, 180)),
    ("layer1_2", (16, 120, 180)),
    ("layer2_0", (32, 60, 90)),
    ("layer2_1", (32, 60, 90)),
    ("layer2_2", (32, 60, 90)),
]


@needs_shared
def test_cli_list_cuts():
    from typer.testing import CliRunner

    from infocut.cli import app

    result = CliRunner().invoke(app, ["split", "resnet20", "--list"])
    assert result.exit_code == 0, result.output
    rows = [line for line in result.output.splitlines() if " stage " in line and "│" in line]
    assert len(rows) == 7, result.output
    for (name, shape), row in zip(ANOMALY_CUTS, rows):
        n = math.prod(shape)
        assert f" {name} " in row and "x".join(map(str, shape)) in row
        assert f"{4 * n:,}" in row and f"{n:,}" in row
    # inside the blocks: two tensors across the skip connection, the block's input and the conv's output
    assert "│ layer2_1.conv1 " in result.output and " 32x60x90 + 32x60x90 " in result.output
    assert "layer3_0" not in result.output  # the anomaly scorer reads layer2_2: later cuts are useless


@needs_shared
def test_cli_list_cuts_json():
    from typer.testing import CliRunner

    from infocut.cli import app

    result = CliRunner().invoke(app, ["split", "resnet20", "--list", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert [(r["name"], tuple(r["tensors"][0]["shape"])) for r in rows if r["stage"]] == ANOMALY_CUTS
    assert len(rows) == 47 and sum(len(r["tensors"]) == 2 for r in rows) == 32
    for r in rows:
        assert r["stage"] == ("." not in r["name"]) and 1 <= len(r["tensors"]) <= 2
        assert r["elements"] == sum(math.prod(t["shape"]) for t in r["tensors"]) == r["bytes_8bit"]
        assert r["float_bytes"] == 4 * r["elements"]
    conv1 = next(r for r in rows if r["name"] == "layer2_1.conv1")
    assert [t["shape"] for t in conv1["tensors"]] == [[32, 60, 90], [32, 60, 90]]
    assert conv1["tensors"][0]["node"] == next(r for r in rows if r["name"] == "layer2_0")["tensors"][0]["node"]

    result = CliRunner().invoke(
        app, ["split", "resnet20", "--list", "--json", "--task", "classify", "--height", "32", "--width", "32"]
    )
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    stages = [r for r in rows if r["stage"]]
    assert len(rows) == 72 and len(stages) == 10 and stages[-1] == {
        "name": "layer3_2", "stage": True, "tensors": [{"node": "relu_18", "shape": [64, 8, 8]}],
        "elements": 4096, "float_bytes": 16384, "bytes_8bit": 4096,
    }
