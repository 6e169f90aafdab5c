"""The rendered z2jh values load the way zero-to-jupyterhub's jupyterhub_config.py loads them:
``hub.services`` entries become ``c.JupyterHub.services`` with the token z2jh generated into its
``hub`` Secret, then each ``hub.extraConfig`` string is ``exec``-ed with that ``c``. The result must
be the Hub services and the environment of ``potluck.hub_config``'s pool contract."""

from __future__ import annotations

import json

import pytest
from traitlets.config import Config

from k8s_deploy import example_values, rendered
from potluck.engine.pools import POOLS_ENV, PoolMap, engine_service_name


def load_like_z2jh(values: dict, secret: dict[str, str]) -> Config:
    """What z2jh's jupyterhub_config.py does with hub.services and hub.extraConfig (in that order)."""
    c = Config()
    c.JupyterHub.services = []
    c.JupyterHub.load_roles = []
    for key, service in values["hub"].get("services", {}).items():
        service = dict(service)
        service.setdefault("name", key)
        service.pop("apiToken", None)
        service["api_token"] = secret[f"hub.services.{key}.apiToken"]     # z2jh's get_secret_value
        c.JupyterHub.services.append(service)
    for key, source in sorted(values["hub"].get("extraConfig", {}).items()):
        exec(source, {"c": c})
    return c


@pytest.fixture(scope="module")
def hub():
    values = rendered()["z2jh-values.yaml"]
    secret = {f"hub.services.{name}.apiToken": f"secret-of-{name}" for name in values["hub"]["services"]}
    return load_like_z2jh(values, secret)


def engines_of_example() -> dict[str, list[str]]:
    return {cls: [engine_service_name(cls, i) for i in range(spec["replicas"])]
            for cls, spec in example_values()["accelerators"].items()}


def test_every_engine_pod_is_an_external_hub_service_with_z2jhs_token(hub):
    services = {s["name"]: s for s in hub.JupyterHub.services}
    for cls, names in engines_of_example().items():
        for name in names:
            s = services[name]
            assert s["url"] == f"http://{name}.potluck-{cls}:8765"
            # Kubernetes runs the engines: the Hub only routes to them, with the token the pod reads.
            assert "command" not in s
            assert s["api_token"] == f"secret-of-{name}"


def test_servers_and_kernels_get_the_pool_map_of_the_pods(hub):
    pools = PoolMap.from_json(hub.Spawner.environment[POOLS_ENV])
    assert pools.default_pool == "cpu"
    assert list(pools.pools) == ["h100", "cpu"]          # the values file's order is the preference order
    for cls, names in engines_of_example().items():
        assert pools.pools[cls] == {n: f"http://{n}.potluck-{cls}:8765/services/{n}/" for n in names}
    assert pools.accelerators == {"h100": "h100", "cpu": "cpu"}


def test_every_user_and_server_token_may_use_every_engine(hub):
    names = [n for ns in engines_of_example().values() for n in ns]
    granted = set(hub.Spawner.server_token_scopes)
    user_role = next((r for r in hub.JupyterHub.load_roles if r.get("name") == "user"), None)
    user_scopes = set(hub.JupyterHub.get("extra_user_scopes", set())) | set((user_role or {}).get("scopes", []))
    for name in names:
        assert f"access:services!service={name}" in granted
        assert f"access:services!service={name}" in user_scopes
    engine_role = next(r for r in hub.JupyterHub.load_roles if set(names) <= set(r.get("services", [])))
    assert {"read:users", "read:groups"} <= set(engine_role["scopes"])


def test_the_example_groups_are_created_for_the_engines_to_seed(hub):
    assert set(hub.JupyterHub.load_groups) == {"researchers", "students"}


def test_each_engine_pod_is_told_what_configure_says_an_external_engine_needs(capsys):
    """``configure`` prints the settings each external engine needs; the StatefulSets pass them."""
    values = rendered()
    secret = {f"hub.services.{n}.apiToken": "t" for n in values["z2jh-values.yaml"]["hub"]["services"]}
    capsys.readouterr()
    load_like_z2jh(values["z2jh-values.yaml"], secret)
    needs = {}
    for line in capsys.readouterr().err.splitlines():
        if "the external engine" in line:
            name = line.split("the external engine ", 1)[1].split(" ", 1)[0]
            needs[name] = dict(arg.split("=", 1) for arg in (" " + line.split("command line: ", 1)[1]).split(" --")[1:])
    assert set(needs) == {n for ns in engines_of_example().values() for n in ns}
    for sts in (d for d in values["engines.yaml"] if d["kind"] == "StatefulSet"):
        args = sts["spec"]["template"]["spec"]["containers"][0]["args"]
        given: dict = {}
        for arg in args:
            key, _, value = arg[2:].partition("=")
            given.setdefault(key, []).append(value)
        for name in (n for n in needs if n.startswith(sts["metadata"]["name"] + "-")):
            for key, value in needs[name].items():
                if key == "PotluckEngine.engine_name":
                    assert value == name     # a pod gets it from its own name (potluck-pod sets JUPYTERHUB_SERVICE_NAME)
                elif key == "PotluckEngine.pools":
                    assert given[key] == json.loads(value), key
                elif key.endswith("seed_groups"):
                    assert json.loads(given[key][0]) == json.loads(value), key
                else:
                    assert given[key] == [value], key
