"""Candidate cuts of a model's dataflow graph, and the split into head and tail at one of them.

The model is traced with torch.fx into a DAG of ops in a topological order. A cut is a prefix of
that order: the head computes the first `index` ops, and the tensors it computed that later ops
still read are what crosses to the tail. Between two top-level stages of a sequential model one
tensor crosses (a *stage* cut, named after the stage it ends); inside a residual block the block's
input crosses as well (a *multi-tensor* cut across the skip connection, sent as several tensors in
one frame). Only a prefix cut can be a cut of a feed-forward DAG that the head computes first and
then hands over, and over all topological orders it finds every such cut; we enumerate the one
order fx gives (program order), which for chains of blocks is every cut worth having (DADS finds the
same candidates as minimum s-t cuts).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

FX_LEAF = "fx_leaf"  # a module class sets this to True when its forward cannot be traced (shape-dependent)


@dataclass(frozen=True)
class CutTensor:
    name: str  # the fx node that computes it
    shape: tuple[int, ...]  # per frame (C, H, W)

    @property
    def elements(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class Cut:
    name: str  # the stage it ends, or for a cut inside a stage "<stage>.<last op in the head>"
    index: int  # the head computes ops(trace(model))[:index]
    tensors: tuple[CutTensor, ...]  # what crosses, in the order of the frame and of tail.onnx's inputs
    stage: bool  # a boundary between top-level stages

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape of a single-tensor cut's tensor."""
        if len(self.tensors) != 1:
            raise ValueError(f"cut {self.name} carries {len(self.tensors)} tensors; use .shapes")
        return self.tensors[0].shape

    @property
    def shapes(self) -> list[tuple[int, ...]]:
        return [t.shape for t in self.tensors]

    @property
    def elements(self) -> int:
        return sum(t.elements for t in self.tensors)

    @property
    def raw_bytes(self) -> int:
        """float32 bytes per frame, what an unquantized split would send."""
        return 4 * self.elements


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return getattr(m, FX_LEAF, False) or super().is_leaf_module(m, qualname)


def trace(model: nn.Module) -> fx.GraphModule:
    """The model's dataflow graph; modules marked FX_LEAF stay single ops."""
    return fx.GraphModule(model, _Tracer().trace(model))


def ops(gm: fx.GraphModule) -> list[fx.Node]:
    """The compute nodes in topological (program) order: what a cut's index counts."""
    return [n for n in gm.graph.nodes if n.op not in ("placeholder", "output")]


def stage_of(node: fx.Node) -> str:
    """The top-level submodule an op belongs to (its first entry in nn_module_stack)."""
    stack = node.meta.get("nn_module_stack") or {}
    if stack:
        return next(iter(stack))
    return node.target.split(".")[0] if node.op == "call_module" else node.name


def _op_name(node: fx.Node, stage: str) -> str:
    if node.op == "call_module":
        rest = node.target[len(stage) + 1 :] if node.target.startswith(stage + ".") else node.target
        return f"{stage}.{rest}" if rest else stage
    return f"{stage}.{node.name}"


def _last_of(order: list[fx.Node], stage: str) -> int:
    """Position after the last op of `stage`."""
    ends = [i + 1 for i, n in enumerate(order) if stage_of(n) == stage]
    if not ends:
        raise ValueError(f"no stage named {stage!r}; stages: {', '.join(dict.fromkeys(map(stage_of, order)))}")
    return ends[-1]


