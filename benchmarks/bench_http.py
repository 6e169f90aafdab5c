"""What the HTTP layer costs: streamed generation through ``POST /api/generate`` vs the engine in-process.

For N concurrent clients (distinct prompts of exactly ``--prompt-tokens`` tokens,
``--new-tokens`` greedy tokens each, ``ignore_eos`` so every request makes exactly
that many) this measures, on the same prompts and the same engine settings:

  (a) in-process  ``Engine(EngineConfig(model="default", kv_pages=K)).start()`` in
                  this process; N threads each call ``engine.generate(tenant,
                  tokens=..., max_tokens=T, ignore_eos=True)`` and iterate the
                  ``Generation`` for its events;
  (b) HTTP        a real ``potluck engine`` subprocess (default model, the same
                  ``--kv-pages``, tokens from ``potluck token create``); N asyncio
                  clients (tornado's ``SimpleAsyncHTTPClient``, the server's own
                  HTTP stack) POST ``{"tokens": ..., "max_tokens": T, "ignore_eos":
                  true, "temperature": 0, "stream": true}`` and read the server-sent
                  events as they arrive.

The two engines never run at the same time: one is started, warmed up, measured
at every N and stopped before the other starts (``--order``). Clients are spread
over 4 tenants on both sides (the default per-tenant ``max_concurrent_requests``
is 32), and every N gets prompts no earlier round used, so the per-tenant prefix
cache cannot help (the JSON checks ``cached_tokens`` is 0).

Per N and side: generated tokens/s (N * T / wall time from the first request sent
to the last one finished), and time to first token seen by the client (mean, p50,
p95: from just before ``generate``/the POST to the first token event the client
reads; HTTP includes the connection, auth lookup and JSON/SSE encoding). The
HTTP overhead is ``1 - http_tps / inproc_tps``. The greedy outputs of both sides
are compared token by token. Writes ``<out>.json`` and ``<out>.png``, prints
progress lines and a markdown table.

    .venv/bin/python benchmarks/bench_http.py                                  # N = 1 32
    .venv/bin/python benchmarks/bench_http.py --n 1 4 --new-tokens 8 --out benchmarks/results/http_cpu_smoke

Target (from the issue): the HTTP layer costs < 10% of throughput at N=32.
The numbers are what was measured; nothing is adjusted.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as _dt
import gc
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from common import (SSEClient, build_prompts, code_version, log, machine_info, quiet_logs,  # noqa: E402
                    save, step_delta, summarize)
from support.engine_process import EngineProcess  # noqa: E402  (the tests' engine launcher)

TENANTS = 4
TARGET_N = 32
TARGET_OVERHEAD = 0.10


def check_tokens(side: str, clients: list[dict], new_tokens: int) -> None:
    for i, c in enumerate(clients):
        if len(c["tokens"]) != new_tokens or c["finish_reason"] != "length" or c["events"] != new_tokens:
            raise AssertionError(f"{side} client {i}: {len(c['tokens'])} tokens, {c['events']} token events, "
                                 f"finish_reason {c['finish_reason']!r}; wanted exactly {new_tokens}")
        if c.get("usage_completion_tokens", new_tokens) != new_tokens:
            raise AssertionError(f"{side} client {i}: usage.completion_tokens {c['usage_completion_tokens']}, "
                                 f"wanted {new_tokens}")


# ------------------------------------------------------------ (a) in-process
class InProcess:
    name = "inproc"

    def __init__(self, kv_pages: int):
        self.kv_pages = kv_pages
        self.engine = None

    def start(self) -> dict:
        from potluck.engine.engine import Engine, EngineConfig
        self.engine = Engine(EngineConfig(model="default", kv_pages=self.kv_pages)).start()
        return self.engine.status()

    def stats(self) -> dict:
        return self.engine.status()["stats"]

    def run(self, prompts: list[list[int]], new_tokens: int) -> list[dict]:
        engine = self.engine
        n = len(prompts)
        out: list[dict | None] = [None] * n
        errors: list[BaseException] = []
        barrier = threading.Barrier(n)

        def client(i: int) -> None:
            try:
                barrier.wait()
                c = {"t_send": time.perf_counter(), "t_first": None, "events": 0}
                g = engine.generate(f"bench{i % TENANTS}", tokens=prompts[i], max_tokens=new_tokens,
                                    ignore_eos=True)
                for ev in g:
                    if c["t_first"] is None:
                        c["t_first"] = time.perf_counter()
                    if ev.token >= 0:
                        c["events"] += 1
                c["t_end"] = time.perf_counter()
                r = g.result(timeout=0)
                c.update(tokens=r.tokens, finish_reason=r.finish_reason, cached_tokens=r.cached_tokens,
                         engine_ttft_s=g.first_token_at - g.created)
                out[i] = c
            except BaseException as e:     # noqa: BLE001 - reported by the main thread
                errors.append(e)
                barrier.abort()

        threads = [threading.Thread(target=client, args=(i,), name=f"client{i}") for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        return out  # type: ignore[return-value]

    def stop(self) -> None:
        if self.engine is not None:
            self.engine.stop()
            self.engine = None
        gc.collect()


# ------------------------------------------------------------------ (b) HTTP
class HTTPEngine:
    """A ``potluck engine`` subprocess on a free port with its own data dir: the service tests' launcher."""

    name = "http"

    def __init__(self, kv_pages: int, keep: bool = False):
        self.keep = keep
        # The engine's own default body limit (EngineProcess's default is the tests' smaller one).
        self.engine = EngineProcess(Path(tempfile.mkdtemp(prefix="potluck-bench-http-")), kv_pages=kv_pages,
                                    max_body=1 << 20, args=("--model=default",))
        self.dir = self.engine.data_dir
        self.url = self.engine.url
        self.tokens: dict[str, str] = {}

    def start(self, timeout: float = 600) -> dict:
        self.engine.start(timeout=timeout)
        for i in range(TENANTS):
            self.tokens[f"bench{i}"] = self.engine.token(f"bench{i}")
        # The engine's counters (``stats`` in /api/status) are shown to admins only.
        self.admin = self.engine.client("benchadmin", admin=True)
        return self.status()

    def status(self) -> dict:
        r = self.admin.get("/api/status")
        r.raise_for_status()
        return r.json()

    def stats(self) -> dict:
        return self.status()["stats"]

    def run(self, prompts: list[list[int]], new_tokens: int) -> list[dict]:
        return asyncio.run(self._run(prompts, new_tokens))

    async def _run(self, prompts: list[list[int]], new_tokens: int) -> list[dict]:
        from tornado.httpclient import HTTPRequest
        from tornado.simple_httpclient import SimpleAsyncHTTPClient

        client = SimpleAsyncHTTPClient(force_instance=True, max_clients=len(prompts) + 8)
        try:
            return list(await asyncio.gather(*(self._one(client, HTTPRequest, i, p, new_tokens)
                                               for i, p in enumerate(prompts))))
        finally:
            client.close()

    async def _one(self, client, HTTPRequest, i: int, prompt: list[int], new_tokens: int) -> dict:
        c = {"t_first": None, "events": 0, "done": None, "error": None, "raw": []}

        def on_event(event: str, data: str) -> None:
            if event == "token":
                if c["t_first"] is None:
                    c["t_first"] = time.perf_counter()
                if json.loads(data)["token"] is not None:
                    c["events"] += 1
            elif event == "done":
                c["done"] = json.loads(data)
            elif event == "error":
                c["error"] = data

        parser = SSEClient(on_event)

        def on_chunk(chunk: bytes) -> None:
            if len(c["raw"]) < 4:          # the start of the body, for an error message
                c["raw"].append(chunk)
            parser.feed(chunk)

        body = json.dumps({"tokens": prompt, "max_tokens": new_tokens, "ignore_eos": True, "temperature": 0,
                           "stream": True})
        req = HTTPRequest(self.url + "/api/generate", method="POST", body=body,
                          headers={"Authorization": f"token {self.tokens[f'bench{i % TENANTS}']}",
                                   "Content-Type": "application/json"},
                          streaming_callback=on_chunk, connect_timeout=60, request_timeout=3600)
        c["t_send"] = time.perf_counter()
        resp = await client.fetch(req, raise_error=False)
        c["t_end"] = time.perf_counter()
        if resp.code != 200 or c["error"] is not None or c["done"] is None:
            raw = b"".join(c["raw"])[:500].decode("utf-8", "replace")
            raise RuntimeError(f"HTTP client {i}: status {resp.code}, error event {c['error']}, body {raw!r}")
        done = c["done"]
        c.update(tokens=done["tokens"], finish_reason=done["finish_reason"],
                 cached_tokens=done["usage"]["cached_tokens"],
                 usage_completion_tokens=done["usage"]["completion_tokens"],
                 usage_prompt_tokens=done["usage"]["prompt_tokens"])
        if done["usage"]["prompt_tokens"] != len(prompt):
            raise AssertionError(f"HTTP client {i}: usage.prompt_tokens {done['usage']['prompt_tokens']}, "
                                 f"sent {len(prompt)}")
        del c["raw"], c["done"]
        return c

    def stop(self) -> int:
        code = self.engine.stop()
        if not self.keep:
            shutil.rmtree(self.dir, ignore_errors=True)
        return code


