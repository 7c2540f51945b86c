"""The config argument, what follows ':' in `--config=experiments/configs/<file>.py:<arg>`, for
every config file; and config groups derived from a dataclass's fields.

    mad.py:quick                                 a bare word first: the preset
    mad.py:quick,seeds=3,report=false            the preset, then fields
    mad.py:tasks=compression,memorization        a value keeps its commas: an item without '='
                                                 after the first belongs to the value before it
    scaling.py:smoke,train.learning_rate=1e-3    fields of a group by their dotted name

Values take the type of the field (its value's, or a placeholder's declared type): booleans
true/false, 1/0, yes/no; integers; floats; strings as written; tuples and lists of
comma-separated items. A value that holds '=' is set with `--config.<field>=...` instead.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Iterable

from ml_collections import config_dict

_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no")


def parse_arg(arg: str | None) -> tuple[str | None, list[tuple[str, str]]]:
    """`[word][,key=value]...` -> (the bare word or None, [(key, value text), ...])."""
    word, fields = None, []
    for i, item in enumerate(s.strip() for s in (arg or "").split(",")):
        key, sep, value = item.partition("=")
        if sep:
            fields.append((key.strip(), value.strip()))
        elif i == 0:
            word = item or None
        elif fields:  # a list value: "tasks=a,b" is one field
            fields[-1] = (fields[-1][0], f"{fields[-1][1]},{item}")
    return word, fields


def apply_arg(config: config_dict.ConfigDict, arg: str | None) -> config_dict.ConfigDict:
    """Applies `arg` to `config` in place: the bare word sets `preset`, then every field."""
    word, fields = parse_arg(arg)
    if word is not None:
        fields.insert(0, ("preset", word))
    return set_fields(config, fields, arg=arg)


def set_fields(config: config_dict.ConfigDict, fields: Iterable[tuple[str, str]], *,
               arg: str | None = None) -> config_dict.ConfigDict:
    """Sets each (dotted key, value text) as the field's type; one-line ValueError naming the
    valid keys for a key the config lacks, or the type for a value that does not parse."""
    where = f" in config argument {arg!r}" if arg else ""
    for key, text in fields:
        parent = config
        *groups, name = key.split(".")
        for group in groups:
            if not isinstance(parent.get(group), config_dict.ConfigDict):
                raise ValueError(f"unknown config group {group!r} of {key!r}{where}; groups: "
                                 f"{', '.join(_groups(parent)) or 'none'}")
            parent = parent[group]
        if name not in parent:
            raise ValueError(f"unknown config field {key!r}{where}; valid: "
                             f"{', '.join(sorted(parent))}")
        if isinstance(parent[name], config_dict.ConfigDict):
            raise ValueError(f"config field {key!r} is a group; set its fields as "
                             f"{key}.<field> ({', '.join(sorted(parent[name]))})")
        parent[name] = parse_value(key, text, *_field_type(parent, name))
    return config


def parse_value(key: str, text: str, kind: type | None, item_kind: type | None = None):
    """`text` as `kind` (None: a string). Tuples and lists split on commas; their items take
    `item_kind` (None: strings)."""
    text = text.strip()
    if kind is bool:
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise ValueError(f"config field {key!r} takes true or false, got {text!r}")
    if kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            what = "an integer" if kind is int else "a number"
            raise ValueError(f"config field {key!r} takes {what}, got {text!r}") from None
    if kind in (tuple, list):
        return kind(parse_value(key, item, item_kind) for item in text.split(",") if item.strip())
    return text


def _field_type(config: config_dict.ConfigDict, name: str) -> tuple[type | None, type | None]:
    """(the field's type, its items' type for a tuple or list)."""
    value = config[name]
    if value is None:
        try:  # a placeholder knows its type; a plain None field takes strings
            return config.get_ref(name).get_type(), None
        except ValueError:
            return None, None
    if isinstance(value, (tuple, list)):
        return type(value), type(value[0]) if value else None
    return type(value), None


def _groups(config: config_dict.ConfigDict) -> list[str]:
    return sorted(k for k, v in config.items() if isinstance(v, config_dict.ConfigDict))


def placeholders(cls, *, exclude: Iterable[str] = ()) -> config_dict.ConfigDict:
    """A config group of typed placeholders (None: "not set") for every field of dataclass `cls`
    that has a default, except `exclude`: the command line sets them, a resolver fills the rest
    from a preset and `cls`'s own defaults, which are written there only."""
    hints = typing.get_type_hints(cls)
    group = {}
    for field in dataclasses.fields(cls):
        if field.name in exclude or field.default is dataclasses.MISSING:
            continue
        group[field.name] = config_dict.placeholder(_scalar_type(hints[field.name], field.name))
    return config_dict.ConfigDict(group)


def defaults(cls) -> dict[str, Any]:
    """{field: default} of dataclass `cls` (fields without a default left out)."""
    return {f.name: f.default for f in dataclasses.fields(cls)
            if f.default is not dataclasses.MISSING}


def _scalar_type(hint, name: str) -> type:
    """bool, int, float or str from a field annotation such as `int | None`."""
    union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    options = [t for t in typing.get_args(hint) if t is not type(None)] if union else [hint]
    if len(options) == 1 and options[0] in (bool, int, float, str):
        return options[0]
    raise TypeError(f"field {name!r} ({hint}) has no command-line type; exclude it")
