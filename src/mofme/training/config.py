"""The training config: typed sections loaded strictly from YAML (``mofme.config``).

``model`` is written as a preset plus ``ModelConfig`` field overrides (``preset: init`` starts
from the ``train.init`` checkpoint's config) and loaded as the resolved ``ModelConfig``, so the
saved ``OUT/config.yaml`` holds every model field and rebuilds the same network on its own.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

from mofme.config import coerce, load_yaml
from mofme.errors import MofmeError
from mofme.model.config import PRESETS, ModelConfig, RoutingConfig, build_config, get_preset

KINDS = ("image", "video")
AMP_MODES = ("none", "bf16", "fp16", "auto")
REFERENCES = ("prediction", "teacher", "none")
NONFINITE_MODES = ("skip", "stop")
WEATHER_MASKS = ("any", "local")  # mofme.losses.weather_mask modes


@dataclass
class DataConfig:
    """Where the training / validation data is and how it is cut."""

    kind: str = "image"  # image | video
    root: str = ""  # dataset root (relative paths: to the current folder)
    layout: str = "mofme"  # image data: mofme | transweather | folder (video: RVSD layout)
    train_split: str = "train"  # mofme: train; transweather: list file, e.g. allweather.txt
    val_split: list[str] | str | None = None  # e.g. test, or [test1.txt, raindroptesta.txt]
    crop: int = 240  # random square training crop
    flip: bool = True  # random horizontal flips
    clip_len: int = 3  # video: frames per training clip
    clip_stride: int = 1  # video: step between clip starts
    # DataLoader worker processes (0 = load in the training process; None = from the machine:
    # min(4, CPUs per rank - 1))
    workers: int | None = None
    strict: bool = False  # raise on an unreadable training sample instead of skipping it
    val_max_images: int | None = None  # image: evenly spaced subset; video: frames per video
    val_max_videos: int | None = None  # video: first N validation videos
    val_tile: int | None = None  # validate with tiled inference (tile side) to bound memory
    val_samples: int = 4  # validation images shown in TensorBoard (input | output | gt)
    identity_share: float = 0.0  # image: chance of an identity pair (input = gt), e.g. 0.1


@dataclass
class TrainConfig:
    """Optimisation, precision, logging and checkpointing."""

    batch_size: int = 64  # global batch (divided across DDP ranks)
    steps: int | None = None  # total optimizer steps (or give epochs)
    epochs: float | None = None  # training length in passes over the data (or give steps)
    warmup_steps: int | None = None  # overrides warmup_epochs when set
    warmup_epochs: float = 0.0  # linear learning-rate warm-up, in epochs
    lr: float = 2e-4  # peak learning rate (AdamW), reached after the warm-up
    min_lr: float = 1e-6  # learning rate at the last step (cosine schedule)
    weight_decay: float = 0.01  # AdamW weight decay
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # AdamW betas
    grad_clip: float = 1.0  # max gradient norm; 0 = no clipping
    # none | bf16 | fp16 (fp16: CUDA only, with a GradScaler) | auto (bf16 where the GPU has it
    # or this CPU's measured probe finds it faster; resolved once, kept on resume)
    amp: str = "none"
    ema: float = 0.0  # EMA decay of the weights, e.g. 0.999; 0 = off
    seed: int = 0  # weights, data order, crops and flips all follow from it
    perceptual_weight: float = 0.04  # weight of the VGG16 perceptual loss (needs vgg_weights)
    vgg_weights: str | None = None  # local VGG16 weights; without them the VGG term is off
    balance_weight: float = 0.0  # weight of the expert load-balancing loss (model.balance_loss)
    # weight of the dark-speck penalty (mofme.losses.speck_penalty; 0 = the paper's loss)
    speck_weight: float = 0.0
    # SmoothL1's beta. On [0, 1] images the paper's 1.0 is half the squared error everywhere;
    # a small beta (e.g. 0.01) is an L1 loss: it favours a decisive correction (remove a flake
    # or leave the pixel exactly as it was) over a partial, averaged one.
    smooth_l1_beta: float = 1.0
    # Extra weight of the pixels the weather changed (input vs target differ by > 0.02) in the
    # pixel loss: 0 = the paper's loss; w counts them 1 + w times, against a model that learns
    # to leave weather in place because most pixels of most crops are clean.
    weather_weight: float = 0.0
    # Which pixels weather_weight weighs: any = every changed pixel; local = only changes that
    # stand out from the mean change around them (flakes, streaks, drops; not the veil of haze)
    weather_mask: str = "any"
    log_every: int = 50  # steps between log.jsonl lines (first and last step always logged)
    val_every: int = 1000  # steps between validations (0 = only at the end)
    ckpt_every: int = 1000  # steps between checkpoints (0 = only at the end)
    on_nonfinite: str = "skip"  # NaN / inf loss: skip the step (counted) or stop
    device: str = "auto"  # auto (CUDA when present), cpu, cuda, cuda:N
    threads: int = 0  # CPU threads for PyTorch (0 = its default)
    tensorboard: bool = True  # write TensorBoard logs to OUT/tb
    # Fine-tuning (mofme.finetune): start from this mofme checkpoint (a path, or image / video
    # for the bundled weights) instead of random weights; ignored by --resume.
    init: str | None = None
    init_strict: bool = True  # every tensor must fit (an image checkpoint may start a video model)
    freeze: list[str] = field(default_factory=list)  # parts kept fixed, e.g. [head, tail]
    train_only: list[str] = field(default_factory=list)  # or: train only these, e.g. [experts]


@dataclass
class VideoConfig:
    """Reference-frame training (``data.kind: video`` with a 6-channel model)."""

    reference: str = "prediction"  # prediction | teacher | none
    zero_ref_prob: float = 0.1  # chance of a zero reference for a non-first frame


@dataclass
class TrainRunConfig:
    """A whole training run. In a file, ``model`` is a preset plus ``ModelConfig`` field
    overrides (:func:`resolve_model`); loaded, it is the resolved ``ModelConfig``."""

    model: ModelConfig = field(default_factory=lambda: get_preset("paper"))
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    video: VideoConfig = field(default_factory=VideoConfig)
    out: str = "runs/mofme"  # run folder: checkpoints, logs, config.yaml

    def validate(self) -> None:
        d, t, v, mcfg = self.data, self.train, self.video, self.model
        mcfg.validate()  # again: a config built in code has not been through the loader
        _choice("data.kind", d.kind, KINDS)
        if d.kind == "image":
            from mofme.data.pairs import LAYOUTS

            _choice("data.layout", d.layout, LAYOUTS)
            if mcfg.in_channels != 3:
                raise MofmeError(
                    f"model.in_channels={mcfg.in_channels} needs video data (data.kind: video); "
                    "image models have in_channels 3"
                )
        elif mcfg.in_channels not in (3, 6):
            raise MofmeError(
                f"video training needs model.in_channels 6 (frame + reference) or 3 "
                f"(single-frame baseline), got {mcfg.in_channels}"
            )
        if not d.root:
            raise MofmeError("data.root: give the dataset folder")
        for name in ("crop", "clip_len", "clip_stride"):
            _at_least(f"data.{name}", getattr(d, name), 1)
        if d.workers is not None:
            _at_least("data.workers", d.workers, 0)
        _at_least("data.val_samples", d.val_samples, 0)
        for name in ("val_max_images", "val_max_videos", "val_tile"):
            if getattr(d, name) is not None:
                _at_least(f"data.{name}", getattr(d, name), 1)
        _at_least("train.batch_size", t.batch_size, 1)
        if t.steps is not None and t.epochs is not None:
            raise MofmeError("train: set either steps or epochs, not both")
        if t.steps is None and t.epochs is None:
            raise MofmeError("train: set steps or epochs")
        if t.steps is not None:
            _at_least("train.steps", t.steps, 1)
        if t.epochs is not None and not t.epochs > 0:
            raise MofmeError(f"train.epochs must be > 0, got {t.epochs}")
        if t.warmup_steps is not None:
            _at_least("train.warmup_steps", t.warmup_steps, 0)
        if t.warmup_epochs < 0:
            raise MofmeError(f"train.warmup_epochs must be >= 0, got {t.warmup_epochs}")
        if t.lr <= 0 or not 0 <= t.min_lr <= t.lr:
            raise MofmeError(f"train: need 0 < lr and 0 <= min_lr <= lr, got {t.lr}, {t.min_lr}")
        if len(t.betas) != 2 or not all(0 <= b < 1 for b in t.betas):
            raise MofmeError(f"train.betas must be two numbers in [0, 1), got {t.betas}")
        if t.weight_decay < 0 or t.grad_clip < 0 or t.perceptual_weight < 0:
            raise MofmeError("train: weight_decay, grad_clip and perceptual_weight must be >= 0")
        if not t.speck_weight >= 0:
            raise MofmeError(f"train.speck_weight must be >= 0, got {t.speck_weight}")
        if not t.weather_weight >= 0:
            raise MofmeError(f"train.weather_weight must be >= 0, got {t.weather_weight}")
        _choice("train.weather_mask", t.weather_mask, WEATHER_MASKS)
        if not t.smooth_l1_beta > 0:
            raise MofmeError(f"train.smooth_l1_beta must be > 0, got {t.smooth_l1_beta}")
        if t.balance_weight < 0:
            raise MofmeError(f"train.balance_weight must be >= 0, got {t.balance_weight}")
        if not 0 <= t.ema < 1:
            raise MofmeError(f"train.ema is a decay in [0, 1) (0 = off), got {t.ema}")
        _choice("train.amp", t.amp, AMP_MODES)
        _choice("train.on_nonfinite", t.on_nonfinite, NONFINITE_MODES)
        for name in ("log_every",):
            _at_least(f"train.{name}", getattr(t, name), 1)
        for name in ("val_every", "ckpt_every", "threads"):
            _at_least(f"train.{name}", getattr(t, name), 0)
        from mofme.device import check_threads

        check_threads("train.threads", t.threads)
        _choice("video.reference", v.reference, REFERENCES)
        if not 0 <= v.zero_ref_prob <= 1:
            raise MofmeError(f"video.zero_ref_prob must be in [0, 1], got {v.zero_ref_prob}")
        if not self.out:
            raise MofmeError("out: give the run folder")
        from mofme.finetune import check_parts

        check_parts(t.freeze, "train.freeze")
        check_parts(t.train_only, "train.train_only")
        if t.freeze and t.train_only:
            raise MofmeError("train: set either freeze or train_only, not both")

    @classmethod
    def prepare_mapping(cls, data: dict[str, Any], where: str) -> dict[str, Any]:
        """The loader's hook: resolve the model section (preset + overrides, which may start
        from ``train.init``'s checkpoint) into a ``ModelConfig``."""
        data = dict(data)
        train = data.get("train")
        spec = data.get("model", {})
        if isinstance(train, dict) and "balance_loss" in train:
            train = dict(train)
            spec = _move_balance_loss(spec, train.pop("balance_loss"), where)
            data["train"] = train
        if isinstance(spec, ModelConfig):
            return data
        init = train.get("init") if isinstance(train, dict) else None
        init = coerce(init, str | None, f"{where}.train.init")
        data["model"] = resolve_model(spec, init, f"{where}.model")
        return data

    def val_splits(self) -> list[str]:
        vs = self.data.val_split
        return [] if vs is None else [vs] if isinstance(vs, str) else list(vs)


