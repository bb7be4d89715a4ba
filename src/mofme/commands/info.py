"""``mofme info``: config, parameters, GFLOPs and routing of a checkpoint or preset."""

from __future__ import annotations

import argparse
import json

from mofme.commands.common import (
    add_device_argument,
    add_model_arguments,
    model_from_args,
    parse_size,
    resolve_device,
)

HELP = "show a model's config, parameters (total, per part, active per token), GFLOPs and routing"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p, "default: the bundled image model (what mofme restore uses)")
    p.add_argument("--size", default="240x240", help="input size HxW for GFLOPs (default 240x240)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    add_device_argument(p)


def run(args: argparse.Namespace) -> int:
    from mofme.model.analysis import active_params_per_token, count_flops, param_counts

    device = resolve_device(args.device)
    # No argument: the model a newcomer actually runs (restore's default), not an untrained preset.
    model = model_from_args(args, device, default="image")
    size = parse_size(args.size)
    cfg = model.cfg
    counts = param_counts(model)
    rep = count_flops(model, size)
    dense_rep = None
    if cfg.routing.selection != "dense":
        with model.routing("dense"):
            dense_rep = count_flops(model, size)
    active = active_params_per_token(model, rep.mean_active_experts)
    info = {
        "source": args.ckpt
        or (f"preset {args.preset} (untrained)" if args.preset else "bundled image model"),
        "step": getattr(model, "step", None),
        "config": cfg.to_dict(),
        "params": counts,
        "active_params_per_token": active,
        "routing": cfg.routing.describe(),
        "router": cfg.router,
        "size": list(size),
        "gflops": rep.total / 1e9,
        "gflops_parts": {k: v / 1e9 for k, v in rep.parts.items()},
        "mean_active_experts": rep.mean_active_experts,
        "gflops_dense": dense_rep.total / 1e9 if dense_rep else rep.total / 1e9,
        "gflops_parts_dense": {k: v / 1e9 for k, v in (dense_rep or rep).parts.items()},
    }
    from mofme.inference.policy import model_card

    card = model_card(model)
    if card:
        info["card"] = card
    if cfg.gelu_expert:
        # The official code builds tensors its forward never uses; count them as it does.
        from mofme.convert import official_param_count

        info["official_params"] = official_param_count(cfg, size)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    c = cfg
    print(f"model      {info['source']}" + (f" (step {info['step']})" if info["step"] else ""))
    print(
        f"arch       dim={c.dim} depth={c.depth} experts={c.num_experts} patch={c.patch} "
        f"heads={c.heads}x{c.head_dim} in_channels={c.in_channels} global_residual={c.global_residual}"
        + (" head_skip=True" if c.head_skip else "")
    )
    print(f"routing    router={c.router} selection={info['routing']} experts={c.expert_impl}")
    print(f"params     {counts['total']:,} ({counts['total'] / 1e6:.2f} M)")
    for k, v in counts.items():
        if k != "total":
            print(f"  {k:<10} {v:>12,}  {100 * v / counts['total']:5.1f} %")
    if "official_params" in info:
        o = info["official_params"]
        print(
            f"official   {o['official']:,} params in the official code at {size[0]}x{size[1]} = "
            f"{o['ours']:,} + unused: position embedding {o['position_embedding']:,}, "
            f"expert LayerNorms {o['expert_layernorms']:,}, dead expert {o['dead_expert']:,}"
        )
    print(
        f"active     {active / 1e6:.2f} M params per token "
        f"(mean {rep.mean_active_experts:.2f} of {c.num_experts} experts)"
    )
    h, w = size
    print(
        f"GFLOPs     {info['gflops']:.2f} at {h}x{w} ({info['routing']}); "
        f"{info['gflops_dense']:.2f} with dense experts"
    )
    print(f"  {'part':<10} {'routed':>9} {'dense':>9}")
    for k in rep.parts:
        print(f"  {k:<10} {info['gflops_parts'][k]:9.3f} {info['gflops_parts_dense'][k]:9.3f}")
    if card:
        print("model card (how it was trained and what it measured on held-out photos)")
        for key, value in card.items():
            if key == "previous_stages" and isinstance(value, list):
                # One line per earlier stage, newest first: what each cost and saw.
                for i, st in enumerate(value):
                    data = st.get("trained_on") or {}
                    print(
                        f"  {key if i == 0 else '':<16} {st.get('init')}: {st.get('steps')} "
                        f"steps, crop {st.get('crop')}, {st.get('train_seconds')} s, data "
                        f"{data.get('kind')} seed {data.get('seed')} ({data.get('n_train')} train)"
                    )
                continue
            text = json.dumps(value) if isinstance(value, (dict, list)) else str(value)
            print(f"  {key:<16} {text}")
    return 0
