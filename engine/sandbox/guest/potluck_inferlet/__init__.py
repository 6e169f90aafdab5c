"""The inferlet SDK: what ``import potluck_inferlet`` gives inside the sandbox.

A small high-level layer over the ``potluck:inferlet`` WIT world (see
``engine/sandbox/wit/inferlet.wit``)::

    from potluck_inferlet import Context, args

    ctx = Context()
    ctx.fill_chat([{"role": "user", "content": args["question"]}])
    print(ctx.generate(max_tokens=32))

Everything acts as the run's owner: contexts, saved names, the key-value
store and topics are the owner's. Every engine call that fails raises
``InferletError`` with a one-line reason; an uncaught exception ends the run
with that line as its error.

A context keeps the tokens it has not sent to the engine yet (``pending``):
``fill`` only queues them, and the next ``next_token``/``generate`` sends them
with its forward call, so a prompt and the first sampled token cost one
batched step. The token the engine chose last is pending too, until the
following call feeds it.

Text streams through ``potluck_textstream``: the engine's own
``engine/textstream.py``, bundled into the runner at build time, so stop
strings and multi-byte characters behave here exactly as in the engine.

This module runs in the guest; it must not call the host at import time (the
runner is pre-initialised at build time, when there is no host).
"""

from __future__ import annotations

import json
import sys
import time as _time

from componentize_py_types import Err
from potluck_textstream import TextStream
from wit_world.imports import context as _ctx
from wit_world.imports import io as _io
from wit_world.imports import kv as _kv
from wit_world.imports import model as _model
from wit_world.imports import runtime as _rt
from wit_world.imports import types as _types

__all__ = ["Context", "Sampler", "Sample", "Generated", "InferletError", "Topic", "args", "kv", "model",
           "send", "receive", "encode", "decode", "clock", "random_u64", "next_tokens", "distributions",
           "generate_all", "saved_contexts", "delete_saved"]

args: dict = {}
"""The run's JSON arguments (``RunManager.start(..., args=...)``)."""


class InferletError(Exception):
    """An engine call was refused: the message says why (one line)."""


def _call(fn, *a):
    try:
        return fn(*a)
    except Err as e:
        raise InferletError(str(e.value)) from None


# ------------------------------------------------------------------ model
class _Model:
    """What model this run drives. ``model.name``, ``model.vocab_size``, ``model.eos_tokens``."""

    _info = None

    def _get(self):
        if self._info is None:
            self._info = _model.info()
        return self._info

    @property
    def name(self) -> str:
        return self._get().name

    @property
    def vocab_size(self) -> int:
        return self._get().vocab_size

    @property
    def max_context(self) -> int:
        return self._get().max_context

    @property
    def eos_tokens(self) -> list[int]:
        return list(self._get().eos_tokens)


model = _Model()


def encode(text: str) -> list[int]:
    """Token ids of ``text`` (no special tokens added)."""
    if not isinstance(text, str):
        raise TypeError("encode() takes a string")
    return list(_model.encode(text))


def decode(tokens) -> str:
    """Text of a token list (special tokens left out)."""
    return _model.decode([int(t) for t in tokens])


# --------------------------------------------------------------- sampling
class Sampler:
    """How to choose the next token. The default is greedy. Immutable.

    ``Sampler(temperature=0.8, top_p=0.9)``, ``Sampler(allowed=[...])`` to
    restrict the choice, ``logit_bias={token: bias}``, ``top_logprobs=k`` to
    also get the k most likely tokens with their probabilities.
    """

    __slots__ = ("temperature", "top_k", "top_p", "min_p", "seed", "logit_bias", "allowed", "top_logprobs", "_n")

    def __init__(self, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0,
                 seed: int | None = None, logit_bias: dict | None = None, allowed=None, top_logprobs: int = 0):
        init = object.__setattr__
        init(self, "temperature", float(temperature))
        init(self, "top_k", int(top_k))
        init(self, "top_p", float(top_p))
        init(self, "min_p", float(min_p))
        init(self, "seed", None if seed is None else int(seed))
        init(self, "logit_bias", {int(t): float(b) for t, b in (logit_bias or {}).items()})
        init(self, "allowed", None if allowed is None else tuple(int(t) for t in allowed))
        init(self, "top_logprobs", int(top_logprobs))
        init(self, "_n", None)

    def __setattr__(self, name, value):
        raise AttributeError("a Sampler is immutable: make a new one")

    @classmethod
    def greedy(cls, **kw) -> "Sampler":
        return cls(temperature=0.0, **kw)

    def to_wit(self):
        return _types.Sampler(self.temperature, self.top_k, self.top_p, self.min_p, self.seed,
                              list(self.logit_bias.items()), None if self.allowed is None else list(self.allowed),
                              self.top_logprobs)

    def _number(self) -> int:
        """The number the host knows this sampler by (registered once per run and spec)."""
        if self._n is None:
            key = (self.temperature, self.top_k, self.top_p, self.min_p, self.seed,
                   tuple(sorted(self.logit_bias.items())), self.allowed, self.top_logprobs)
            n = _sampler_numbers.get(key)
            if n is None:
                n = _sampler_numbers[key] = _call(_ctx.register_sampler, self.to_wit())
            object.__setattr__(self, "_n", n)
        return self._n

    def __repr__(self) -> str:
        return (f"Sampler(temperature={self.temperature}, top_k={self.top_k}, top_p={self.top_p}, "
                f"min_p={self.min_p}, seed={self.seed})")


