"""deploy/kubernetes: what an admin applies next to zero-to-jupyterhub, rendered from one values
file, validated offline against the Kubernetes API schemas (kubernetes-validate), and consistent
with the names the Hub routes by (``pools.engine_service_name``)."""

from __future__ import annotations

import subprocess
import sys

import kubernetes_validate
import pytest
import yaml

from k8s_deploy import EXAMPLE_VALUES, KUBE, example_values, pod, render, rendered
from potluck.engine.pools import engine_service_name

# The oldest Kubernetes the objects use nothing newer than (policy/v1 PDBs: 1.21), and the newest schemas.
K8S_VERSIONS = ("1.29.0", kubernetes_validate.latest_version())


def by_kind(docs: list[dict], kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_rendered_object_validates_against_the_kubernetes_schemas(version):
    docs = rendered()["engines.yaml"]
    assert {d["kind"] for d in docs} == {"Service", "StatefulSet", "PodDisruptionBudget"}
    for doc in docs:
        # strict: a misspelt or misplaced field is an error, not silently ignored by the API server.
        kubernetes_validate.validate(doc, version, strict=True)


def test_the_validator_catches_a_misplaced_field():
    sts = by_kind(rendered()["engines.yaml"], "StatefulSet")["potluck-h100"]
    sts["spec"]["template"]["spec"]["containers"][0]["gpus"] = 1
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(sts, kubernetes_validate.latest_version(), strict=True)


def test_pod_names_are_the_hub_service_names_and_each_pod_can_read_its_own_token():
    out = rendered()
    docs, hub = out["engines.yaml"], out["z2jh-values.yaml"]["hub"]
    services = by_kind(docs, "Service")
    expected = []
    for cls, spec in example_values()["accelerators"].items():
        sts = by_kind(docs, "StatefulSet")[f"potluck-{cls}"]
        # A StatefulSet's pods are <name>-0 .. <name>-(replicas-1), resolvable under its headless Service.
        assert sts["spec"]["serviceName"] == f"potluck-{cls}" and services[f"potluck-{cls}"]["spec"]["clusterIP"] == "None"
        assert services[f"potluck-{cls}"]["spec"]["selector"] == sts["spec"]["selector"]["matchLabels"]
        pods = [f"potluck-{cls}-{i}" for i in range(sts["spec"]["replicas"])]
        assert pods == [engine_service_name(cls, i) for i in range(spec["replicas"])]
        expected += pods
        volumes = {v["name"]: v for v in sts["spec"]["template"]["spec"]["volumes"]}
        tokens = volumes["hub-tokens"]["secret"]
        assert tokens["secretName"] == "hub"
        assert tokens["items"] == [{"key": f"hub.services.{p}.apiToken", "path": p} for p in pods]
    # z2jh writes hub.services.<key>.apiToken into its hub Secret for exactly these keys.
    assert list(hub["services"]) == expected


def test_a_gpu_class_gets_its_node_selector_tolerations_and_gpus_and_a_cpu_class_none():
    docs = rendered()["engines.yaml"]
    values = example_values()["accelerators"]
    h100 = by_kind(docs, "StatefulSet")["potluck-h100"]["spec"]["template"]["spec"]
    assert h100["nodeSelector"] == values["h100"]["nodeSelector"]
    assert h100["tolerations"] == values["h100"]["tolerations"]
    engine = h100["containers"][0]
    assert engine["resources"]["limits"]["nvidia.com/gpu"] == values["h100"]["gpus"]
    assert engine["resources"]["requests"]["memory"] == values["h100"]["resources"]["requests"]["memory"]
    cpu = by_kind(docs, "StatefulSet")["potluck-cpu"]["spec"]["template"]["spec"]
    assert "nodeSelector" not in cpu and "tolerations" not in cpu
    assert "nvidia.com/gpu" not in str(cpu["containers"][0]["resources"])


def test_engines_are_told_their_pool_the_pools_and_the_database_secret():
    docs = rendered()["engines.yaml"]
    engine = by_kind(docs, "StatefulSet")["potluck-h100"]["spec"]["template"]["spec"]["containers"][0]
    assert engine["command"] == ["potluck-pod", "engine"]
    args = engine["args"]
    assert "--PotluckEngine.pool=h100" in args and "--PotluckEngine.default_pool=cpu" in args
    assert [a.split("=", 1)[1] for a in args if a.startswith("--PotluckEngine.pools=")] == ["h100", "cpu"]
    env = {e["name"]: e for e in engine["env"]}
    # The password never appears in the manifest: the URL comes from the Secret.
    assert env["POTLUCK_DB_URL"]["valueFrom"]["secretKeyRef"] == {"name": "potluck-db", "key": "url"}
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["JUPYTERHUB_API_URL"]["value"] == "http://hub:8081/hub/api"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert engine[probe]["exec"]["command"] == ["potluck-pod", "probe"]
    # z2jh's hub NetworkPolicy admits pods with this label to the Hub API.
    labels = by_kind(docs, "StatefulSet")["potluck-h100"]["spec"]["template"]["metadata"]["labels"]
    assert labels["hub.jupyter.org/network-access-hub"] == "true"


def test_a_pool_loses_at_most_one_engine_to_a_voluntary_disruption():
    pdbs = by_kind(rendered()["engines.yaml"], "PodDisruptionBudget")
    assert set(pdbs) == {"potluck-h100", "potluck-cpu"}
    assert all(p["spec"]["maxUnavailable"] == 1 for p in pdbs.values())


def test_the_scrape_job_builds_each_engines_metrics_path_from_its_pod_name():
    job = rendered()["prometheus-scrape.yaml"]["scrape_configs"][0]
    path = next(r for r in job["relabel_configs"] if r.get("target_label") == "__metrics_path__")
    assert path["source_labels"] == ["__meta_kubernetes_pod_name"]
    assert path["replacement"].replace("${1}", "potluck-h100-1") == "/services/potluck-h100-1/metrics"
    assert job["authorization"]["credentials_file"]


@pytest.mark.parametrize("change, message", [
    (lambda v: v["accelerators"]["h100"].update(replicas=0), "accelerators.h100.replicas must be a whole number from 1 to 64"),
    (lambda v: v["accelerators"]["h100"].update(gpu=1), "accelerators.h100: unknown key(s) ['gpu']"),
    (lambda v: v["accelerators"].update({"H100": {}}), "pool name 'H100' must be 1-32 lowercase"),
    (lambda v: v.update(defaultPool="a100"), "defaultPool 'a100' is not one of the accelerator classes (h100, cpu)"),
    (lambda v: v["database"].pop("secret"), "database.secret must be a non-empty string"),
    (lambda v: v["images"].update(user="no-tag"), "images.user must be NAME:TAG"),
])
def test_bad_values_are_refused_in_one_line_naming_the_field(change, message):
    values = example_values()
    change(values)
    with pytest.raises(render.ValuesError) as e:
        render.render(values)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_the_command_line_writes_the_three_files_and_refuses_bad_values_with_status_2(tmp_path):
    out = tmp_path / "rendered"
    run = subprocess.run([sys.executable, str(KUBE / "render.py"), str(EXAMPLE_VALUES), "--out", str(out)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert sorted(p.name for p in out.iterdir()) == ["engines.yaml", "prometheus-scrape.yaml", "z2jh-values.yaml"]
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**example_values(), "accelerators": {}}))
    run = subprocess.run([sys.executable, str(KUBE / "render.py"), str(bad)], capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 2 and run.stderr.count("\n") == 1 and "accelerators" in run.stderr


def test_the_pod_entrypoint_makes_the_engine_the_hub_service_of_its_pod(tmp_path):
    (tmp_path / "potluck-h100-1").write_text("token-of-1\n")
    (tmp_path / "potluck-h100-0").write_text("token-of-0\n")
    env = pod.hub_service_env({"POD_NAME": "potluck-h100-1", "POTLUCK_TOKEN_DIR": str(tmp_path)})
    assert env["JUPYTERHUB_API_TOKEN"] == "token-of-1"
    assert env["JUPYTERHUB_SERVICE_NAME"] == "potluck-h100-1"
    assert env["JUPYTERHUB_SERVICE_PREFIX"] == "/services/potluck-h100-1/"
    assert env["JUPYTERHUB_SERVICE_URL"] == "http://0.0.0.0:8765"
    with pytest.raises(SystemExit) as e:       # a replica the values did not render a token for
        pod.hub_service_env({"POD_NAME": "potluck-h100-2", "POTLUCK_TOKEN_DIR": str(tmp_path)})
    assert "hub.services.potluck-h100-2" in str(e.value)
