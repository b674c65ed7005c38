"""The committed demo artifact can be rebuilt from what its manifest records.

artifacts/demo/manifest.json keeps the SplitConfig it was exported with ("split_config"). Exporting
again with it (from the shared ResNet-20 weights and Ped2) must give the same manifest, field for
field, up to float rounding (hashes, sizes and the id excepted), the same ONNX graphs, and the same
codes and scores on real frames. Whether the rebuild is byte-identical depends on the machine's float
arithmetic (calibration percentiles and the threshold come from float computations), so it is
reported as a warning rather than asserted.

This is the slowest test of the suite: a full export (calibration, scorer fit on 12 normal videos,
threshold on 4 held-out ones) at 120x180, a few minutes on 2 cores.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from tests.conftest import needs_shared

pytestmark = [needs_shared, pytest.mark.slow, pytest.mark.timeout(1800)]

VOLATILE = {
    "artifact_id",
    "files.head.sha256", "files.head.bytes",
    "files.tail.sha256", "files.tail.bytes",
}
REL = 1e-5


@pytest.fixture(scope="module")
def committed():
    from infocut.artifact import load_artifact
    from infocut.settings import DEMO_ARTIFACT

    art = load_artifact(DEMO_ARTIFACT)  # verifies hashes and id
    if "split_config" not in art.manifest:
        pytest.fail(f"{DEMO_ARTIFACT}/manifest.json has no split_config: re-export it with the current splitter")
    return art


@pytest.fixture(scope="module")
def reproduced(committed, tmp_path_factory):
    from infocut.artifact import load_artifact
    from splitter.export import SplitConfig, Splitter

    out = tmp_path_factory.mktemp("demo_repro")
    Splitter(SplitConfig(**committed.manifest["split_config"]), quiet=True).export(out)
    return load_artifact(out)


def _differences(a, b, path: str = "") -> list[str]:
    """Where two JSON values differ: exactly, except floats (relative REL) and the VOLATILE paths."""
    if path in VOLATILE:
        return []
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return [f"{path or '<root>'}: keys {sorted(a.keys() ^ b.keys())} only on one side"]
        return [d for k in sorted(a) for d in _differences(a[k], b[k], f"{path}.{k}" if path else k)]
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{path}: length {len(a)} != {len(b)}"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in _differences(x, y, f"{path}[{i}]")]
    if isinstance(a, float) or isinstance(b, float):
        ok = not isinstance(a, bool) and not isinstance(b, bool) and b == pytest.approx(a, rel=REL)
        return [] if ok else [f"{path}: {a!r} != {b!r}"]
    return [] if type(a) is type(b) and a == b else [f"{path}: {a!r} != {b!r}"]


def test_manifest_reproduces(committed, reproduced):
    assert committed.manifest["split_config"] == reproduced.manifest["split_config"]
    assert _differences(committed.manifest, reproduced.manifest) == []


@pytest.mark.parametrize("name", ["head", "tail"])
def test_graphs_reproduce(committed, reproduced, name):
    """Same nodes, same initializer names/shapes/dtypes, initializer values equal up to float rounding."""
    import onnx
    from onnx import numpy_helper

    a = onnx.load(str(committed.root / committed.manifest["files"][name]["path"])).graph
    b = onnx.load(str(reproduced.root / reproduced.manifest["files"][name]["path"])).graph

    def structure(g):
        """Nodes with their wiring and attributes, tensor-valued attributes (Constant values) left out."""
        return [
            (n.op_type, list(n.input), list(n.output),
             [x.SerializeToString() for x in n.attribute if x.type != onnx.AttributeProto.TENSOR])
            for n in g.node
        ]

    def tensors(g):
        """Initializers and Constant-node values, by name."""
        out = {t.name: numpy_helper.to_array(t) for t in g.initializer}
        for n in g.node:
            for x in n.attribute:
                if x.type == onnx.AttributeProto.TENSOR:
                    out[f"{n.output[0]}.{x.name}"] = numpy_helper.to_array(x.t)
        return out

    assert structure(a) == structure(b)
    assert [i.SerializeToString() for i in a.input] == [i.SerializeToString() for i in b.input]
    assert [o.SerializeToString() for o in a.output] == [o.SerializeToString() for o in b.output]
    ta, tb = tensors(a), tensors(b)
    assert ta.keys() == tb.keys()
    for key in ta:
        assert ta[key].dtype == tb[key].dtype and ta[key].shape == tb[key].shape, key
        if np.issubdtype(ta[key].dtype, np.floating):
            np.testing.assert_allclose(tb[key], ta[key], rtol=REL, atol=1e-7, err_msg=key)
        else:
            np.testing.assert_array_equal(tb[key], ta[key], err_msg=key)


def test_outputs_reproduce(committed, reproduced):
    """On consecutive Ped2 test frames (into an anomaly): same codes, same scores."""
    from edge.head import Head
    from infocut import ped2
    from infocut.pipeline import Pipeline

    paths = ped2.videos("testing")["01"][56:68]  # the bicycle enters around frame 61
    frames = [ped2.read_rgb(p, committed.input_size) for p in paths]
    x = np.stack(frames)
    codes_a = Head(committed, threads=2)(x)[0]
    codes_b = Head(reproduced, threads=2)(x)[0]
    diff = np.abs(codes_a.astype(np.int16) - codes_b.astype(np.int16))
    assert (diff == 0).mean() >= 0.999 and diff.max() <= 1, ((diff == 0).mean(), diff.max())
    scores_a = Pipeline(committed, threads=2).run(frames).scores
    scores_b = Pipeline(reproduced, threads=2).run(frames).scores
    assert np.all(np.isfinite(scores_a))
    np.testing.assert_allclose(scores_b, scores_a, rtol=1e-4)


def test_byte_identity(committed, reproduced):
    """Report (as a warning) whether the rebuild is byte-identical; assert only what must hold anyway."""
    same_files = {
        name: committed.manifest["files"][name]["sha256"] == reproduced.manifest["files"][name]["sha256"]
        for name in committed.manifest["files"]
    }
    if committed.id == reproduced.id:
        assert all(same_files.values())
        assert json.dumps(committed.manifest, sort_keys=True) == json.dumps(reproduced.manifest, sort_keys=True)
    else:
        warnings.warn(
            f"the re-exported demo artifact is not byte-identical on this machine: id {reproduced.id} != "
            f"{committed.id}; files identical: {same_files} (created_by {committed.manifest['created_by']}, "
            "float results differ by machine; the manifest and outputs match within tolerance)",
            stacklevel=1,
        )
