"""Which golden the bit-exact guards match on this platform (``tests/golden.py``)."""

from __future__ import annotations

import platform

import pytest
import torch

import golden


@pytest.fixture
def cpu(monkeypatch: pytest.MonkeyPatch):
    def set_cpu(name: str) -> None:
        monkeypatch.setattr(golden, "cpu_capability", lambda: name)

    return set_cpu


HERE = {"torch": torch.__version__, "machine": platform.machine()}


@pytest.mark.parametrize(
    ("primary", "cpu_here", "matches"),
    [
        (HERE, "AVX2", True),  # no capability kept: torch and machine decide, as before
        ({**HERE, "cpu": "AVX512"}, "AVX512", True),
        ({**HERE, "cpu": "AVX512"}, "AVX2", False),
        ({**HERE, "torch": "0.0.0"}, "AVX2", False),
        ({**HERE, "machine": "riscv"}, "AVX2", False),
    ],
)
def test_primary_matches(cpu, primary: dict, cpu_here: str, matches: bool) -> None:
    cpu(cpu_here)
    assert golden.primary_matches(primary) is matches
    assert (golden.exact_entry(primary) is primary) is matches


def test_platform_entry_wins_over_primary(cpu) -> None:
    cpu("AVX2")
    entry = {"runs": "avx2"}
    data = {**HERE, "runs": "primary", "platforms": {golden.platform_key(): entry}}
    assert golden.exact_entry(data) is entry
    cpu("AVX512")  # no entry for this capability: the legacy primary (no cpu kept) applies
    assert golden.exact_entry(data) is data
    data["cpu"] = "AVX2"  # the primary is known to be AVX2, and so does not apply here
    assert golden.exact_entry(data) is None


def test_platform_key_names_all_three(cpu) -> None:
    cpu("AVX2")
    assert golden.platform_key() == f"{torch.__version__}/{platform.machine()}/AVX2"
    assert golden.cpu_capability() == "AVX2"


def test_recorded_commit_is_a_revision() -> None:
    rev = golden.recorded_commit()
    assert rev == "unknown" or len(rev.removesuffix("-dirty")) >= 7
