"""Configuration fields, re-exported from ``lsst.pex.config``.

calexpress configs keep LSST's semantics (``config.isr.doBias = False``, override
files, retargeting of ``ConfigurableField``, ``freeze``, ``save``/``load``) by
building on ``lsst-pex-config`` itself.  Import everything config-related from
here so that the dependency stays in one place.
"""

from collections.abc import Iterable
from typing import Any

from lsst.pex.config import (
    ChoiceField,
    Config,
    ConfigChoiceField,
    ConfigDictField,
    ConfigField,
    ConfigurableField,
    DictField,
    Field,
    FieldValidationError,
    ListField,
    RangeField,
    RegistryField,
    compareConfigs,
    makeRegistry,
)

__all__ = [
    "ChoiceField",
    "Config",
    "ConfigChoiceField",
    "ConfigDictField",
    "ConfigField",
    "ConfigurableField",
    "DictField",
    "Field",
    "FieldValidationError",
    "ListField",
    "RangeField",
    "RegistryField",
    "apply_overrides",
    "compareConfigs",
    "config_hash",
    "makeRegistry",
]


def apply_overrides(config: Config, overrides: Iterable[tuple[str, Any]]) -> Config:
    """Set config fields from ``(dotted name, value)`` pairs, e.g. ``("overscan.fitType", "MEDIAN")``.

    A dict value for a field that is itself a sub-config sets the sub-config's fields;
    any other value (a dict for a ``DictField`` included) is assigned as it is.

    Returns
    -------
    config : `Config`
        The same object, for chaining.
    """
    for name, value in overrides:
        *path, field = str(name).split(".")
        target = config
        for part in path:
            target = getattr(target, part)
        current = getattr(target, field)
        if isinstance(value, dict) and isinstance(current, Config):
            apply_overrides(current, value.items())
        else:
            setattr(target, field, value)
    return config


def config_hash(config: Config) -> str:
    """Return a short, stable hash of a config's saved form.

    Parameters
    ----------
    config : `Config`
        Any pex_config ``Config``.

    Returns
    -------
    digest : `str`
        First 16 hex digits of the SHA-256 of ``config.saveToString()`` with
        comment lines removed.
    """
    import hashlib

    text = "\n".join(
        line for line in config.saveToString().splitlines() if line and not line.startswith("#")
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]
