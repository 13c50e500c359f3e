"""Configuration fields, re-exported from ``lsst.pex.config``.

calexpress configs keep LSST's semantics (``config.isr.doBias = False``, override
files, retargeting of ``ConfigurableField``, ``freeze``, ``save``/``load``) by
building on ``lsst-pex-config`` itself.  Import everything config-related from
here so that the dependency stays in one place.
"""

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
    "compareConfigs",
    "config_hash",
    "makeRegistry",
]


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
