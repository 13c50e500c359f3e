"""The Gen2 ``--id`` grammar: ``key=a^b``, ``a..b``, ``a..b:stride`` and cross products.

Examples
--------
>>> expand_id_tokens(["visit=1..5:2", "filter=g^r"])
[{'visit': '1', 'filter': 'g'}, {'visit': '1', 'filter': 'r'}, {'visit': '3', 'filter': 'g'}, \
{'visit': '3', 'filter': 'r'}, {'visit': '5', 'filter': 'g'}, {'visit': '5', 'filter': 'r'}]
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Mapping

__all__ = ["DataIdSyntaxError", "cast_data_id", "expand_id_tokens", "format_data_id", "parse_values"]

_RANGE = re.compile(r"^(-?\d+)\.\.(-?\d+)(?::(\d+))?$")


class DataIdSyntaxError(ValueError):
    """An ``--id`` argument that does not follow the grammar."""


def parse_values(text: str) -> list[str]:
    """Expand one value list: ``a^b^c`` alternatives, each maybe an integer range ``a..b[:s]``.

    Raises
    ------
    DataIdSyntaxError
        For an empty value, a reversed range or a stride < 1.
    """
    values: list[str] = []
    for part in text.split("^"):
        part = part.strip()
        if not part:
            raise DataIdSyntaxError(f"empty value in {text!r}")
        m = _RANGE.match(part)
        if m:
            start, stop = int(m.group(1)), int(m.group(2))
            stride = int(m.group(3) or 1)
            if stride < 1:
                raise DataIdSyntaxError(f"stride must be >= 1 in {part!r}")
            if stop < start:
                raise DataIdSyntaxError(f"range {part!r} ends before it starts")
            values.extend(str(v) for v in range(start, stop + 1, stride))
        else:
            values.append(part)
    return values


def expand_id_tokens(tokens: Iterable[str]) -> list[dict[str, str]]:
    """Expand the ``key=value`` tokens of one ``--id`` into data IDs (cross product of keys).

    Parameters
    ----------
    tokens : iterable of `str`
        E.g. ``["visit=1^3", "filter=g"]``.  No tokens means "everything": ``[{}]``.

    Returns
    -------
    data_ids : `list` of `dict`
        Values are still strings; see `cast_data_id`.
    """
    keys: list[str] = []
    choices: list[list[str]] = []
    for token in tokens:
        if "=" not in token:
            raise DataIdSyntaxError(f"--id argument {token!r} is not of the form key=value")
        key, _, value = token.partition("=")
        key = key.strip()
        if not key:
            raise DataIdSyntaxError(f"--id argument {token!r} has no key")
        if key in keys:
            choices[keys.index(key)].extend(parse_values(value))
        else:
            keys.append(key)
            choices.append(parse_values(value))
    return [dict(zip(keys, combo)) for combo in itertools.product(*choices)]


def cast_data_id(data_id: Mapping[str, object], key_types: Mapping[str, type]) -> dict[str, object]:
    """Cast the values of a data ID to the camera's key types.

    Raises
    ------
    KeyError
        For a key the camera does not have; the message lists the valid keys.
    DataIdSyntaxError
        For a value that does not convert (e.g. ``visit=abc``).
    """
    out: dict[str, object] = {}
    for key, value in data_id.items():
        if key not in key_types:
            raise KeyError(f"unknown data ID key {key!r}; valid keys are: {', '.join(key_types)}")
        typ = key_types[key]
        try:
            out[key] = typ(value)
        except (TypeError, ValueError):
            raise DataIdSyntaxError(f"data ID value {key}={value!r} is not a valid {typ.__name__}") from None
    return out


def format_data_id(data_id: Mapping[str, object]) -> str:
    """Format a data ID as LSST logs it: ``{'visit': 1, 'filter': 'g'}`` -> ``visit=1 filter=g``."""
    return " ".join(f"{k}={v}" for k, v in data_id.items())
