"""How much a temporal context coder could take off a bottleneck's codes: per-channel factorized bytes per
frame against bytes conditioned on the code at the same position and channel `lag` frames back, on the
normal fit videos (tables counted on every 2nd video, evaluated on the others). Prints JSON.

    python bench/bottleneck_temporal.py .cache/bottleneck/weights/W.safetensors
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(weights: str) -> dict:
    import torch

    from bench.bottleneck import data, detector
    from splitter import bottleneck as bn

    torch.set_num_threads(1)
    sp = detector()
    m, _ = bn.load(Path(weights), 32)
    fit, _, _ = data(sp, m.cfg.cut)
    codes = bn.encode_all(m, fit)
    vids = list(codes)
    train_v, eval_v = vids[::2], vids[1::2]
    k, levels = m.cfg.channels, 2**m.cfg.bits
    out = {"train_videos": train_v, "eval_videos": eval_v}
    for lag in (1, 2):
        marg = np.full((k, levels), 0.5)
        joint = np.full((k, levels, levels), 0.5)
        for v in train_v:
            c = codes[v]
            for ch in range(k):
                marg[ch] += np.bincount(c[:, ch].ravel(), minlength=levels)
                pairs = c[:-lag, ch].astype(int) * levels + c[lag:, ch]
                joint[ch] += np.bincount(pairs.ravel(), minlength=levels**2).reshape(levels, levels)
        marg /= marg.sum(1, keepdims=True)
        cond = joint / joint.sum(2, keepdims=True)
        bf = bc = n = 0.0
        for v in eval_v:
            c = codes[v]
            for ch in range(k):
                bf += -np.log2(marg[ch][c[lag:, ch]]).sum()
                bc += -np.log2(cond[ch][c[:-lag, ch], c[lag:, ch]]).sum()
            n += len(c) - lag
        out[f"lag{lag}"] = {"factorized_B_per_frame": bf / n / 8, "conditioned_B_per_frame": bc / n / 8}
    return out


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1]), indent=1))
