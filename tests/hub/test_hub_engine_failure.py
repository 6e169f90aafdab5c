"""Failures stay local: an engine that cannot start leaves the Hub up and says why in one line.

A real JupyterHub starts the engine as its managed service with a model that does not exist, or
a setting that cannot be read. The Hub must come up anyway (a managed service that exits while
the Hub starts takes the Hub down with it), and the engine's ``/api/status`` through the Hub's
proxy is a 503 whose ``model_error`` names the problem.
"""

from __future__ import annotations

import pytest
import requests

from hub_process import HubProcess

pytestmark = pytest.mark.timeout(600)


@pytest.mark.parametrize("arg, reason", [
    ("--model=/nonexistent/model.gguf", "model file /nonexistent/model.gguf does not exist"),
    ("--PotluckEngine.profile_overrides=batch_token_budget=lots",
     "PotluckEngine.profile_overrides: batch_token_budget must be a whole number >= 1, got 'lots'"),
])
def test_an_engine_that_cannot_start_leaves_the_hub_up_and_says_why(tmp_path, arg, reason):
    hub = HubProcess(tmp_path, engine_args=(arg,), ready_status=503)
    try:
        hub.start()
        r = requests.get(hub.engine_url + "/api/status", timeout=30)
        assert r.status_code == 503 and reason in r.json()["model_error"], r.text
        assert "\n" not in r.json()["model_error"]
        # The Hub itself serves: its API answers, and a user can be made and logged in.
        assert requests.get(f"{hub.url}/hub/api/", timeout=30).json()["version"]
        page = requests.get(hub.engine_url + "/", timeout=30)        # what an admin sees in a browser
        assert reason in page.text
        hub.create_user("carol")
        assert hub.proc.poll() is None
        assert sum(reason in line for line in hub.log_path.read_text().splitlines()) >= 1
    finally:
        hub.stop()
