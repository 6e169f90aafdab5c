"""The notebook's Python API to the Potluck engine, as the hub user this kernel runs for.

    from potluck.kernel import client as potluck
    potluck.generate("The capital of France is", max_tokens=8)
    for piece in potluck.stream("Tell me a story"): print(piece, end="")
    potluck.chat("What is a KV cache?")
    potluck.save_context("notes", prompt=long_document)      # keep its KV cache under a name
    potluck.generate(" In short,", context="notes")          # continue it in a later cell
    result = potluck.run("best_of_n.py", question="...")      # an inferlet, output live
    potluck.usage(); potluck.quota()

Where the engine is and who we are come from the environment, set up for the
kernel by ``potluck.jupyter_ext`` (or by hand): ``POTLUCK_URL`` (default
``http://127.0.0.1:8765/``) and ``POTLUCK_TOKEN``, else ``JUPYTERHUB_API_TOKEN``
(the server's Hub token, which every kernel under a Hub inherits). On a hub with
several engines (``POTLUCK_POOLS``), a call that finds this user's engine gone,
or sent to an engine that is not theirs (421), goes once to the engine that
serves them now, with one line saying so; a call the old engine had already
received is not sent again.

Every failure is a ``PotluckError`` whose message is one line for the user (what
happened, which limit, what to do); nothing from the HTTP layer leaks out.
Interrupting a call (the kernel's stop button) raises ``Interrupted``, a
``KeyboardInterrupt`` with one line; an interrupted generation is cancelled in the
engine and its text so far is kept in ``partial`` (``potluck.partial``, and the
exception's ``.partial``). This module never chooses a tenant: the engine takes it
from the token.
"""

from __future__ import annotations

import json
import os
import sys
import weakref
from dataclasses import dataclass, field
from typing import Callable, Iterator
from urllib.parse import quote, urlparse

import requests

from potluck.engine.pools import MISDIRECTED, WRONG_ENGINE, EngineRouter, NoEngine, PoolMap, http_probe
from potluck.engine.protocol import CANCELLED, DONE_STATES, FAILED, FINISHED, QUEUED

from .errors import Interrupted, PotluckError, connected_then_dropped, error_from
from .progress import Progress, in_kernel

DEFAULT_URL = "http://127.0.0.1:8765/"


partial: "Completion | None" = None      # the text of the last interrupted generation (potluck.partial)
_open_streams: "weakref.WeakSet[Stream]" = weakref.WeakSet()


def close_open_streams() -> None:
    """Close every stream still open (the kernel extension calls this after an interrupted cell)."""
    for s in list(_open_streams):
        s.close()


class Completion(str):
    """Generated text (a ``str``) with ``tokens``, ``logprobs``, ``finish_reason`` and ``usage``."""

    tokens: list[int]
    logprobs: list[float]
    finish_reason: str
    usage: dict

    @classmethod
    def of(cls, body: dict) -> "Completion":
        c = cls(body.get("text", ""))
        c.tokens = body.get("tokens", [])
        c.logprobs = body.get("logprobs", [])
        c.finish_reason = body.get("finish_reason", "")
        c.usage = body.get("usage", {})
        return c


