"""The Kubernetes renderer and the engine pod's entrypoint, loaded from deploy/kubernetes/ (not a package)."""

from __future__ import annotations

import importlib.util
from importlib.machinery import SourceFileLoader
from pathlib import Path

import yaml

KUBE = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"
EXAMPLE_VALUES = KUBE / "values.yaml"


def _load(name: str, path: Path):
    loader = SourceFileLoader(name, str(path))
    spec = importlib.util.spec_from_loader(name, loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


render = _load("potluck_k8s_render", KUBE / "render.py")
pod = _load("potluck_k8s_pod", KUBE / "images" / "potluck-pod")


def example_values() -> dict:
    return yaml.safe_load(EXAMPLE_VALUES.read_text())


def rendered(values: dict | None = None) -> dict:
    """File name -> parsed YAML (a list of documents for engines.yaml)."""
    files = render.render(values if values is not None else example_values())
    return {"engines.yaml": list(yaml.safe_load_all(files["engines.yaml"])),
            "z2jh-values.yaml": yaml.safe_load(files["z2jh-values.yaml"]),
            "prometheus-scrape.yaml": yaml.safe_load(files["prometheus-scrape.yaml"])}
