"""Fine-tuning: start a training run from a mofme checkpoint, optionally with frozen parts.

``train.init`` (or ``mofme train --init CKPT``) loads a checkpoint into the freshly built model
before the first step. Strict by default: the checkpoint must have been saved for the same
network (config fields that change the computed function, and every tensor name and shape),
with one deliberate exception: an **image** checkpoint (3 input channels) may start a **video**
model (6: frame ‖ reference). The first conv then gets the image weights on the frame channels
and zeros on the reference channels, so before any step the video model with a zero reference
computes what the image model computes. Non-strict (``train.init_strict: false``) loads every
tensor whose name and shape fit and reports the rest.

``train.freeze`` / ``train.train_only`` name parts of the network (the parts of
``mofme info``): frozen parameters get ``requires_grad=False`` and are left out of the
optimizer, so they are bit-identical after training (weight decay never touches them).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from mofme import checkpoint
from mofme.errors import MofmeError
from mofme.model.analysis import PARTS, _part_of
from mofme.model.config import ModelConfig
from mofme.model.net import Block, MoFMENet

# Config fields that may differ between the checkpoint and the run in strict mode: they do not
# change which weights exist or what they compute (routing and dropout are run-time choices;
# in_channels 3 -> 6 is handled by zero-extending the first conv).
FREE_FIELDS = frozenset(
    {
        "routing",
        "expert_impl",
        "dropout",
        "attn_dropout",
        "ffn_out_dropout",
        "topk_ties",
        "balance_loss",
    }
)
FIRST_CONV = "head.0.weight"
SKIP_PREFIX = "skip."


def resolve_init(init: str) -> Path:
    """A checkpoint path, or ``image`` / ``video`` for the bundled weights."""
    path = Path(init)
    if not path.exists():
        from mofme.weights import BUNDLED, bundled_path

        if init in BUNDLED:
            return bundled_path(init)
        raise MofmeError(f"train.init: checkpoint not found: {init}")
    return path


def init_config(init: str) -> ModelConfig:
    """The model config stored in the ``init`` checkpoint (for ``model.preset: init``)."""
    return checkpoint.read_metadata(resolve_init(init))["config"]


@dataclass
class InitReport:
    """What :func:`init_from_checkpoint` loaded."""

    path: str
    step: int
    loaded: list[str] = field(default_factory=list)  # copied unchanged
    extended: list[str] = field(default_factory=list)  # first conv: 3 -> 6 input channels
    kept: list[str] = field(default_factory=list)  # non-strict: model tensors left as built
    added: list[str] = field(default_factory=list)  # head skip new to the network: zero
    deepened: list[str] = field(default_factory=list)  # extra blocks, starting as identity
    ignored: list[str] = field(default_factory=list)  # non-strict: file tensors not used
    config_diff: list[str] = field(default_factory=list)  # non-strict: differing fields

    def summary(self) -> str:
        """One line for the log."""
        parts = [f"{len(self.loaded)} tensors loaded from {self.path} (step {self.step})"]
        if self.extended:
            parts.append(
                f"{', '.join(self.extended)} extended 3 -> 6 input channels (reference channels 0)"
            )
        if self.added:
            parts.append(f"head skip added at zero ({', '.join(self.added)})")
        if self.deepened:
            blocks = sorted({k.split(".")[1] for k in self.deepened}, key=int)
            parts.append(f"block(s) {', '.join(blocks)} added as the identity")
        if self.kept:
            parts.append(f"{len(self.kept)} kept as initialised (e.g. {self.kept[0]})")
        if self.ignored:
            parts.append(f"{len(self.ignored)} in the file unused (e.g. {self.ignored[0]})")
        if self.config_diff:
            parts.append(f"config differs: {', '.join(self.config_diff)}")
        return "; ".join(parts)

    def to_dict(self) -> dict[str, object]:
        return {
            "path": self.path,
            "step": self.step,
            "loaded": len(self.loaded),
            "extended": self.extended,
            "added": self.added,
            "deepened": self.deepened,
            "kept": self.kept,
            "ignored": self.ignored,
            "config_diff": self.config_diff,
        }


def init_from_checkpoint(model: MoFMENet, init: str, strict: bool = True) -> InitReport:
    """Load the ``init`` checkpoint (path, or ``image`` / ``video``) into ``model`` in place."""
    path = resolve_init(init)
    meta = checkpoint.read_metadata(path)
    theirs_cfg: ModelConfig = meta["config"]
    ours, theirs = model.cfg.to_dict(), theirs_cfg.to_dict()
    extend = ours["in_channels"] == 6 and theirs["in_channels"] == 3
    # A head skip added to a model without one starts at zero (the same function), so the
    # checkpoint continues as it was and training learns what the new path adds.
    add_skip = bool(ours["head_skip"]) and not theirs["head_skip"]
    # Extra transformer blocks start as the identity (see the module docstring).
    old_depth = int(theirs["depth"])
    deepen = int(ours["depth"]) > old_depth
    diff = [
        f"{k}={theirs[k]} (run has {ours[k]})"
        for k in sorted(ours)
        if k not in FREE_FIELDS
        and ours[k] != theirs[k]
        and not (k == "in_channels" and extend)
        and not (k == "head_skip" and add_skip)
        and not (k == "depth" and deepen)
    ]
    if diff and strict:
        raise MofmeError(
            f"train.init: {path} was saved for another network: {', '.join(diff)}; use the "
            "same model config (model.preset: init takes the checkpoint's), or set "
            "train.init_strict: false to load only the tensors that fit"
        )
    report = InitReport(str(path), int(meta["step"]), config_diff=diff)
    tensors = checkpoint._read_tensors(path)
    state = model.state_dict()
    merged: dict[str, torch.Tensor] = {}
    for key, own in state.items():
        t = tensors.get(key)
        if t is not None and t.shape == own.shape:
            merged[key] = t
            report.loaded.append(key)
        elif (
            t is not None
            and extend
            and key == FIRST_CONV
            and t.shape[1] == 3
            and own.shape[1] == 6
            and t.shape[0] == own.shape[0]
            and t.shape[2:] == own.shape[2:]
        ):
            # Reference channels start at exactly zero: the video model starts as the image
            # model (on a zero reference) and learns how much to use the reference.
            merged[key] = torch.cat([t, torch.zeros_like(t)], dim=1)
            report.extended.append(key)
        elif t is None and add_skip and key.startswith(SKIP_PREFIX):
            merged[key] = torch.zeros_like(own)
            report.added.append(key)
        elif t is None and deepen and _new_block(key, old_depth):
            merged[key] = own  # zeroed below, after loading
            report.deepened.append(key)
        else:
            merged[key] = own
            report.kept.append(key)
    report.ignored = sorted(set(tensors) - set(state))
    if strict and (report.kept or report.ignored):
        problems = []
        if report.kept:
            k = report.kept[0]
            got = tuple(tensors[k].shape) if k in tensors else "absent"
            problems.append(f"{len(report.kept)} model tensors do not fit (e.g. {k}: file {got})")
        if report.ignored:
            problems.append(f"{len(report.ignored)} file tensors unused (e.g. {report.ignored[0]})")
        raise MofmeError(
            f"train.init: {path} does not fit the model: {'; '.join(problems)}; set "
            "train.init_strict: false to load only the tensors that fit"
        )
    model.load_state_dict(merged, strict=True)
    if deepen:
        with torch.no_grad():
            for blk in model.blocks[old_depth:]:
                for lin in block_outputs(blk):
                    lin.weight.zero_()
                    lin.bias.zero_()
    return report


def block_outputs(blk: Block) -> tuple[nn.Linear, nn.Linear]:
    """A transformer block's two output projections (attention, FME adaptor): at zero, the
    block is the identity (both branches are added to the residual stream)."""
    return blk.attn.out, [m for m in blk.fme.ffn if isinstance(m, nn.Linear)][-1]


def _new_block(key: str, old_depth: int) -> bool:
    """Is ``key`` a tensor of a transformer block at index ``old_depth`` or later?"""
    parts = key.split(".")
    return len(parts) > 2 and parts[0] == "blocks" and int(parts[1]) >= old_depth


def check_parts(names: list[str], where: str) -> None:
    unknown = [n for n in names if n not in PARTS]
    if unknown:
        raise MofmeError(
            f"{where}: unknown part(s) {', '.join(unknown)}; parts: {', '.join(PARTS)}"
        )


def frozen_parts(freeze: list[str], train_only: list[str]) -> list[str]:
    """The parts to freeze from ``train.freeze`` or its complement ``train.train_only``."""
    if train_only:
        return [p for p in PARTS if p not in train_only]
    return list(freeze)


def freeze(model: MoFMENet, parts: list[str]) -> int:
    """``requires_grad=False`` on every parameter of ``parts``; returns how many are frozen."""
    check_parts(parts, "train.freeze")
    frozen = 0
    for name, p in model.named_parameters():
        if _part_of(name) in parts:
            p.requires_grad_(False)
            frozen += p.numel()
    return frozen