class Stream:
    """Text pieces as they are generated; ``result`` is the ``Completion`` once the stream ends."""

    def __init__(self, response: requests.Response, engine_url: str = "the engine"):
        self._response = response
        self._engine_url = engine_url
        self.result: Completion | None = None
        self._closed_by_us = False
        self._pieces: list[str] = []          # the text so far, kept if the generation is interrupted
        self._tokens: list[int] = []
        _open_streams.add(self)

    def __enter__(self) -> "Stream":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def interrupted(self) -> Interrupted:
        """Stop the generation (the engine cancels it) and say so in one line, keeping the text so far."""
        global partial
        self.close()
        c = Completion("".join(self._pieces))
        c.tokens, c.logprobs, c.finish_reason, c.usage = list(self._tokens), [], "interrupted", {}
        partial = c
        return Interrupted(f"interrupted after {len(c.tokens)} tokens: the generation was cancelled; its text so "
                           "far is in potluck.partial", c)

    def __iter__(self) -> Iterator[str]:
        event, data = None, []
        try:
            for line in self._response.iter_lines(decode_unicode=True):
                if line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:"):
                    data.append(line[5:].strip())
                elif not line and data:
                    body = json.loads("\n".join(data))
                    if event == "token":
                        if isinstance(body.get("token"), int):
                            self._tokens.append(body["token"])
                        if body.get("text"):
                            self._pieces.append(body["text"])
                            yield body["text"]
                    elif event == "done":
                        self.result = Completion.of(body)
                    elif event == "error":
                        err = body.get("error", {})
                        raise PotluckError(err.get("message", "the generation failed"), code=err.get("code", "error"),
                                           limit=err.get("limit"), value=err.get("value"))
                    event, data = None, []
        except KeyboardInterrupt:
            raise self.interrupted() from None      # not a traceback through requests and urllib3
        except (requests.RequestException, OSError) as e:
            if self._closed_by_us:
                return
            raise PotluckError(f"the Potluck engine at {self._engine_url} broke the connection during generation "
                               f"({type(e).__name__}): it may have stopped or restarted; the answer is incomplete",
                               code="connection_broken") from None
        finally:
            self._response.close()
            _open_streams.discard(self)
        if self.result is None and not self._closed_by_us:
            # The stream ended without its final event: never hand back a truncated answer as whole.
            raise PotluckError(f"the Potluck engine at {self._engine_url} ended the stream before the generation "
                               "finished: it may have stopped or restarted; the answer is incomplete",
                               code="connection_broken")

    def close(self) -> None:
        """Stop reading; the engine cancels the generation when the connection closes."""
        self._closed_by_us = True
        self._response.close()
        _open_streams.discard(self)


@dataclass
class RunResult:
    """What an inferlet run did: its final state, output, messages it sent, usage."""
    id: str
    state: str
    error: str | None = None
    output: str = ""
    messages: list = field(default_factory=list)
    usage: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.state == FINISHED


