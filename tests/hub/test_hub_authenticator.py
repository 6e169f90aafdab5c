"""``HubAuthenticator`` against a stand-in Hub API: who a token is, group quotas, refusals, caching.

The end-to-end test runs the real Hub; this covers the cases a real Hub makes
awkward to produce (a typo in a group's property, the Hub going away).
"""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor

import pytest
from tornado import web
from tornado.httpserver import HTTPServer
from tornado.testing import bind_unused_port

from potluck.engine.auth import HubAuthenticator
from potluck.engine.errors import EngineUnavailable, Forbidden
from potluck.engine.store import Store

SERVICE_TOKEN = "service-token"
ACCESS = "access:services!service=potluck"


class FakeHub:
    def __init__(self):
        self.users = {   # token -> model, as GET /hub/api/user answers it
            "alice-token": {"kind": "user", "name": "alice", "admin": False, "groups": ["students", "typo"],
                            "scopes": [ACCESS, "read:users:name!user=alice"]},
            "ada-token": {"kind": "user", "name": "ada", "admin": True, "groups": [], "scopes": ["access:services"]},
            "narrow-token": {"kind": "user", "name": "alice", "admin": False, "groups": [],
                             "scopes": ["read:users:activity!user=alice"]},
            "tier-token": {"kind": "user", "name": "tim", "admin": False, "groups": [],
                           "scopes": [ACCESS, "custom:potluck:tier:large"]},
            "svc-token": {"kind": "service", "name": "cron", "scopes": [ACCESS]},
        }
        self.groups = {"students": {"potluck": {"tokens_per_minute": 5000}, "other": 1},
                       "typo": {"potluck": {"tokens_per_mnute": 1}}}
        self.group_reads = 0
        hub = self

        class User(web.RequestHandler):
            def get(self):
                token = self.request.headers.get("Authorization", "").split(" ", 1)[-1]
                if token not in hub.users:
                    raise web.HTTPError(403)
                self.finish(json.dumps(hub.users[token]))

        class Group(web.RequestHandler):
            def get(self, name):
                assert self.request.headers["Authorization"] == f"token {SERVICE_TOKEN}"
                hub.group_reads += 1
                self.finish(json.dumps({"kind": "group", "name": name, "properties": hub.groups[name]}))

        class Properties(web.RequestHandler):
            def put(self, name):        # the Hub replaces a group's properties with the body
                assert self.request.headers["Authorization"] == f"token {SERVICE_TOKEN}"
                hub.groups[name] = json.loads(self.request.body)
                self.finish(json.dumps({"kind": "group", "name": name, "properties": hub.groups[name]}))

        self.app = web.Application([(r"/hub/api/user", User), (r"/hub/api/groups/([^/]+)", Group),
                                    (r"/hub/api/groups/([^/]+)/properties", Properties)])


@pytest.fixture
def hub_and_auth(tmp_path):
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    hub = FakeHub()
    sock, port = bind_unused_port()
    server = HTTPServer(hub.app)
    server.add_sockets([sock])
    store = Store(f"sqlite:///{tmp_path}/potluck.sqlite")

    def authenticator(**kw):
        kw = {"cache_seconds": 0.5, "scope_quotas": {"custom:potluck:tier:large": {"weight": 2}}, **kw}
        return HubAuthenticator(store=store, executor=ThreadPoolExecutor(1),
                                api_url=f"http://127.0.0.1:{port}/hub/api", api_token=SERVICE_TOKEN,
                                service_name="potluck", **kw)
    auth = authenticator()
    auth.new = authenticator            # another engine on the same database (a restart)
    yield hub, auth, loop.run_until_complete
    server.stop()
    store.close()
    loop.close()
    asyncio.set_event_loop(None)


def test_the_tenant_is_the_hub_user_and_groups_carry_their_potluck_property(hub_and_auth):
    hub, auth, run = hub_and_auth
    ident = run(auth.identify("alice-token"))
    assert ident.tenant == "alice" and not ident.is_admin
    # A typo in a group never read well before adds nothing (logged, shown to admins), not a lock-out.
    assert ident.groups == {"students": {"tokens_per_minute": 5000}, "typo": {}}
    assert "tokens_per_mnute" in auth.group_report()["typo"]["error"]


def test_hub_admins_are_engine_admins(hub_and_auth):
    _, auth, run = hub_and_auth
    assert run(auth.identify("ada-token")).is_admin


def test_a_token_without_the_service_scope_is_refused(hub_and_auth):
    _, auth, run = hub_and_auth
    with pytest.raises(Forbidden) as e:
        run(auth.identify("narrow-token"))
    assert e.value.code == "missing_scope" and ACCESS in e.value.message
    assert run(auth.identify("unknown-token")) is None          # 401 upstream


def test_a_service_token_is_not_a_tenant(hub_and_auth):
    _, auth, run = hub_and_auth
    with pytest.raises(Forbidden):
        run(auth.identify("svc-token"))


def test_a_tier_scope_adds_its_quota_fields(hub_and_auth):
    _, auth, run = hub_and_auth
    assert run(auth.identify("tier-token")).groups == {"scope:custom:potluck:tier:large": {"weight": 2}}


def test_group_properties_are_cached_briefly_then_read_again(hub_and_auth):
    hub, auth, run = hub_and_auth
    run(auth.identify("alice-token"))
    reads = hub.group_reads
    run(auth.identify("alice-token"))
    assert hub.group_reads == reads                  # from the cache
    hub.groups["students"]["potluck"]["tokens_per_minute"] = 10
    run(asyncio.sleep(0.6))
    assert run(auth.identify("alice-token")).groups["students"] == {"tokens_per_minute": 10}


