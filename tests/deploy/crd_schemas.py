"""JSON schemas for the custom resources the chart renders, which kubernetes-validate does not know.

kubernetes-validate bundles only the built-in Kubernetes API. These schemas hold the subset of the upstream
CRD OpenAPI schemas (prometheus-operator v0.7x ``monitoring.coreos.com/v1``, KEDA v2 ``keda.sh/v1alpha1``)
that the chart uses, with the upstream field names and types, and reject unknown fields (like
``kubernetes-validate --strict``) so that a typo in a template fails the test.
"""

from __future__ import annotations

_STR = {"type": "string"}
_INT = {"type": "integer"}
_STR_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_DURATION = {"type": "string", "pattern": "^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?"
                                          "(([0-9]+)s)?(([0-9]+)ms)?)$"}


def _strict(props: dict, required: list[str] | None = None) -> dict:
    schema = {"type": "object", "additionalProperties": False, "properties": props}
    if required:
        schema["required"] = required
    return schema


_METADATA = _strict({"name": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
                              "maxLength": 63},
                     "namespace": _STR, "labels": _STR_MAP, "annotations": _STR_MAP}, ["name"])

_LABEL_SELECTOR = _strict({"matchLabels": _STR_MAP, "matchExpressions": {"type": "array"}})

_RELABEL = _strict({
    "action": {"type": "string", "enum": ["replace", "Replace", "keep", "Keep", "drop", "Drop", "hashmod",
                                          "HashMod", "labelmap", "LabelMap", "labeldrop", "LabelDrop",
                                          "labelkeep", "LabelKeep", "lowercase", "uppercase"]},
    "sourceLabels": {"type": "array", "items": {"type": "string", "pattern": "^[a-zA-Z_][a-zA-Z0-9_]*$"}},
    "separator": _STR, "targetLabel": _STR, "regex": _STR, "modulus": _INT, "replacement": _STR,
})

SERVICE_MONITOR = _strict({
    "apiVersion": {"const": "monitoring.coreos.com/v1"},
    "kind": {"const": "ServiceMonitor"},
    "metadata": _METADATA,
    "spec": _strict({
        "jobLabel": _STR,
        "targetLabels": {"type": "array", "items": _STR},
        "podTargetLabels": {"type": "array", "items": _STR},
        "namespaceSelector": _strict({"any": {"type": "boolean"},
                                      "matchNames": {"type": "array", "items": _STR}}),
        "selector": _LABEL_SELECTOR,
        "endpoints": {"type": "array", "minItems": 1, "items": _strict({
            "port": _STR, "targetPort": {"type": ["string", "integer"]}, "path": _STR, "scheme": _STR,
            "interval": _DURATION, "scrapeTimeout": _DURATION, "honorLabels": {"type": "boolean"},
            "relabelings": {"type": "array", "items": _RELABEL},
            "metricRelabelings": {"type": "array", "items": _RELABEL},
        })},
    }, ["selector", "endpoints"]),
}, ["apiVersion", "kind", "metadata", "spec"])

_RULE = {
    "type": "object", "additionalProperties": False,
    "properties": {"alert": _STR, "record": _STR,
                   "expr": {"type": ["string", "integer"], "minLength": 1},
                   "for": _DURATION, "keep_firing_for": _DURATION,
                   "labels": _STR_MAP, "annotations": _STR_MAP},
    "required": ["expr"],
    "oneOf": [{"required": ["alert"]}, {"required": ["record"]}],
}

PROMETHEUS_RULE = _strict({
    "apiVersion": {"const": "monitoring.coreos.com/v1"},
    "kind": {"const": "PrometheusRule"},
    "metadata": _METADATA,
    "spec": _strict({"groups": {"type": "array", "items": _strict({
        "name": {"type": "string", "minLength": 1}, "interval": _DURATION, "limit": _INT,
        "partial_response_strategy": _STR,
        "rules": {"type": "array", "minItems": 1, "items": _RULE},
    }, ["name", "rules"])}}),
}, ["apiVersion", "kind", "metadata", "spec"])

_KAFKA_TRIGGER_METADATA = _strict({
    "bootstrapServers": _STR, "consumerGroup": _STR, "topic": _STR, "lagThreshold": _STR,
    "activationLagThreshold": _STR, "offsetResetPolicy": {"type": "string", "enum": ["earliest", "latest"]},
    "allowIdleConsumers": _STR, "scaleToZeroOnInvalidOffset": _STR, "excludePersistentLag": _STR,
    "limitToPartitionsWithLag": _STR, "version": _STR,
    "sasl": {"type": "string",
             "enum": ["none", "plaintext", "scram_sha256", "scram_sha512", "oauthbearer", "gssapi"]},
    "tls": {"type": "string", "enum": ["enable", "disable"]},
}, ["bootstrapServers", "consumerGroup", "lagThreshold"])

SCALED_OBJECT = _strict({
    "apiVersion": {"const": "keda.sh/v1alpha1"},
    "kind": {"const": "ScaledObject"},
    "metadata": _METADATA,
    "spec": _strict({
        "scaleTargetRef": _strict({"apiVersion": _STR, "kind": _STR, "name": _STR,
                                   "envSourceContainerName": _STR}, ["name"]),
        "pollingInterval": {"type": "integer", "minimum": 1},
        "cooldownPeriod": {"type": "integer", "minimum": 0},
        "idleReplicaCount": {"type": "integer", "minimum": 0},
        "minReplicaCount": {"type": "integer", "minimum": 0},
        "maxReplicaCount": {"type": "integer", "minimum": 1},
        "advanced": {"type": "object"},
        "fallback": {"type": "object"},
        "triggers": {"type": "array", "minItems": 1, "items": _strict({
            "type": {"const": "kafka"}, "name": _STR, "metricType": _STR,
            "metadata": _KAFKA_TRIGGER_METADATA,
            "authenticationRef": _strict({"name": _STR, "kind": _STR}, ["name"]),
        }, ["type", "metadata"])},
    }, ["scaleTargetRef", "triggers"]),
}, ["apiVersion", "kind", "metadata", "spec"])

TRIGGER_AUTHENTICATION = _strict({
    "apiVersion": {"const": "keda.sh/v1alpha1"},
    "kind": {"const": "TriggerAuthentication"},
    "metadata": _METADATA,
    "spec": _strict({"secretTargetRef": {"type": "array", "minItems": 1, "items": _strict(
        {"parameter": _STR, "name": _STR, "key": _STR}, ["parameter", "name", "key"])}}),
}, ["apiVersion", "kind", "metadata", "spec"])

#: (apiVersion, kind) -> schema.
CRD_SCHEMAS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): SERVICE_MONITOR,
    ("monitoring.coreos.com/v1", "PrometheusRule"): PROMETHEUS_RULE,
    ("keda.sh/v1alpha1", "ScaledObject"): SCALED_OBJECT,
    ("keda.sh/v1alpha1", "TriggerAuthentication"): TRIGGER_AUTHENTICATION,
}