@torch.no_grad()
def list_cuts(
    model: nn.Module, input_size: tuple[int, int], upto: str | None = None, inner: bool = False,
    max_tensors: int = 2,
) -> list[Cut]:
    """The candidate cuts for a (height, width) input, in order of depth.

    Stage cuts always; with `inner`, also every cut inside a stage where at most `max_tensors`
    tensors cross. `upto` ends the list at the end of that stage (the layer the scorer reads: cuts
    past it are useless). A cut that would send the input image itself is never a candidate.
    """
    gm = trace(model)
    ShapeProp(gm).propagate(torch.zeros(1, 3, *input_size))
    order = ops(gm)
    end = _last_of(order, upto) if upto is not None else len(order) - 1
    pos = {n: i for i, n in enumerate(order)}
    out_pos = len(order)
    last_use = {}  # node -> position of its last reader (the graph output counts as after every op)
    for n in gm.graph.nodes:
        if n.op == "output" or n in pos:
            for a in n.all_input_nodes:
                last_use[a] = max(last_use.get(a, -1), pos.get(n, out_pos))
    inputs = [n for n in gm.graph.nodes if n.op == "placeholder"]
    cuts = []
    for k in range(1, end + 1):
        if any(last_use.get(x, -1) >= k for x in inputs):
            continue
        crossing = [n for n in order[:k] if last_use.get(n, -1) >= k]
        head_stage, next_stage = stage_of(order[k - 1]), stage_of(order[k]) if k < len(order) else None
        is_stage = head_stage != next_stage
        identity = order[k - 1].op == "call_module" and isinstance(gm.get_submodule(order[k - 1].target), nn.Identity)
        if not crossing or (identity and not is_stage) or (not is_stage and (not inner or len(crossing) > max_tensors)):
            continue
        tensors = tuple(CutTensor(n.name, tuple(n.meta["tensor_meta"].shape[1:])) for n in crossing)
        name = head_stage if is_stage else _op_name(order[k - 1], head_stage)
        cuts.append(Cut(name, k, tensors, is_stage))
    return cuts


def find_cut(cuts: list[Cut], name: str) -> Cut:
    for cut in cuts:
        if cut.name == name:
            return cut
    raise ValueError(f"no cut named {name!r}; candidates: {', '.join(c.name for c in cuts)}")


def split(model: nn.Module, cut: Cut, upto: str | None = None) -> tuple[fx.GraphModule, fx.GraphModule]:
    """(head, tail) as modules. The head maps the input to the cut's tensor (a tuple of them for a
    multi-tensor cut); the tail maps the cut's tensors, as positional inputs, to the output of stage
    `upto` (the model's output if None)."""
    gm = trace(model)
    order = ops(gm)
    if not 0 < cut.index <= len(order) or [t.name for t in cut.tensors] != _crossing_names(gm, order, cut.index):
        raise ValueError(f"cut {cut.name} does not belong to this model")
    by_name = {n.name: n for n in order}

    head = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for n in gm.graph.nodes:
        if n.op == "placeholder":
            env[n] = head.node_copy(n)
    for n in order[: cut.index]:
        env[n] = head.node_copy(n, env.__getitem__)
    outs = [env[by_name[t.name]] for t in cut.tensors]
    head.output(outs[0] if len(outs) == 1 else tuple(outs))

    tail = fx.Graph()
    env = {by_name[t.name]: tail.placeholder(t.name) for t in cut.tensors}
    end = _last_of(order, upto) if upto is not None else len(order)
    for n in order[cut.index : end]:
        env[n] = tail.node_copy(n, env.__getitem__)
    if upto is not None:
        tail.output(env[order[end - 1]] if end > cut.index else env[by_name[cut.tensors[0].name]])
    else:
        (result,) = [n for n in gm.graph.nodes if n.op == "output"]
        tail.output(fx.graph.map_arg(result.args[0], env.__getitem__))
    return _module(gm, head), _module(gm, tail)


def _crossing_names(gm: fx.GraphModule, order: list[fx.Node], k: int) -> list[str]:
    after = set(order[k:]) | {n for n in gm.graph.nodes if n.op == "output"}
    return [n.name for n in order[:k] if any(u in after for u in n.users)]


def _module(root: fx.GraphModule, graph: fx.Graph) -> fx.GraphModule:
    graph.lint()
    gm = fx.GraphModule(root, graph)
    gm.graph.eliminate_dead_code()  # ops past `upto` that no output reads
    gm.recompile()
    return fx.GraphModule(gm, gm.graph).eval()  # rebuilt so that it keeps only the submodules it calls
