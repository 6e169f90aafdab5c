"""Performance isolation: a light user's latency beside each kind of flood, per scheduling policy.

One ``potluck engine`` process per policy (the tests' ``EngineProcess``
launcher), at the default profile (no budget overrides), through HTTP only:

  light    one tenant sending short requests one after another: the chat
           ``"Say the number 3."``, ``max_tokens`` 8, greedy, ``ignore_eos``
           (exactly 8 tokens), ``POST /api/generate`` streamed. Measured at
           the client: end to end, time to first token (TTFT) and time between
           tokens (TBT), p50 and p99.
  floods   another tenant, one at a time:
           prefill   24 streams, each request a distinct ~900-token prompt, 48 new tokens;
           decode    24 streams, short prompts, 160 new tokens;
           inferlet  ``--inferlet-runs`` runs at once, each forking 16 contexts and
                     ``generate_all`` on them, a few rounds, then a new run;
           batch     the prefill flood (``--batch-like``) asking ``"priority": "batch"``.

Per policy: the light tenant alone, then per flood: the flood starts (its
streams staggered over a ramp), then windows alternate flood-alone / flood +
light (``--cycles`` times, so slow drift hits both alike). The flood's tokens/s
(prompt + generated tokens through the model, from its ``/api/me`` usage) is
compared between the two kinds of window, the light tenant's latency with its
latency alone on the same engine. Then the flood's connections are closed (the
engine cancels its requests) and its runs cancelled.

Policies: ``vtc`` (fair order, every step fills the token budget:
``latency_target_factor=0``), ``fcfs`` (first come first served, factor 0),
``composer`` (the default: fair order, steps carrying latency-sensitive work
kept within the target, a lone flood's steps cut to the flood cap, a light
newcomer preempting a lone flood's long step), ``composer-fp32`` (the same with
the model in float32, the ``cpu`` profile: what a CPU without bfloat16 arithmetic
gets by default; on one with it, the default is ``cpu-bf16``; each policy's light
tenant is compared with its own latency alone on the same engine, so a ratio is
not flattered by a faster dtype). With
``--factors`` the composer is run again at those target factors on the prefill
flood only: the trade-off between the light tenant's latency and what the flood
keeps. Because the flood cap also slows a flood that is alone, each flood's
tokens/s are also given over the same flood alone under VTC (``vs_vtc_alone``).

    .venv/bin/python benchmarks/bench_isolation_latency.py            # ~15-20 min on 2 CPU cores
    .venv/bin/python benchmarks/bench_isolation_latency.py --quick    # smoke run (~5 min: mostly engine starts)

Writes ``benchmarks/results/isolation_latency_<device>.json`` and ``.png`` and
prints markdown tables. The numbers are what was measured; nothing is adjusted.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as _dt
import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from common import SENTENCES, SSEClient, begin, create_tokens, engine_metrics, log, machine_info, save  # noqa: E402
from support.engine_process import EngineProcess  # noqa: E402  (the tests' engine launcher)

POLICIES = {
    "vtc": ("--PotluckEngine.latency_target_factor=0",),
    "fcfs": ("--PotluckEngine.scheduler=fcfs", "--PotluckEngine.latency_target_factor=0"),
    "composer": (),
    # The default policy on the float32 profile: what a CPU without bfloat16 arithmetic gets (on one
    # with it, "auto" picks the bfloat16 profile, so there "composer" is bfloat16).
    "composer-fp32": ("--PotluckEngine.profile=cpu",),
}
DEFAULT_FACTOR = 2.0            # the composer's default latency_target_factor (engine/config.py)
FLOODS = ("prefill", "decode", "inferlet", "batch")
STREAMS = 24
PREFILL_PROMPT_TOKENS, PREFILL_NEW, DECODE_NEW = 900, 48, 160
LIGHT_BODY = {"messages": [{"role": "user", "content": "Say the number 3."}], "max_tokens": 8,
              "temperature": 0, "ignore_eos": True, "stream": True}
TARGET_RATIO, TARGET_KEPT = 2.5, 0.40       # on this CPU (issue 12): p50 and p99 <= 2.5x alone, flood >= 40%
DONE = ("finished", "failed", "cancelled")

# Each round: a fresh chat prompt, forked 16 ways, all forks advanced together; dropped after.
INFERLET_SRC = """
from potluck_inferlet import Context, args, generate_all, send
made = 0
for r in range(args["rounds"]):
    ctx = Context()
    ctx.fill_chat([{"role": "user", "content": args["questions"][r]}])
    forks = ctx.fork(args["forks"])
    outs = generate_all(forks, max_tokens=args["max_tokens"], temperature=0.8, seed=r, stop_at_eos=False)
    made += sum(len(o.tokens) for o in outs)
    for f in forks:
        f.drop()
    ctx.drop()
