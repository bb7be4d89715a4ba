"""Weight soup: a weighted average of checkpoints of the same architecture.

Two stages of the same model trained on different data can be averaged tensor by tensor; the
soup often keeps most of what each learnt (Wortsman et al., "Model soups", 2022). The first
checkpoint's metadata is kept, and the recipe is recorded in it (``extra["soup"]``). A checkpoint
without the head skip mixes with a first one that has it as its zero skip (the same function), and a
shallower one with a deeper first one as if deepened (``train.init``): its missing blocks are the
first's, with their output projections at zero (identity blocks), so the soup scales what the
extra blocks add by the first's weight.

    python scripts/soup.py runs/image_stage3/model_last.safetensors:0.75 \
        runs/stage1/image.safetensors:0.25 --out runs/soup/model_last.safetensors
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from mofme.checkpoint import load, save
from mofme.errors import MofmeError
from mofme.finetune import FREE_FIELDS, SKIP_PREFIX, block_outputs


def soup(parts: list[tuple[str, float]]) -> torch.nn.Module:
    """``parts``: (checkpoint, weight) pairs; weights must sum to 1. Non-float tensors (counters,
    masks) are taken from the first checkpoint."""
    if abs(sum(w for _, w in parts) - 1.0) > 1e-6:
        raise MofmeError(f"soup weights must sum to 1, got {sum(w for _, w in parts)}")
    models = [load(path) for path, _ in parts]
    first = models[0]
    states = [m.state_dict() for m in models]
    if first.cfg.head_skip:
        for state in states[1:]:
            for key in [k for k in states[0] if k.startswith(SKIP_PREFIX) and k not in state]:
                state[key] = torch.zeros_like(states[0][key])
    for m, state in zip(models[1:], states[1:]):
        if m.cfg.depth < first.cfg.depth:
            _deepen(first, state, m.cfg.depth)
    free = FREE_FIELDS | {"depth", "head_skip"}  # the two handled above
    ours = {k: v for k, v in first.cfg.to_dict().items() if k not in free}
    for (path, _), m, state in zip(parts[1:], models[1:], states[1:]):
        theirs = {k: v for k, v in m.cfg.to_dict().items() if k not in free}
        diff = [f"{k}={theirs[k]} (first has {ours[k]})" for k in ours if ours[k] != theirs[k]]
        if diff or state.keys() != states[0].keys():  # a deeper one has extra block keys
            what = ", ".join(diff) or "other tensors (list the deeper checkpoint first)"
            raise MofmeError(f"soup: {path} has a different architecture: {what}")
    mixed = {}
    for key, value in states[0].items():
        if value.is_floating_point():
            mixed[key] = sum(w * s[key].double() for (_, w), s in zip(parts, states)).to(
                value.dtype
            )
        else:
            mixed[key] = value
    first.load_state_dict(mixed)
    first.extra = {**dict(getattr(first, "extra", {})),
                   "soup": [{"ckpt": str(p), "weight": w} for p, w in parts]}  # fmt: skip
    return first


def _deepen(first: torch.nn.Module, state: dict[str, torch.Tensor], depth: int) -> None:
    """Fill ``state`` (of a ``depth``-block model) with ``first``'s extra blocks as identities."""
    for i in range(depth, len(first.blocks)):
        blk = first.blocks[i]
        zero = {id(t) for lin in block_outputs(blk) for t in (lin.weight, lin.bias)}
        for name, t in blk.state_dict(keep_vars=True).items():
            key = f"blocks.{i}.{name}"
            state.setdefault(key, torch.zeros_like(t) if id(t) in zero else t.detach().clone())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("parts", nargs="+", help="CKPT:WEIGHT, weights summing to 1")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    parts = []
    for spec in args.parts:
        path, _, weight = spec.rpartition(":")
        parts.append((path, float(weight)))
    model = soup(parts)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save(model, args.out, getattr(model, "step", 0), extra=model.extra)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