_sampler_numbers: dict = {}


class Sample:
    """A chosen token, its log-probability, and the top-k list when asked for."""

    __slots__ = ("token", "logprob", "top")

    def __init__(self, token: int, logprob: float, top: list):
        self.token = token
        self.logprob = logprob
        self.top = top

    def __repr__(self) -> str:
        return f"Sample(token={self.token}, logprob={self.logprob:.4f})"


class Generated(str):
    """The text ``Context.generate`` returns, with the details as attributes.

    ``.tokens`` (ids), ``.logprobs`` (one per token), ``.logprob`` (their sum),
    ``.finish_reason`` ("stop" or "length").
    """

    tokens: list
    logprobs: list
    finish_reason: str

    @property
    def logprob(self) -> float:
        return sum(self.logprobs)


# --------------------------------------------------------------- contexts
class Context:
    """A sequence in the engine's KV cache, owned by this run's user.

    ``Context()`` starts empty; ``Context.open(name)`` continues a saved one.
    Contexts a run neither saved nor dropped are dropped when it ends.
    """

    def __init__(self, _handle: int | None = None, _length: int = 0, _pending: list | None = None):
        self._h = _call(_ctx.create) if _handle is None else _handle
        self._length = _length                     # tokens in the engine's cache
        self.pending: list[int] = list(_pending or [])
        self._dropped = False

    # --- creating ---------------------------------------------------------
    @classmethod
    def open(cls, name: str) -> "Context":
        """A new context continuing the owner's saved context ``name``."""
        h = _call(_ctx.open, name)
        return cls(h, len(_call(_ctx.tokens, h)))

    def fork(self, n: int | None = None):
        """A copy (or ``n`` copies, as a list) sharing this context's cache copy-on-write."""
        self._alive()
        if n is None:
            return Context(_call(_ctx.fork, self._h), self._length, self.pending)
        return [Context(_call(_ctx.fork, self._h), self._length, self.pending) for _ in range(int(n))]

    # --- feeding ----------------------------------------------------------
    def fill(self, text_or_tokens) -> "Context":
        """Queue text (or token ids) to go into the cache with the next forward call."""
        self._alive()
        if isinstance(text_or_tokens, str):
            self.pending.extend(_model.encode(text_or_tokens))
        else:
            self.pending.extend(int(t) for t in text_or_tokens)
        return self

    def fill_chat(self, messages: list) -> "Context":
        """Make the context hold ``messages`` ([{"role", "content"}]) in the model's chat template,
        with the assistant's turn opened.

        On an empty context this queues the whole conversation. On a context
        that already holds the start of it (an earlier turn, a reply
        generated into it, a context opened by name), only what differs is
        replaced: the cache is kept up to the first token that differs, so
        continuing a conversation costs only its new turn.
        """
        self._alive()
        full = list(_call(_model.encode_chat, json.dumps(messages)))
        if len(self):
            have = self.tokens
            k = 0
            for a, b in zip(have, full):
                if a != b:
                    break
                k += 1
            self.truncate(k)
            full = full[k:]
        self.pending.extend(full)
        return self

    def flush(self) -> "Context":
        """Send the pending tokens into the cache now."""
        self._alive()
        if self.pending:
            _call(_ctx.fill, self._h, self.pending)
            self._length += len(self.pending)
            self.pending = []
        return self

    def _feed(self) -> list[int]:
        if self.pending:
            return self.pending
        if not self._length:
            raise InferletError("the context is empty: fill it with a prompt first")
        # Nothing new to feed: take the last token out of the cache and feed it
        # again, so the engine computes the distribution that follows it.
        last = _call(_ctx.tokens, self._h)[-1]
        _call(_ctx.truncate, self._h, self._length - 1)
        self._length -= 1
        return [last]

    # --- choosing the next token --------------------------------------------
    def next_token(self, sampler: Sampler | None = None) -> Sample:
        """Choose the next token (greedy by default); it becomes pending and is fed next time."""
        self._alive()
        feed = self._feed()
        try:
            s = _ctx.forward(self._h, feed, (sampler or _GREEDY)._number())
        except Err as e:
            self._resync(feed)
            raise InferletError(str(e.value)) from None
        self._length += len(feed)
        self.pending = [s.token]
        return Sample(s.token, s.logprob, s.top)

    def _resync(self, feed: list[int]) -> None:
        """After a failed forward: learn from the engine whether ``feed`` went in."""
        try:
            n = len(_ctx.tokens(self._h))
        except Err:
            return
        self.pending = [] if n == self._length + len(feed) else list(feed)
        self._length = n

    def distribution(self, k: int = 10) -> list:
        """The ``k`` most likely next tokens as (token, probability), without choosing one."""
        return distributions([self], k)[0]

    def generate(self, max_tokens: int = 64, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
                 min_p: float = 0.0, seed: int | None = None, stop=None, logit_bias: dict | None = None,
                 allowed=None, sampler: Sampler | None = None, stop_at_eos: bool = True,
                 stream: bool = False, json_schema: dict | None = None, regex: str | None = None,
                 choice: list | None = None, grammar: str | None = None) -> "Generated":
        """Generate up to ``max_tokens`` tokens and return the new text.

        ``stop``: a string or list of strings that end generation (not part of
        the text). ``stream=True`` prints the text as it comes. The result is a
        ``str`` with ``.tokens``, ``.logprobs``, ``.logprob`` and
        ``.finish_reason``. An end-of-sequence token ends generation and stays
        pending in the context (so a conversation continues after it), but is
        not part of the text.

        At most one of ``json_schema`` (a JSON schema dict; ``{}`` for any JSON
        object), ``regex``, ``choice`` (a list of strings) or ``grammar`` (Lark or
        GBNF) makes the engine decode under that grammar: the text always matches
        it, unless ``max_tokens`` cuts it first.
        """
        return generate_all([self], max_tokens, temperature, top_k, top_p, min_p, seed, stop, logit_bias,
                            allowed, sampler, stop_at_eos, stream, json_schema, regex, choice, grammar)[0]

    # --- keeping, trimming, dropping ------------------------------------------
    def save(self, name: str) -> None:
        """Keep a snapshot under ``name`` in the owner's namespace; ``Context.open(name)`` continues it."""
        self.flush()
        _call(_ctx.save, self._h, name)

    def truncate(self, n: int) -> None:
        """Keep only the first ``n`` tokens (pending ones included)."""
        self._alive()
        n = int(n)
        if not 0 <= n <= len(self):
            raise InferletError(f"truncate: n must be from 0 to the context's {len(self)} tokens")
        if n >= self._length:
            self.pending = self.pending[:n - self._length]
        else:
            _call(_ctx.truncate, self._h, n)
            self._length = n
            self.pending = []

    def drop(self) -> None:
        """Free the context's KV pages now."""
        if not self._dropped:
            _call(_ctx.drop, self._h)
            self._dropped = True

    @property
    def tokens(self) -> list[int]:
        """All tokens: those in the cache, then the pending ones."""
        self._alive()
        return list(_call(_ctx.tokens, self._h)) + self.pending

    @property
    def text(self) -> str:
        return decode(self.tokens)

    def __len__(self) -> int:
        return self._length + len(self.pending)

    def __enter__(self) -> "Context":
        return self

    def __exit__(self, *exc) -> None:
        self.drop()

    def _alive(self) -> None:
        if self._dropped:
            raise InferletError("this context was dropped")

    def __repr__(self) -> str:
        return f"<Context {self._h}: {len(self)} tokens>"