send({"tokens": made})
"""


# ------------------------------------------------------------------ HTTP
class Http:
    """HTTP/1.1 over asyncio streams, one connection per request. Cancelling a request's task closes
    its socket at once, and the engine then cancels the generation: that is how a flood is stopped."""

    def __init__(self, url: str):
        u = urlsplit(url)
        self.host, self.port, self.base = u.hostname, u.port, u.path.rstrip("/")

    async def request(self, method: str, path: str, token: str, body=None, on_event=None) -> tuple[int, bytes]:
        reader, writer = await asyncio.open_connection(self.host, self.port)
        try:
            payload = b"" if body is None else json.dumps(body).encode()
            writer.write(f"{method} {self.base}{path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                         f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
                         f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode() + payload)
            await writer.drain()
            status = int((await reader.readline()).split()[1])
            chunked = False
            while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
                name, _, value = line.decode("latin-1").partition(":")
                chunked |= name.strip().lower() == "transfer-encoding" and "chunked" in value.lower()
            sse = SSEClient(on_event) if on_event is not None and status == 200 else None
            raw = bytearray()
            while True:
                if chunked:
                    size = int((await reader.readline()).split(b";")[0] or b"0", 16)
                    chunk = await reader.readexactly(size) if size else b""
                    await reader.readline()
                else:
                    chunk = await reader.read(65536)
                if not chunk:
                    return status, bytes(raw)
                if sse is not None:
                    sse.feed(chunk)
                else:
                    raw += chunk
        finally:
            writer.close()

    async def json(self, method: str, path: str, token: str, body=None, ok=(200,)) -> dict:
        status, raw = await self.request(method, path, token, body)
        if status not in ok:
            raise RuntimeError(f"{method} {path} answered {status}: {raw[:300]!r}")
        return json.loads(raw)


# --------------------------------------------------------------- prompts
class Prompts:
    """The same request bodies for every engine: the k-th request of a flood is the same everywhere."""

    def __init__(self, tokenizer):
        self.tok = tokenizer
        ids = tokenizer.apply_chat_template([{"role": "user", "content": "x"}], add_generation_prompt=True,
                                            tokenize=True, return_dict=True)["input_ids"]
        self.template = len(ids) - 1      # what the chat template adds around a user message
        self._long: dict[tuple, str] = {}

    def long_text(self, seed: int, k: int, tokens: int) -> str:
        """A distinct user message of ``tokens`` tokens (varied sentences, differing from the start)."""
        key = (seed, k, tokens)
        if key not in self._long:
            rng = random.Random(seed * 1_000_003 + k)
            order = SENTENCES[:]
            rng.shuffle(order)
            ids = self.tok.encode(f"Request {seed}-{k}. Summarise these notes: " + " ".join(order),
                                  add_special_tokens=False)
            while len(ids) < tokens:
                rng.shuffle(order)
                ids += self.tok.encode(" " + " ".join(order), add_special_tokens=False)
            self._long[key] = self.tok.decode(ids[:tokens])
        return self._long[key]

    def flood_body(self, kind: str, k: int, batch_like: str) -> dict:
        like = batch_like if kind == "batch" else kind
        body = {"max_tokens": PREFILL_NEW if like == "prefill" else DECODE_NEW, "temperature": 0,
                "ignore_eos": True, "stream": True}
        if like == "prefill":
            text = self.long_text(FLOODS.index(kind) + 1, k, PREFILL_PROMPT_TOKENS - self.template)
        else:
            rng = random.Random(FLOODS.index(kind) * 7919 + k)
            text = f"Request {k}: {rng.choice(SENTENCES)} Write a long story that begins like this."
        body["messages"] = [{"role": "user", "content": text}]
        if kind == "batch":
            body["priority"] = "batch"
        return body

    @staticmethod
    def inferlet_args(k: int, rounds: int) -> dict:
        rng = random.Random(31337 + k)
        return {"rounds": rounds, "forks": 16, "max_tokens": 32,
                "questions": [f"Run {k}, round {r}: {rng.choice(SENTENCES)} Explain why." for r in range(rounds)]}


# --------------------------------------------------------------- clients
async def light_client(http: Http, token: str, stop: asyncio.Event, out: list[dict], give_up: float,
                       pause: float = 0.0) -> None:
    """One request after another (``pause`` seconds apart) until ``stop``; each one's client-side timings.

    A request still going after ``give_up`` seconds (FCFS behind a prefill flood on a busy CPU can
    take minutes) is closed and kept as ``unfinished``, its times as lower bounds, and the client stops.
    """
    while not stop.is_set():
        rec: dict = {"times": [], "done": None, "error": None}

        def on_event(event: str, data: str) -> None:
            if event == "token":
                rec["times"].append(time.perf_counter())
            elif event == "done":
                rec["done"] = json.loads(data)
            elif event == "error":
                rec["error"] = data
        t_send = time.perf_counter()
        try:
            status, raw = await asyncio.wait_for(http.request("POST", "/api/generate", token, LIGHT_BODY, on_event),
                                                 give_up)
        except asyncio.TimeoutError:
            status, raw = None, b""
        t_end = time.perf_counter()
        ts = rec["times"]
        unfinished = status is None
        if not unfinished and (status != 200 or rec["done"] is None or not ts):
            raise RuntimeError(f"a light request failed: status {status}, error {rec['error']}, body {raw[:300]!r}")
        out.append({"e2e_s": t_end - t_send, "ttft_s": (ts[0] if ts else t_end) - t_send,
                    "tbt_s": [b - a for a, b in zip(ts, ts[1:])], "tokens": len(ts), "unfinished": unfinished,
                    "cached_tokens": rec["done"]["usage"].get("cached_tokens") if rec["done"] else None})
        if unfinished:
            log(f"a light request was still going after {give_up:.0f}s: closed, kept as unfinished")
            return
        if pause:
            try:
                await asyncio.wait_for(stop.wait(), pause)
            except asyncio.TimeoutError:
                pass


async def stream_client(http: Http, token: str, bodies, stats: dict) -> None:
    """A flood stream: the next request as soon as one ends, until cancelled (which hangs up)."""
    while True:
        done: dict = {}
        body = bodies()
        status, raw = await http.request("POST", "/api/generate", token, body,
                                         lambda e, d: done.update(json.loads(d)) if e == "done" else None)
        if status != 200 or not done:
            stats["errors"].append(f"{status}: {raw[:200]!r}")
            await asyncio.sleep(0.5)         # e.g. a 429: try again, a little later
            continue
        stats["requests"] += 1
        stats["prompt_tokens"].append(done["usage"]["prompt_tokens"])


async def inferlet_client(http: Http, token: str, next_args, stats: dict) -> None:
    """One run after another (forks + ``generate_all``), until cancelled."""
    while True:
        status, raw = await http.request("POST", "/api/runs", token, {"source": INFERLET_SRC, "args": next_args()})
        if status == 429:                    # max_runs: the previous run is still being counted
            await asyncio.sleep(0.2)
            continue
        if status != 201:
            raise RuntimeError(f"POST /api/runs answered {status}: {raw[:300]!r}")
        rid = json.loads(raw)["id"]
        while (run := await http.json("GET", f"/api/runs/{rid}", token))["state"] not in DONE:
            await asyncio.sleep(0.25)
        if run["state"] != "finished":
            stats["errors"].append(f"run {run['state']}: {run.get('error')}")
        else:
            stats["requests"] += 1


async def cancel_runs(http: Http, token: str) -> None:
    """Cancel every run of the tenant still going (a client cancelled mid-POST may have started one)."""
    body = await http.json("GET", "/api/runs", token)
    for run in body["runs"] if isinstance(body, dict) else body:
        if run["state"] not in DONE:
            await http.request("DELETE", f"/api/runs/{run['id']}", token)


# ------------------------------------------------------------ measuring
def pcts(xs: list[float]) -> dict:
    import numpy as np
    if not xs:
        return {"p50_s": None, "p99_s": None, "mean_s": None}
    return {"p50_s": float(np.percentile(xs, 50)), "p99_s": float(np.percentile(xs, 99)),
            "mean_s": float(np.mean(xs))}


def light_summary(reqs: list[dict]) -> dict:
    return {"n": len(reqs), "e2e": pcts([r["e2e_s"] for r in reqs]), "ttft": pcts([r["ttft_s"] for r in reqs]),
            "tbt": pcts([x for r in reqs for x in r["tbt_s"]]),
            "cached_tokens": sum(r["cached_tokens"] or 0 for r in reqs),
            "unfinished": sum(r["unfinished"] for r in reqs),
            "e2e_all_s": [round(r["e2e_s"], 4) for r in reqs]}


class Meter:
    """Snapshots of the engine's counters: per-tenant usage, engine totals, step times, CPU."""

    def __init__(self, http: Http, url: str, tokens: dict[str, str]):
        self.http, self.url, self.tokens = http, url, tokens

    async def snap(self, tenants: list[str]) -> dict:
        t0 = time.perf_counter()
        usage = {}
        for n in tenants:
            u = (await self.http.json("GET", "/api/me", self.tokens[n]))["usage"]
            usage[n] = u["prefill_tokens"] + u["decode_tokens"]
        stats = (await self.http.json("GET", "/api/status", self.tokens["benchadmin"]))["stats"]
        m = await asyncio.to_thread(engine_metrics, self.url, self.tokens["benchadmin"])
        return {"t": (t0 + time.perf_counter()) / 2, "usage": usage, "batch_tokens": stats["batch_tokens"],
                "metrics": m, "load_1m": os.getloadavg()[0]}

    @staticmethod
    def delta(a: dict, b: dict) -> dict:
        wall = b["t"] - a["t"]
        ma, mb = a["metrics"], b["metrics"]
        steps = mb.get("steps", 0) - ma.get("steps", 0)
        return {"wall_s": round(wall, 3),
                "tokens_per_s": {n: (b["usage"][n] - a["usage"][n]) / wall for n in a["usage"]},
                "engine_tokens_per_s": (b["batch_tokens"] - a["batch_tokens"]) / wall,
                "steps": steps, "mean_step_ms": 1000 * (mb.get("step_seconds", 0) - ma.get("step_seconds", 0))
                / steps if steps else None,
                "engine_cpu_cores": (mb.get("cpu_seconds", 0) - ma.get("cpu_seconds", 0)) / (mb["t"] - ma["t"]),
                "load_1m": round(b["load_1m"], 2)}


