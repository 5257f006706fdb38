"""A deliberately small kustomize renderer for the features deploy/k8s uses, for machines without kubectl.

Supported: ``resources`` (files and directories holding a kustomization.yaml), ``namespace`` and
``configMapGenerator`` with ``files`` (name hash suffix, and the generated name rewritten in pod templates).
Anything else in a kustomization.yaml raises, so a new feature in the manifests cannot be silently ignored
here. When kubectl is installed, tests/deploy/test_k8s.py checks that this renderer and
``kubectl kustomize`` produce the same objects.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

SUPPORTED_KEYS = {"apiVersion", "kind", "namespace", "resources", "configMapGenerator"}
SUPPORTED_GENERATOR_KEYS = {"name", "files"}
POD_TEMPLATE_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}
CLUSTER_SCOPED_KINDS = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition",
                        "PersistentVolume", "StorageClass", "PriorityClass"}


class UnsupportedKustomization(ValueError):
    pass


def config_map_hash(data: dict[str, str]) -> str:
    """The suffix kustomize v5 appends to a generated ConfigMap's name.

    kustomize hashes ``json.Marshal({"data": ..., "kind": "ConfigMap", "name": ...})`` with sha256 and
    maps the first 10 hex digits to avoid vowels and look-alike digits. Its v5 implementation looks the name
    up with a path that never matches, so the name it hashes is always "" (the suffix depends on the data
    only); we reproduce that, and the kubectl comparison test would catch a change.
    """
    doc = {"data": data, "kind": "ConfigMap", "name": ""}
    encoded = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    # Go's encoding/json escapes these for HTML safety.
    for char, escape in (("&", "\\u0026"), ("<", "\\u003c"), (">", "\\u003e"),
                         ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        encoded = encoded.replace(char, escape)
    digest = hashlib.sha256(encoded.encode()).hexdigest()[:10]
    return digest.translate(str.maketrans("013ae", "ghkmt"))


def _rewrite_config_map_refs(obj: dict[str, Any], names: dict[str, str]) -> None:
    if obj.get("kind") not in POD_TEMPLATE_KINDS:
        return
    pod = obj["spec"]["template"]["spec"]
    for volume in pod.get("volumes", []):
        ref = volume.get("configMap")
        if ref and ref.get("name") in names:
            ref["name"] = names[ref["name"]]
        for source in (volume.get("projected") or {}).get("sources", []):
            ref = source.get("configMap")
            if ref and ref.get("name") in names:
                ref["name"] = names[ref["name"]]
    for container in pod.get("containers", []) + pod.get("initContainers", []):
        for env_from in container.get("envFrom", []):
            ref = env_from.get("configMapRef")
            if ref and ref.get("name") in names:
                ref["name"] = names[ref["name"]]
        for env in container.get("env", []):
            ref = (env.get("valueFrom") or {}).get("configMapKeyRef")
            if ref and ref.get("name") in names:
                ref["name"] = names[ref["name"]]


def render(directory: Path, read: Callable[[Path], str] = Path.read_text) -> list[dict[str, Any]]:
    """The objects ``kubectl kustomize directory`` would print (order aside); every file is read with ``read``."""
    directory = Path(directory)
    kustomization = yaml.safe_load(read(directory / "kustomization.yaml"))
    unknown = set(kustomization) - SUPPORTED_KEYS
    if unknown:
        raise UnsupportedKustomization(f"{directory}: kustomize_lite does not implement {sorted(unknown)}")

    objects: list[dict[str, Any]] = []
    for entry in kustomization.get("resources", []):
        path = directory / entry
        if path.is_dir():
            objects.extend(render(path, read))
        else:
            objects.extend(doc for doc in yaml.safe_load_all(read(path)) if doc)

    generated: dict[str, str] = {}
    for generator in kustomization.get("configMapGenerator", []):
        unknown = set(generator) - SUPPORTED_GENERATOR_KEYS
        if unknown:
            raise UnsupportedKustomization(f"configMapGenerator: {sorted(unknown)} not implemented")
        data = {}
        for spec in generator["files"]:
            key, _, rel = spec.rpartition("=")
            path = directory / rel
            data[key or path.name] = read(path)
        name = f"{generator['name']}-{config_map_hash(data)}"
        generated[generator["name"]] = name
        objects.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": data})

    objects = copy.deepcopy(objects)
    for obj in objects:
        _rewrite_config_map_refs(obj, generated)
        if "namespace" in kustomization and obj.get("kind") not in CLUSTER_SCOPED_KINDS:
            obj.setdefault("metadata", {})["namespace"] = kustomization["namespace"]
    return objects
