"""Write an artifact: head.onnx, tail.onnx and manifest.json for one (model, cut, bits, coder).

Everything the edge and cloud need is in the artifact and nothing in it is code: the graphs are
ONNX, the quantizer and scorer parameters are ONNX initializers and JSON.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

import codec
import infocut
from infocut import ped2
from infocut.artifact import sha256_file, write_manifest
from splitter.cuts import Cut, find_cut, list_cuts, split
from splitter.features import run_videos
from splitter.graphs import AnomalyTailGraph, ClassifierTailGraph, Dequantize, HeadGraph, Preprocess, Quantize
from splitter.loader import KNOWN, load_model, normalization, resolve
from splitter.onnxgraph import to_onnx
from splitter.scorer import MotionKnnScorer, ScorerFit, lagged

OPSET = 17
HELDOUT = ("04", "08", "12", "16")  # normal training videos kept out of the bank to set the threshold


@dataclass
class SplitConfig:
    model: str = "resnet20"
    weights: str | None = None
    cut: str = "layer2_0"
    bits: int = 8
    coder: str = "zstd"
    per_channel: bool = True
    percentile: float = 99.99
    task: str = "anomaly"  # or "classify"
    input_size: tuple[int, int] | None = None
    feature_layer: str | None = None  # default: the known model's
    bank_size: int = 1024
    topk: int = 20
    gap: int = 1  # frames between the two whose feature change the scorer sees
    threshold_quantile: float = 0.995
    calib_stride: int = 5  # every n-th training frame calibrates the quantizer
    key_interval: int = 50  # coders with delta frames: a key frame at least every n frames
    heldout: tuple[str, ...] = field(default=HELDOUT)

    def size(self) -> tuple[int, int]:
        if self.input_size:
            return tuple(self.input_size)
        return KNOWN[self.model].input_size if self.model in KNOWN else (224, 224)


class Splitter:
    """One model prepared for splitting: loads it once, caches what every cut shares."""

    def __init__(self, cfg: SplitConfig, quiet: bool = False):
        self.cfg, self.quiet = cfg, quiet
        self.model = load_model(cfg.model, cfg.weights)
        self.size = cfg.size()
        self.mean, self.std = normalization(cfg.model)
        self.preprocess = Preprocess(self.mean, self.std)
        self.feature_layer = cfg.feature_layer or (KNOWN[cfg.model].feature_layer if cfg.model in KNOWN else None)
        if cfg.task == "anomaly" and self.feature_layer is None:
            raise ValueError("give feature_layer: the stage whose features the anomaly scorer reads")
        upto = self.feature_layer if cfg.task == "anomaly" else None
        self.upto = upto
        self.cuts = list_cuts(self.model, self.size, upto=upto, inner=True)  # every candidate, multi-tensor ones too
        self.stage_cuts = [c for c in self.cuts if c.stage]  # the boundaries between top-level stages
        self._scorer: MotionKnnScorer | None = None
        self.bar = None  # a live rich Progress for the passes over videos to report to (else each has its own)

    # -- shared across cuts ---------------------------------------------------------------
    def training_videos(self, heldout: bool) -> dict[str, list[Path]]:
        vids = ped2.videos("training")
        return {k: v for k, v in vids.items() if (k in self.cfg.heldout) == heldout}

    def features_until(self, name: str) -> nn.Sequential:
        cut = find_cut(list_cuts(self.model, self.size), name)
        head, _ = split(self.model, cut)
        return nn.Sequential(self.preprocess, head).eval()

    def scorer(self) -> MotionKnnScorer:
        """Fit (once) the k-NN motion scorer on the float model's features of normal videos."""
        if self._scorer is None:
            fit = ScorerFit(gap=self.cfg.gap)
            net = self.scorer_net()
            for _, feats in run_videos(
                net, self.training_videos(False), self.size, "fit scorer", quiet=self.quiet, bar=self.bar
            ):
                fit.add_video(feats)
            self._scorer = fit.build(self.cfg.bank_size, self.cfg.topk).eval()
        return self._scorer

    def scorer_net(self) -> nn.Module:
        """frames -> the features the scorer is fitted on: the float model's, or a subclass's path through
        its cut (e.g. splitter.bottleneck fits the scorer on the features decoded from the bottleneck)."""
        return self.features_until(self.feature_layer)

    def manifest_extra(self, cut: Cut) -> dict:
        """Entries a subclass adds to the manifest (a bottleneck's description); none here."""
        return {}

    # -- per cut ----------------------------------------------------------------------------
    def calibration_videos(self) -> dict[str, list[Path]]:
        """The frames the quantizer is fitted on: every calib_stride-th frame of the scorer's fit videos."""
        return {k: v[:: self.cfg.calib_stride] for k, v in self.training_videos(False).items()}

    def activations(self, cut: Cut) -> list[np.ndarray]:
        """Float activations of each of the cut's tensors on the calibration frames, (N, C, H, W) each."""
        net = nn.Sequential(self.preprocess, split(self.model, cut)[0]).eval()
        runs = run_videos(
            net, self.calibration_videos(), self.size, f"calibrate {cut.name}", quiet=self.quiet, bar=self.bar
        )
        return [np.concatenate(t) for t in zip(*(_tensors(a) for _, a in runs), strict=True)]

    def calibrate_bits(self, cut: Cut, bits: Sequence[int]) -> dict[int, list[codec.QuantParams]]:
        """{bits: calibrate(cut, bits)} for several bit depths from one pass of the head: the activations
        do not depend on the bits, only the quantizer fitted on them does."""
        acts = self.activations(cut)
        return {
            b: [codec.calibrate(a, b, per_channel=self.cfg.per_channel, percentile=self.cfg.percentile) for a in acts]
            for b in bits
        }

    def calibrate(self, cut: Cut, bits: int) -> list[codec.QuantParams]:
        """Quantizer parameters of each of the cut's tensors, fitted on its own activations."""
        return self.calibrate_bits(cut, [bits])[bits]

    def graphs(self, cut: Cut, qs: list[codec.QuantParams]) -> tuple[nn.Module, nn.Module]:
        head, tail = split(self.model, cut, upto=self.upto)
        ranks = [len(t.shape) + 1 for t in cut.tensors]
        head_g = HeadGraph(self.preprocess, head, [Quantize(q, n) for q, n in zip(qs, ranks, strict=True)]).eval()
        deq = [Dequantize(q, n) for q, n in zip(qs, ranks, strict=True)]
        if self.cfg.task == "classify":
            return head_g, ClassifierTailGraph(deq, tail).eval()
        return head_g, AnomalyTailGraph(deq, tail, self.scorer()).eval()

    @torch.no_grad()
    def heldout_codes(self, head_g: nn.Module) -> list[tuple[np.ndarray, ...]]:
        """The head's codes of the held-out normal videos, per video a tuple of (frames, C, H, W) arrays:
        what the threshold is set on and the coder's tables are fitted on (consecutive frames)."""
        runs = run_videos(head_g, self.training_videos(True), self.size, "held-out codes", quiet=self.quiet,
                          bar=self.bar)
        return [_tensors(codes) for _, codes in runs]

    @torch.no_grad()
    def threshold(self, tail_g: AnomalyTailGraph, videos: list[tuple[np.ndarray, ...]]) -> float:
        """The score quantile of held-out normal videos (their codes), through the quantized split path."""
        scores = [score_video(tail_g, [torch.from_numpy(c) for c in codes], self.cfg.gap) for codes in videos]
        return float(np.quantile(np.concatenate(scores), self.cfg.threshold_quantile))

    def coder_entry(self, coder: str, bits: int, videos: list[tuple[np.ndarray, ...]]) -> dict:
        """The manifest's coder: its name and, for a coder that needs them, the entropy model of each cut
        tensor fitted on the held-out normal videos' codes (integers, so decoding is bit exact)."""
        if not codec.needs_model(coder):
            return {"name": coder}
        models = [codec.entropy_model.fit((v[i] for v in videos), bits) for i in range(len(videos[0]))]
        return {"name": coder, "key_interval": self.cfg.key_interval, "fitted_on": "held-out normal videos "
                + ",".join(self.cfg.heldout), "tensors": [m.to_json() for m in models]}

    def write_graphs(
        self, cut: Cut, qs: list[codec.QuantParams], out: Path, image: np.ndarray | None = None
    ) -> tuple[nn.Module, nn.Module, dict[str, dict[str, np.ndarray]]]:
        """Write head.onnx and tail.onnx of `cut` with quantizers `qs` into `out`. Returns the two torch
        graphs and a batch-1 feed of each ({"head": {...}, "tail": {...}}, from `image`, an (H, W, 3)
        uint8 frame, zeros by default), which is what timing them needs."""
        head_g, tail_g = self.graphs(cut, qs)
        h, w = self.size
        frame = torch.zeros(1, h, w, 3, dtype=torch.uint8) if image is None else torch.from_numpy(image[None])
        codes = _tensors(head_g(frame))
        names = codes_names(len(codes))
        _onnx(head_g, (frame,), out / "head.onnx", ["image"], names)
        feeds = {"head": {"image": frame.numpy()}}
        if self.cfg.task == "classify":
            _onnx(tail_g, codes, out / "tail.onnx", names, ["logits"])
            feeds["tail"] = {n: c.numpy() for n, c in zip(names, codes, strict=True)}
        else:
            with torch.no_grad():
                feats = tail_g.features(*codes)
            has = torch.zeros(1)
            _onnx(
                tail_g, (*codes, feats, has), out / "tail.onnx",
                [*names, "prev_features", "has_prev"], ["score", "anomaly_map", "features"],
            )
            feeds["tail"] = {**{n: c.numpy() for n, c in zip(names, codes, strict=True)},
                             "prev_features": feats.numpy(), "has_prev": np.ones(1, np.float32)}
        return head_g, tail_g, feeds

    def export(
        self, out: str | Path, cut_name: str | None = None, bits: int | None = None,
        coder: str | None = None, qparams: list[codec.QuantParams] | None = None,
    ) -> dict:
        """Write the artifact at a cut, bit depth and coder (the config's by default). `qparams`: the
        quantizers already calibrated at this cut and bits (e.g. by the analysis), else calibrated here."""
        cfg = self.cfg
        cut = find_cut(self.cuts, cut_name or cfg.cut)
        bits = bits or cfg.bits
        coder = coder or cfg.coder
        codec.get_coder(coder)
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        qs = qparams if qparams is not None else self.calibrate(cut, bits)
        if len(qs) != len(cut.tensors) or any(q.bits != bits for q in qs):
            raise ValueError(f"cut {cut.name} needs {len(cut.tensors)} quantizers at {bits} bits")
        head_g, tail_g, feeds = self.write_graphs(cut, qs, out)
        heldout = self.heldout_codes(head_g) if cfg.task == "anomaly" or codec.needs_model(coder) else []
        names = codes_names(len(cut.tensors))
        h, w = self.size
        manifest = {
            "model": self._model_entry(),
            "input": {
                "height": h, "width": w, "color": "RGB", "layout": "NHWC", "dtype": "uint8", "resize": "cv2 INTER_AREA to shrink, INTER_LINEAR to enlarge (edge.preprocess.to_input)",
                "mean": list(self.mean), "std": list(self.std),
            },
            "cut": {
                "name": cut.name,
                "stage": cut.stage,
                "tensors": [  # the shapes of the codes the head sends (the cut's own, unless a bottleneck reshapes it)
                    {"name": n, "shape": list(feeds["tail"][n].shape[1:]), "dtype": "uint8"} for n in names
                ],
                "elements": cut.elements,
                "float_bytes": cut.raw_bytes,
            },
            "quantizer": {
                "kind": "uniform-affine", "bits": bits, "percentile": cfg.percentile, "per_channel": cfg.per_channel,
                "tensors": [q.to_json() for q in qs],
            },
            "coder": self.coder_entry(coder, bits, heldout),
            "files": {"head": {"path": "head.onnx"}, "tail": {"path": "tail.onnx"}},
            "split_config": dict(asdict(cfg), cut=cut.name, bits=bits, coder=coder, feature_layer=self.feature_layer),
            "created_by": {"infocut": infocut.__version__, "torch": torch.__version__.split("+")[0], "opset": OPSET},
        }
        manifest.update(self.manifest_extra(cut))
        if cfg.task == "classify":
            manifest["task"] = "classify"
            manifest["scorer"] = {"kind": "none", "threshold": None}
        else:
            feats = feeds["tail"]["prev_features"]
            manifest["task"] = "anomaly"
            manifest["scorer"] = {
                "kind": "knn-motion",
                "feature_layer": self.feature_layer,
                "bank_size": cfg.bank_size,
                "topk": cfg.topk,
                "threshold": self.threshold(tail_g, heldout),
                "threshold_rule": f"quantile {cfg.threshold_quantile} of scores on held-out normal training videos",
                "heldout_videos": list(cfg.heldout),
                "map_shape": list(feats.shape[2:]),
                "state": {"name": "features", "shape": list(feats.shape[1:]), "dtype": "float32", "gap": cfg.gap},
            }
        return write_manifest(out, manifest)

    def _model_entry(self) -> dict:
        factory, weights = resolve(self.cfg.model, self.cfg.weights)
        return {
            "name": self.cfg.model,
            "factory": factory,
            "weights_sha256": sha256_file(weights) if weights else None,
            "stages": [n for n, _ in self.model.named_children()],
        }


