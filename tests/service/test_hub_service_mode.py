"""Run as a JupyterHub managed service: bind where JUPYTERHUB_SERVICE_URL says, serve under the prefix."""

from __future__ import annotations

import requests

from support.engine_process import EngineProcess, error_of, free_port

PREFIX = "/services/potluck/"


def test_engine_binds_from_the_service_url_and_serves_under_the_prefix(tmp_path):
    port = free_port()
    # No --port: where to listen must come from the service URL.
    proc = EngineProcess(tmp_path, port=port, port_on_command_line=False, prefix=PREFIX,
                         args=("--no-prometheus-auth",),
                         env={"JUPYTERHUB_SERVICE_URL": f"http://127.0.0.1:{port}",
                              "JUPYTERHUB_SERVICE_PREFIX": PREFIX, "JUPYTERHUB_SERVICE_NAME": "potluck"})
    proc.start()
    try:
        assert requests.get(proc.url + "/api/status", timeout=30).status_code == 200
        r = requests.get(proc.root + "/api/status", timeout=30)
        assert r.status_code == 404 and error_of(r)["code"] == "not_found"
        nora = proc.client("nora")
        r = nora.post("/v1/completions", json={"model": "default", "prompt": "Hi", "max_tokens": 2})
        assert r.status_code == 200, r.text
        assert requests.get(proc.url + "/metrics", timeout=30).status_code == 200    # --no-prometheus-auth
    finally:
        assert proc.stop() == 0, proc.log_tail()