class _Generation:
    """One context's side of ``generate_all``: tokens, stop strings, text."""

    def __init__(self, stops: list[str], stream: bool):
        self.stream = stream
        self.tokens: list[int] = []
        self.logprobs: list[float] = []
        # Text is followed token by token only when it matters (stop strings, streaming);
        # otherwise it is decoded once at the end.
        self.text = TextStream(_model.decode, stops) if (stops or stream) else None
        self.finish = "length"
        self.done = False

    def push(self, s: Sample, eos: set) -> None:
        if s.token in eos:
            self.finish, self.done = "stop", True
            return
        self.tokens.append(s.token)
        self.logprobs.append(s.logprob)
        if self.text is None:
            return
        self._show(self.text.push(s.token))
        if self.text.stopped:
            self.finish, self.done = "stop", True

    def _show(self, text: str) -> None:
        if self.stream and text:
            print(text, end="", flush=True)

    def result(self) -> "Generated":
        if self.text is None:
            text = _model.decode(self.tokens)
        else:
            self._show(self.text.finish())     # what was held back for a stop string that never came
            text = self.text.text
        out = Generated(text)
        out.tokens, out.logprobs, out.finish_reason = self.tokens, self.logprobs, self.finish
        return out


def next_tokens(contexts: list, sampler=None) -> list:
    """``next_token`` on several contexts in one engine step (``sampler``: one, or one per context)."""
    contexts = list(contexts)
    samplers = list(sampler) if isinstance(sampler, (list, tuple)) else [sampler] * len(contexts)
    if len(samplers) != len(contexts):
        raise InferletError("next_tokens: give one sampler, or one per context")
    calls, feeds = [], []
    for ctx, smp in zip(contexts, samplers):
        ctx._alive()
        feed = ctx._feed()
        feeds.append(feed)
        calls.append(_types.ForwardCall(ctx._h, feed, (smp or _GREEDY)._number()))
    try:
        results = _ctx.forward_all(calls)
    except Err as e:
        for ctx, feed in zip(contexts, feeds):
            ctx._resync(feed)
        raise InferletError(str(e.value)) from None
    out = []
    for ctx, feed, s in zip(contexts, feeds, results):
        ctx._length += len(feed)
        ctx.pending = [s.token]
        out.append(Sample(s.token, s.logprob, s.top))
    return out