def _onnx(module: nn.Module, args: tuple, path: Path, inputs: list[str], outputs: list[str]) -> None:
    """Export with a dynamic batch axis, deterministically (same bytes for the same weights)."""
    model = to_onnx(module, args, inputs, outputs, opset=OPSET)
    model.producer_name, model.producer_version = "infocut", infocut.__version__
    path.write_bytes(model.SerializeToString())


def codes_names(n: int) -> list[str]:
    """The ONNX names of the codes of a cut's tensors: "codes" alone, else codes_0, codes_1, ..."""
    return ["codes"] if n == 1 else [f"codes_{i}" for i in range(n)]


def _tensors(x) -> tuple:
    """A head's output as a tuple of its cut tensors (a single-tensor head returns the tensor itself)."""
    return x if isinstance(x, tuple) else (x,)


@torch.no_grad()
def score_video(
    tail_g: AnomalyTailGraph, codes: torch.Tensor | list[torch.Tensor], gap: int = 1, batch: int = 16
) -> np.ndarray:
    """Scores of one video's consecutive frames, each against the features `gap` frames back. `codes`: the
    video's codes of each cut tensor, in cut order (a single tensor for a single-tensor cut)."""
    codes = [codes] if isinstance(codes, torch.Tensor) else codes
    feats = torch.cat([tail_g.features(*c) for c in zip(*(t.split(batch) for t in codes))])
    prev, has = lagged(feats, gap)
    return torch.cat(
        [tail_g.scorer(f, p, h)[0] for f, p, h in zip(feats.split(batch), prev.split(batch), has.split(batch))]
    ).numpy()
