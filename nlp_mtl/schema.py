"""Turn plain YAML mappings into typed dataclasses, with errors that name the file and key.

Every config object in nlp-mtl is a dataclass; this module is the only place that knows how to
validate one. It checks unknown keys (with a 'did you mean'), missing keys, and value types,
including ``X | None``, ``Literal[...]``, ``list[X]``, ``dict[str, X]`` and nested dataclasses.
"""

from __future__ import annotations

import dataclasses
import math
import types
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

from .errors import ConfigError, did_you_mean

T = TypeVar("T")

_MISSING = dataclasses.MISSING
_YAML_BOOL_WORDS = {False: ("no", "off", "false", "n"), True: ("yes", "on", "true", "y")}


def _describe(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " or ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in get_args(tp))
    if origin is list:
        return f"a list of {_describe(get_args(tp)[0])}"
    if origin is dict:
        return f"a mapping of {_describe(get_args(tp)[0])} to {_describe(get_args(tp)[1])}"
    if tp is type(None):
        return "null"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    if tp is Any:
        return "any value"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


def _convert(value: Any, tp: Any, where: str) -> Any:
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        options = get_args(tp)
        if value is None and type(None) in options:
            return None
        if isinstance(value, dict):
            # A mapping can only be meant as the one mapping-shaped option: report its error.
            shaped = [o for o in options if dataclasses.is_dataclass(o) or get_origin(o) is dict]
            if len(shaped) == 1:
                return _convert(value, shaped[0], where)
        errors = []
        # Scalars before containers so that "3" never becomes a one-field dataclass.
        for option in sorted(options, key=lambda o: dataclasses.is_dataclass(o)):
            if option is type(None):
                continue
            try:
                return _convert(value, option, where)
            except ConfigError as err:
                errors.append(err)
        if len(errors) == 1:
            raise errors[0]
        raise ConfigError(f"{where}: expected {_describe(tp)}, got {value!r}.")
    if origin is Literal:
        allowed = get_args(tp)
        if isinstance(value, bool):
            # YAML 1.1 reads a bare `no`/`off`/`yes`/`on` as a boolean; where the field's
            # options include that word (mixed_precision: no), the user meant the word.
            words = [a for a in allowed if isinstance(a, str) and a.lower() in _YAML_BOOL_WORDS[value]]
            if len(words) == 1:
                return words[0]
        if value not in allowed:
            hint = did_you_mean(str(value), [str(a) for a in allowed])
            raise ConfigError(f"{where}: expected {_describe(tp)}, got {value!r}{hint}.")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected {_describe(tp)}, got {value!r}.")
        (item_tp,) = get_args(tp)
        return [_convert(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected {_describe(tp)}, got {value!r}.")
        key_tp, val_tp = get_args(tp)
        return {
            _convert(k, key_tp, f"{where}.{k}"): _convert(v, val_tp, f"{where}.{k}")
            for k, v in value.items()
        }
    if dataclasses.is_dataclass(tp):
        return from_mapping(tp, value, where)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}.")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}.")
        return value
    if tp is float:
        if isinstance(value, str):
            # PyYAML (YAML 1.1) reads '5e-5' as a string; users mean the number.
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"{where}: expected a finite number, got {value!r}.")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}.")
        return value
    raise TypeError(f"unsupported schema type {tp!r} at {where}")


def load_yaml(stream: Any) -> Any:
    """``yaml.safe_load``, except that a key given twice in one mapping is an error (PyYAML keeps
    the last one silently, so a setting written twice loses the first without a word)."""
    import yaml

    class StrictLoader(yaml.SafeLoader):
        pass

    def mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, Any] = {}
        for key_node, _ in node.value:
            key = loader.construct_object(key_node, deep=deep)
            try:
                hash(key)
            except TypeError:
                continue  # PyYAML reports unhashable keys itself
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while reading a mapping", node.start_mark,
                    f"duplicate key '{key}' (first on line {seen[key].line + 1})", key_node.start_mark)
            seen[key] = key_node.start_mark
        return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)

    StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    return yaml.load(stream, Loader=StrictLoader)  # noqa: S506  (a SafeLoader subclass)


def from_mapping(cls: type[T], data: Any, where: str) -> T:
    """Build dataclass ``cls`` from ``data``; ``where`` prefixes every error (file and key path)."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping with keys {_field_list(cls)}, got {data!r}.")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init and not f.name.startswith("_")}
    for key in data:
        if key not in fields:
            raise ConfigError(
                f"{where}: unknown key '{key}'{did_you_mean(str(key), fields)}; "
                f"allowed keys: {', '.join(fields)}."
            )
    kwargs = {}
    for name, f in fields.items():
        if name in data:
            kwargs[name] = _convert(data[name], hints[name], f"{where}.{name}" if where else name)
        elif f.default is _MISSING and f.default_factory is _MISSING:
            raise ConfigError(f"{where}: missing required key '{name}' ({_describe(hints[name])}).")
    obj = cls(**kwargs)
    check = getattr(obj, "validate", None)
    if check is not None:
        check(where)
    return obj


def _field_list(cls: type) -> str:
    return ", ".join(f.name for f in dataclasses.fields(cls) if f.init)


def to_mapping(obj: Any) -> Any:
    """Plain-data (JSON/YAML-safe) view of a dataclass tree."""
    if dataclasses.is_dataclass(obj):
        return {
            f.name: to_mapping(getattr(obj, f.name))
            for f in dataclasses.fields(obj)
            if f.init and not f.name.startswith("_")
        }
    if isinstance(obj, list):
        return [to_mapping(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_mapping(v) for k, v in obj.items()}
    return obj


__all__ = ["from_mapping", "to_mapping"]
