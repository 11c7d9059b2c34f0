"""Turn nested dicts (from YAML or the command line) into the stages' frozen config dataclasses, and back.

Unknown keys and wrong types are errors that name the full key path, so a typo in a YAML file never silently
falls back to a default. A config class may name keys that are deliberately not settings, because something else
decides their value (a class attribute DECIDED_ELSEWHERE: key → who decides); setting one is an error that says so.
Keys that were renamed or split (a class attribute RENAMED: old key → what to set instead) are a one-line error too,
so an old config never silently means something else.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from trimflow import FlowError

T = TypeVar("T")


def from_dict(cls: type[T], data: dict[str, Any] | None, where: str = "config") -> T:
    if data is None:
        return cls()
    if not isinstance(data, dict):
        raise FlowError(f"{where}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    elsewhere = getattr(cls, "DECIDED_ELSEWHERE", {})
    decided = sorted(set(data) & set(elsewhere))
    if decided:
        raise FlowError(f"{where}: {decided[0]} is not a setting: {elsewhere[decided[0]]}")
    renamed = getattr(cls, "RENAMED", {})
    old = sorted(set(data) & set(renamed))
    if old:
        raise FlowError(f"{where}.{old[0]} is no longer a key: {renamed[old[0]]}")
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise FlowError(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(fields)}")
    kwargs = {k: _convert(hints[k], _with_default(fields[k], v), f"{where}.{k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise FlowError(f"{where}: {e}") from None


def _with_default(field: dataclasses.Field, value: Any) -> Any:
    """A partial mapping for a nested config overrides that field's own default, not the nested class's."""
    if not isinstance(value, dict):
        return value
    default = field.default
    if default is dataclasses.MISSING and field.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        default = field.default_factory()  # type: ignore[misc]
    if dataclasses.is_dataclass(default) and not isinstance(default, type):
        return merge(to_dict(default), value)
    return value


def _convert(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, where)
            except FlowError:
                continue
        raise FlowError(f"{where}: {value!r} is not a valid {tp}")
    if origin is typing.Literal:
        if value not in typing.get_args(tp):
            raise FlowError(f"{where}: {value!r} is not one of {typing.get_args(tp)}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise FlowError(f"{where}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        item = args[0] if args else Any
        items = [_convert(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise FlowError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str, bool):
        if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
            raise FlowError(f"{where}: expected {tp.__name__}, got {value!r}")
        return value
    return value


def to_dict(obj: Any) -> Any:
    from trimflow.artifacts import to_jsonable
    return to_jsonable(obj)


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise FlowError(f"config file {path} does not exist")
    if path.is_dir():
        raise FlowError(f"config file {path} is a folder; give the YAML file inside it")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise FlowError(f"{path}: not valid YAML: {yaml_problem(e)}") from None
    except UnicodeDecodeError:
        raise FlowError(f"{path}: not a text file (YAML must be UTF-8 text)") from None
    if data is not None and not isinstance(data, dict):
        raise FlowError(f"{path}: the top level must be a mapping of keys (e.g. `trim:` / `quantize:`), got a "
                        f"{type(data).__name__}; remove the leading '- ' or wrap the entries in keys")
    return data or {}


def yaml_problem(error: Exception) -> str:
    """PyYAML's error as one line ("line 3, column 7: mapping values are not allowed here"): its own text runs to
    several lines, with the offending line quoted and a caret under it."""
    mark, problem = getattr(error, "problem_mark", None), getattr(error, "problem", None)
    if mark is None or not problem:
        return " ".join(str(error).split())
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}"


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge `override` onto `base` (override wins)."""
    out = dict(base)
    for k, v in override.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def parse_set(items: list[str]) -> dict[str, Any]:
    """`--set trim.budget=0.5 quantize.weight_bits=2` → nested dict (values parsed as YAML scalars)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise FlowError(f"--set {item!r}: expected KEY.PATH=VALUE")
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        try:
            node[parts[-1]] = yaml.safe_load(raw)
        except yaml.YAMLError as e:
            raise FlowError(f"--set {item!r}: the value is not valid YAML ({yaml_problem(e)}); give a "
                            "number, a word, a [list] or a quoted string") from None
    return out
