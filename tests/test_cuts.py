"""Every candidate cut is a valid split, the multi-tensor cuts across skip connections included.

1. splitter.cuts (random weights, no shared data): the stage cuts are the boundaries between top-level stages
   and carry those stages' outputs; inside a residual block the block's input crosses as well; head -> tail is
   the model, bit for bit, at every cut.
2. An artifact exported at every cut passes the head -> codec -> tail parity test: ResNet-20 (classify, 32x32,
   8 bits) at all its cuts, MobileNetV2 (anomaly, 96x128, 8 bits) at all its cuts up to block5. head.onnx's
   codes are codec.quantize of the float activations of each cut tensor (up to float-rounding flips of a .5
   boundary), every frame survives encode_frame/decode_frame, tail.onnx computes the torch tail on the same
   codes, and the result stays close to the float model.
3. A two-tensor ResNet-20 anomaly artifact served by the cloud's IngestService over gRPC scores every frame as
   the offline pipeline does, and refuses frames that do not carry both tensors.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
import torch
from torch import nn

from tests.conftest import free_port, needs_shared, skip_without_shared
from tests.test_split import N_PHOTOS, onnx_path, photos_and_ped2


def _tuple(x) -> tuple:
    return x if isinstance(x, tuple) else (x,)


def _resnet20() -> nn.Module:
    from splitter.models.resnet_cifar import resnet20

    torch.manual_seed(0)
    return resnet20().eval()


def _mobilenet_v2() -> nn.Module:
    from splitter.models.mobilenet_v2 import mobilenet_v2

    torch.manual_seed(0)
    return mobilenet_v2().eval()


def _prefix(model: nn.Module, x: torch.Tensor, stages: int) -> torch.Tensor:
    """The output of the model's first `stages` top-level stages."""
    for stage in list(model.children())[:stages]:
        x = stage(x)
    return x


# -- 1. the cuts and the split ------------------------------------------------------------------------


@torch.no_grad()
def test_resnet20_stage_cuts_carry_each_stage_output():
    from splitter.cuts import list_cuts, split

    model, x = _resnet20(), torch.randn(2, 3, 32, 32)
    cuts = list_cuts(model, (32, 32))
    names = [n for n, _ in model.named_children()]
    assert [c.name for c in cuts] == names[:-1]  # every boundary but the model's output
    for i, cut in enumerate(cuts):
        head, _ = split(model, cut)
        want = _prefix(model, x, i + 1)
        assert cut.stage and cut.shape == tuple(want.shape[1:]), cut
        assert torch.equal(head(x), want), cut.name


def test_resnet20_inner_cuts_cross_the_skip_connections():
    from splitter.cuts import list_cuts

    model = _resnet20()
    cuts = list_cuts(model, (32, 32), inner=True)
    assert [c for c in cuts if c.stage] == list_cuts(model, (32, 32))
    assert [c.index for c in cuts] == sorted({c.index for c in cuts})
    assert len({c.name for c in cuts}) == len(cuts) == 72
    multi = [c for c in cuts if len(c.tensors) > 1]
    assert len(multi) == 49 and all(len(c.tensors) == 2 for c in multi)
    assert not [c for c in list_cuts(model, (32, 32), inner=True, max_tensors=1) if len(c.tensors) > 1]
    for c in cuts:
        assert c.elements == sum(t.elements for t in c.tensors) and c.raw_bytes == 4 * c.elements
    blocks = [n for n, _ in model.named_children() if n.startswith("layer")]
    assert {c.name.split(".")[0] for c in multi} == set(blocks)  # residual blocks, and only they
    # Right after a block's first conv, two tensors cross: the block's input (the previous stage cut's
    # tensor), which the shortcut adds back at the end, and the conv's output.
    stage_tensor = {}
    for c in cuts:
        if c.stage:
            stage_tensor[c.name] = c.tensors[0]
    for i, block in enumerate(blocks):
        conv1 = next(c for c in cuts if c.name == f"{block}.conv1")
        before = "stem" if i == 0 else blocks[i - 1]
        assert conv1.tensors[0] == stage_tensor[before], conv1
        assert conv1.tensors[1].name == f"{block}_conv1"
        with pytest.raises(ValueError, match="carries 2 tensors"):
            _ = conv1.shape


