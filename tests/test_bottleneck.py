"""splitter.bottleneck: the learned bottleneck and entropy-guided pruning.

- the rate term falls as lambda grows (tiny synthetic distillation);
- training is deterministic for a seed;
- pruning keeps exactly N channels, the highest-entropy ones, and the tail fills the rest;
- a bottleneck exports as an ordinary artifact (ResNet-20 on Ped2, untrained bottleneck: the check is
  the plumbing) and head.onnx -> codec -> tail.onnx in onnxruntime matches the torch graphs.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from splitter import bottleneck as bn
from tests.conftest import skip_without_shared


def _synthetic(n_videos: int = 3, frames: int = 6, c: int = 8, h: int = 16, w: int = 16, seed: int = 0):
    """Cut activations and a frozen stride-1 'tail' (a conv) giving the teacher features."""
    g = torch.Generator().manual_seed(seed)
    tail = nn.Sequential(nn.Conv2d(c, 6, 3, padding=1), nn.ReLU()).eval()
    with torch.no_grad():
        for p in tail.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
            p.requires_grad_(False)
    data = {}
    for v in range(n_videos):
        x = torch.randn(frames, c, h, w, generator=g)
        with torch.no_grad():
            data[f"{v:02d}"] = (x.half().numpy(), tail(x).half().numpy())
    return tail, data


def _cfg(**kw):
    base = dict(channels=2, stride=2, bits=3, hidden=8, dec_hidden=8, steps=60, batch=2, crop=12, lr=5e-3, gap=2)
    return bn.BottleneckConfig(**{**base, **kw})


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: threads only contend
    yield
    torch.set_num_threads(n)


def test_rate_falls_with_lambda():
    """The trained rate term and the codes' actual entropy both fall as lambda grows."""
    tail, data = _synthetic()
    runs = [bn.train(_cfg(lam=lam, steps=150), tail, data) for lam in (0.0, 30.0, 3000.0)]
    rates = [info["final"]["rate_kb"] for _, info in runs]
    entropy = [bn.empirical_entropy_bytes(np.concatenate(list(bn.encode_all(m, data).values())), 3) for m, _ in runs]
    assert rates[0] > rates[1] > rates[2], rates
    assert entropy[0] > entropy[2], entropy


def test_training_is_deterministic():
    tail, data = _synthetic()
    a, _ = bn.train(_cfg(steps=10), tail, data)
    b, _ = bn.train(_cfg(steps=10), tail, data)
    c, _ = bn.train(_cfg(steps=10, seed=1), tail, data)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_save_load_roundtrip(tmp_path):
    tail, data = _synthetic()
    model, info = bn.train(_cfg(steps=3), tail, data)
    sha = bn.save(model, tmp_path / "b.safetensors", {"loss": info["loss"]})
    back, meta = bn.load(tmp_path / "b.safetensors", 8)
    assert len(sha) == 64 and meta["loss"] == info["loss"] and back.cfg == model.cfg
    x = torch.from_numpy(data["00"][0][:2].astype(np.float32))
    assert torch.equal(back.codes(x), model.codes(x))


def test_codes_are_integers_in_range():
    tail, data = _synthetic()
    model, _ = bn.train(_cfg(steps=3, bits=2), tail, data)
    codes = bn.encode_all(model, data)
    for c in codes.values():
        assert c.dtype == np.uint8 and c.max() <= 3 and c.shape[1:] == (2, 8, 8)
    tables = bn.code_tables(codes, 2)
    assert tables.shape == (2, 4) and np.allclose(tables.sum(1), 1)
    fb = bn.factorized_bytes(np.concatenate(list(codes.values())), tables)
    assert np.all(fb > 0) and np.all(fb <= 2 * 2 * 64 / 8 + 1e-9)  # never above the raw 2 bits per element


def test_density_is_a_distribution():
    d = bn.CodeDensity(3, 7)
    v = torch.arange(8.0).view(1, 1, 8, 1).expand(1, 3, 8, 1)
    assert torch.allclose(d.likelihood(v).sum(2), torch.ones(1, 3, 1), atol=1e-5)


@pytest.mark.parametrize("n", [1, 3, 5])
def test_pruning_keeps_exactly_n_channels(n):
    rng = np.random.default_rng(0)
    calib = (rng.normal(size=(10, 6, 5, 5)) * np.array([0.01, 1, 2, 0.5, 3, 0.2])[None, :, None, None]).astype(np.float32)
    calib[:, 0] = 0.7  # a constant channel: zero entropy, never kept first
    pr = bn.prune_channels(calib, n, 3)
    assert len(pr.keep) == n == len(set(pr.keep)) and pr.qparams.scale.shape == (n,)
    assert 0 not in pr.keep
    assert min(pr.entropy_bits[k] for k in pr.keep) >= max(pr.entropy_bits[k] for k in range(6) if k not in pr.keep)
    x = torch.from_numpy(calib[:2])
    kept = bn.Select(pr.keep)(x)
    assert kept.shape[1] == n
    full = bn.Fill(pr.keep, pr.fill)(kept)
    assert torch.equal(full[:, pr.keep], x[:, pr.keep])
    dropped = [c for c in range(6) if c not in pr.keep]
    assert torch.allclose(full[:, dropped], torch.from_numpy(pr.fill[dropped]).view(1, -1, 1, 1).expand(2, -1, 5, 5))


