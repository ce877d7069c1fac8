"""How config text is read: YAML that YAML accepts but the user did not mean, caught before it becomes a config.

- a key written twice (YAML silently keeps the last: a whole `training:` section can vanish);
- `{name:rougeL}`, which YAML reads as one key 'name:rougeL' with no value (a space must follow the colon);
- command-line overrides whose value is text that is not YAML (`data.prompt_template=Q: {prompt}`): for a text
  field the text itself is the value, for other fields one line says how to write it.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Any

import yaml

from llm_pg.errors import ConfigError


def _f(default, help: str):
    """A dataclass field with its help text (mutable defaults are copied per instance)."""
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata={"help": help})
    return dataclasses.field(default=default, metadata={"help": help})


class DuplicateKeyError(yaml.YAMLError):
    """A mapping that names one key twice."""


class UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key written twice in one mapping."""


def _mapping(loader: UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            if key in seen:
                line = key_node.start_mark.line + 1
                raise DuplicateKeyError(f"'{key}' is written twice (lines {seen[key]} and {line}); YAML would keep "
                                        "only the last one, so merge them into one")
            seen[key] = key_node.start_mark.line + 1
        except TypeError:  # an unhashable key: construct_mapping reports it
            pass
    return loader.construct_mapping(node, deep=deep)


UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def load_yaml(text: str):
    return yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass


def check_colon_keys(values, where: str = "") -> None:
    """Refuse {key:value} without a space after the colon, which YAML reads as one key with no value."""
    if isinstance(values, dict):
        for key, value in values.items():
            name = f"{where}.{key}" if where else str(key)
            if isinstance(key, str) and ":" in key and value is None:
                k, v = key.split(":", 1)
                raise ConfigError(f"{where or 'config'}: '{key}' reads as one key without a value; YAML needs a space "
                                  f"after the colon: {{{k}: {v}}}")
            check_colon_keys(value, name)
    elif isinstance(values, list):
        for i, value in enumerate(values):
            check_colon_keys(value, f"{where}[{i}]")


def _is_text(hint) -> bool:
    """str or str | None (not list[str] | str, where YAML decides between a list and a string)."""
    if hint is str:
        return True
    args = typing.get_args(hint)
    return typing.get_origin(hint) in (typing.Union, types.UnionType) and set(args) == {str, type(None)}


def field_hint(root, path: list[str]):
    """The type of the config field at path (None for an unknown key: the unknown-key check reports it)."""
    cls = root
    for i, part in enumerate(path):
        if not dataclasses.is_dataclass(cls):
            return None
        hints = typing.get_type_hints(cls)
        if part not in hints:
            return None
        cls = hints[part]
    return cls


def override_value(text: str, raw: str, hint):
    """The value of an override 'key=raw' for a field of type hint."""
    if not raw.strip():
        return ""
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as e:
        if _is_text(hint):
            return raw  # Q: {prompt} is the text the user typed
        first = str(e).strip().splitlines()[0]
        raise ConfigError(f"override '{text}': the value is not valid YAML ({first}); write lists as [a, b] and "
                          "mappings as {key: value}, and quote text that holds ': ' or braces") from None
    if _is_text(hint) and not isinstance(value, str) and value is not None and isinstance(value, (dict, list)):
        return raw  # {prompt} is a YAML mapping, but this field takes text: the text as typed
    return value


def check_type(value: Any, hint: Any, key: str) -> Any:
    """Return value converted to hint, or raise ConfigError naming the key."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        *others, last = [a for a in args if a is not type(None)]
        for alternative in others:  # the first that fits, e.g. list[str] | str
            try:
                return check_type(value, alternative, key)
            except ConfigError:
                pass
        return check_type(value, last, key)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [check_type(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)] if args else value
    if origin is dict and args:  # e.g. rlhf.choose: dict[str, list[str]]
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return {check_type(k, args[0], f"{key} (a key)"): check_type(v, args[1], f"{key}.{k}")
                for k, v in value.items()}
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is dict and isinstance(value, dict):
        return value
    if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise ConfigError(f"{key}: expected {getattr(hint, '__name__', hint)}, got {value!r}")
    return value


def build_dataclass(cls, values: dict, prefix: str):
    """cls(**values) with every value checked against its field's type hint; sections become their dataclasses;
    an unknown key is refused with the closest valid name."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        if not isinstance(key, str):  # YAML 1.1 reads on/off/yes/no as booleans, and 5 or null keys as such
            raise ConfigError(f"unknown config key '{prefix}{key}' (a {type(key).__name__}, not a name: YAML reads "
                              "on, off, yes, no, true, false and null as values; quote a key that is one)")
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f" (did you mean '{prefix}{close[0]}'?)" if close else f" (valid: {', '.join(names)})"
            raise ConfigError(f"unknown config key '{prefix}{key}'{hint}")
        if dataclasses.is_dataclass(hints[key]):
            if not isinstance(value, dict):
                raise ConfigError(f"{prefix}{key}: expected a section (mapping), got {value!r}")
            kwargs[key] = build_dataclass(hints[key], value, f"{prefix}{key}.")
        else:
            kwargs[key] = check_type(value, hints[key], f"{prefix}{key}")
    return cls(**kwargs)