def test_mobilenet_v2_cuts_up_to_block5():
    from splitter.cuts import list_cuts

    model = _mobilenet_v2()
    cuts = list_cuts(model, (48, 64), upto="block5", inner=True)
    stages = [c.name for c in cuts if c.stage]
    assert stages == ["stem", *[f"block{i}" for i in range(6)]]
    residual = {n for n, m in model.named_children() if getattr(m, "residual", False)}
    multi = [c for c in cuts if len(c.tensors) > 1]
    assert {c.name.split(".")[0] for c in multi} == residual & {f"block{i}" for i in range(6)} == {
        "block2", "block4", "block5"
    }
    for c in multi:  # the block's input crosses, to be added back after the projection
        block = c.name.split(".")[0]
        before = next(s for s in reversed(cuts[: cuts.index(c)]) if s.stage)
        assert before.name == f"block{int(block[5:]) - 1}" and c.tensors[0] == before.tensors[0], c


CASES = {  # model, input size, upto, number of stages the tail ends after (None: the whole model)
    "resnet20": (_resnet20, (32, 32), None),
    "mobilenet_v2_to_block5": (_mobilenet_v2, (48, 64), "block5"),
}


@pytest.mark.parametrize("case", CASES)
@torch.no_grad()
def test_head_then_tail_is_the_model_at_every_cut(case):
    from splitter.cuts import list_cuts, split

    factory, size, upto = CASES[case]
    model = factory()
    x = torch.randn(3, 3, *size)
    names = [n for n, _ in model.named_children()]
    want = model(x) if upto is None else _prefix(model, x, names.index(upto) + 1)
    cuts = list_cuts(model, size, upto=upto, inner=True)
    assert len(cuts) > 20
    for cut in cuts:
        head, tail = split(model, cut, upto=upto)
        crossing = _tuple(head(x))
        assert [tuple(t.shape[1:]) for t in crossing] == cut.shapes, cut.name
        assert torch.equal(tail(*crossing), want), cut.name


def test_split_refuses_a_cut_of_another_model():
    from splitter.cuts import list_cuts, split

    cut = list_cuts(_mobilenet_v2(), (48, 64), upto="block5", inner=True)[-2]
    with pytest.raises(ValueError, match="does not belong"):
        split(_resnet20(), cut)


# -- 2. export at every cut: the head -> codec -> tail parity ------------------------------------------

RESNET_SIZE = (32, 32)
MOBILENET_SIZE = (96, 128)
CALIB_STRIDE = 40  # of the fit videos' frames: ~50 frames calibrate each cut


def check_codes(cut: str, codes: np.ndarray, act: np.ndarray, q) -> None:
    """head.onnx's codes = codec.quantize(float activations), but for codes whose value sits on a .5 boundary
    up to the float rounding that separates onnxruntime's kernels from torch's (a few ulps of the tensor's
    largest value: it is what decides a channel whose quantization step is tiny)."""
    from codec import quantize

    diff = np.abs(codes.astype(np.int16) - quantize(act, q).astype(np.int16))
    assert diff.max() <= 1 and (diff == 0).mean() >= 0.999, (cut, diff.max(), (diff == 0).mean())
    shape = (1, -1, *[1] * (act.ndim - 2))
    scale = np.broadcast_to(q.scale.reshape(shape), act.shape)[diff == 1]
    t = (act / q.scale.reshape(shape) + q.zero_point.reshape(shape))[diff == 1]
    off = np.abs(np.abs(t - np.round(t)) - 0.5) * scale  # from the boundary, in activation units
    assert np.all(off <= 1e-3 * scale + 4e-6 * np.abs(act).max()), (cut, off.max(), scale.min())


