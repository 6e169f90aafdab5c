# A complete jupyterhub_config.py with Potluck: one shared LLM engine for every user.
#
#   jupyterhub -f examples/jupyterhub_config.py
#
# Every user's notebooks then reach the engine as that user (the "Python 3 (Potluck)" kernel,
# or `%load_ext potluck.kernel` in any Python kernel), with the quota their groups give them.
# Hub admins edit a group's quota in the admin page (Manage Groups -> the group -> properties),
# one property per quota field, typed as text:
#   potluck.tokens_per_minute = 20000      potluck.weight = 1
# or with `PUT /hub/api/groups/<group>/properties`; it reaches the engine within 20 s. A value the
# engine cannot read keeps the group's last good quota. The admin dashboard (JupyterLab's launcher,
# or /services/potluck/ in a browser) shows every user's and group's quota and usage.
#
# The authenticator and spawner below make this file runnable on one machine as it is
# (any user name logs in with the shared password, hub admins with the admin password; servers run as the Hub's own Unix
# user, each in /tmp/<name>). For a real deployment, replace them with yours (LDAP, OAuth,
# ...; LocalProcessSpawner, SystemdSpawner, KubeSpawner); the Potluck part stays the same.

import os

import potluck.hub_config

c = get_config()  # noqa: F821 (defined by JupyterHub when it loads this file)

# ---------------------------------------------------------------- the Hub itself
c.JupyterHub.bind_url = os.environ.get("POTLUCK_HUB_URL", "http://127.0.0.1:8000")
c.JupyterHub.authenticator_class = "shared-password"
c.SharedPasswordAuthenticator.user_password = os.environ.get("POTLUCK_DEMO_PASSWORD", "potluck-demo")
c.SharedPasswordAuthenticator.admin_password = os.environ.get(
    "POTLUCK_DEMO_ADMIN_PASSWORD", "potluck-demo-admin-password-change-me")
c.Authenticator.allow_all = True
c.Authenticator.admin_users = {"ada"}
c.JupyterHub.spawner_class = "simple"          # jupyterhub.spawner.SimpleLocalProcessSpawner
c.Spawner.default_url = "/lab"

# ---------------------------------------------------------------- Potluck
potluck.hub_config.configure(
    c,
    # The Hub starts `potluck engine` as a managed service at this address and serves it at
    # /services/potluck/. For an engine on a GPU host that the Hub must not restart, give
    # engine_url="http://gpu-host:8765" and api_token=... instead.
    url=os.environ.get("POTLUCK_ENGINE_URL", "http://127.0.0.1:8765"),
    data_dir=os.environ.get("POTLUCK_DATA_DIR", os.path.abspath("potluck-data")),
    engine_args=[
        # Every tenant starts from this quota; groups' properties and per-user overrides refine it.
        '--PotluckEngine.default_quota={"tokens_per_minute": 20000, "max_tokens_per_request": 1024}',
    ],
    # Engine admins besides hub admins: see every tenant, set per-user quotas.
    admin_users={"teacher"},
    # Default groups and their quota: each group's quota is seeded once, when it has none, so what
    # admins later set in the admin page survives restarts (None: only create the group).
    groups={
        "students": {"weight": 1, "tokens_per_minute": 5000, "tokens_per_day": 200000,
                     "max_tokens_per_request": 256, "max_runs": 2, "kv_pages": 512},
        "researchers": {"weight": 4, "tokens_per_minute": 100000, "max_tokens_per_request": 4096,
                        "max_runs": 8, "kv_pages": 1024},   # under the CPU pool (~1456 pages)
    },
    # A model tier: users holding custom:potluck:tier:large (through a role) get these fields.
    model_tiers={"large": {"models": ["*"], "weight": 2}},
)

# Who belongs where. Users can be added to groups in the admin page too.
c.JupyterHub.load_groups["students"]["users"] = ["bob"]
c.JupyterHub.load_groups["researchers"]["users"] = ["alice"]