def distributions(contexts: list, k: int = 10) -> list:
    """``distribution(k)`` of several contexts in one engine step."""
    contexts = list(contexts)
    samples = next_tokens(contexts, Sampler(top_logprobs=k))
    for ctx in contexts:
        ctx.pending = []
    return [list(s.top) for s in samples]


def generate_all(contexts: list, max_tokens: int = 64, temperature: float = 0.0, top_k: int = 0,
                 top_p: float = 1.0, min_p: float = 0.0, seed: int | None = None, stop=None,
                 logit_bias: dict | None = None, allowed=None, sampler=None, stop_at_eos: bool = True,
                 stream: bool = False, json_schema: dict | None = None, regex: str | None = None,
                 choice: list | None = None, grammar: str | None = None) -> list:
    """``generate`` on several contexts at once: every step is one batched forward for all of them.

    With ``seed``, context i samples with seed ``seed + i`` (so forks differ);
    ``sampler`` may be one or one per context. Returns one ``Generated`` each.
    ``json_schema`` / ``regex`` / ``choice`` / ``grammar``: as in ``Context.generate``, for each.
    """
    contexts = list(contexts)
    if stream and len(contexts) > 1:
        raise InferletError("stream=True needs a single context")
    if sampler is None:
        sampler = [Sampler(temperature, top_k, top_p, min_p, None if seed is None else seed + i, logit_bias, allowed)
                   for i in range(len(contexts))]
    samplers = list(sampler) if isinstance(sampler, (list, tuple)) else [sampler] * len(contexts)
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    eos = set(model.eos_tokens) if stop_at_eos else set()
    gens = [_Generation(stops, stream) for _ in contexts]
    spec = _structure(json_schema, regex, choice, grammar)
    constrained = []
    try:
        for ctx in contexts if spec else ():
            ctx._alive()
            _call(_ctx.constrain, ctx._h, spec)
            constrained.append(ctx)
        for _ in range(int(max_tokens)):
            live = [i for i, g in enumerate(gens) if not g.done]
            if not live:
                break
            for i, s in zip(live, next_tokens([contexts[i] for i in live], [samplers[i] for i in live])):
                gens[i].push(s, eos)
    finally:
        for ctx in constrained:
            try:
                _ctx.constrain(ctx._h, "")
            except Err:
                pass
    return [g.result() for g in gens]


