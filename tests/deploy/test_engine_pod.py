"""The engine image's entrypoint with a real ``potluck engine``: started as pod ``potluck-cpu-0``
with the rendered StatefulSet's arguments and its token file beside a sibling's, it serves as the Hub service of that name (under
``/services/potluck-cpu-0/``, Hub authentication), and ``potluck-pod probe`` passes for that pod
name only. No Hub runs: the probe path is public, and a request with a token would ask the Hub."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from k8s_deploy import KUBE, example_values, rendered
from support.engine_process import free_port

POD = [sys.executable, str(KUBE / "images" / "potluck-pod")]


@pytest.fixture(scope="module")
def pod_engine(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("engine-pod")
    tokens = tmp / "hub-tokens"
    tokens.mkdir()
    (tokens / "potluck-cpu-0").write_text("token-of-cpu-0\n")
    (tokens / "potluck-cpu-1").write_text("token-of-cpu-1\n")
    port = free_port()
    env = {**os.environ, "POD_NAME": "potluck-cpu-0", "POTLUCK_TOKEN_DIR": str(tokens),
           "JUPYTERHUB_SERVICE_URL": f"http://127.0.0.1:{port}",
           "JUPYTERHUB_API_URL": f"http://127.0.0.1:{free_port()}/hub/api",
           "POTLUCK_DATA_DIR": str(tmp / "data"),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    log = open(tmp / "engine.log", "w")
    proc = subprocess.Popen([*POD, "engine", *cpu_class_args(), "--kv-pages=64"], env=env, stdout=log, stderr=subprocess.STDOUT,
                            cwd=tmp)
    try:
        deadline = time.monotonic() + 240
        while probe(env) != 0:
            assert proc.poll() is None, (tmp / "engine.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the engine pod did not pass its probe in 240 s"
            time.sleep(0.5)
        yield env, f"http://127.0.0.1:{port}"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def cpu_class_args() -> list[str]:
    """The arguments the StatefulSet potluck-cpu gives its engines (no default groups: no Hub to seed)."""
    values = {**example_values(), "groups": {}}
    sts = next(d for d in rendered(values)["engines.yaml"]
               if d["kind"] == "StatefulSet" and d["metadata"]["name"] == "potluck-cpu")
    return sts["spec"]["template"]["spec"]["containers"][0]["args"]


def probe(env: dict) -> int:
    return subprocess.run([*POD, "probe"], env=env, capture_output=True, timeout=60).returncode


def test_the_pod_serves_as_the_hub_service_named_after_it(pod_engine):
    env, root = pod_engine
    status = requests.get(root + "/services/potluck-cpu-0/api/status", timeout=30)
    assert status.status_code == 200 and status.json()["model"] == "SmolLM2-135M-Instruct"
    # Its name among the hub's engines is the pod's; its pool and class are the rendered ones.
    assert status.json()["engine"] == {"name": "potluck-cpu-0", "pool": "cpu", "accelerator": "cpu"}
    assert requests.get(root + "/api/status", timeout=30).status_code == 404
    # Hub authentication is in force: no token, no tenant; a token is the Hub's to check (and no Hub runs here).
    assert requests.get(root + "/services/potluck-cpu-0/api/me", timeout=30).status_code == 401
    r = requests.get(root + "/services/potluck-cpu-0/api/me", headers={"Authorization": "token abc"}, timeout=60)
    assert r.status_code == 503 and r.json()["error"]["code"] == "hub_unreachable", r.text


def test_the_probe_passes_only_for_its_own_pod_name(pod_engine):
    env, _ = pod_engine
    assert probe(env) == 0
    assert probe({**env, "POD_NAME": "potluck-cpu-1"}) == 1


def test_a_pod_without_a_token_refuses_to_start_naming_the_missing_service(tmp_path):
    run = subprocess.run([*POD, "engine"], env={**os.environ, "POD_NAME": "potluck-cpu-7",
                                                "POTLUCK_TOKEN_DIR": str(tmp_path)},
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 1 and "hub.services.potluck-cpu-7" in run.stderr
