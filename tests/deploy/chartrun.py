"""Run a service the way the chart's Deployment runs it, without Kubernetes.

`pod_process_spec` turns the rendered Deployment, ConfigMaps and Secret into the command line and the
environment the container would get (envFrom ConfigMap, then Secret, then `env`, as the kubelet does), with
the pipeline ConfigMap's files written to a local folder standing in for the /etc/calexpress volume and a
local folder standing in for the /tmp emptyDir.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from deployhelpers import by_kind

CONFIG_MOUNT = "/etc/calexpress"
SCRATCH_MOUNT = "/tmp"


def _local_path(value: str, config_dir: Path, scratch_dir: Path) -> str:
    if value == CONFIG_MOUNT or value.startswith(CONFIG_MOUNT + "/"):
        return str(config_dir) + value[len(CONFIG_MOUNT):]
    if value == SCRATCH_MOUNT or value.startswith(SCRATCH_MOUNT + "/"):
        return str(scratch_dir) + value[len(SCRATCH_MOUNT):]
    return value


def pod_process_spec(docs: list[dict], service: str, root: Path,
                     overrides: dict[str, str] | None = None) -> tuple[list[str], dict[str, str]]:
    """(argv, environment) of the chart's container for ``service``.

    Parameters
    ----------
    docs : `list` [`dict`]
        Rendered chart objects.
    service : `str`
        isr, characterize or calibrate.
    root : `Path`
        Folder for the stand-ins of the config volume and the scratch emptyDir.
    overrides : `dict`, optional
        Environment entries to replace (e.g. a loopback metrics address: three "pods" share one host here).
    """
    (dep,) = [d for d in by_kind(docs, "Deployment").values()
              if d["metadata"]["labels"]["app.kubernetes.io/component"] == service]
    pod = dep["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    config_maps = by_kind(docs, "ConfigMap")
    secrets = by_kind(docs, "Secret")

    config_dir = root / f"{service}-etc-calexpress"
    scratch_dir = root / f"{service}-tmp"
    config_dir.mkdir(parents=True, exist_ok=True)
    scratch_dir.mkdir(parents=True, exist_ok=True)
    volumes = {v["name"]: v for v in pod["volumes"]}
    for mount in container["volumeMounts"]:
        vol = volumes[mount["name"]]
        if "configMap" in vol:
            assert mount["mountPath"] == CONFIG_MOUNT
            for name, text in config_maps[vol["configMap"]["name"]]["data"].items():
                (config_dir / name).write_text(text)
        else:
            assert "emptyDir" in vol and mount["mountPath"] == SCRATCH_MOUNT

    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(config_maps[source["configMapRef"]["name"]]["data"])
        else:
            env.update(secrets[source["secretRef"]["name"]].get("stringData") or {})
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
        elif item.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.name":
            env[item["name"]] = f"{dep['metadata']['name']}-0"
    env = {k: _local_path(str(v), config_dir, scratch_dir) for k, v in env.items()}
    env.update(overrides or {})
    # Nothing from the test's own environment but what any container has (PATH, locale).
    env["PATH"] = os.environ.get("PATH", "/usr/bin:/bin")
    env.setdefault("LANG", "C.UTF-8")
    # ENTRYPOINT ["calexpress"] + the Deployment's args.
    argv = [sys.executable, "-m", "calexpress.pipeline.cli", *container["args"]]
    return argv, env