def check_manifest(art, cut, bits: int) -> list:
    """The manifest describes the cut's tensors in frame order; returns the QuantParams of each."""
    from codec import QuantParams

    m = art.manifest
    n = len(cut.tensors)
    assert m["cut"]["name"] == cut.name and m["cut"]["stage"] == cut.stage
    assert art.cut_names == (["codes"] if n == 1 else [f"codes_{i}" for i in range(n)])
    assert art.cut_shapes == cut.shapes and m["cut"]["elements"] == cut.elements
    q = m["quantizer"]
    assert q["bits"] == art.bits == bits and q["kind"] == "uniform-affine" and len(q["tensors"]) == n
    qs = [QuantParams.from_json(t) for t in q["tensors"]]
    assert [p.scale.shape for p in qs] == [(s[0],) for s in cut.shapes]  # per channel, each its own
    return qs


def _corr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation of each row of a with the same row of b."""
    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    a, b = a - a.mean(1, keepdims=True), b - b.mean(1, keepdims=True)
    return (a * b).sum(1) / np.sqrt((a * a).sum(1) * (b * b).sum(1))


@pytest.fixture(scope="module")
def resnet20_classify():
    skip_without_shared()
    from splitter.export import SplitConfig, Splitter

    cfg = SplitConfig(task="classify", input_size=RESNET_SIZE, bits=8, calib_stride=CALIB_STRIDE)
    return Splitter(cfg, quiet=True), photos_and_ped2(RESNET_SIZE)


@needs_shared
@pytest.mark.timeout(1200)  # 72 exports: ~50 s on 2 idle cores, over 300 s when they are shared
@torch.no_grad()
def test_resnet20_exports_at_every_cut_with_parity(resnet20_classify, tmp_path):
    from codec import dequantize
    from infocut.artifact import load_artifact
    from splitter.cuts import split

    sp, images = resnet20_classify
    x = torch.from_numpy(images)
    ref = nn.Sequential(sp.preprocess, sp.model)(x).numpy()
    assert len(sp.cuts) == 72 and sum(len(c.tensors) == 2 for c in sp.cuts) == 49
    quantizer_of = {}  # cut tensor -> its QuantParams, which every cut carrying that tensor must share
    kept = []  # per cut, the fraction of Ped2 frames whose top-1 the split keeps
    for cut in sp.cuts:
        sp.export(tmp_path / cut.name, cut.name)
        art = load_artifact(tmp_path / cut.name)
        qs = check_manifest(art, cut, 8)
        for t, q in zip(cut.tensors, qs, strict=True):
            assert quantizer_of.setdefault(t, q) == q, (cut.name, t)
        head, tail = split(sp.model, cut)
        acts = [a.numpy() for a in _tuple(nn.Sequential(sp.preprocess, head)(x))]
        codes, logits = onnx_path(art, images)  # frames through encode_frame / decode_frame
        for c, a, q in zip(codes, acts, qs, strict=True):
            check_codes(cut.name, c, a, q)
        # tail.onnx is the torch tail behind the dequantizer, on the very same codes
        same = tail(*(torch.from_numpy(dequantize(c, q)) for c, q in zip(codes, qs, strict=True))).numpy()
        np.testing.assert_allclose(logits, same, rtol=1e-5, atol=1e-4, err_msg=cut.name)
        # and close to the float model on the Ped2 frames (the photos lie outside the calibrated range, see
        # tests/test_split.py): at most 2 of 72 top-1 flipped, the logits of every frame correlated
        agree = (logits.argmax(1) == ref.argmax(1))[N_PHOTOS:]
        corr = _corr(logits, ref)[N_PHOTOS:]
        assert (~agree).sum() <= 2 and corr.min() >= 0.98 and np.median(corr) >= 0.999, (cut.name, agree, corr)
        kept.append(agree.mean())
    assert np.mean(kept) >= 0.995, kept


def _subsampled(fn, step: int, fit_videos: int):
    """Splitter.training_videos on every `step`-th frame of a few videos: a scorer and threshold in seconds."""

    def wrapped(heldout: bool):
        vids = fn(heldout)
        vids = vids if heldout else dict(list(vids.items())[:fit_videos])
        return {k: v[::step] for k, v in vids.items()}

    return wrapped


@pytest.fixture(scope="module")
def mobilenet_anomaly():
    skip_without_shared()
    from splitter.export import SplitConfig, Splitter

    cfg = SplitConfig(
        model="mobilenet_v2", input_size=MOBILENET_SIZE, bits=8, calib_stride=2, bank_size=256, heldout=("16",)
    )
    sp = Splitter(cfg, quiet=True)
    sp.training_videos = _subsampled(sp.training_videos, step=6, fit_videos=3)
    return sp, photos_and_ped2(MOBILENET_SIZE)[N_PHOTOS::3]  # 24 Ped2 test frames


@needs_shared
@pytest.mark.timeout(900)  # 21 exports: ~20 s on 2 idle cores
@torch.no_grad()
def test_mobilenet_v2_anomaly_exports_at_every_cut_to_block5_with_parity(mobilenet_anomaly, tmp_path):
    from codec import dequantize
    from edge.head import Head, session
    from infocut.artifact import load_artifact
    from splitter.cuts import split

    sp, images = mobilenet_anomaly
    x = torch.from_numpy(images)
    assert sp.feature_layer == "block5" and sp.cuts[-1].name == "block5"
    assert len(sp.cuts) == 21 and sum(len(c.tensors) == 2 for c in sp.cuts) == 9
    ref = sp.features_until("block5")(x).numpy()
    scorer = sp.scorer()
    no_prev = torch.zeros(len(x))
    ref_scores = scorer(torch.from_numpy(ref), torch.from_numpy(ref), no_prev)[0].numpy()
    for cut in sp.cuts:
        sp.export(tmp_path / cut.name, cut.name)
        art = load_artifact(tmp_path / cut.name)
        qs = check_manifest(art, cut, 8)
        assert art.manifest["task"] == "anomaly" and art.manifest["scorer"]["state"]["shape"] == list(ref.shape[1:])
        head, tail = split(sp.model, cut, upto="block5")
        acts = [a.numpy() for a in _tuple(nn.Sequential(sp.preprocess, head)(x))]
        codes = Head(art, threads=2)(images)
        for c, a, q in zip(codes, acts, qs, strict=True):
            check_codes(cut.name, c, a, q)
        feeds = dict(zip(art.cut_names, codes, strict=True), prev_features=np.zeros_like(ref),
                     has_prev=np.zeros(len(x), np.float32))
        scores, _, feats = session(art.tail_path, threads=2).run(None, feeds)
        same = tail(*(torch.from_numpy(dequantize(c, q)) for c, q in zip(codes, qs, strict=True))).numpy()
        np.testing.assert_allclose(feats, same, rtol=1e-4, atol=1e-4 * np.abs(same).max(), err_msg=cut.name)
        # close to the float model: the features at block5 of every frame, and the frames' scores
        assert _corr(feats, ref).min() >= 0.995, (cut.name, _corr(feats, ref).min())
        assert np.all(np.isfinite(scores)) and _corr(scores[None], ref_scores[None])[0] >= 0.99, cut.name


# -- 3. a two-tensor artifact served over gRPC ---------------------------------------------------------

SERVE_CUT = "layer2_0.getitem"  # the downsampling block: its residual branch (32 ch) and its shortcut (16 ch)
SERVE_FRAMES = 16


@pytest.fixture(scope="module")
def two_tensor_artifact(tmp_path_factory):
    skip_without_shared()
    from infocut.artifact import load_artifact
    from splitter.export import SplitConfig, Splitter

    cfg = SplitConfig(cut=SERVE_CUT, bits=8, input_size=(60, 90), heldout=("16",), bank_size=256, calib_stride=4)
    sp = Splitter(cfg, quiet=True)
    sp.training_videos = _subsampled(sp.training_videos, step=3, fit_videos=3)
    out = tmp_path_factory.mktemp("two_tensor")
    sp.export(out)
    return load_artifact(out)


@needs_shared
def test_two_tensor_artifact_served_over_grpc_scores_as_offline(two_tensor_artifact, tmp_path):
    import grpc

    from cloud.config import AlertConfig, CloudConfig
    from cloud.server import start_grpc
    from cloud.service import IngestService
    from cloud.store import Store
    from codec import encode_frame
    from infocut import ped2
    from infocut.pipeline import Pipeline
    from protos import infocut_pb2 as pb
    from protos import infocut_pb2_grpc as pb_grpc

    art = two_tensor_artifact
    assert art.cut_names == ["codes_0", "codes_1"] and art.cut_shapes == [(32, 30, 45), (16, 30, 45)]
    images = [ped2.read_rgb(p, art.input_size) for p in ped2.videos("testing")["01"][52 : 52 + SERVE_FRAMES]]
    offline = Pipeline(art, threads=2).run(images)
    assert np.ptp(offline.scores) > 0 and np.all(np.isfinite(offline.scores))
    head = Pipeline(art, threads=2).head
    frames = [encode_frame(head(image[None]), art.bits, art.coder) for image in images]
    codes = head(images[0][None])
    bad = [
        encode_frame(codes[:1], art.bits, art.coder),  # one of the two tensors
        encode_frame(codes[::-1], art.bits, art.coder),  # both, in the wrong order
    ]

    def msg(seq: int, tensor: bytes) -> pb.Frame:
        return pb.Frame(camera_id="two", seq=seq, capture_time_us=int(time.time() * 1e6), artifact_id=art.id,
                        tensor=tensor)

    async def serve() -> list:
        store = Store(f"sqlite:///{tmp_path / 'cloud.db'}", AlertConfig())
        cfg = CloudConfig(artifact=art.root, grpc_host="127.0.0.1", grpc_port=free_port())
        server, port = await start_grpc(cfg, IngestService(art, store))
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = pb_grpc.IngestStub(channel)
                call = stub.Stream(iter([msg(i, f) for i, f in enumerate(frames + bad)]),
                                   metadata=[("x-infocut-artifact-id", art.id)], timeout=60)
                return [r async for r in call]
        finally:
            await server.stop(None)
            store.close()

    results = asyncio.run(serve())
    assert [r.seq for r in results] == list(range(SERVE_FRAMES + len(bad)))
    good, rejected = results[:SERVE_FRAMES], results[SERVE_FRAMES:]
    assert all(r.status.code == 0 and not r.duplicate for r in good), [r.status for r in good]
    np.testing.assert_allclose([r.score for r in good], offline.scores, rtol=1e-6)
    assert [r.is_anomaly for r in good] == [s >= art.threshold for s in offline.scores]
    for r in rejected:
        assert r.status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0] and "wrong shape" in r.status.message


@needs_shared
def test_manifest_without_a_quantizer_per_cut_tensor_is_refused(two_tensor_artifact, tmp_path):
    import json
    import shutil

    from infocut.artifact import ArtifactError, load_artifact, write_manifest

    shutil.copytree(two_tensor_artifact.root, tmp_path / "a")
    m = json.loads((tmp_path / "a" / "manifest.json").read_text())
    m["quantizer"]["tensors"] = m["quantizer"]["tensors"][:1]
    write_manifest(tmp_path / "a", m)  # a consistent id: only the structure is wrong
    with pytest.raises(ArtifactError, match="one quantizer per cut tensor"):
        load_artifact(tmp_path / "a")