def resolve_model(
    spec: dict[str, Any], init: str | None = None, where: str = "model"
) -> ModelConfig:
    """``{"preset": "tiny", "dim": 32, "routing": {"selection": "topp"}}`` -> ``ModelConfig``.

    Every key besides ``preset`` is a ``ModelConfig`` field, type-checked by the loader;
    ``routing`` may be a mapping (merged over the preset's) or a spec such as ``topp:0.6``.
    ``preset: init`` starts from the config stored in the ``init`` checkpoint (fine-tuning).
    """
    if not isinstance(spec, dict):
        raise MofmeError(f"{where}: expected a mapping (preset: NAME plus overrides), got {spec!r}")
    overrides = dict(spec)
    preset = overrides.pop("preset", "paper")
    if preset == "init":
        if not init:
            raise MofmeError(
                f"{where}.preset: init needs train.init (the checkpoint to start from)"
            )
        from mofme.finetune import init_config

        return build_config(init_config(init).to_dict(), overrides, where)
    if not isinstance(preset, str) or preset not in PRESETS:
        raise MofmeError(
            f"{where}.preset: unknown preset {preset!r}; available: {', '.join(PRESETS)}, init"
        )
    return build_config(PRESETS[preset], overrides, where)


def _move_balance_loss(spec: Any, kind: Any, where: str) -> Any:
    """``train.balance_loss`` (its place before it became a model field, still in the
    ``config.yaml`` of older runs) moves to ``model.balance_loss``."""
    if isinstance(spec, ModelConfig):
        stated = spec.balance_loss
    elif isinstance(spec, dict):
        stated = spec.get("balance_loss", kind)
        spec = {**spec, "balance_loss": stated}
    else:
        return spec  # the loader reports the bad model section
    if stated != kind:
        raise MofmeError(
            f"{where}: train.balance_loss={kind!r} contradicts model.balance_loss={stated!r} "
            "(train.balance_loss is the old name of model.balance_loss)"
        )
    return spec


