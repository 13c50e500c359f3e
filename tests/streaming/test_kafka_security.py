"""Kafka TLS/SASL settings from the Helm chart's environment reach every aiokafka client; secrets stay out
of reprs and logs."""

from __future__ import annotations

import argparse
import asyncio
import logging

import pytest
from calexpress.streaming import service as service_mod
from calexpress.streaming import tansu
from calexpress.streaming.cli import register_cli, settings_from_args
from calexpress.streaming.kafka_security import KafkaSecurity

HELM_ENV = {
    "CALEXPRESS_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
    "CALEXPRESS_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
    "CALEXPRESS_KAFKA_USERNAME": "pipeline",
    "CALEXPRESS_KAFKA_PASSWORD": "s3cr3t-kafka-pw",
    "CALEXPRESS_LOG_LEVEL": "WARNING",
}


def _serve_args(argv):
    parser = argparse.ArgumentParser()
    register_cli(parser.add_subparsers(dest="command"))
    return parser.parse_args(["serve", *argv])


class _Recorder:
    """Stands in for an aiokafka client class: records its keyword arguments."""

    calls: list[tuple[str, dict]] = []

    def __init__(self, *args, **kwargs):
        _Recorder.calls.append((type(self).__name__, kwargs))

    async def start(self):
        return None

    def subscribe(self, *args, **kwargs):
        return None


class FakeConsumer(_Recorder):
    pass


class FakeProducer(_Recorder):
    pass


def test_helm_environment_reaches_consumer_and_producer(monkeypatch, caplog):
    for k, v in HELM_ENV.items():
        monkeypatch.setenv(k, v)
    settings = settings_from_args(_serve_args(["isr", "--metrics-port", "-1"]))
    assert settings.kafka_security_protocol == "SASL_SSL" and settings.kafka_sasl_mechanism == "SCRAM-SHA-512"
    assert settings.log_level == "WARNING"
    assert "s3cr3t-kafka-pw" not in repr(settings) and "s3cr3t-kafka-pw" not in repr(settings.kafka_security)

    import aiokafka

    monkeypatch.setattr(aiokafka, "AIOKafkaConsumer", FakeConsumer)
    monkeypatch.setattr(aiokafka, "AIOKafkaProducer", FakeProducer)
    topics = []

    async def fake_create_topics(bootstrap, names, partitions, security=None):
        topics.append(security)
        return []

    monkeypatch.setattr(tansu, "_create_topics", fake_create_topics)
    _Recorder.calls = []
    svc = service_mod.StageService(settings, lambda ctx: service_mod.StageProcessor(ctx))
    with caplog.at_level(logging.DEBUG):
        asyncio.run(svc._start_kafka())
    kinds = {name: kw for name, kw in _Recorder.calls}
    assert set(kinds) == {"FakeConsumer", "FakeProducer"}
    for kw in [*kinds.values(), topics[0]]:
        assert kw["security_protocol"] == "SASL_SSL"
        assert kw["sasl_mechanism"] == "SCRAM-SHA-512"
        assert kw["sasl_plain_username"] == "pipeline" and kw["sasl_plain_password"] == "s3cr3t-kafka-pw"
        assert kw["ssl_context"] is not None
    assert "s3cr3t-kafka-pw" not in caplog.text


def test_plaintext_default_and_bad_settings(monkeypatch):
    for k in HELM_ENV:
        monkeypatch.delenv(k, raising=False)
    settings = settings_from_args(_serve_args(["calibrate"]))
    assert settings.kafka_client_kwargs() == {"security_protocol": "PLAINTEXT"}
    assert settings.log_level == "INFO"
    sasl = KafkaSecurity("SASL_PLAINTEXT", "PLAIN", "u", "p").client_kwargs()
    assert sasl == {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN",
                    "sasl_plain_username": "u", "sasl_plain_password": "p"}
    with pytest.raises(ValueError, match="needs CALEXPRESS_KAFKA_USERNAME"):
        KafkaSecurity("SASL_SSL", "PLAIN")
    with pytest.raises(ValueError, match="not one of"):
        KafkaSecurity("KERBEROS")
