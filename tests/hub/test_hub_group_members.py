"""``HubAuthenticator.group_members`` against a stand-in Hub API: a group's members as the Hub lists them,
cached like its quota, the last list kept while the Hub is away (what /api/admin/usage sums per group)."""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor

import pytest
from tornado import web
from tornado.httpserver import HTTPServer
from tornado.testing import bind_unused_port

from potluck.engine.auth import HubAuthenticator, TokenAuthenticator
from potluck.engine.store import Store

SERVICE_TOKEN = "service-token"
ACCESS = "access:services!service=potluck"


class FakeHub:
    def __init__(self):
        self.users = {"alice-token": {"kind": "user", "name": "alice", "admin": False, "groups": ["students"],
                                      "scopes": [ACCESS]}}
        self.groups = {"students": {"users": ["carol", "alice", "bob"], "properties": {"potluck": {"weight": 2}}},
                       "nameonly": {}}      # a Hub answering without users (the service lacks read:groups)
        self.group_reads = 0
        self.down = False
        hub = self

        class User(web.RequestHandler):
            def get(self):
                token = self.request.headers.get("Authorization", "").split(" ", 1)[-1]
                self.finish(json.dumps(hub.users[token]))

        class Group(web.RequestHandler):
            def get(self, name):
                assert self.request.headers["Authorization"] == f"token {SERVICE_TOKEN}"
                if hub.down:
                    raise web.HTTPError(502)
                hub.group_reads += 1
                self.finish(json.dumps({"kind": "group", "name": name, **hub.groups[name]}))

        self.app = web.Application([(r"/hub/api/user", User), (r"/hub/api/groups/([^/]+)", Group)])


@pytest.fixture
def hub_and_auth(tmp_path):
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    hub = FakeHub()
    sock, port = bind_unused_port()
    server = HTTPServer(hub.app)
    server.add_sockets([sock])
    store = Store(f"sqlite:///{tmp_path}/potluck.sqlite")
    auth = HubAuthenticator(store=store, executor=ThreadPoolExecutor(1), api_url=f"http://127.0.0.1:{port}/hub/api",
                            api_token=SERVICE_TOKEN, service_name="potluck", cache_seconds=0.5)
    yield hub, auth, loop.run_until_complete
    server.stop()
    store.close()
    loop.close()
    asyncio.set_event_loop(None)


def test_a_groups_members_are_the_hubs_list_cached_then_read_again(hub_and_auth):
    hub, auth, run = hub_and_auth
    assert run(auth.group_members("students")) == ["alice", "bob", "carol"]
    reads = hub.group_reads
    hub.groups["students"]["users"].append("dave")
    assert run(auth.group_members("students")) == ["alice", "bob", "carol"]     # from the cache
    assert hub.group_reads == reads
    run(asyncio.sleep(0.6))
    assert run(auth.group_members("students")) == ["alice", "bob", "carol", "dave"]


def test_identify_reads_the_members_with_the_quota_in_one_request(hub_and_auth):
    hub, auth, run = hub_and_auth
    run(auth.identify("alice-token"))
    reads = hub.group_reads
    assert run(auth.group_members("students")) == ["alice", "bob", "carol"]
    assert hub.group_reads == reads


def test_while_the_hub_is_away_the_last_list_is_kept_and_an_unknown_group_is_none(hub_and_auth):
    hub, auth, run = hub_and_auth
    assert run(auth.group_members("students")) == ["alice", "bob", "carol"]
    hub.down = True
    run(asyncio.sleep(0.6))
    assert run(auth.group_members("students")) == ["alice", "bob", "carol"]
    assert run(auth.group_members("never-read")) is None
    hub.down = False
    assert run(auth.group_members("nameonly")) is None           # no users in the Hub's answer: unknown


def test_without_a_hub_members_are_unknown(tmp_path):
    store = Store(f"sqlite:///{tmp_path}/potluck.sqlite")
    try:
        auth = TokenAuthenticator(store=store, executor=ThreadPoolExecutor(1))
        assert asyncio.run(auth.group_members("students")) is None
    finally:
        store.close()


class Metrics:
    def observe_request(self, *args) -> None:
        pass


class Engine:
    """What the usage endpoint asks the engine: the tenants it has seen (only alice, of students)."""

    def tenant_reports(self) -> list[dict]:
        return [{"name": "alice", "groups": ["students"]}]

    def known_tenant(self, name: str):
        return None


def test_admin_usage_sums_every_member_the_hub_lists_not_only_those_this_engine_saw(hub_and_auth, tmp_path):
    from tornado.httpclient import AsyncHTTPClient

    from potluck.engine.http.fairpool import FairPool
    from potluck.engine.service import Service, make_app
    from potluck.engine.store import UsageLedger

    hub, auth, run = hub_and_auth
    hub.users["root-token"] = {"kind": "user", "name": "root", "admin": True, "groups": [], "scopes": [ACCESS]}
    # Usage from every engine of the hub, in the shared ledger: bob and carol were served elsewhere.
    ledger = UsageLedger(auth.store)
    for name, tokens in (("alice", 10), ("bob", 200), ("carol", 3000), ("zed", 40000)):
        ledger.record(name, prefill_tokens=tokens)
    ledger.flush()
    executor = FairPool(2, 1)
    service = Service(engine=Engine(), store=auth.store, ledger=ledger, authenticator=auth, executor=executor,
                      metrics=Metrics())
    sock, port = bind_unused_port()
    server = HTTPServer(make_app(service))
    server.add_sockets([sock])
    try:
        r = run(AsyncHTTPClient().fetch(f"http://127.0.0.1:{port}/api/admin/usage",
                                        headers={"Authorization": "token root-token"}))
        body = json.loads(r.body)
        students = body["groups"]["students"]
        assert students["members"] == ["alice", "bob", "carol"]
        assert sum(row[1] for row in students["series"]) == 3210
        hub.down = True             # the Hub away and nothing cached: the members this engine has seen
        auth._members.clear()
        r = run(AsyncHTTPClient().fetch(f"http://127.0.0.1:{port}/api/admin/usage",
                                        headers={"Authorization": "token root-token"}))
        students = json.loads(r.body)["groups"]["students"]
        assert students["members"] == ["alice"] and sum(row[1] for row in students["series"]) == 10
    finally:
        server.stop()
        ledger.close()
        executor.shutdown()