class Client:
    """The engine's HTTP API as Python calls. One per kernel is plenty (``potluck.kernel.client.default``)."""

    def __init__(self, url: str | None = None, token: str | None = None, timeout: float = 600.0):
        self.url = (url or os.environ.get("POTLUCK_URL") or DEFAULT_URL).rstrip("/") + "/"
        self.token = token or os.environ.get("POTLUCK_TOKEN") or os.environ.get("JUPYTERHUB_API_TOKEN") or ""
        self.timeout = timeout
        self.session = requests.Session()
        if self.token:
            self.session.headers["Authorization"] = f"token {self.token}"
        try:
            pools = None if url else PoolMap.from_env()
        except ValueError as e:
            raise PotluckError(f"{e}: ask your hub admin (or set POTLUCK_URL)", code="bad_pool_map") from None
        self.router = None
        if pools is not None:
            self.router = EngineRouter(pools, os.environ.get("JUPYTERHUB_USER", ""), http_probe(self.session),
                                       notice=lambda line: print(line, file=sys.stderr, flush=True))
            self.router.engine = pools.engine_at(self.url)

    def __repr__(self) -> str:
        return f"<potluck Client {self.url}>"

    # ------------------------------------------------------------ HTTP
    def request(self, method: str, path: str, *, stream: bool = False, ok: tuple = (200,), **kw) -> requests.Response:
        if not self.token:
            raise PotluckError("no token for the Potluck engine: set POTLUCK_TOKEN (standalone: "
                               "`potluck token create NAME`), or run under JupyterHub", code="no_token")
        for attempt in (1, 2):
            try:
                r = self.session.request(method, self.url + path, stream=stream, timeout=(10, self.timeout), **kw)
            except requests.ConnectionError as e:
                if connected_then_dropped(e):
                    raise PotluckError(f"the Potluck engine at {self.url} closed the connection before answering: "
                                       "it may have stopped or restarted", code="connection_broken") from None
                if attempt == 1 and self._reroute():
                    continue        # it never received the call: safe to send to the engine that took over
                raise PotluckError(f"cannot reach the Potluck engine at {self.url}: is it running?",
                                   code="unreachable") from None
            except requests.Timeout:
                raise PotluckError(f"the Potluck engine at {self.url} did not answer in {self.timeout:.0f} s",
                                   code="timeout") from None
            except KeyboardInterrupt:
                self.session.close()        # drops the connection: the engine cancels what it started
                raise Interrupted(f"interrupted while waiting for the engine ({method} {path.split('?')[0]}): "
                                  "nothing was kept") from None
            if r.status_code not in ok:
                err = error_from(r)
                r.close()
                # A 421 naming no engine (none of the pool is live) is the answer itself: no move.
                misdirected = r.status_code == MISDIRECTED and err.code == WRONG_ENGINE and err.engine
                if attempt == 1 and misdirected and self._reroute(err.engine):
                    continue
                raise err
            return r

    def _reroute(self, engine: str | None = None) -> bool:
        """Several engines: move to the one that serves this user now (``engine`` if a 421 named it).
        True when the URL changed; new OpenAI clients in this kernel follow too."""
        if self.router is None or (self.router.engine is None and not engine):
            return False        # POTLUCK_URL is not one of the pool map's engines: nothing to move from
        try:
            if engine:
                self.router.follow(engine)
            else:
                self.router.failed("connection refused")
        except NoEngine as e:
            print(f"Potluck: {e}", file=sys.stderr, flush=True)
            return False
        except KeyboardInterrupt:
            raise Interrupted("interrupted while looking for the engine that serves you now: "
                              "nothing was sent") from None
        if self.router.engine is None:
            return False
        old, self.url = self.url, self.router.pools.url(self.router.engine)
        for key, was, now in (("POTLUCK_URL", old, self.url), ("OPENAI_BASE_URL", old + "v1", self.url + "v1")):
            if os.environ.get(key) == was:
                os.environ[key] = now
        return self.url != old

    def get(self, path: str) -> dict:
        return self.request("GET", path).json()

    # ------------------------------------------------------------ about
    def status(self) -> dict:
        """The engine: model, device, KV pool, load."""
        return self.get("api/status")

    def me(self) -> dict:
        """My tenant: name, groups, effective quota and where each value came from, usage."""
        return self.get("api/me")

    def usage(self) -> dict:
        """My usage: live counters since the engine started, and the persisted totals."""
        me = self.me()
        return {**me.get("usage", {}), "total": me.get("usage_total")}

    def quota(self) -> dict:
        """My effective quota, each value with its source: ``{field: (value, "group:students")}``."""
        me = self.me()
        src = me.get("quota_source", {})
        return {k: (v, src.get(k, "default")) for k, v in (me.get("quota") or {}).items()}

    # ------------------------------------------------------------ generation
    def _generate_body(self, prompt, messages, context, params) -> dict:
        body = {k: v for k, v in params.items() if v is not None}
        if prompt is not None:
            body["prompt"] = prompt
        if messages is not None:
            body["messages"] = messages
        if context is not None:
            body["context"] = context
        return body

    def generate(self, prompt: str | None = None, *, messages: list[dict] | None = None, context: str | None = None,
                 max_tokens: int | None = None, temperature: float | None = None, **params) -> Completion:
        """Generate from a prompt, chat messages, or continuing a saved context (``context=name``)."""
        if not in_kernel():
            body = self._generate_body(prompt, messages, context, dict(params, max_tokens=max_tokens,
                                                                        temperature=temperature))
            return Completion.of(self.request("POST", "api/generate", json=body).json())
        # In a notebook: stream under the hood, to show how far a long generation has got.
        s = self.stream(prompt, messages=messages, context=context, max_tokens=max_tokens,
                        temperature=temperature, **params)
        n = 0
        try:
            with Progress("generating...") as progress:
                for _ in s:
                    n += 1
                    progress.update(f"generating... {n} tokens")
        except Interrupted:
            raise
        except KeyboardInterrupt:       # between two pieces, in this loop rather than in the read
            raise s.interrupted() from None
        return s.result

    def stream(self, prompt: str | None = None, *, messages: list[dict] | None = None, context: str | None = None,
               max_tokens: int | None = None, temperature: float | None = None, **params) -> Stream:
        """Like ``generate``, but an iterator of text pieces as they come (``.result`` at the end)."""
        body = self._generate_body(prompt, messages, context, dict(params, max_tokens=max_tokens,
                                                                    temperature=temperature, stream=True))
        return Stream(self.request("POST", "api/generate", json=body, stream=True), self.url)

    def chat(self, message: str | list[dict], *, system: str | None = None, **params) -> Completion:
        """One chat turn: a user message (or a whole message list) in, the assistant's reply out."""
        messages = [{"role": "user", "content": message}] if isinstance(message, str) else list(message)
        if system:
            messages.insert(0, {"role": "system", "content": system})
        return self.generate(messages=messages, **params)

    # ------------------------------------------------------------ saved contexts
    def save_context(self, name: str, prompt: str | None = None, *, messages: list[dict] | None = None,
                     tokens: list[int] | None = None) -> dict:
        """Fill a context and keep its KV cache under ``name`` (yours alone; survives restarts)."""
        body = {k: v for k, v in (("prompt", prompt), ("messages", messages), ("tokens", tokens)) if v is not None}
        size = len(json.dumps(body))
        # The engine reads the whole context in one request: say so up front when it is long.
        with Progress(f"saving context {name!r} ({size} characters)...", delay=0 if size > 4000 else 1e9) as p:
            p.update(p.label)
            return self.request("PUT", f"api/contexts/{quote(name, safe='')}", json=body).json()

    def contexts(self) -> list[dict]:
        """My saved contexts: name and size in tokens."""
        return self.get("api/contexts")["contexts"]

    def context(self, name: str) -> dict:
        """One saved context, with the text it holds."""
        return self.get(f"api/contexts/{quote(name, safe='')}")

    def delete_context(self, name: str) -> None:
        self.request("DELETE", f"api/contexts/{quote(name, safe='')}", ok=(204,))

    # ------------------------------------------------------------ admins
    def tenants(self) -> list[dict]:
        """Every tenant's usage, quota and override (hub admins and custom:potluck:admin only)."""
        return self.get("api/admin/tenants")["tenants"]

    def set_user_quota(self, user: str, **fields) -> dict:
        """Replace ``user``'s quota override, e.g. ``set_user_quota("bob", tokens_per_minute=1000)``."""
        return self.request("PUT", f"api/admin/quotas/users/{quote(user, safe='')}", json=fields).json()

    def clear_user_quota(self, user: str) -> None:
        """Remove ``user``'s override: their groups' quotas apply again."""
        self.request("DELETE", f"api/admin/quotas/users/{quote(user, safe='')}", ok=(204,))

    # ------------------------------------------------------------ inferlets
    def start(self, source: str, args: dict | None = None) -> str:
        """Start an inferlet from Python source; returns its run id (follow it with ``follow``)."""
        body = {"source": source, "args": args or {}}
        return self.request("POST", "api/runs", json=body, ok=(200, 201, 202)).json()["id"]

    def runs(self) -> list[dict]:
        body = self.get("api/runs")
        return body["runs"] if isinstance(body, dict) else body

    def get_run(self, run_id: str) -> dict:
        return self.get(f"api/runs/{quote(run_id, safe='')}")

    def cancel(self, run_id: str) -> None:
        self.request("DELETE", f"api/runs/{quote(run_id, safe='')}", ok=(200, 202, 204))

    def events(self, run_id: str) -> Iterator[dict]:
        """A run's events (``status``, ``output``, ``message``, ``usage``) until it ends."""
        import websocket         # websocket-client, a jupyter_server dependency
        u = urlparse(self.url)
        ws_url = f"{'wss' if u.scheme == 'https' else 'ws'}://{u.netloc}{u.path}api/runs/{quote(run_id, safe='')}/events"
        try:
            ws = websocket.create_connection(ws_url, header=[f"Authorization: token {self.token}"], timeout=self.timeout)
        except websocket.WebSocketBadStatusException as e:
            raise PotluckError(f"cannot follow run {run_id}: the engine answered {e.status_code}",
                               status=e.status_code) from None
        except OSError:
            raise PotluckError(f"cannot reach the Potluck engine at {self.url}: is it running?",
                               code="unreachable") from None
        try:
            while True:
                try:
                    text = ws.recv()
                except (websocket.WebSocketConnectionClosedException, OSError):
                    return      # follow() then asks for the run's final state (or says the engine is gone)
                if not text:
                    return
                ev = json.loads(text)
                yield ev
                if ev.get("type") == "status" and ev.get("state") in DONE_STATES:
                    return
        finally:
            ws.close()

    def follow(self, run_id: str, on_event: Callable[[dict], None] | None = None) -> RunResult:
        """Wait for a run, passing each event to ``on_event``; interrupting cancels the run."""
        res = RunResult(id=run_id, state=QUEUED)
        out = []
        try:
            for ev in self.events(run_id):
                kind = ev.get("type")
                if kind == "output":
                    out.append(ev.get("text", ""))
                elif kind == "message":
                    res.messages.append(ev.get("body"))
                elif kind == "usage":
                    res.usage = {k: v for k, v in ev.items() if k not in ("seq", "time", "type")}
                elif kind == "status":
                    res.state = ev.get("state", res.state)
                    res.error = ev.get("error")
                if on_event is not None:
                    on_event(ev)
        except KeyboardInterrupt:
            self.cancel(run_id)
            res.state = CANCELLED
            res.error = "interrupted: the run was cancelled"
        res.output = "".join(out)
        if res.state not in DONE_STATES:        # the socket ended early: ask for the final word
            info = self.get_run(run_id)
            res.state, res.error = info.get("state", res.state), info.get("error")
        return res

    def run(self, source_or_file: str, /, **args) -> RunResult:
        """Run an inferlet (source, or a .py file) with JSON ``args``; its output streams here live."""
        source = source_or_file
        if "\n" not in source_or_file and source_or_file.endswith(".py") and os.path.isfile(source_or_file):
            with open(source_or_file) as f:
                source = f.read()
        run_id = self.start(source, args)
        return self.follow(run_id, on_event=print_event)