def test_bottleneck_artifact_parity(tmp_path):
    """Export an (untrained) bottleneck at a ResNet-20 cut; onnxruntime head -> codec -> tail equals torch."""
    skip_without_shared()
    import onnxruntime as ort

    import codec
    from infocut import ped2
    from infocut.artifact import load_artifact
    from splitter.export import SplitConfig
    from tests.conftest import _fewer

    torch.manual_seed(0)
    cfg = SplitConfig(cut="layer2_0", bits=3, heldout=("16",), bank_size=64, calib_stride=20, gap=2)
    model = bn.Bottleneck(bn.BottleneckConfig(cut="layer2_0", channels=4, stride=2, bits=3, hidden=8, dec_hidden=8), 32)
    with torch.no_grad():  # codes spread over the range
        model.encoder.proj.bias.fill_(3.5)
    sp = bn.bottleneck_splitter(cfg, model, quiet=True)
    sp.training_videos = _fewer(sp.training_videos)
    out = tmp_path / "art"
    manifest = sp.export(out)
    art = load_artifact(out)
    assert manifest["bottleneck"]["channels"] == 4 and manifest["bottleneck"]["stride"] == 2
    assert art.cut_shapes == [(4, 30, 45)], art.cut_shapes  # layer2_0 is 32x60x90 at 120x180; stride 2
    paths = next(iter(ped2.videos("testing").values()))[:4]
    frames = np.stack([ped2.read_rgb(p, sp.size) for p in paths])
    head_g, tail_g = sp.graphs(sp.stage_cuts[[c.name for c in sp.stage_cuts].index("layer2_0")], [sp.q])
    head = ort.InferenceSession(str(art.head_path), providers=["CPUExecutionProvider"])
    tail = ort.InferenceSession(str(art.tail_path), providers=["CPUExecutionProvider"])
    codes = head.run(None, {"image": frames})[0]
    with torch.no_grad():
        ref_codes = head_g(torch.from_numpy(frames)).numpy()
    assert codes.dtype == np.uint8 and codes.max() <= 7 and len(np.unique(codes)) > 1
    assert np.mean(codes == ref_codes) > 0.999  # float rounding may flip a code exactly at .5
    frame = codec.encode_frame([codes[:1]], 3, "zstd")
    (decoded,) = codec.decode_frame(frame).tensors
    assert np.array_equal(decoded, codes[:1])
    prev = np.zeros((1, *manifest["scorer"]["state"]["shape"]), np.float32)
    score, amap, feats = tail.run(None, {"codes": decoded, "prev_features": prev, "has_prev": np.zeros(1, np.float32)})
    with torch.no_grad():
        ts, tm, tf = tail_g(torch.from_numpy(decoded), torch.from_numpy(prev), torch.zeros(1))
    assert np.allclose(feats, tf.numpy(), rtol=1e-4, atol=1e-4)
    assert np.allclose(score, ts.numpy(), rtol=1e-4, atol=1e-4)


def test_pca_init_reconstructs_with_every_component():
    """The linear bottleneck, PCA-initialised with as many components as channels and fine codes, is close
    to the identity; with the background map it subtracts and adds back the per-location mean."""
    tail, data = _synthetic()
    x = torch.from_numpy(data["00"][0][:2].astype(np.float32))
    cfg = _cfg(channels=8, stride=1, bits=8, arch="linear", init="pca", background=True, steps=0)
    model, info = bn.train(cfg, tail, data)
    assert info["init"]["explained_variance"] == pytest.approx(1.0)
    assert model.background.shape == (1, 8, 16, 16) and model.background.abs().sum() > 0
    err = ((model.decode(model.codes(x)) - x) ** 2).mean() / x.var()
    assert err < 1e-3


def test_linear_background_save_load(tmp_path):
    tail, data = _synthetic()
    model, _ = bn.train(_cfg(channels=3, stride=2, arch="linear", init="pca", background=True, steps=2), tail, data)
    bn.save(model, tmp_path / "b.safetensors", {})
    back, _ = bn.load(tmp_path / "b.safetensors", 8)
    x = torch.from_numpy(data["01"][0][:2].astype(np.float32))
    assert torch.equal(back.codes(x), model.codes(x)) and torch.equal(back.background, model.background)