# Meanings of the model keys whose source carries no comment (model/config.py documents the
# rest); config_reference() fails loudly when a key has neither, so the README cannot drift.
_MODEL_KEY_DOCS = {
    "preset": "starting point: " + ", ".join(PRESETS) + "; every other model key overrides it",
    "out_channels": "output channels (RGB)",
    "dim": "token width",
    "depth": "transformer blocks",
    "num_experts": "experts per FME layer",
    "patch": "patch side in pixels (tokens are patch x patch blocks)",
    "heads": "attention heads",
    "head_dim": "width per attention head",
    "unpatch_channels": "channels of the conv tail after unpatching",
    "ffn_mult": "hidden width of the FFN adaptor, as a multiple of dim",
    "uar_dropout": "dropout of the UaR router's Monte-Carlo passes",
    "global_residual": "add the input to the output (the network predicts a correction)",
    "routing": "expert selection: topk:K, topp:P[:KMIN[:KMAX]], dense, or a mapping of the "
    "keys below",
}


def config_reference() -> str:
    """The README's training config reference: every key, its default and meaning, generated
    from the dataclasses (``tests/test_validation.py`` checks the README against it)."""
    from mofme.config import field_docs, reference_rows, yaml_value

    header = ["| key | default | meaning |", "|---|---|---|"]
    paper = get_preset("paper")
    model_docs = {**field_docs(ModelConfig), **_MODEL_KEY_DOCS}
    model_rows = [f"| `model.preset` | `paper` | {_MODEL_KEY_DOCS['preset']} |"]
    for f in dataclasses.fields(ModelConfig):
        if f.name == "routing":
            model_rows.append(
                f"| `model.routing` | `{paper.routing.describe()}` | {model_docs['routing']} |"
            )
            model_rows += reference_rows(RoutingConfig, "model.routing.", paper.routing)
            continue
        meaning = model_docs.get(f.name, "").replace("|", "\\|")
        model_rows.append(
            f"| `model.{f.name}` | `{yaml_value(getattr(paper, f.name))}` | {meaning} |"
        )
    sections = [
        ("model", "Model (defaults: the `paper` preset)", model_rows),
        ("data", "Data", reference_rows(DataConfig, "data.")),
        ("train", "Training", reference_rows(TrainConfig, "train.")),
        ("video", "Video", reference_rows(VideoConfig, "video.")),
        ("out", "Run folder", [r for r in reference_rows(TrainRunConfig, "") if "`out`" in r]),
    ]
    parts = []
    for _, title, rows in sections:
        for row in rows:
            if row.rstrip().endswith("|  |"):
                raise AssertionError(f"undocumented training config key: {row}")
        parts.append("\n".join([f"**{title}**", "", *header, *rows]))
    return "\n\n".join(parts) + "\n"


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise MofmeError(f"{name}: {value!r} is not one of {', '.join(allowed)}")


def _at_least(name: str, value: int, low: int) -> None:
    if value < low:
        raise MofmeError(f"{name} must be >= {low}, got {value}")


def load_config(
    path: str | os.PathLike[str] | None, overrides: list[str] | None = None
) -> TrainRunConfig:
    """Load a training YAML plus ``key.sub=value`` overrides into a validated config.

    Strict: unknown keys and wrong types raise ``MofmeError`` naming the key (and the file).
    """
    return load_yaml(TrainRunConfig, path, overrides)