def print_event(ev: dict) -> None:
    """Show a run's event in the notebook: printed text as it comes, messages and failures as lines."""
    kind = ev.get("type")
    if kind == "output":
        stream = sys.stderr if ev.get("stream") == "stderr" else sys.stdout
        stream.write(ev.get("text", ""))
        stream.flush()
    elif kind == "message":
        print(f"[message] {json.dumps(ev.get('body'))}", flush=True)
    elif kind == "status" and ev.get("state") in (FAILED, CANCELLED):
        print(f"[run {ev.get('state')}] {ev.get('error') or ''}".rstrip(), file=sys.stderr, flush=True)


# ---------------------------------------------------------------- module-level API on one client
_default: Client | None = None


def default() -> Client:
    """The kernel's client, made from the environment on first use."""
    global _default
    if _default is None:
        _default = Client()
    return _default


def connect(url: str | None = None, token: str | None = None) -> Client:
    """Point this kernel's client at another engine (or token)."""
    global _default
    _default = Client(url, token)
    return _default


def status() -> dict: return default().status()
def me() -> dict: return default().me()
def usage() -> dict: return default().usage()
def quota() -> dict: return default().quota()
def generate(prompt=None, **kw) -> Completion: return default().generate(prompt, **kw)
def stream(prompt=None, **kw) -> Stream: return default().stream(prompt, **kw)
def chat(message, **kw) -> Completion: return default().chat(message, **kw)
def save_context(name, prompt=None, **kw) -> dict: return default().save_context(name, prompt, **kw)
def contexts() -> list[dict]: return default().contexts()
def context(name) -> dict: return default().context(name)
def delete_context(name) -> None: return default().delete_context(name)
def runs() -> list[dict]: return default().runs()
def tenants() -> list[dict]: return default().tenants()
def set_user_quota(user, **fields) -> dict: return default().set_user_quota(user, **fields)
def clear_user_quota(user) -> None: return default().clear_user_quota(user)
def cancel(run_id) -> None: return default().cancel(run_id)
def run(source_or_file, /, **args) -> RunResult: return default().run(source_or_file, **args)