async def light_window(http: Http, meter: Meter, token: str, seconds: float, tenants: list[str],
                       reqs: list[dict], give_up: float, pause: float = 0.0) -> dict:
    """The light tenant for ``seconds`` (its last request is waited for, inside the window)."""
    a = await meter.snap(tenants)
    stop = asyncio.Event()
    task = asyncio.create_task(light_client(http, token, stop, reqs, give_up, pause))
    await asyncio.sleep(seconds)
    stop.set()
    await task
    return {"kind": "light", **Meter.delta(a, await meter.snap(tenants))}


async def flood_scenario(http: Http, meter: Meter, kind: str, args, prompts: Prompts, tokens: dict) -> dict:
    heavy, light = f"heavy-{kind}", f"light-{kind}"
    stats: dict = {"requests": 0, "prompt_tokens": [], "errors": []}
    counter = iter(range(1 << 30))        # shared by the flood's clients: every request has its own prompt
    ramp = max(2.0, args.seconds / 3)
    if kind == "inferlet":
        n = args.inferlet_runs

        def client():
            return inferlet_client(http, tokens[heavy], lambda: prompts.inferlet_args(next(counter), 3), stats)
    else:
        n = STREAMS

        def client():
            return stream_client(http, tokens[heavy],
                                 lambda: prompts.flood_body(kind, next(counter), args.batch_like), stats)

    async def staggered(i: int):
        await asyncio.sleep(ramp * i / n)        # mixed phases sooner than all starting at once
        await client()
    tasks = [asyncio.create_task(staggered(i)) for i in range(n)]
    reqs: list[dict] = []
    windows = []
    try:
        await asyncio.sleep(ramp)
        for _ in range(args.cycles):
            a = await meter.snap([heavy, light])
            await asyncio.sleep(args.seconds / 2 / args.cycles)
            windows.append({"kind": "flood_alone", **Meter.delta(a, await meter.snap([heavy, light]))})
            windows.append(await light_window(http, meter, tokens[light], args.seconds / args.cycles,
                                              [heavy, light], reqs, args.light_timeout, args.light_pause))
            if any(t.done() and t.exception() for t in tasks):
                break
    finally:
        for t in tasks:
            t.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        if kind == "inferlet":
            await cancel_runs(http, tokens[heavy])
    failed = [r for r in results if isinstance(r, Exception) and not isinstance(r, asyncio.CancelledError)]
    if failed:
        raise RuntimeError(f"the {kind} flood failed: {failed[0]}")
    await wait_idle(http, tokens, heavy)

    def rate(window_kind: str, get) -> float:
        """A rate over all windows of a kind, weighted by their lengths."""
        ws = [w for w in windows if w["kind"] == window_kind]
        return sum(get(w) * w["wall_s"] for w in ws) / sum(w["wall_s"] for w in ws)

    def flood(w):
        return w["tokens_per_s"][heavy]

    def engine(w):
        return w["engine_tokens_per_s"]
    alone, beside = rate("flood_alone", flood), rate("light", flood)
    me = await http.json("GET", "/api/me", tokens[light])
    return {"light": light_summary(reqs), "light_engine_side": me.get("latency"),
            "flood_tokens_per_s": {"alone": alone, "beside_light": beside},
            "flood_kept": beside / alone if alone else None,
            "engine_tokens_per_s": {"flood_alone": rate("flood_alone", engine), "beside_light": rate("light", engine)},
            "flood_requests_done": stats["requests"], "flood_errors": stats["errors"][:10],
            "flood_error_count": len(stats["errors"]),
            "flood_prompt_tokens_mean": (sum(stats["prompt_tokens"]) / len(stats["prompt_tokens"])
                                         if stats["prompt_tokens"] else None),
            "ramp_s": ramp, "windows": windows}


