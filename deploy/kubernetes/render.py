"""Render Potluck's Kubernetes objects and zero-to-jupyterhub values from one values file.

    python deploy/kubernetes/render.py deploy/kubernetes/values.yaml --out rendered/
    kubectl apply -f rendered/engines.yaml
    helm upgrade --install jhub jupyterhub/jupyterhub -n jhub -f your-z2jh-values.yaml -f rendered/z2jh-values.yaml

Per accelerator class (one Potluck pool) it renders a StatefulSet ``potluck-<class>`` and its
headless Service: pod ``potluck-<class>-<i>`` is reachable as
``potluck-<class>-<i>.potluck-<class>`` and is the Hub service of that name
(``pools.engine_service_name``), so the names the Hub routes by, the names rendezvous hashing pins
tenants to and the pods' names are the same. A PodDisruptionBudget lets a node drain take one
engine of a pool at a time. ``z2jh-values.yaml`` registers every engine in ``hub.services`` (z2jh
generates each one's API token into its ``hub`` Secret, which the engine pods mount) and calls
``potluck.hub_config.configure(c, pools=...)`` from ``hub.extraConfig``.

It owns the mapping from the values file to those objects, checks the values at the door (one
line naming the field and its limit), and never talks to a cluster. PyYAML only, besides
``potluck.engine.pools`` for the names.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

from potluck.engine.pools import check_pool_name, engine_service_name
from potluck.engine.protocol import SERVICE_NAME

PORT = 8765
HUB_API_PORT = 8081
TOKEN_DIR = "/etc/potluck/hub-tokens"      # potluck-pod reads $POD_NAME's token here
DATA_DIR = "/var/lib/potluck"
APP = "potluck-engine"
MAX_REPLICAS = 64           # each replica is a Hub service and a mounted token: a typo of 1000 is caught here
CLASS_KEYS = {"replicas", "gpus", "nodeSelector", "tolerations", "resources", "model", "image", "engineArgs"}
TOP_KEYS = {"hub", "database", "images", "defaultPool", "groups", "accelerators"}


class ValuesError(ValueError):
    """The values file cannot be rendered; the message names the field."""


# ------------------------------------------------------------------ the values, checked
def _need(mapping: dict, key: str, where: str) -> str:
    value = mapping.get(key)
    if not isinstance(value, str) or not value:
        raise ValuesError(f"{where}.{key} must be a non-empty string, got {value!r}")
    return value


def check_values(values) -> dict:
    """The values file as the renderer uses it; a ``ValuesError`` naming the first bad field."""
    if not isinstance(values, dict):
        raise ValuesError("the values file must be a YAML mapping")
    unknown = set(values) - TOP_KEYS
    if unknown:
        raise ValuesError(f"unknown top-level key(s) {sorted(unknown)}; known: {sorted(TOP_KEYS)}")
    hub, db, images = (values.get(k) or {} for k in ("hub", "database", "images"))
    for key, part in (("hub", hub), ("database", db), ("images", images)):
        if not isinstance(part, dict):
            raise ValuesError(f"{key} must be a mapping, got {part!r}")
    for key in ("namespace", "service", "secret"):
        _need(hub, key, "hub")
    for key in ("secret", "key"):
        _need(db, key, "database")
    _need(images, "engine", "images")
    classes = values.get("accelerators")
    if not isinstance(classes, dict) or not classes:
        raise ValuesError("accelerators must map at least one accelerator class name to its settings")
    for name, spec in classes.items():
        try:
            check_pool_name(name)
        except ValueError as e:
            raise ValuesError(f"accelerators: {e}") from None
        where = f"accelerators.{name}"
        if not isinstance(spec, dict):
            raise ValuesError(f"{where} must be a mapping")
        unknown = set(spec) - CLASS_KEYS
        if unknown:
            raise ValuesError(f"{where}: unknown key(s) {sorted(unknown)}; known: {sorted(CLASS_KEYS)}")
        replicas = spec.get("replicas", 1)
        if not isinstance(replicas, int) or isinstance(replicas, bool) or not 1 <= replicas <= MAX_REPLICAS:
            raise ValuesError(f"{where}.replicas must be a whole number from 1 to {MAX_REPLICAS}, got {replicas!r}")
        gpus = spec.get("gpus", 0)
        if not isinstance(gpus, int) or isinstance(gpus, bool) or gpus < 0:
            raise ValuesError(f"{where}.gpus must be a whole number >= 0, got {gpus!r}")
        if not isinstance(spec.get("engineArgs", []), list):
            raise ValuesError(f"{where}.engineArgs must be a list of `potluck engine` arguments")
    default = values.get("defaultPool") or next(iter(classes))
    if default not in classes:
        raise ValuesError(f"defaultPool {default!r} is not one of the accelerator classes ({', '.join(classes)})")
    groups = values.get("groups") or {}
    if not isinstance(groups, dict) or not all(isinstance(q, (dict, type(None))) for q in groups.values()):
        raise ValuesError("groups must map group names to quota mappings (or null)")
    return {**values, "defaultPool": default, "groups": groups}


# ------------------------------------------------------------------ names the Hub and the pods agree on
def engine_names(cls: str, spec: dict) -> list[str]:
    return [engine_service_name(cls, i) for i in range(spec.get("replicas", 1))]


def statefulset_name(cls: str) -> str:
    """``potluck-<class>``: a StatefulSet names its pods ``<its name>-<i>``, the Hub service names."""
    name = f"{SERVICE_NAME}-{cls}"
    assert engine_service_name(cls, 0) == f"{name}-0", "pools.engine_service_name changed its form"
    return name


def engine_url(cls: str, name: str) -> str:
    # The pod's own DNS name under its headless Service: stable across restarts and reschedules.
    # Kernels in user pods (same namespace) and z2jh's proxy both reach it this way.
    return f"http://{name}.{statefulset_name(cls)}:{PORT}"


def labels(cls: str) -> dict:
    return {"app.kubernetes.io/name": APP, "app.kubernetes.io/component": "engine",
            "app.kubernetes.io/part-of": "potluck", "potluck.jupyter.org/pool": cls}


def selector(cls: str) -> dict:
    return {"app.kubernetes.io/name": APP, "potluck.jupyter.org/pool": cls}


# ------------------------------------------------------------------ the engines
def engine_args(values: dict, cls: str, spec: dict) -> list[str]:
    pools = list(values["accelerators"])
    args = [f"--model={spec.get('model', 'default')}",
            f"--PotluckEngine.pool={cls}",
            *(f"--PotluckEngine.pools={p}" for p in pools),
            f"--PotluckEngine.default_pool={values['defaultPool']}",
            f"--PotluckEngine.accelerator={cls}"]
    seeds = {g: q for g, q in values["groups"].items() if q}
    if seeds:
        # Every engine may seed: seeding writes only into groups that have no quota yet.
        args.append(f"--HubAuthenticator.seed_groups={json.dumps(seeds, sort_keys=True)}")
    return args + [str(a) for a in spec.get("engineArgs", [])]


def _probe(period: int, failures: int, timeout: int = 10) -> dict:
    # exec, not httpGet: the path /services/<pod name>/api/status differs per pod of one template.
    return {"exec": {"command": ["potluck-pod", "probe"]}, "periodSeconds": period,
            "timeoutSeconds": timeout, "failureThreshold": failures}


def statefulset(values: dict, cls: str, spec: dict) -> dict:
    hub, db = values["hub"], values["database"]
    name = statefulset_name(cls)
    resources = json.loads(json.dumps(spec.get("resources") or {}))
    if spec.get("gpus", 0):
        for part in ("requests", "limits"):
            resources.setdefault(part, {})["nvidia.com/gpu"] = spec["gpus"]
    api_url = f"http://{hub['service']}:{HUB_API_PORT}{hub.get('baseUrl', '/').rstrip('/')}/hub/api"
    pod_labels = {**labels(cls), "hub.jupyter.org/network-access-hub": "true"}   # z2jh's hub NetworkPolicy
    container = {
        "name": "engine",
        "image": spec.get("image") or values["images"]["engine"],
        "command": ["potluck-pod", "engine"],
        "args": engine_args(values, cls, spec),
        "env": [
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "JUPYTERHUB_API_URL", "value": api_url},
            {"name": "JUPYTERHUB_BASE_URL", "value": hub.get("baseUrl", "/")},
            {"name": "JUPYTERHUB_SERVICE_URL", "value": f"http://0.0.0.0:{PORT}"},
            {"name": "POTLUCK_DB_URL", "valueFrom": {"secretKeyRef": {"name": db["secret"], "key": db["key"]}}},
            {"name": "POTLUCK_DATA_DIR", "value": DATA_DIR},
        ],
        "ports": [{"name": "http", "containerPort": PORT}],
        # Loading a large model can take minutes: the startup probe allows 15, then liveness takes over.
        "startupProbe": _probe(period=10, failures=90),
        "readinessProbe": _probe(period=10, failures=3),
        # A busy engine answers between steps; only two silent minutes restart it.
        "livenessProbe": _probe(period=20, failures=6),
        "resources": resources,
        "volumeMounts": [{"name": "hub-tokens", "mountPath": TOKEN_DIR, "readOnly": True},
                         {"name": "data", "mountPath": DATA_DIR}],
        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
    }
    tokens = [{"key": f"hub.services.{n}.apiToken", "path": n} for n in engine_names(cls, spec)]
    pod_spec = {
        "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 1000},
        # SIGTERM: the engine marks itself stopped in the shared database at once, so its tenants
        # move now rather than after engine_stale_seconds.
        "terminationGracePeriodSeconds": 30,
        "enableServiceLinks": False,
        "containers": [container],
        "volumes": [{"name": "hub-tokens", "secret": {"secretName": hub["secret"], "items": tokens,
                                                      "defaultMode": 0o440}},
                    {"name": "data", "emptyDir": {}}],
    }
    if spec.get("nodeSelector"):
        pod_spec["nodeSelector"] = dict(spec["nodeSelector"])
    if spec.get("tolerations"):
        pod_spec["tolerations"] = list(spec["tolerations"])
    return {
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": name, "namespace": hub["namespace"], "labels": labels(cls)},
        "spec": {
            "serviceName": name,
            "replicas": spec.get("replicas", 1),
            # Engines need not start in order: each is its own Hub service.
            "podManagementPolicy": "Parallel",
            "updateStrategy": {"type": "RollingUpdate"},
            "selector": {"matchLabels": selector(cls)},
            "template": {
                # No prometheus.io/* annotations: their generic job scrapes one path for all pods and
                # sends no token, and each engine's /metrics is under its own prefix, for admins
                # (prometheus-scrape.yaml builds both from the pod's name and a token file).
                "metadata": {"labels": pod_labels},
                "spec": pod_spec,
            },
        },
    }


def headless_service(values: dict, cls: str) -> dict:
    name = statefulset_name(cls)
    return {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": values["hub"]["namespace"], "labels": labels(cls)},
        "spec": {
            "clusterIP": "None",
            # An engine's name resolves while it starts: the proxy then gets its 503 with the
            # reason rather than a DNS error, and the engines' shared table says who is alive.
            "publishNotReadyAddresses": True,
            "selector": selector(cls),
            "ports": [{"name": "http", "port": PORT, "targetPort": "http"}],
        },
    }


def disruption_budget(values: dict, cls: str) -> dict:
    # One engine of a pool at a time: its tenants move to their next engine and re-fill saved
    # contexts there; draining two at once would move more tenants onto fewer engines at once.
    return {
        "apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
        "metadata": {"name": statefulset_name(cls), "namespace": values["hub"]["namespace"], "labels": labels(cls)},
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector(cls)}},
    }


def engine_manifests(values: dict) -> list[dict]:
    out = []
    for cls, spec in values["accelerators"].items():
        out += [headless_service(values, cls), statefulset(values, cls, spec), disruption_budget(values, cls)]
    return out


# ------------------------------------------------------------------ the Hub (z2jh values)
def pools_argument(values: dict) -> dict:
    """``configure``'s ``pools=``: every engine external (Kubernetes starts and restarts them)."""
    return {cls: {"engines": [engine_url(cls, n) for n in engine_names(cls, spec)],
                  "accelerator": cls, "external": True}
            for cls, spec in values["accelerators"].items()}