def _structure(json_schema, regex, choice, grammar) -> str:
    """The engine's grammar spec for the one structure given ("" for none)."""
    given = {k: v for k, v in (("json", json_schema), ("regex", regex), ("choice", choice),
                               ("grammar", grammar)) if v is not None}
    if len(given) > 1:
        raise InferletError(f"give one of json_schema, regex, choice or grammar, not {len(given)}")
    if not given:
        return ""
    if given.get("json") == {}:
        return json.dumps({"json_object": True})
    return json.dumps(given)


def saved_contexts() -> list[str]:
    """Names of the owner's saved contexts."""
    return list(_call(_ctx.list_saved))


def delete_saved(name: str) -> None:
    _call(_ctx.delete_saved, name)


_GREEDY = Sampler()


# --------------------------------------------------------------- messages
_inbox: dict[str, list] = {}     # topic ("" = the owner) -> bodies received but not yet asked for


def _wait(topic: str, timeout: float | None):
    box = _inbox.setdefault(topic, [])
    deadline = None if timeout is None else _rt.clock() + max(0.0, timeout)
    while not box:
        left = 60.0 if deadline is None else deadline - _rt.clock()
        if left <= 0:
            return None
        for m in _call(_io.receive, int(min(left, 60.0) * 1000)):
            _inbox.setdefault(m.topic, []).append(m.body)
    return json.loads(box.pop(0))


def send(obj) -> None:
    """Send a JSON-serialisable object to the run's owner (a ``message`` event)."""
    _call(_io.send, json.dumps(obj))


def receive(timeout: float | None = None):
    """The next object the owner sent to this run; ``None`` after ``timeout`` seconds without one."""
    return _wait("", timeout)


class Topic:
    """One of the owner's message topics, shared by all of the owner's runs.

    ``t = Topic("debate")`` subscribes; ``t.publish(obj)`` reaches every other
    run of the owner subscribed to it (and the last messages are kept for runs
    that subscribe later); ``t.receive(timeout)`` gets the next one.
    """

    def __init__(self, name: str):
        if not isinstance(name, str) or not name:
            raise InferletError("a topic name is a non-empty string")
        self.name = name
        _call(_io.subscribe, name)

    def publish(self, obj) -> None:
        _call(_io.publish, self.name, json.dumps(obj))

    def receive(self, timeout: float | None = None):
        return _wait(self.name, timeout)

    def __repr__(self) -> str:
        return f"<Topic {self.name!r}>"


# ------------------------------------------------------------------ store
class _KV:
    """The owner's persistent key-value store: text values, kept across runs and restarts."""

    def get(self, key: str, default=None):
        v = _call(_kv.get, key)
        return default if v is None else v

    def put(self, key: str, value: str) -> None:
        if not isinstance(value, str):
            raise TypeError("kv values are strings (use json.dumps for other data)")
        _call(_kv.put, key, value)

    def delete(self, key: str) -> bool:
        return _call(_kv.delete, key)

    def keys(self, prefix: str = "") -> list[str]:
        return list(_call(_kv.keys, prefix))


kv = _KV()


# ---------------------------------------------------------------- runtime
def clock() -> float:
    """Seconds since the run started."""
    return _rt.clock()


def random_u64() -> int:
    return _rt.random()


def _sleep(seconds) -> None:
    _call(_rt.sleep, float(seconds))


class _Output:
    """``sys.stdout``/``sys.stderr``: text goes to the owner, a line at a time."""

    encoding = "utf-8"
    errors = "strict"

    def __init__(self, stderr: bool):
        self._stderr = stderr
        self._buf = ""

    def write(self, s) -> int:
        if not isinstance(s, str):
            raise TypeError(f"write() argument must be str, not {type(s).__name__}")
        self._buf += s
        if "\n" in s or len(self._buf) >= 8192:
            self.flush()
        return len(s)

    def flush(self) -> None:
        if self._buf:
            buf, self._buf = self._buf, ""
            _call(_io.emit, buf, self._stderr)

    def isatty(self) -> bool:
        return False

    def writable(self) -> bool:
        return True


def _start() -> None:
    """Called by the runner before the inferlet's code: arguments, output, sleep."""
    global args
    args = json.loads(_io.args() or "{}")
    sys.stdout = _Output(False)
    sys.stderr = _Output(True)
    # A blocking WASI sleep cannot be interrupted; the host's sleep counts
    # against the run's time and ends when the run is cancelled.
    _time.sleep = _sleep


def _finish() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
