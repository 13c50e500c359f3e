"""Kafka connection security (TLS, SASL) for the aiokafka clients of the streaming layer.

The Helm chart sets ``CALEXPRESS_KAFKA_SECURITY_PROTOCOL`` (PLAINTEXT, SSL, SASL_PLAINTEXT,
SASL_SSL), ``CALEXPRESS_KAFKA_SASL_MECHANISM`` (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512) and,
from its Secret, ``CALEXPRESS_KAFKA_USERNAME`` / ``CALEXPRESS_KAFKA_PASSWORD``.
``CALEXPRESS_KAFKA_SSL_CAFILE`` optionally names a CA bundle for SSL.  The password is
never logged and never part of a ``repr``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["KafkaSecurity", "SECURITY_PROTOCOLS", "SASL_MECHANISMS", "kafka_client_kwargs"]

SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


@dataclass(frozen=True)
class KafkaSecurity:
    """Security settings of a Kafka connection (password excluded from `repr`)."""

    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str = "PLAIN"
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ssl_cafile: str | None = None

    def __post_init__(self) -> None:
        proto = (self.security_protocol or "PLAINTEXT").upper()
        mech = (self.sasl_mechanism or "PLAIN").upper()
        if proto not in SECURITY_PROTOCOLS:
            raise ValueError(f"Kafka security protocol {self.security_protocol!r} is not one of "
                             f"{', '.join(SECURITY_PROTOCOLS)}")
        if mech not in SASL_MECHANISMS:
            raise ValueError(f"Kafka SASL mechanism {self.sasl_mechanism!r} is not one of "
                             f"{', '.join(SASL_MECHANISMS)}")
        if proto.startswith("SASL") and not (self.username and self.password):
            raise ValueError(f"Kafka security protocol {proto} needs CALEXPRESS_KAFKA_USERNAME and "
                             "CALEXPRESS_KAFKA_PASSWORD")
        object.__setattr__(self, "security_protocol", proto)
        object.__setattr__(self, "sasl_mechanism", mech)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> KafkaSecurity:
        """Settings from ``CALEXPRESS_KAFKA_*`` environment variables (unset or empty: defaults)."""
        env = os.environ if env is None else env
        return cls(security_protocol=env.get("CALEXPRESS_KAFKA_SECURITY_PROTOCOL") or "PLAINTEXT",
                   sasl_mechanism=env.get("CALEXPRESS_KAFKA_SASL_MECHANISM") or "PLAIN",
                   username=env.get("CALEXPRESS_KAFKA_USERNAME") or None,
                   password=env.get("CALEXPRESS_KAFKA_PASSWORD") or None,
                   ssl_cafile=env.get("CALEXPRESS_KAFKA_SSL_CAFILE") or None)

    def client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``AIOKafkaConsumer`` / ``AIOKafkaProducer`` / ``AIOKafkaAdminClient``."""
        kwargs: dict[str, Any] = {"security_protocol": self.security_protocol}
        if self.security_protocol in ("SSL", "SASL_SSL"):
            from aiokafka.helpers import create_ssl_context

            kwargs["ssl_context"] = create_ssl_context(cafile=self.ssl_cafile)
        if self.security_protocol.startswith("SASL"):
            kwargs.update(sasl_mechanism=self.sasl_mechanism, sasl_plain_username=self.username,
                          sasl_plain_password=self.password)
        return kwargs


def kafka_client_kwargs(security: KafkaSecurity | None = None) -> dict[str, Any]:
    """Security keyword arguments of an aiokafka client (``security`` or the environment's)."""
    return (security or KafkaSecurity.from_env()).client_kwargs()