async def wait_idle(http: Http, tokens: dict, heavy: str, timeout: float = 120) -> None:
    """Until the cancelled flood has left the engine (its requests and runs ended)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        u = (await http.json("GET", "/api/me", tokens[heavy]))["usage"]
        st = await http.json("GET", "/api/status", tokens["benchadmin"])
        if not u["active_requests"] and not u["active_runs"] and not st["running_generations"]:
            return
        await asyncio.sleep(0.5)
    log(f"warning: {heavy}'s work had not left the engine after {timeout:.0f}s")


# ------------------------------------------------------------ one engine
def run_policy(name: str, flags: tuple, floods: list[str], args, prompts: Prompts) -> dict:
    data_dir = Path(tempfile.mkdtemp(prefix="potluck-bench-isolation-latency-"))
    proc = EngineProcess(data_dir, kv_pages=args.kv_pages, max_body=1 << 20, args=("--model=default", *flags))
    t0 = time.perf_counter()
    try:
        proc.start(timeout=600)
        tenants = ["light-alone", "warm"] + [f"{r}-{f}" for f in floods for r in ("heavy", "light")]
        tokens = create_tokens(proc, tenants + ["benchadmin"], admin=("benchadmin",))
        status = proc.status()
        log(f"[{name}] engine ready in {time.perf_counter() - t0:.0f}s ({' '.join(flags) or 'defaults'}): "
            f"profile {status['profile']['name']}, budget {status['profile']['batch_token_budget']} tokens, "
            f"{status['kv']['total_pages']} KV pages, scheduler {status['scheduler']}")
        return asyncio.run(_policy(name, flags, proc, tokens, floods, args, prompts, status))
    finally:
        code = proc.stop()
        if code != 0:
            log(f"[{name}] the engine exited with {code}:\n{proc.log_tail()}")
        if args.keep_data_dir:
            log(f"kept {data_dir}")
        else:
            shutil.rmtree(data_dir, ignore_errors=True)


async def _policy(name: str, flags: tuple, proc: EngineProcess, tokens: dict, floods: list[str], args, prompts: Prompts,
                  status: dict) -> dict:
    http = Http(proc.url)
    meter = Meter(http, proc.url, tokens)
    # Warm-up: the light request, a mixed burst (the cost model sees prefill and decode steps), an inferlet.
    t0 = time.perf_counter()
    await light_client_n(http, tokens["warm"], 3)
    burst = [prompts.flood_body("prefill", 10_000 + i, "prefill") | {"max_tokens": 4} for i in range(4)]
    burst += [prompts.flood_body("decode", 10_000 + i, "decode") | {"max_tokens": 16} for i in range(4)]
    answers = await asyncio.gather(*(http.request("POST", "/api/generate", tokens["warm"], b, lambda e, d: None)
                                     for b in burst))
    if any(code != 200 for code, _ in answers):
        raise RuntimeError(f"[{name}] a warm-up request failed: {[a for a in answers if a[0] != 200][0]}")
    t1 = time.perf_counter()
    if "inferlet" in floods:
        warm_args = prompts.inferlet_args(10_000, 1) | {"forks": 2, "max_tokens": 4}
        rid = (await http.json("POST", "/api/runs", tokens["warm"], {"source": INFERLET_SRC, "args": warm_args},
                               ok=(201,)))["id"]
        while (run := await http.json("GET", f"/api/runs/{rid}", tokens["warm"]))["state"] not in DONE:
            await asyncio.sleep(0.25)
        if run["state"] != "finished":
            raise RuntimeError(f"[{name}] the warm-up inferlet run {run['state']}: {run.get('error')}")
    log(f"[{name}] warm-up {time.perf_counter() - t0:.0f}s (requests {t1 - t0:.0f}s, inferlet "
        f"{time.perf_counter() - t1:.0f}s)")

    reqs: list[dict] = []
    w = await light_window(http, meter, tokens["light-alone"], args.seconds, ["light-alone"], reqs,
                           args.light_timeout, args.light_pause)
    alone = light_summary(reqs)
    me = await http.json("GET", "/api/me", tokens["light-alone"])
    out = {"flags": list(flags),
           "engine": {k: status.get(k) for k in ("model", "device", "profile", "scheduler", "kv")},
           "alone": {"light": alone, "window": w, "light_engine_side": me.get("latency")}, "floods": {}}
    log(f"[{name}] light alone: {alone['n']} requests, e2e p50 {ms(alone['e2e']['p50_s'])} p99 "
        f"{ms(alone['e2e']['p99_s'])} ms, TTFT p50 {ms(alone['ttft']['p50_s'])} ms, TBT p50 "
        f"{ms(alone['tbt']['p50_s'])} ms")
    for kind in floods:
        r = await flood_scenario(http, meter, kind, args, prompts, tokens)
        lt = r["light"]
        r["ratio"] = {k: (lt[m][q] / alone[m][q] if lt[m][q] and alone[m][q] else None)
                      for m in ("e2e", "ttft", "tbt") for q in ("p50_s", "p99_s") for k in [f"{m}_{q[:3]}"]}
        r["target_met"] = bool(r["ratio"]["e2e_p50"] and r["ratio"]["e2e_p99"] and r["flood_kept"] is not None
                               and max(r["ratio"]["e2e_p50"], r["ratio"]["e2e_p99"]) <= TARGET_RATIO
                               and r["flood_kept"] >= TARGET_KEPT)
        out["floods"][kind] = r
        log(f"[{name}] {kind:<8} light n={lt['n']:<3} e2e p50 {ms(lt['e2e']['p50_s'])} / p99 "
            f"{ms(lt['e2e']['p99_s'])} ms ({fmt_x(r['ratio']['e2e_p50'])} / {fmt_x(r['ratio']['e2e_p99'])} alone); "
            f"flood {r['flood_tokens_per_s']['alone']:.0f} -> {r['flood_tokens_per_s']['beside_light']:.0f} tok/s "
            f"(kept {fmt_pct(r['flood_kept'])}), {r['flood_requests_done']} done, {r['flood_error_count']} errors "
            f"(load {os.getloadavg()[0]:.2f})")
    return out


async def light_client_n(http: Http, token: str, n: int) -> None:
    reqs: list[dict] = []
    stop = asyncio.Event()
    task = asyncio.create_task(light_client(http, token, stop, reqs, 600))
    while len(reqs) < n - 1 and not task.done():
        await asyncio.sleep(0.05)
    stop.set()
    await task


# --------------------------------------------------------------- report
def ms(s: float | None) -> str:
    return "-" if s is None else f"{1000 * s:.0f}"


def fmt_x(r: float | None) -> str:
    return "-" if r is None else f"{r:.2f}x"


def fmt_pct(r: float | None) -> str:
    return "-" if r is None else f"{100 * r:.0f}%"


def against_vtc(results: dict) -> None:
    """Each flood's tokens/s beside the light tenant and alone, over the same flood alone under VTC.

    The composer cuts a lone flood's steps to the flood cap, so "kept" against its own flood-alone
    windows flatters it by what the cap costs; these ratios show that cost and the honest share.
    """
    vtc = results.get("vtc", {}).get("floods", {})
    for r in results.values():
        for kind, f in r["floods"].items():
            base = vtc.get(kind, {}).get("flood_tokens_per_s", {}).get("alone")
            ft = f.get("flood_tokens_per_s")
            if base and ft:
                f["vs_vtc_alone"] = {"alone": ft["alone"] / base, "beside_light": ft["beside_light"] / base}


def table(results: dict) -> str:
    head = ("| policy | flood | light n | e2e p50 / p99 ms | x alone p50 / p99 | TTFT p50 / p99 ms | "
            "TBT p50 / p99 ms | flood tok/s alone / beside | flood kept | vs VTC alone: alone / beside | "
            "engine tok/s | target |")
    lines = [head, "|---|---|" + "---:|" * 9 + "---|"]
    for pol, r in results.items():
        rows = [("alone", {"light": r["alone"]["light"]})] + list(r["floods"].items())
        for kind, f in rows:
            lt = f["light"]
            ratio = f.get("ratio", {})
            ft = f.get("flood_tokens_per_s")
            cells = [pol, kind, str(lt["n"]), f"{ms(lt['e2e']['p50_s'])} / {ms(lt['e2e']['p99_s'])}",
                     f"{fmt_x(ratio.get('e2e_p50'))} / {fmt_x(ratio.get('e2e_p99'))}" if ratio else "1x",
                     f"{ms(lt['ttft']['p50_s'])} / {ms(lt['ttft']['p99_s'])}",
                     f"{ms(lt['tbt']['p50_s'])} / {ms(lt['tbt']['p99_s'])}",
                     f"{ft['alone']:.0f} / {ft['beside_light']:.0f}" if ft else "-",
                     fmt_pct(f.get("flood_kept")),
                     (f"{fmt_pct(f['vs_vtc_alone']['alone'])} / {fmt_pct(f['vs_vtc_alone']['beside_light'])}"
                      if "vs_vtc_alone" in f else "-"),
                     f"{f['engine_tokens_per_s']['beside_light']:.0f}" if ft else "-",
                     ("met" if f["target_met"] else "not met") if "target_met" in f else ""]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def tradeoff_table(curve: list[dict]) -> str:
    lines = ["| target factor | light e2e p50 x alone | p99 x alone | flood kept | kept vs VTC's flood alone |",
             "|---:|---:|---:|---:|---:|"]
    lines += [f"| {c['factor']:g} | {fmt_x(c['e2e_p50_ratio'])} | {fmt_x(c['e2e_p99_ratio'])} | "
              f"{fmt_pct(c['flood_kept'])} | {fmt_pct(c.get('flood_kept_vs_vtc_alone'))} |" for c in curve]
    return "\n".join(lines)


def plot(results: dict, curve: list[dict], path: Path, device: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker
    import numpy as np

    pols = list(results)
    floods = [f for f in FLOODS if any(f in results[p]["floods"] for p in pols)]
    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    x = np.arange(len(floods))
    wdt = 0.8 / max(1, len(pols))
    panels = [(axes[0][0], lambda f: f["ratio"]["e2e_p50"], "light e2e p50 beside / alone", TARGET_RATIO),
              (axes[0][1], lambda f: f["ratio"]["e2e_p99"], "light e2e p99 beside / alone", TARGET_RATIO),
              (axes[1][0], lambda f: f["flood_kept"], "flood tokens/s kept beside the light tenant", TARGET_KEPT)]
    for ax, get, title, target in panels:
        for i, p in enumerate(pols):
            vals = [get(results[p]["floods"][f]) or 0 if f in results[p]["floods"] else 0 for f in floods]
            ax.bar(x + (i - (len(pols) - 1) / 2) * wdt, vals, wdt, label=p, color=f"C{i}")
        ax.axhline(target, color="k", ls="--", lw=1, label=f"target {target:g}")
        ax.set_xticks(x)
        ax.set_xticklabels(floods)
        ax.set_title(title, fontsize=9)
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(fontsize=7)
    for ax in (axes[0][0], axes[0][1]):       # from ~1x to >10x: a log scale, labelled in plain ratios
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1, 2, 5)))
        ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}x"))
        ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax = axes[1][1]
    if curve:
        kept = [c["flood_kept"] or 0 for c in curve]
        ax.plot(kept, [c["e2e_p50_ratio"] or 0 for c in curve], "o-", label="light p50 / alone")
        ax.plot(kept, [c["e2e_p99_ratio"] or 0 for c in curve], "s--", label="light p99 / alone")
        for c, k in zip(curve, kept):
            ax.annotate(f"x{c['factor']:g}" if c["factor"] else "off", (k, c["e2e_p99_ratio"] or 0), fontsize=7)
        ax.axhline(TARGET_RATIO, color="k", ls="--", lw=1)
        ax.axvline(TARGET_KEPT, color="k", ls=":", lw=1)
        ax.legend(fontsize=7)
    ax.set_xlabel("prefill flood's tokens/s kept")
    ax.set_ylabel("light latency beside / alone")
    ax.set_title("trade-off over latency_target_factor (prefill flood; 'off' = factor 0)", fontsize=9)
    ax.grid(True, alpha=0.3)
    fig.suptitle(f"A light tenant's latency beside floods, per policy ({device}, default profile, HTTP)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# -------------------------------------------------------------------- main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=20.0,
                    help="light tenant per scenario (alone; beside a flood, split over --cycles); the flood alone "
                         "gets half of it, its ramp a third (~17 min in all on 2 CPU cores)")
    ap.add_argument("--cycles", type=int, default=2, help="flood-alone / flood+light window pairs per flood")
    ap.add_argument("--policies", nargs="+", choices=list(POLICIES), default=list(POLICIES))
    ap.add_argument("--floods", nargs="+", choices=FLOODS, default=list(FLOODS))
    ap.add_argument("--factors", type=float, nargs="*", default=[1.5, 2, 2.5, 3],
                    help="composer target factors for the trade-off curve (prefill flood); 2 reuses the "
                         "composer policy's run, 0 the vtc one")
    ap.add_argument("--batch-like", choices=("prefill", "decode"), default="prefill",
                    help="the batch-priority flood's requests")
    ap.add_argument("--inferlet-runs", type=int, default=3, help="runs at once in the inferlet flood (max_runs 4)")
    ap.add_argument("--light-pause", type=float, default=0.0,
                    help="seconds the light tenant waits between its requests (a user reading the answer); "
                         "0 (the default, the issue's scenario): one after another")
    ap.add_argument("--light-timeout", type=float, default=180,
                    help="a light request still going after this many seconds is closed and kept as unfinished")
    ap.add_argument("--kv-pages", type=int, default=2048,
                    help="KV pool (the prefill flood holds ~1,450 pages of 16); 0: sized from the profile")
    ap.add_argument("--quick", action="store_true", help="smoke run: --seconds 4 --cycles 1, one factor (3)")
    ap.add_argument("--keep-data-dir", action="store_true")
    ap.add_argument("--out", default=None, help="output path without extension "
                    "(default benchmarks/results/isolation_latency_<device>[_quick])")
    args = ap.parse_args(argv)
    if args.quick:      # smaller defaults; options given explicitly still win
        for k, v in {"seconds": 4.0, "cycles": 1, "factors": [3.0]}.items():
            if getattr(args, k) == ap.get_default(k):
                setattr(args, k, v)
    if args.seconds < 1 or args.cycles < 1 or not 1 <= args.inferlet_runs <= 4:
        ap.error("--seconds >= 1, --cycles >= 1, --inferlet-runs from 1 to 4 (the default max_runs)")

    out, load_before, code = begin("isolation_latency", args.out, args.quick)
    t_start = time.perf_counter()
    from transformers import AutoTokenizer
    from potluck.engine.weights import resolve_model_dir
    _, where, kw = resolve_model_dir("default")
    prompts = Prompts(AutoTokenizer.from_pretrained(where, **kw))

    results = {p: run_policy(p, POLICIES[p], args.floods, args, prompts) for p in args.policies}
    against_vtc(results)
    curve_runs = {}
    for f in args.factors:
        if f == DEFAULT_FACTOR and "composer" in results and "prefill" in args.floods:
            continue
        if f == 0 and "vtc" in results and "prefill" in args.floods:
            continue
        curve_runs[f] = run_policy(f"composer-x{f:g}", (f"--PotluckEngine.latency_target_factor={f:g}",),
                                   ["prefill"], args, prompts)
    curve = []
    for f in sorted(set(args.factors) | ({0.0} if "vtc" in results else set())):
        r = curve_runs.get(f) or (results.get("composer") if f == DEFAULT_FACTOR else results.get("vtc"))
        if r is None or "prefill" not in r["floods"]:
            continue
        p = r["floods"]["prefill"]
        vtc_alone = results.get("vtc", {}).get("floods", {}).get("prefill", {}).get("flood_tokens_per_s", {})
        vtc_alone = vtc_alone.get("alone")
        curve.append({"factor": f, "e2e_p50_ratio": p["ratio"]["e2e_p50"], "e2e_p99_ratio": p["ratio"]["e2e_p99"],
                      "flood_kept": p["flood_kept"], "light_e2e": p["light"]["e2e"],
                      "flood_kept_vs_vtc_alone": (p["flood_tokens_per_s"]["beside_light"] / vtc_alone
                                                  if vtc_alone else None),
                      "flood_tokens_per_s": p["flood_tokens_per_s"]})

    result = {
        "benchmark": "a light tenant's latency beside floods (prefill, decode, inferlet, batch) per policy, HTTP",
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(load_before, {"device": next(iter(results.values()))["engine"]["device"]}),
        "code": code,
        "config": {
            "policies": {p: list(POLICIES[p]) for p in args.policies}, "floods": args.floods,
            "light_request": LIGHT_BODY, "streams": STREAMS,
            "prefill_flood": {"prompt_tokens": PREFILL_PROMPT_TOKENS, "new_tokens": PREFILL_NEW},
            "decode_flood": {"new_tokens": DECODE_NEW}, "batch_flood_like": args.batch_like,
            "inferlet_flood": {"runs_at_once": args.inferlet_runs, "forks": 16, "rounds_per_run": 3,
                               "max_tokens": 32, "source": INFERLET_SRC},
            "seconds": args.seconds, "cycles": args.cycles, "light_timeout_s": args.light_timeout,
            "light_pause_s": args.light_pause,
            "kv_pages": args.kv_pages, "quick": args.quick,
            "flood_tokens_per_s": "the flood tenant's prefill + decode tokens through the model (its /api/me "
                                  "usage) per second, over the flood-alone vs the flood+light windows",
            "latency": "client-side: e2e = POST to end of stream; TTFT = POST to first token event; TBT = "
                       "between token events",
        },
        "targets": {"light_e2e_p50_and_p99_ratio_max": TARGET_RATIO, "flood_kept_min": TARGET_KEPT},
        "targets_met": {p: all(f["target_met"] for f in r["floods"].values()) for p, r in results.items()},
        "results": results,
        "tradeoff": {"flood": "prefill", "curve": curve,
                     "runs": {f"{f:g}": r for f, r in curve_runs.items()}},
        "total_seconds": time.perf_counter() - t_start,
    }
    save(out, result, lambda png: plot(results, curve, png, result["machine"]["device"]))
    print()
    print(table(results))
    print()
    print(tradeoff_table(curve))
    return 0


if __name__ == "__main__":
    sys.exit(main())
