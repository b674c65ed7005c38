"""MobileNetV2 rebuilt in PyTorch from the quantized TFLite file agrees with the TFLite interpreter.

Reference: the TFLite model run as it is (ai-edge-litert), its pre-softmax logits dequantized with
their own scale and zero point. Ours: the float network with the dequantized weights. They differ
by what 8-bit activations and integer rounding cost the TFLite model, so the bar is agreement, not
equality: logits correlation >= 0.99 on every image, top-1 equal on >= 99% of the images where the
decision is not a near-tie, and on every photo.

Ped2 frames are far from ImageNet: their top two classes are often a few quantization steps apart
in TFLite's own logits. There the rounding decides, and TFLite's own kernels disagree with each
other (XNNPACK vs the reference kernels: top-1 equal on 85% of 220 frames, on none with a margin
over 7 steps). So top-1 is held to 99% on the frames where TFLite's margin exceeds that,
DECISIVE_STEPS; on all of them ours must be within TFLite's top 5.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from tests.conftest import needs_shared

TFLITE = ("models", "mobilenet_imagenet_tflite")
PHOTOS = {  # the classes the shared README gives; bird.bmp has none
    "bird.bmp": None,
    "cat.bmp": {"Egyptian cat", "tabby, tabby cat"},
    "grace_hopper.bmp": {"military uniform"},
    "parrot.jpg": {"macaw"},
}
FRAMES_PER_VIDEO = 10  # 22 shared Ped2 videos: 220 frames
MIN_CORR = 0.99
MIN_TOP1 = 0.99
DECISIVE_STEPS = 8  # of the TFLite logits' quantization step (0.099): about 0.8


def test_same_padding_is_tensorflows():
    from splitter.models.mobilenet_v2 import same_padding

    assert same_padding(224, 3, 2) == (0, 1)  # the odd pixel goes after
    assert same_padding(225, 3, 2) == (1, 1)
    assert same_padding(7, 3, 1) == (1, 1)
    assert same_padding(7, 1, 1) == (0, 0)


def test_runs_at_any_frame_size():
    from splitter.cuts import list_cuts
    from splitter.models.mobilenet_v2 import mobilenet_v2

    model = mobilenet_v2()
    names = [n for n, _ in model.named_children()]
    assert names == ["stem", *[f"block{i}" for i in range(17)], "head", "classifier"]
    with torch.no_grad():
        for h, w in ((224, 224), (240, 360), (121, 179)):
            assert model(torch.zeros(1, 3, h, w)).shape == (1, 1001)
    cuts = {c.name: c.shape for c in list_cuts(model, (240, 360))}
    assert cuts["stem"] == (32, 120, 180) and cuts["block16"] == (320, 8, 12) and cuts["head"] == (1280, 8, 12)


def test_missing_built_weights_are_built_on_first_use(tmp_path):
    from infocut.settings import shared_dir
    from splitter.loader import Known

    if not shared_dir().joinpath(*TFLITE).is_dir():
        pytest.skip(f"needs the shared models folder at {shared_dir()} (set INFOCUT_SHARED to point at it)")
    target = tmp_path / "built" / "w.npz"
    known = Known("splitter.models.mobilenet_v2:mobilenet_v2", (str(target),), (224, 224), "block5",
                  built_by="splitter.models.tflite_import:build")
    assert known.weights_path() == target and target.stat().st_size > 10_000_000


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    from infocut.settings import shared_dir

    if not shared_dir().joinpath(*TFLITE).is_dir():
        pytest.skip(f"needs the shared models folder at {shared_dir()} (set INFOCUT_SHARED to point at it)")
    from splitter.models.tflite_import import build

    out = tmp_path_factory.mktemp("mobilenet")
    first, second = build(out / "a.npz"), build(out / "b.npz")
    assert first.read_bytes() == second.read_bytes(), "the npz must be byte-identical on every build"
    return first


@pytest.fixture(scope="module")
def compared(weights):
    """(image names, TFLite logits, our logits, TFLite logits' scale, labels) on the photos and Ped2 frames."""
    pytest.importorskip("ai_edge_litert", reason="needs ai-edge-litert (the dev extra) for the TFLite reference")
    from ai_edge_litert.interpreter import Interpreter

    from infocut import ped2
    from infocut.settings import require_shared
    from splitter.graphs import Preprocess
    from splitter.models.mobilenet_v2 import MEAN, STD, mobilenet_v2

    folder = require_shared(*TFLITE)
    names, images = [], []
    for name in PHOTOS:
        names.append(name)
        images.append(ped2.read_rgb(folder / "test_images" / name, (224, 224)))
    for split in ("testing", "training"):
        for vid, frames in ped2.videos(split).items():
            for i in np.linspace(0, len(frames) - 1, FRAMES_PER_VIDEO).astype(int):
                names.append(f"{split}/{vid}/{frames[i].name}")
                images.append(ped2.read_rgb(frames[i], (224, 224)))
    x = np.stack(images)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # preserve_all_tensors is "for debugging": it is what we do
        interp = Interpreter(
            model_path=str(folder / "mobilenet_v2_1.0_224_quant.tflite"), experimental_preserve_all_tensors=True
        )
    interp.allocate_tensors()
    (inp,), (out,) = interp.get_input_details(), interp.get_output_details()
    assert inp["dtype"] == np.uint8 and inp["quantization"] == pytest.approx((1 / 128, 128))
    # the output is the softmax; the logits are the one other (1, 1001) tensor, its input
    details = interp.get_tensor_details()
    (logits,) = [d for d in details if list(d["shape"]) == [1, 1001] and d["index"] != out["index"]]
    scale, zero_point = logits["quantization"]
    ref = []
    for image in x:
        interp.set_tensor(inp["index"], image[None])
        interp.invoke()
        ref.append((interp.get_tensor(logits["index"])[0].astype(np.float32) - zero_point) * scale)

    model, pre = mobilenet_v2(weights), Preprocess(MEAN, STD)
    with torch.no_grad():
        batches = np.array_split(x, len(x) // 32 + 1)
        ours = torch.cat([model(pre(torch.from_numpy(b))) for b in batches]).numpy()
    labels = (folder / "imagenet_labels.txt").read_text().splitlines()
    return names, np.stack(ref), ours, scale, labels


@needs_shared
def test_photos_classify_as_the_readme_says(compared):
    names, ref, ours, _, labels = compared
    for i, name in enumerate(PHOTOS):
        assert names[i] == name
        got, want = labels[ours[i].argmax()], labels[ref[i].argmax()]
        assert got == want, f"{name}: ours {got}, TFLite {want}"
        assert PHOTOS[name] is None or got in PHOTOS[name], f"{name}: {got}"


@needs_shared
def test_logits_correlate_with_tflite(compared):
    names, ref, ours, _, _ = compared
    assert len(names) >= 200 + len(PHOTOS)
    corr = np.array([np.corrcoef(a, b)[0, 1] for a, b in zip(ref, ours)])
    worst = f"mean {corr.mean():.4f}, worst {corr.min():.4f} on {names[corr.argmin()]}"
    assert corr.mean() >= MIN_CORR and corr.min() >= MIN_CORR, worst


@needs_shared
def test_top1_agrees_with_tflite(compared):
    names, ref, ours, scale, _ = compared
    top2 = np.sort(ref, axis=1)[:, -2:]
    decisive = top2[:, 1] - top2[:, 0] >= DECISIVE_STEPS * scale - 1e-6
    decisive[: len(PHOTOS)] = True
    agree = ref.argmax(1) == ours.argmax(1)
    summary = f"{agree[decisive].mean():.1%} of {decisive.sum()} decisive images; {agree.mean():.1%} of all {len(agree)}"
    assert decisive.sum() >= 50, summary
    assert agree[decisive].mean() >= MIN_TOP1, summary
    in_top5 = [o in np.argsort(-r)[:5] for r, o in zip(ref, ours.argmax(1))]
    assert np.mean(in_top5) >= MIN_TOP1, f"our top-1 within TFLite's top 5 on {np.mean(in_top5):.1%}; {summary}"
