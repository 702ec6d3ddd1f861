"""Typed dataclasses from YAML: the machinery under ``tcl_hf.config``, independent of its keys.

A field made with ``option`` carries its allowed range as a ``check(value) -> error text or None``;
``build`` turns a nested mapping (a recipe plus dotted overrides) into the dataclass, converting every
value to its field's type hint and raising ``ConfigError`` with one line naming the key on the first
problem.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import field
from pathlib import Path
from typing import Any, Callable, Literal, Optional

import yaml

from .errors import ConfigError

# A field's validity check: the error text for a bad value, None for a good one.
Check = Callable[[Any], Optional[str]]


def option(default: Any, check: Check | None = None, help: str = "") -> Any:
    """A config field with an optional validity check ``check(value) -> error text or None``."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"check": check, "help": help})
    return field(default=default, metadata={"check": check, "help": help})


def in_range(lo: float | None = None, hi: float | None = None, lo_open: bool = False,
             hi_open: bool = False) -> Check:
    def check(v: Any) -> str | None:
        if v is None:
            return None
        bad_lo = lo is not None and (v <= lo if lo_open else v < lo)
        bad_hi = hi is not None and (v >= hi if hi_open else v > hi)
        if bad_lo or bad_hi:
            left = "(" if lo_open else "["
            right = ")" if hi_open else "]"
            return f"must be in {left}{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}{right}"
        return None
    return check


def positive(v: Any) -> str | None:
    return None if v is None or v > 0 else "must be > 0"


def non_negative(v: Any) -> str | None:
    return None if v is None or v >= 0 else "must be >= 0"


def _key_name(f: dataclasses.Field) -> str:
    # `with` is a Python keyword, so the field is `with_` while the key stays `log.with`.
    return f.name.rstrip("_")


def _fields(cls) -> dict[str, dataclasses.Field]:
    return {_key_name(f): f for f in dataclasses.fields(cls)}


def describe(tp: Any) -> str:
    """A type hint as the user reads it: `int | null`, `tcl | ce`, `list of float`."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Union:
        inner = [a for a in args if a is not type(None)]
        return " | ".join(describe(a) for a in inner) + (" | null" if type(None) in args else "")
    if origin is Literal:
        return " | ".join(str(a) for a in args)
    if origin is list:
        return f"list of {describe(args[0])}"
    if origin is dict:
        return f"mapping of {describe(args[1])}"
    return getattr(tp, "__name__", str(tp))


def coerce(key: str, value: Any, tp: Any) -> Any:
    """Convert a parsed YAML value to the field type, or raise ConfigError naming the key."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Union:
        nullable = type(None) in args
        if nullable and (value is None or (isinstance(value, str) and value.lower() in ("null", "none", "~"))):
            return None
        inner = [a for a in args if a is not type(None)]
        # An int or a word (warmup_epochs: 20 | auto): the first type that takes the value wins.
        for option_type in inner[:-1]:
            try:
                return coerce(key, value, option_type)
            except ConfigError:
                pass
        try:
            return coerce(key, value, inner[-1])
        except ConfigError:
            if len(inner) == 1:
                raise
        raise ConfigError(f"{key}: expected {describe(tp)}, got {value!r}")
    if origin is Literal:
        if value is False and "no" in args:
            return "no"  # YAML 1.1 reads a bare `no` as false
        if isinstance(value, str) and value.lower() in args:
            return value.lower()
        raise ConfigError(f"{key}: {value!r} is not allowed; choose one of: {describe(tp)}")
    if origin is list:
        if isinstance(value, str):
            value = yaml.safe_load(value) if value.strip().startswith("[") else value.split(",")
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected {describe(tp)}, got {value!r}")
        return [coerce(f"{key}[{i}]", v, args[0]) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected {describe(tp)}, got {value!r}")
        return {str(k): coerce(f"{key}.{k}", v, args[1]) for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on", "false", "no", "0", "off"):
            return value.lower() in ("true", "yes", "1", "on")
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        try:
            # YAML 1.1 reads `1e-3` as a string, so numbers may arrive as text.
            number = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected a number, got {value!r}") from None
        if number != number or number in (float("inf"), float("-inf")):
            raise ConfigError(f"{key}: expected a finite number, got {value!r}")
        return number
    if tp is str:
        if isinstance(value, (dict, list)) or value is None:
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return str(value)
    raise ConfigError(f"{key}: unsupported type {tp}")


def build(cls: type, values: dict, prefix: str) -> Any:
    """Instantiate dataclass ``cls`` from a nested dict, checking every key and value."""
    if not isinstance(values, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'recipe'}: expected a mapping of keys, got {values!r}")
    fields = _fields(cls)
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in values.items():
        full = f"{prefix}{key}"
        if key not in fields:
            raise ConfigError(f"unknown key '{full}'; allowed here: {', '.join(sorted(fields))}")
        f = fields[key]
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            kwargs[f.name] = build(tp, value if value is not None else {}, f"{full}.")
            continue
        coerced = coerce(full, value, tp)
        check = f.metadata.get("check")
        problem = check(coerced) if check else None
        if problem:
            raise ConfigError(f"{full}: {value!r} {problem}")
        kwargs[f.name] = coerced
    return cls(**kwargs)


def set_dotted(tree: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """``a.b=value`` -> ("a.b", parsed value); YAML rules for the value."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key=value (e.g. train.epochs=10)")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {text!r} has no key before '='")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def read_recipe(path: str | Path) -> dict:
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"recipe file {str(path)!r} is a folder; a recipe is a YAML file (see recipes/)")
    if not path.is_file():
        raise ConfigError(f"recipe file {str(path)!r} does not exist")
    try:
        tree = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as exc:
        raise ConfigError(f"recipe {path}: not a UTF-8 text file ({exc.reason} at byte {exc.start}); "
                          f"a recipe is a YAML file") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        # Some YAML errors (control characters) span several lines; the first says what is wrong.
        problem = str(getattr(exc, "problem", None) or exc).strip().splitlines()[0]
        raise ConfigError(f"recipe {path}{where}: not valid YAML ({problem})") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"recipe {path}: expected a mapping of keys at the top level")
    return tree


def to_dict(cfg: Any) -> dict:
    """Nested plain dict with the user-facing key names (``log.with``)."""
    out = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        out[_key_name(f)] = to_dict(value) if dataclasses.is_dataclass(value) else value
    return out


def flatten(tree: dict, prefix: str = "") -> dict:
    """Nested dict -> {"a.b": value}, the dotted form the command line uses."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def flat_keys(cls, prefix: str = "") -> dict[str, Any]:
    """Every dotted key with its type hint (used by tests and the docs)."""
    out = {}
    hints = typing.get_type_hints(cls)
    for key, f in _fields(cls).items():
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            out.update(flat_keys(tp, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = tp
    return out


def key_docs(cls, prefix: str = "") -> list[tuple[str, str, Any, str]]:
    """Every dotted key of ``cls`` as (key, type as the user reads it, default, help), in declaration order."""
    out = []
    hints = typing.get_type_hints(cls)
    for key, f in _fields(cls).items():
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            out += key_docs(tp, f"{prefix}{key}.")
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        out.append((f"{prefix}{key}", describe(tp), default, f.metadata.get("help", "")))
    return out
