"""What a run reports: ``OUT/log.jsonl`` (training), ``OUT/val.jsonl`` (validation) and
TensorBoard (``OUT/tb``), all written by the main rank."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor

from mofme import checkpoint
from mofme.errors import MofmeError

# The per-step values averaged over a log window (those a step reports).
LOGGED = ("loss", "smooth_l1", "perceptual", "speck", "aux", "grad_norm")


class LossWindow:
    """Means of the step values since the last log line, the step rate over it, and the share
    of its wall time the loop spent waiting for the next batch from the data loader."""

    def __init__(self, step: int) -> None:
        self.started = time.time()
        self._reset(self.started, step)

    def _reset(self, now: float, step: int) -> None:
        self.sums: dict[str, float] = {}
        self.count = 0
        self.waited = 0.0
        self.window_start, self.window_step = now, step

    def add(self, info: dict[str, Any]) -> None:
        """One step's values; skipped (non-finite) steps are left out of the means."""
        if info["skipped"]:
            return
        self.count += 1
        for k in LOGGED:
            if k in info:
                self.sums[k] = self.sums.get(k, 0.0) + info[k]

    def add_wait(self, seconds: float) -> None:
        """Time the loop spent waiting for a batch (``next`` on the data stream)."""
        self.waited += seconds

    def flush(self, step: int, lr: float) -> Window:
        """This window's numbers; starts a new window."""
        now = time.time()
        means = {k: v / max(self.count, 1) for k, v in self.sums.items()}
        means["lr"] = lr
        wall = max(now - self.window_start, 1e-9)
        window = Window(
            means=means,
            elapsed=now - self.started,
            rate=(step - self.window_step) / wall,
            data_wait=min(1.0, self.waited / wall),
            first_step=self.window_step,
        )
        self._reset(now, step)
        return window


@dataclass
class Window:
    """One log window: mean step values, seconds since the start, steps per second, the
    fraction of the window's wall time spent waiting for data, and the step it started after."""

    means: dict[str, float]
    elapsed: float
    rate: float
    data_wait: float
    first_step: int


class RunLog:
    """The run's logs. On resume (``resume_step``), records a killed run wrote after its last
    checkpoint are dropped, and TensorBoard purges them too."""

    def __init__(self, out: Path, tensorboard: bool, resume_step: int | None) -> None:
        self.out = out
        if resume_step is not None:
            drop_records_after(out / "log.jsonl", resume_step)
            drop_records_after(out / "val.jsonl", resume_step)
        self.writer: Any = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(out / "tb"), purge_step=resume_step)

    def train(
        self,
        step: int,
        epoch: float,
        means: dict[str, float],
        active: list[float],
        skipped: int,
        rate: float,
        elapsed: float,
        samples_per_s: float,
        data_wait: float,
        amp: str,
    ) -> None:
        """A training record: the window ``means``, the mean active experts per FME layer,
        the skipped steps so far, steps and samples (pairs or clips, all ranks) per second,
        the fraction of the window spent waiting for data, seconds since the start and the
        autocast mode (``train.amp`` as resolved)."""
        record = {
            "step": step,
            "epoch": epoch,
            **{k: round(v, 6) for k, v in means.items()},
            "active_experts": [round(a, 3) for a in active],
            "skipped": skipped,
            "steps_per_s": round(rate, 3),
            "samples_per_s": round(samples_per_s, 2),
            "data_wait": round(data_wait, 3),
            "elapsed_s": round(elapsed, 1),
            "amp": amp,
        }
        _append(self.out / "log.jsonl", record)
        if self.writer is not None:
            for k, v in means.items():
                self.writer.add_scalar(f"train/{k}", v, step)
            self.writer.add_scalar("train/skipped", skipped, step)
            self.writer.add_scalar("speed/samples_per_s", samples_per_s, step)
            self.writer.add_scalar("speed/data_wait", data_wait, step)
            for i, a in enumerate(active):
                self.writer.add_scalar(f"routing/active_experts_layer{i}", a, step)

    def val(self, result: dict[str, Any], samples: list[tuple[str, Tensor]], step: int) -> None:
        """A validation result (see ``training.validation``) and its sample images."""
        _append(self.out / "val.jsonl", result)
        if self.writer is not None:
            self.writer.add_scalar("val/psnr", result["psnr"], step)
            self.writer.add_scalar("val/ssim", result["ssim"], step)
            for g, v in result["groups"].items():
                self.writer.add_scalar(f"val_psnr/{g}", v["psnr"], step)
            for name, img in samples:
                self.writer.add_image(f"samples/{name}", img.clamp(0, 1), step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def _append(path: Path, record: dict[str, Any]) -> None:
    with path.open("a") as fh:
        fh.write(json.dumps(record) + "\n")


def drop_records_after(path: Path, step: int) -> None:
    """Drop lines of a JSONL log written after ``step`` (by a run killed before its checkpoint)."""
    if not path.is_file():
        return
    try:
        # Undecodable bytes (a foreign or damaged file) must not stop a resume: they become
        # U+FFFD, and such lines fail to parse below like a line cut by a kill.
        text = path.read_bytes().decode("utf-8", errors="replace")
    except OSError as e:
        raise MofmeError(f"cannot read {path}: {e.strerror or e}") from None
    kept = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a kill
        # Lines that are not our records (a list, a string step, ...) are kept as they are:
        # only records known to come after ``step`` are dropped.
        later = (
            isinstance(record, dict)
            and isinstance(record.get("step"), (int, float))
            and not isinstance(record.get("step"), bool)
            and record["step"] > step
        )
        if not later:
            kept.append(line)
    checkpoint.atomic_write(path, lambda tmp: Path(tmp).write_text("".join(k + "\n" for k in kept)))