# --------------------------------------------------------------- reporting
def table(rows: list[dict]) -> str:
    lines = [
        "| N | in-process tok/s | HTTP tok/s | HTTP overhead | TTFT in-process mean / p50 / p95 (s)"
        " | TTFT HTTP mean / p50 / p95 (s) | mean seqs/step in-proc / HTTP | identical greedy outputs |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        a, b = r["inproc"], r["http"]
        ta, tb = a["ttft"], b["ttft"]
        lines.append(
            f"| {r['n']} | {a['tokens_per_s']:.1f} | {b['tokens_per_s']:.1f} | {100 * r['http_overhead']:+.1f}% | "
            f"{ta['mean_s']:.3f} / {ta['p50_s']:.3f} / {ta['p95_s']:.3f} | "
            f"{tb['mean_s']:.3f} / {tb['p50_s']:.3f} / {tb['p95_s']:.3f} | "
            f"{a['steps']['mean_batch_seqs']:.1f} / {b['steps']['mean_batch_seqs']:.1f} | "
            f"{r['greedy_identical']}/{r['n']} |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path, meta: dict) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ns = [r["n"] for r in rows]
    x = list(range(len(ns)))
    w = 0.38
    sides = [("inproc", "in-process engine.generate", "C0", -w / 2), ("http", "HTTP /api/generate (SSE)", "C1",
                                                                       w / 2)]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.8))
    for key, label, color, off in sides:
        vals = [r[key]["tokens_per_s"] for r in rows]
        ax1.bar([i + off for i in x], vals, w, color=color, label=label)
        for i, v in zip(x, vals):
            ax1.text(i + off, v, f"{v:.1f}", ha="center", va="bottom", fontsize=8)
    top = max(max(r["inproc"]["tokens_per_s"], r["http"]["tokens_per_s"]) for r in rows)
    ax1.set_ylim(0, top * 1.3)
    ax1.set_xticks(x)
    ax1.set_xticklabels([f"{r['n']}\nHTTP overhead {100 * r['http_overhead']:+.1f}%" for r in rows])
    ax1.set_xlabel("concurrent clients N")
    ax1.set_ylabel("generated tokens / s")
    ax1.set_title(f"Throughput ({meta['prompt_tokens']} prompt + {meta['new_tokens']} new tokens, "
                  f"{meta['device']}; target overhead < {100 * TARGET_OVERHEAD:.0f}% at N={TARGET_N})", fontsize=9)
    ax1.grid(True, axis="y", alpha=0.3)
    ax1.legend(fontsize=8, loc="upper left")

    for key, label, color, off in sides:
        xs = [i + off for i in x]
        ax2.bar(xs, [r[key]["ttft"]["mean_s"] for r in rows], w, color=color, alpha=0.8, label=f"{label}: mean")
        ax2.plot(xs, [r[key]["ttft"]["p50_s"] for r in rows], "_", color="k", ms=14, mew=2)
        ax2.plot(xs, [r[key]["ttft"]["p95_s"] for r in rows], "v", color=color, mec="k", ms=7)
    ax2.plot([], [], "_", color="k", ms=14, mew=2, label="p50")
    ax2.plot([], [], "v", color="grey", mec="k", ms=7, label="p95")
    ax2.set_xticks(x)
    ax2.set_xticklabels([str(n) for n in ns])
    ax2.set_xlabel("concurrent clients N")
    ax2.set_ylabel("time to first token, seen by the client (s)")
    ax2.set_title("Time to first token (bars: mean)", fontsize=9)
    ax2.grid(True, axis="y", alpha=0.3)
    ax2.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# -------------------------------------------------------------------- main
