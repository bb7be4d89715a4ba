"""Strict YAML -> typed dataclass loading with ``key.sub=value`` command-line overrides.

Unknown keys are errors (a typo must not silently fall back to a default), values are checked
against the field's annotated type, and nested dataclasses map onto nested mappings. Every
config of the project goes through :func:`from_dict`, checked once by the class's
``validate()``. Two optional class hooks cover the spellings that are not plain fields:

* ``from_spec(text)`` (classmethod): a string accepted for a nested dataclass field, e.g.
  ``RoutingConfig``'s ``topk:4``;
* ``prepare_mapping(data, where)`` (classmethod): rewrites the raw mapping before the strict
  checks, e.g. ``TrainRunConfig``'s model section written as a preset plus overrides.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from pathlib import Path
from typing import Any, TypeVar, Union

import yaml

from mofme.errors import MofmeError

T = TypeVar("T")

_EXP_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return coerce(value, a, where)
            except MofmeError as e:
                errors.append(str(e))
        raise MofmeError(errors[0] if errors else f"{where}: bad value {value!r}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if isinstance(value, str) and hasattr(tp, "from_spec"):
            return tp.from_spec(value)
        if not isinstance(value, dict):
            raise MofmeError(f"{where}: expected a mapping, got {value!r}")
        return from_dict(tp, value, where)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise MofmeError(f"{where}: expected a list, got {value!r}")
        (item_tp, *_) = typing.get_args(tp) or (Any,)
        items = [coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise MofmeError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise MofmeError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise MofmeError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        # YAML 1.1 reads ``1e-3`` (no dot) as a string: accept it for float fields.
        numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not (numeric or (isinstance(value, str) and _EXP_FLOAT.fullmatch(value.strip()))):
            raise MofmeError(f"{where}: expected a number, got {value!r}")
        number = float(value)
        # No setting means anything at NaN / inf (``grad_clip: .nan`` would silently turn
        # clipping off, ``epochs: .inf`` never ends), and range checks pass NaN through.
        if not math.isfinite(number):
            raise MofmeError(f"{where}: expected a finite number, got {value!r}")
        return number
    if tp is str:
        if isinstance(value, str):
            return value
        raise MofmeError(f"{where}: expected a string, got {value!r}")
    return value


def from_dict(cls: type[T], data: dict[str, Any], where: str = "config") -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys and wrong types raise ``MofmeError``."""
    if not isinstance(data, dict):
        raise MofmeError(f"{where}: expected a mapping, got {type(data).__name__}")
    prepare = getattr(cls, "prepare_mapping", None)
    if prepare is not None:
        data = prepare(data, where)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise MofmeError(
            f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(fields)}"
        )
    kwargs = {k: coerce(v, hints[k], f"{where}.{k}") for k, v in data.items()}
    obj = cls(**kwargs)
    if hasattr(obj, "validate"):
        obj.validate()
    return obj


def to_dict(obj: Any) -> dict[str, Any]:
    return dataclasses.asdict(obj)


def apply_override(data: dict[str, Any], assignment: str) -> None:
    """Apply ``a.b.c=value`` (value parsed as YAML) to a nested dict in place."""
    if "=" not in assignment:
        raise MofmeError(f"bad override {assignment!r}: use key.subkey=value")
    key, raw = assignment.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    node = data
    parts = key.strip().split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise MofmeError(f"bad override {assignment!r}: {p} is not a section")
    node[parts[-1]] = value


def load_yaml(cls: type[T], path: str | Path | None, overrides: list[str] | None = None) -> T:
    """Load a YAML file (or nothing: defaults) into ``cls``, then apply ``overrides``."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise MofmeError(f"config file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            raise MofmeError(f"{path}: invalid YAML ({str(e).splitlines()[0]})") from None
        except UnicodeDecodeError:
            raise MofmeError(f"{path}: not a UTF-8 text file (is it a YAML config?)") from None
        except OSError as e:
            raise MofmeError(f"cannot read config file {path}: {e.strerror or e}") from None
        if not isinstance(data, dict):
            raise MofmeError(f"{path}: expected a mapping at the top level")
    for o in overrides or []:
        apply_override(data, o)
    try:
        return from_dict(cls, data)
    except MofmeError as e:
        raise MofmeError(f"{path or 'config'}: {e}") from None


# ------------------------------------------------------------------------ reference (README)

_FIELD_LINE = re.compile(r"^(\w+)\s*:[^=]*(?:=.*?)?(?:\s+#\s*(?P<comment>.*))?$")


def field_docs(cls: type) -> dict[str, str]:
    """Each field's comment in the source of dataclass ``cls``: the ``# ...`` after it, else the
    comment lines right above it. The reference in the README is built from these, so the
    documentation is the code's own."""
    import inspect

    docs: dict[str, str] = {}
    above: list[str] = []
    names = {f.name for f in dataclasses.fields(cls)}
    for raw in inspect.getsource(cls).splitlines()[1:]:
        line = raw.strip()
        if line.startswith("#"):
            text = line.lstrip("#").strip()
            # "# -- a group of options ---" heads a group of fields; it is not a field's doc.
            above = [] if text.startswith("--") else [*above, text]
            continue
        match = _FIELD_LINE.match(line)
        if match and match.group(1) in names:
            docs[match.group(1)] = match.group("comment") or " ".join(above)
        above = []
    return docs


def yaml_value(value: Any) -> str:
    """``value`` as it would be written in a YAML config (``null``, ``true``, ``[0.9, 0.999]``)."""
    text = yaml.safe_dump(value, default_flow_style=True, width=1000).strip()
    text = text.removesuffix("\n...").removesuffix("...").strip()
    return '""' if text in ("", "''") else text


def default_of(f: dataclasses.Field[Any]) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def reference_rows(cls: type, prefix: str, defaults: Any = None) -> list[str]:
    """Markdown table rows ``| key | default | meaning |`` for every field of ``cls``;
    ``defaults``: an instance whose values are shown instead of the class defaults."""
    docs = field_docs(cls)
    rows = []
    for f in dataclasses.fields(cls):
        value = getattr(defaults, f.name) if defaults is not None else default_of(f)
        if dataclasses.is_dataclass(value):
            continue  # nested sections get their own rows
        meaning = docs.get(f.name, "").replace("|", "\\|")
        rows.append(f"| `{prefix}{f.name}` | `{yaml_value(value)}` | {meaning} |")
    return rows