def test_an_unreachable_hub_is_503_not_a_wrong_tenant(hub_and_auth):
    _, auth, run = hub_and_auth
    auth.hub_auth.api_url = "http://127.0.0.1:9/hub/api"
    with pytest.raises(EngineUnavailable):
        run(auth.identify("some-new-token"))


def test_a_hub_that_stops_keeps_cached_tokens_working_and_names_itself_to_new_ones(hub_and_auth):
    hub, auth, run = hub_and_auth
    auth.cache_seconds = 5              # the group cache; the token cache is HubAuth's (rounded up to 1 s)
    assert run(auth.identify("alice-token")).tenant == "alice"
    url = auth.hub_auth.api_url
    auth.hub_auth.api_url = "http://127.0.0.1:9/hub/api"        # nothing listens there: the Hub is gone
    ident = run(auth.identify("alice-token"))                 # from the cache, groups included
    assert ident.tenant == "alice" and ident.groups["students"] == {"tokens_per_minute": 5000}
    with pytest.raises(EngineUnavailable) as e:
        run(auth.identify("ada-token"))
    assert e.value.status == 503 and e.value.code == "hub_unreachable"
    assert "http://127.0.0.1:9/hub/api" in e.value.message and "\n" not in e.value.message
    assert url != auth.hub_auth.api_url


def test_the_admin_pages_forms_string_and_flat_keys_are_read_by_the_fields_type(hub_and_auth):
    hub, auth, run = hub_and_auth
    # What the Hub's admin page stores: every value a string; a JSON object typed as one string.
    hub.groups["students"] = {"potluck": '{"weight": 2, "max_runs": 1}', "potluck.tokens_per_minute": " 5000",
                              "potluck.max_run_seconds": "1.5", "potluck.tokens_per_day": "null",
                              "potluck.models": "smollm2, other", "potluck.priority": "batch", "course": "x"}
    assert run(auth.identify("alice-token")).groups["students"] == {
        "weight": 2, "max_runs": 1, "tokens_per_minute": 5000, "max_run_seconds": 1.5, "tokens_per_day": None,
        "models": ("smollm2", "other"), "priority": "batch"}
    assert auth.group_report()["students"]["error"] is None


def test_an_unreadable_group_value_keeps_the_last_good_quota_even_after_a_restart(hub_and_auth):
    hub, auth, run = hub_and_auth
    assert run(auth.identify("alice-token")).groups["students"] == {"tokens_per_minute": 5000}
    # The page shows an object as "[object Object]"; applying the form stores that string.
    hub.groups["students"] = {"potluck": "[object Object]", "potluck.max_runs": "2"}
    run(asyncio.sleep(0.6))
    assert run(auth.identify("alice-token")).groups["students"] == {"tokens_per_minute": 5000}
    report = auth.group_report()["students"]
    assert report["quota"] == {"tokens_per_minute": 5000}
    assert "not a JSON object" in report["error"] and "\n" not in report["error"] and report["error_since"]
    restarted = auth.new()
    assert run(restarted.identify("alice-token")).groups["students"] == {"tokens_per_minute": 5000}
    # A flat value that is not a whole number is unreadable too; fixing it applies at once.
    hub.groups["students"] = {"potluck.tokens_per_minute": "5k"}
    run(asyncio.sleep(0.6))
    assert run(restarted.identify("alice-token")).groups["students"] == {"tokens_per_minute": 5000}
    assert "must be a whole number" in restarted.group_report()["students"]["error"]
    hub.groups["students"] = {"potluck.tokens_per_minute": "70"}
    run(asyncio.sleep(0.6))
    assert run(restarted.identify("alice-token")).groups["students"] == {"tokens_per_minute": 70}
    assert restarted.group_report()["students"]["error"] is None


def test_a_hub_away_after_a_restart_keeps_the_stored_group_quota(hub_and_auth):
    hub, auth, run = hub_and_auth
    run(auth.identify("alice-token"))
    restarted = auth.new()
    restarted.hub_auth.api_url = "http://127.0.0.1:9/hub/api"      # the Hub is away when it starts
    assert run(restarted.group_quotas(["students"])) == {"students": {"tokens_per_minute": 5000}}


def test_seeding_fills_only_groups_without_a_quota_and_keeps_other_properties(hub_and_auth):
    hub, auth, run = hub_and_auth
    hub.groups["empty"] = {"course": "ml101"}
    hub.groups["edited"] = {"potluck.tokens_per_minute": "99", "course": "ml102"}
    seeder = auth.new(seed_groups={"empty": {"tokens_per_minute": 5000, "kv_pages": None, "models": ["a", "b"]},
                                   "edited": {"tokens_per_minute": 5000}})
    run(seeder.seed_group_quotas())
    assert hub.groups["empty"] == {"course": "ml101", "potluck.tokens_per_minute": "5000",
                                   "potluck.kv_pages": "null", "potluck.models": "a, b"}
    assert hub.groups["edited"] == {"potluck.tokens_per_minute": "99", "course": "ml102"}
    # What was seeded reads back as the configured quota.
    assert run(seeder.group_quotas(["empty"]))["empty"] == {"tokens_per_minute": 5000, "kv_pages": None,
                                                           "models": ("a", "b")}


def test_a_bad_seed_quota_is_refused_at_start(hub_and_auth):
    _, auth, _ = hub_and_auth
    with pytest.raises(Exception) as e:
        auth.new(seed_groups={"students": {"tokens_per_minute": "5000"}})
    assert "seed_groups['students']" in str(e.value) and "tokens_per_minute" in str(e.value)