def measure_side(side, prompt_sets: dict, warm: list[list[int]], ns: list[int], new_tokens: int,
                 warm_tokens: int) -> dict:
    t0 = time.perf_counter()
    status = side.start()
    log(f"{side.name}: engine ready in {time.perf_counter() - t0:.1f}s ({status['model']}, profile "
        f"{status['profile']['name']}, {status['kv']['total_pages']} KV pages of {status['kv']['page_size']})")
    out = {"status_at_start": status, "start_s": time.perf_counter() - t0, "rounds": {}}
    try:
        t0 = time.perf_counter()
        side.run(warm, warm_tokens)
        log(f"{side.name}: warm-up ({len(warm)} clients x {warm_tokens} tokens, every tenant) "
            f"{time.perf_counter() - t0:.1f}s")
        for n in ns:
            log(f"{side.name}: N={n} ...")
            before = side.stats()
            load0 = os.getloadavg()[0]
            clients = side.run(prompt_sets[n], new_tokens)
            steps = step_delta(before, side.stats())
            check_tokens(side.name, clients, new_tokens)
            s = summarize(clients, new_tokens)
            s["steps"] = steps
            s["load_average_1m_before"] = round(load0, 2)
            s["load_average_1m_after"] = round(os.getloadavg()[0], 2)
            if side.name == "inproc":
                s["engine_ttft_mean_s"] = sum(c["engine_ttft_s"] for c in clients) / len(clients)
            s["tokens"] = [c["tokens"] for c in clients]
            out["rounds"][n] = s
            t = s["ttft"]
            log(f"{side.name}: N={n:<3} {s['wall_s']:7.2f}s {s['tokens_per_s']:7.1f} tok/s  TTFT mean "
                f"{t['mean_s']:.3f}s p50 {t['p50_s']:.3f}s p95 {t['p95_s']:.3f}s  {steps['steps']} steps, "
                f"{steps['mean_batch_seqs']:.1f} seqs/step  (load {s['load_average_1m_after']:.2f}; "
                f"every request made exactly {new_tokens} tokens, cached_tokens {s['cached_tokens']})")
    finally:
        t0 = time.perf_counter()
        code = side.stop()
        log(f"{side.name}: engine stopped in {time.perf_counter() - t0:.1f}s"
            + (f" (exit code {code})" if code is not None else ""))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, nargs="+", default=[1, TARGET_N], help="concurrent clients")
    ap.add_argument("--new-tokens", type=int, default=64, help="tokens generated per request (exactly)")
    ap.add_argument("--prompt-tokens", type=int, default=100, help="prompt length in tokens (exactly)")
    ap.add_argument("--kv-pages", type=int, default=1024,
                    help="KV pool pages for both engines (0: sized from the profile, up to 4096 = ~3 GB here)")
    ap.add_argument("--warmup-tokens", type=int, default=8)
    ap.add_argument("--order", choices=["inproc-first", "http-first"], default="inproc-first")
    ap.add_argument("--keep-data-dir", action="store_true", help="keep the HTTP engine's data dir and log")
    ap.add_argument("--out", default="benchmarks/results/http_cpu", help="output path without extension")
    args = ap.parse_args(argv)
    if min(args.n) < 1 or args.new_tokens < 1 or args.prompt_tokens < 17:
        ap.error("--n and --new-tokens must be >= 1, --prompt-tokens >= 17")

    quiet_logs()
    from transformers import AutoTokenizer
    from potluck.engine.weights import resolve_model_dir

    t_start = time.perf_counter()
    load_before = os.getloadavg()
    code = code_version()
    log(f"code: commit {str(code.get('git_commit'))[:10]}, uncommitted engine files "
        f"{code.get('engine_uncommitted') or 'none'}")
    log(f"load average before start: {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f} "
        f"on {os.cpu_count()} CPUs (other processes on the machine skew every number below)")

    # Prompts: warm-up ones (one per tenant), then a fresh set per N, all distinct from their first
    # tokens, so no round finds its prompts in the per-tenant prefix cache.
    ns = sorted(set(args.n))
    _, where, kw = resolve_model_dir("default")
    tok = AutoTokenizer.from_pretrained(where, **kw)
    allp = build_prompts(tok, TENANTS + sum(ns), args.prompt_tokens)
    warm, k = allp[:TENANTS], TENANTS
    prompt_sets = {}
    for n in ns:
        prompt_sets[n], k = allp[k:k + n], k + n
    pages_needed = max(ns) * -(-(args.prompt_tokens + args.new_tokens) // 16)
    if args.kv_pages and args.kv_pages < pages_needed:
        log(f"warning: --kv-pages {args.kv_pages} < {pages_needed} pages that N={max(ns)} needs at once "
            f"(page size 16): requests will wait for pages")

    sides = [InProcess(args.kv_pages), HTTPEngine(args.kv_pages, keep=args.keep_data_dir)]
    if args.order == "http-first":
        sides.reverse()
    measured = {}
    for side in sides:
        measured[side.name] = measure_side(side, prompt_sets, warm, ns, args.new_tokens,
                                           min(args.warmup_tokens, args.new_tokens))

    ip, hp = measured["inproc"], measured["http"]
    same_config = (ip["status_at_start"]["profile"] == hp["status_at_start"]["profile"]
                   and ip["status_at_start"]["kv"]["total_pages"] == hp["status_at_start"]["kv"]["total_pages"])
    if not same_config:
        log("warning: the two engines did not run with the same profile / KV pool; see config in the JSON")
    rows = []
    for n in ns:
        a, b = ip["rounds"][n], hp["rounds"][n]
        same = sum(x == y for x, y in zip(a.pop("tokens"), b.pop("tokens")))
        rows.append({"n": n, "inproc": a, "http": b, "http_overhead": 1 - b["tokens_per_s"] / a["tokens_per_s"],
                     "http_ttft_added_mean_s": b["ttft"]["mean_s"] - a["ttft"]["mean_s"],
                     "greedy_identical": same, "tokens_per_request_verified": args.new_tokens})
    at_target = next((r for r in rows if r["n"] == TARGET_N), None)
    st = ip["status_at_start"]
    device = st["device"].get("kind", "cpu")
    result = {
        "benchmark": "streamed generation through the HTTP API vs the engine in-process",
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(load_before, st),
        "code": code,
        "config": {
            "model": st["model"], "prompt_tokens": args.prompt_tokens, "new_tokens": args.new_tokens, "n": ns,
            "tenants": TENANTS, "greedy": True, "ignore_eos": True, "kv_pages_requested": args.kv_pages,
            "order": [s.name for s in sides], "warmup": {"clients": TENANTS,
                                                         "tokens": min(args.warmup_tokens, args.new_tokens)},
            "same_engine_config_both_sides": same_config,
            "inproc": {"profile": st["profile"], "kv": st["kv"], "start_s": ip["start_s"],
                       "clients": "one thread per client: engine.generate(tokens=...), iterate the Generation"},
            "http": {"profile": hp["status_at_start"]["profile"], "kv": hp["status_at_start"]["kv"],
                     "start_s": hp["start_s"],
                     "clients": "asyncio + tornado SimpleAsyncHTTPClient, one connection per request, "
                                "POST /api/generate stream=true, tokens=..., ignore_eos=true, temperature=0"},
            "ttft": "client-side: from just before engine.generate() / the POST to the first token event read",
            "tokens_per_s": "N * new_tokens / (last request finished - first request sent)",
        },
        "targets": {"n": TARGET_N, "max_http_overhead": TARGET_OVERHEAD},
        "target_met": None if at_target is None else at_target["http_overhead"] < TARGET_OVERHEAD,
        "results": rows,
        "total_seconds": time.perf_counter() - t_start,
    }
    out = Path(args.out)
    meta = {"prompt_tokens": args.prompt_tokens, "new_tokens": args.new_tokens, "device": device}
    save(out, result, lambda png: plot(rows, png, meta))
    print()
    print(table(rows))
    if at_target is not None:
        print()
        print(f"At N={TARGET_N}: HTTP overhead {100 * at_target['http_overhead']:+.1f}% of in-process throughput "
              f"(target < {100 * TARGET_OVERHEAD:.0f}%): {'met' if result['target_met'] else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
