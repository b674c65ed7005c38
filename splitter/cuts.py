"""Candidate cuts of a model and the split into head and tail at one of them.

A cut is a boundary between two top-level stages of a sequential model: exactly one tensor
crosses it. (Cuts across skip connections inside a stage come with the graph analysis.)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class Cut:
    name: str  # the last stage in the head
    index: int  # number of stages in the head
    shape: tuple[int, ...]  # (C, H, W) of the tensor crossing the cut, per frame

    @property
    def elements(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def raw_bytes(self) -> int:
        """float32 bytes per frame, what an unquantized split would send."""
        return 4 * self.elements


def stages(model: nn.Module) -> list[tuple[str, nn.Module]]:
    if not isinstance(model, nn.Sequential):
        raise TypeError("the splitter cuts nn.Sequential models of named stages")
    return list(model.named_children())


@torch.no_grad()
def list_cuts(model: nn.Module, input_size: tuple[int, int], upto: str | None = None) -> list[Cut]:
    """Every stage boundary, with the shape crossing it for a (height, width) input.

    `upto` ends the list at that stage (inclusive): cuts past the layer the scorer reads are useless.
    """
    x = torch.zeros(1, 3, *input_size)
    cuts = []
    named = stages(model)
    for i, (name, stage) in enumerate(named[:-1]):
        x = stage(x)
        cuts.append(Cut(name, i + 1, tuple(x.shape[1:])))
        if name == upto:
            break
    return cuts


def find_cut(cuts: list[Cut], name: str) -> Cut:
    for cut in cuts:
        if cut.name == name:
            return cut
    raise ValueError(f"no cut named {name!r}; candidates: {', '.join(c.name for c in cuts)}")


def split(model: nn.Module, cut: Cut, upto: str | None = None) -> tuple[nn.Sequential, nn.Sequential]:
    """(head, tail): the stages before the cut, and those after it up to `upto` (inclusive)."""
    named = stages(model)
    end = len(named) if upto is None else [n for n, _ in named].index(upto) + 1
    head = nn.Sequential(*[m for _, m in named[: cut.index]])
    tail = nn.Sequential(*[m for _, m in named[cut.index : end]])
    return head.eval(), tail.eval()