def extra_config(values: dict) -> str:
    """The Python z2jh's jupyterhub_config.py runs (``exec``) with its ``c``."""
    call = {"pools": pools_argument(values), "default_pool": values["defaultPool"]}
    if values["groups"]:
        call["groups"] = values["groups"]
    lines = ["# Rendered by deploy/kubernetes/render.py: the engines are the StatefulSets potluck-<pool>.",
             "import potluck.hub_config", "", "potluck.hub_config.configure(", "    c,"]
    for key, value in call.items():
        if isinstance(value, dict):
            lines += [f"    {key}={{", *(f"        {k!r}: {v!r}," for k, v in value.items()), "    },"]
        else:
            lines.append(f"    {key}={value!r},")
    return "\n".join(lines + [")", ""])


def z2jh_values(values: dict) -> dict:
    services = {n: {} for cls, spec in values["accelerators"].items() for n in engine_names(cls, spec)}
    out: dict = {
        "hub": {
            # z2jh generates each service's apiToken into its hub Secret; configure keeps it.
            "services": services,
            "extraConfig": {"potluck": extra_config(values)},
        },
        "singleuser": {
            # Kernels talk to their engine directly (POTLUCK_POOLS): z2jh's user NetworkPolicy
            # blocks private addresses unless allowed, so allow the engines' port.
            "networkPolicy": {"egress": [{
                "to": [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": APP}}}],
                "ports": [{"port": PORT, "protocol": "TCP"}],
            }]},
        },
    }
    images = values["images"]
    for part, key in (("hub", "hub"), ("singleuser", "user")):
        if images.get(key):
            name, _, tag = images[key].rpartition(":")
            if not name or "/" in tag:
                raise ValuesError(f"images.{key} must be NAME:TAG, got {images[key]!r}")
            out[part]["image"] = {"name": name, "tag": tag}
    return out


# ------------------------------------------------------------------ Prometheus
def scrape_job(values: dict) -> dict:
    """A ``scrape_configs`` entry: each engine's /metrics is under its own prefix and needs a token.

    Pod annotations cannot say a per-pod path, so the job builds it from the pod's name.
    ``/metrics`` needs an engine admin's token (its labels name tenants): put one in the file.
    """
    ns = values["hub"]["namespace"]
    return {
        "job_name": "potluck-engines",
        "kubernetes_sd_configs": [{"role": "pod", "namespaces": {"names": [ns]}}],
        "authorization": {"type": "Bearer", "credentials_file": "/etc/prometheus/secrets/potluck-metrics/token"},
        "relabel_configs": [
            {"source_labels": ["__meta_kubernetes_pod_label_app_kubernetes_io_name"], "regex": APP,
             "action": "keep"},
            {"source_labels": ["__meta_kubernetes_pod_container_port_number"], "regex": str(PORT), "action": "keep"},
            {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "__metrics_path__",
             "replacement": "/services/${1}/metrics"},
            {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "engine"},
            {"source_labels": ["__meta_kubernetes_pod_label_potluck_jupyter_org_pool"], "target_label": "pool"},
        ],
    }


# ------------------------------------------------------------------ files
class _Dumper(yaml.SafeDumper):
    """Multi-line strings (the extraConfig's Python) as YAML literal blocks, readable in review."""


_Dumper.add_representer(str, lambda d, s: d.represent_scalar("tag:yaml.org,2002:str", s,
                                                             style="|" if "\n" in s else None))


def dump(doc) -> str:
    return yaml.dump(doc, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=120)


def dump_all(docs: list[dict]) -> str:
    return yaml.dump_all(docs, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=120)


def render(values) -> dict[str, str]:
    """File name -> YAML text."""
    v = check_values(values)
    header = "# Rendered by deploy/kubernetes/render.py from the values file: edit that, not this.\n"
    return {
        "engines.yaml": header + dump_all(engine_manifests(v)),
        "z2jh-values.yaml": header + dump(z2jh_values(v)),
        "prometheus-scrape.yaml": header + dump({"scrape_configs": [scrape_job(v)]}),
    }


def load_values(path: str | Path) -> dict:
    try:
        return yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ValuesError(f"cannot read the values file {path}: {' '.join(str(e).split())}") from None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("values", help="the values file (see deploy/kubernetes/values.yaml)")
    p.add_argument("--out", help="write engines.yaml, z2jh-values.yaml and prometheus-scrape.yaml here")
    p.add_argument("--only", choices=["engines.yaml", "z2jh-values.yaml", "prometheus-scrape.yaml"],
                   help="print one of them to stdout (default without --out: engines.yaml)")
    a = p.parse_args(argv)
    try:
        files = render(load_values(a.values))
    except ValuesError as e:
        print(f"render.py: {e}", file=sys.stderr)
        return 2
    if a.out:
        out = Path(a.out)
        out.mkdir(parents=True, exist_ok=True)
        for name, text in files.items():
            (out / name).write_text(text)
        print(f"wrote {', '.join(files)} to {out}", file=sys.stderr)
    else:
        sys.stdout.write(files[a.only or "engines.yaml"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
