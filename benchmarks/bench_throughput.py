"""Throughput through every door of one engine process: ``/api/generate``, OpenAI chat, inferlets.

N tenants (N = 1 4 16 32 64; each its own token from the engine's token store)
each send one chat request at the same moment: distinct user messages of
about ``--prompt-tokens`` tokens, ``--new-tokens`` greedy tokens each (no early
end of sequence), through one of three paths of the same ``potluck engine``
subprocess (the tests' ``EngineProcess`` launcher, ``tests/support``):

  generate   ``POST /api/generate`` with ``messages``, ``"stream": true``
             (server-sent events), ``ignore_eos``;
  chat       ``POST /v1/chat/completions`` (OpenAI-compatible), streamed,
             ``ignore_eos`` (the vLLM-style extension), usage included;
  inferlet   ``POST /api/runs`` with a small Python inferlet per tenant
             (``ctx.fill_chat(messages)``, then ``generate(max_tokens=T,
             stop_at_eos=False)``), followed on its events WebSocket until the
             run has ended.

All three put the same chat-template tokens in front of the model, so they do
the same work; what differs is the door. Per path and N: generated tokens/s
(N * T / from the first request sent to the last one finished), time to first
token seen by the client (mean, p50, p95), engine steps and sequences per
step, and whether the greedy outputs of the three paths agree. For reference
the same requests are run one after another with ``model.generate`` in this
process (the per-user status quo; measured on a few and constant in N), and
with ``--generate-batch`` also through transformers' continuous batching.

    .venv/bin/python benchmarks/bench_throughput.py            # N = 1 4 16 32 64 (~5 min on 2 CPU cores)
    .venv/bin/python benchmarks/bench_throughput.py --quick    # smoke run (~1.5 min)

Writes ``benchmarks/results/throughput_<device>.json`` and ``.png`` and prints a
markdown table. The numbers are what was measured; nothing is adjusted.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as _dt
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from common import (SENTENCES, SSEClient, code_version, create_tokens, device_kind, engine_metrics,  # noqa: E402
                    log, machine_info, metrics_delta, quiet_logs, run_generate_batch, save, step_delta)
from common import summarize as round_summary  # noqa: E402
from support.engine_process import EngineProcess  # noqa: E402  (the tests' engine launcher)

PATHS = ("generate", "chat", "inferlet")
LABELS = {"generate": "POST /api/generate (SSE)", "chat": "POST /v1/chat/completions (SSE)",
          "inferlet": "POST /api/runs (one inferlet per tenant)",
          "sequential": "model.generate, one request after another (per-user status quo)",
          "generate_batch": "transformers generate_batch (continuous batching, in-process)"}

# The inferlet every tenant runs on the "inferlet" path. The first token is chosen on its own so
# the run can say when it had it (``clock()``: seconds since the run started).
INFERLET_SRC = """
from potluck_inferlet import Context, args, clock, send
ctx = Context()
ctx.fill_chat(args["messages"])
prompt_tokens = len(ctx)
first = ctx.next_token()
t_first = clock()
rest = ctx.generate(max_tokens=args["max_tokens"] - 1, stop_at_eos=False)
send({"tokens": [first.token] + list(rest.tokens), "prompt_tokens": prompt_tokens,
      "t_first": t_first, "t_end": clock()})
"""


# ----------------------------------------------------------------- helpers
def admin_status(url: str, admin_token: str) -> dict:
    """``GET /api/status`` as an admin: its ``stats`` counters are shown to admins only."""
    import requests
    r = requests.get(url.rstrip("/") + "/api/status", headers={"Authorization": f"Bearer {admin_token}"},
                     timeout=120)
    r.raise_for_status()
    return r.json()


def user_messages(tokenizer, n: int, length: int, seed: int) -> list[list[dict]]:
    """``n`` distinct one-message chats whose user text is about ``length`` tokens."""
    import random
    out = []
    for i in range(n):
        rng = random.Random(seed * 1000 + i)
        order = SENTENCES[:]
        rng.shuffle(order)
        words = f"Request {seed}-{i}. Summarise: " + " ".join(order)
        ids = tokenizer.encode(words, add_special_tokens=False)[:length]
        out.append([{"role": "user", "content": tokenizer.decode(ids)}])
    return out


def summarize(clients: list[dict], new_tokens: int) -> dict:
    """The round summary bench_http gives, plus the prompt lengths the clients were sent."""
    return {**round_summary(clients, new_tokens),
            "prompt_tokens": sorted({c["prompt_tokens"] for c in clients if c.get("prompt_tokens") is not None})}


# ----------------------------------------------------------------- clients
class Doors:
    """The three paths, as asyncio clients on tornado's HTTP client and WebSocket."""

    def __init__(self, url: str, tokens: dict[str, str]):
        self.url = url.rstrip("/")
        self.tokens = tokens

    def _headers(self, tenant: str) -> dict:
        return {"Authorization": f"Bearer {self.tokens[tenant]}", "Content-Type": "application/json"}

    async def _stream(self, http, path: str, tenant: str, body: dict, on_event) -> tuple[int, bytes]:
        from tornado.httpclient import HTTPRequest
        raw: list[bytes] = []
        parser = SSEClient(on_event)

        def on_chunk(chunk: bytes) -> None:
            if len(raw) < 4:
                raw.append(chunk)
            parser.feed(chunk)
        req = HTTPRequest(self.url + path, method="POST", body=json.dumps(body), headers=self._headers(tenant),
                          streaming_callback=on_chunk, connect_timeout=60, request_timeout=3600)
        resp = await http.fetch(req, raise_error=False)
        return resp.code, b"".join(raw)[:500]

    async def generate(self, http, tenant: str, messages: list[dict], new_tokens: int) -> dict:
        c: dict = {"t_first": None, "done": None, "error": None, "events": 0}

        def on_event(event: str, data: str) -> None:
            if event == "token":
                if c["t_first"] is None:
                    c["t_first"] = time.perf_counter()
                c["events"] += 1
            elif event == "done":
                c["done"] = json.loads(data)
            elif event == "error":
                c["error"] = data
        body = {"messages": messages, "max_tokens": new_tokens, "temperature": 0, "ignore_eos": True,
                "stream": True}
        c["t_send"] = time.perf_counter()
        code, raw = await self._stream(http, "/api/generate", tenant, body, on_event)
        c["t_end"] = time.perf_counter()
        done = c.pop("done")
        if code != 200 or c["error"] or done is None:
            raise RuntimeError(f"generate {tenant}: status {code}, error {c['error']}, body {raw!r}")
        u = done["usage"]
        c.update(tokens=done["tokens"], text=done["text"], completion_tokens=u["completion_tokens"],
                 prompt_tokens=u["prompt_tokens"], cached_tokens=u["cached_tokens"],
                 finish_reason=done["finish_reason"])
        return c

    async def chat(self, http, tenant: str, messages: list[dict], new_tokens: int) -> dict:
        c: dict = {"t_first": None, "usage": None, "text": [], "finish_reason": None, "chunks": 0}

        def on_event(event: str, data: str) -> None:
            if data == "[DONE]":
                return
            body = json.loads(data)
            if "error" in body:
                c["error"] = body["error"]
                return
            for ch in body.get("choices") or []:
                piece = ch.get("delta", {}).get("content")
                if piece:
                    if c["t_first"] is None:
                        c["t_first"] = time.perf_counter()
                    c["text"].append(piece)
                    c["chunks"] += 1
                if ch.get("finish_reason"):
                    c["finish_reason"] = ch["finish_reason"]
            if body.get("usage"):
                c["usage"] = body["usage"]
        body = {"model": "default", "messages": messages, "max_tokens": new_tokens, "temperature": 0,
                "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}
        c["t_send"] = time.perf_counter()
        code, raw = await self._stream(http, "/v1/chat/completions", tenant, body, on_event)
        c["t_end"] = time.perf_counter()
        u = c.pop("usage")
        if code != 200 or c.get("error") or u is None or c["t_first"] is None:
            raise RuntimeError(f"chat {tenant}: status {code}, error {c.get('error')}, body {raw!r}")
        c.update(text="".join(c["text"]), completion_tokens=u["completion_tokens"],
                 prompt_tokens=u["prompt_tokens"],
                 cached_tokens=(u.get("prompt_tokens_details") or {}).get("cached_tokens"))
        return c

    async def inferlet(self, http, tenant: str, messages: list[dict], new_tokens: int) -> dict:
        from tornado.httpclient import HTTPRequest
        from tornado.websocket import websocket_connect
        c: dict = {"message": None, "state": None, "error": None, "t_running_unix": None}
        body = {"source": INFERLET_SRC, "args": {"messages": messages, "max_tokens": new_tokens}}
        c["t_send"] = time.perf_counter()
        t_send_unix = time.time()
        resp = await http.fetch(HTTPRequest(self.url + "/api/runs", method="POST", body=json.dumps(body),
                                            headers=self._headers(tenant), request_timeout=600),
                                raise_error=False)
        if resp.code != 201:
            raise RuntimeError(f"inferlet {tenant}: POST /api/runs answered {resp.code}: {resp.body[:300]!r}")
        run_id = json.loads(resp.body)["id"]
        ws_url = "ws" + self.url[4:] + f"/api/runs/{run_id}/events"
        ws = await websocket_connect(HTTPRequest(ws_url, headers=self._headers(tenant), request_timeout=600))
        try:
            while True:
                text = await ws.read_message()
                if text is None:
                    break
                ev = json.loads(text)
                if ev["type"] == "message":
                    c["message"] = ev["body"]
                elif ev["type"] == "status":
                    c["state"] = ev["state"]
                    if ev["state"] == "running":
                        c["t_running_unix"] = ev["time"]
                    if ev["state"] in ("finished", "failed", "cancelled"):
                        c["error"] = ev.get("error")
                        break
        finally:
            ws.close()
        c["t_end"] = time.perf_counter()
        m = c.pop("message")
        if c["state"] != "finished" or m is None:
            raise RuntimeError(f"inferlet {tenant}: run {run_id} {c['state']}: {c['error']}")
        # Time to first token, approximately: POST -> the run's "running" event (engine clock, same
        # machine), plus the run's own clock at its first token.
        c["t_first"] = c["t_send"] + (c["t_running_unix"] - t_send_unix) + m["t_first"]
        c.update(tokens=m["tokens"], completion_tokens=len(m["tokens"]), prompt_tokens=m["prompt_tokens"],
                 run_id=run_id, start_latency_s=c["t_running_unix"] - t_send_unix)
        return c

    def run(self, path: str, tenants: list[str], chats: list[list[dict]], new_tokens: int) -> list[dict]:
        async def go():
            from tornado.simple_httpclient import SimpleAsyncHTTPClient
            http = SimpleAsyncHTTPClient(force_instance=True, max_clients=len(tenants) + 8)
            try:
                one = getattr(self, path)
                return list(await asyncio.gather(*(one(http, t, m, new_tokens) for t, m in zip(tenants, chats))))
            finally:
                http.close()
        return asyncio.run(go())


def check(path: str, clients: list[dict], new_tokens: int) -> None:
    for c in clients:
        if c["completion_tokens"] != new_tokens:
            raise AssertionError(f"{path}: a request made {c['completion_tokens']} tokens, wanted {new_tokens}")
        if path == "generate" and (c["events"] != new_tokens or c["finish_reason"] != "length"):
            raise AssertionError(f"generate: {c['events']} token events, {c['finish_reason']}")


# --------------------------------------------------------------- baselines
def baseline_sequential(lm, chats: list[list[dict]], new_tokens: int, device: str) -> dict:
    """``model.generate`` for one request after another: what N users with their own copy get in total."""
    import torch
    tok = lm.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    per = []
    toks = []
    for m in chats:
        ids = tok.apply_chat_template(m, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        ids = ids["input_ids"].to(device)
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = lm.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                    max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=pad,
                                    temperature=None, top_p=None, top_k=None)
        if device == "cuda":
            torch.cuda.synchronize()
        per.append(time.perf_counter() - t0)
        toks.append(out[0, ids.shape[1]:].tolist())
    mean = statistics.mean(per)
    return {"requests_timed": len(chats), "per_request_s": mean, "tokens_per_s": new_tokens / mean,
            "per_request_all_s": [round(x, 3) for x in per], "tokens": toks,
            "note": "constant in N: N requests one after another take N times as long"}


def baseline_generate_batch(lm, chats: list[list[dict]], new_tokens: int) -> dict:
    tok = lm.tokenizer
    prompts = [list(tok.apply_chat_template(m, add_generation_prompt=True, tokenize=True, return_dict=True)
                    ["input_ids"]) for m in chats]
    r = run_generate_batch(lm.model, prompts, new_tokens)
    return {k: v for k, v in r.items() if k != "tokens"}


# --------------------------------------------------------------- reporting
def table(rows: list[dict], seq: dict | None) -> str:
    head = ("| N | generate tok/s | chat tok/s | inferlet tok/s | "
            + ("model.generate tok/s | engine (best path) / model.generate | " if seq else "")
            + "TTFT mean generate / chat / inferlet (s) | seqs/step generate / chat / inferlet | greedy agree |")
    lines = [head, "|" + "---:|" * (head.count("|") - 1)]
    for r in rows:
        p = r["paths"]
        cells = [str(r["n"])] + [f"{p[k]['tokens_per_s']:.1f}" if k in p else "-" for k in PATHS]
        if seq:
            best = max(p[k]["tokens_per_s"] for k in p)
            cells += [f"{seq['tokens_per_s']:.1f}", f"{best / seq['tokens_per_s']:.2f}x"]
        cells.append(" / ".join(f"{p[k]['ttft']['mean_s']:.2f}" if k in p else "-" for k in PATHS))
        cells.append(" / ".join(f"{p[k]['steps']['mean_batch_seqs']:.1f}" if k in p else "-" for k in PATHS))
        ag = r.get("greedy_agreement", {})
        cells.append(", ".join(f"{k} {v['identical']}/{v['compared']}" for k, v in ag.items()) or "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows: list[dict], seq: dict | None, gb: dict | None, path: Path, meta: dict) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    ns = [r["n"] for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5))
    for i, k in enumerate(PATHS):
        pts = [(r["n"], r["paths"][k]) for r in rows if k in r["paths"]]
        if not pts:
            continue
        ax1.plot([n for n, _ in pts], [v["tokens_per_s"] for _, v in pts], "o-", color=f"C{i}", label=LABELS[k])
        ax2.plot([n for n, _ in pts], [v["ttft"]["mean_s"] for _, v in pts], "o-", color=f"C{i}",
                 label=f"{k}: mean")
        ax2.plot([n for n, _ in pts], [v["ttft"]["p95_s"] for _, v in pts], "v:", color=f"C{i}", alpha=0.6,
                 label=f"{k}: p95")
    if seq:
        ax1.axhline(seq["tokens_per_s"], color="C3", ls="--", label=LABELS["sequential"])
    if gb:
        pts = sorted((int(n), v) for n, v in gb.items())
        ax1.plot([n for n, _ in pts], [v["tokens_per_s"] for _, v in pts], "s--", color="C4",
                 label=LABELS["generate_batch"])
    for ax in (ax1, ax2):
        ax.set_xscale("log", base=2)
        ax.set_xticks(ns)
        ax.set_xticklabels([str(n) for n in ns])
        ax.set_xlabel("tenants N (one request each, at once)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    ax1.set_ylabel("generated tokens / s")
    ax1.set_title(f"Throughput by door, one engine ({meta['prompt_tokens']}-token chats + "
                  f"{meta['new_tokens']} new tokens, {meta['device']})", fontsize=9)
    ax2.set_yscale("log")
    ax2.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax2.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax2.set_ylabel("time to first token seen by the client (s)")
    ax2.set_title("Time to first token (inferlet: POST -> running + in-run first token)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def agreement(a: list, b: list) -> dict:
    return {"compared": len(a), "identical": sum(x == y for x, y in zip(a, b))}


# -------------------------------------------------------------------- main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, nargs="+", default=[1, 4, 16, 32, 64], help="tenants, one request each")
    ap.add_argument("--paths", nargs="+", choices=PATHS, default=list(PATHS))
    ap.add_argument("--engine-arg", action="append", default=[],
                    help="extra option for `potluck engine`, e.g. --engine-arg=--PotluckEngine.forward_linger_ms=30")
    ap.add_argument("--new-tokens", type=int, default=64, help="tokens generated per request (exactly)")
    ap.add_argument("--prompt-tokens", type=int, default=100, help="user message length in tokens (about; the "
                    "chat template adds its own)")
    ap.add_argument("--kv-pages", type=int, default=1024, help="the engine's KV pool (0: sized from the profile)")
    ap.add_argument("--sequential", type=int, default=2,
                    help="requests timed with model.generate one after another (0: skip this baseline)")
    ap.add_argument("--generate-batch", action="store_true",
                    help="also time transformers' generate_batch at every N (in this process, after the engine)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads for the baselines (0: torch's default)")
    ap.add_argument("--quick", action="store_true", help="smoke run: --n 1 4 --new-tokens 8 --prompt-tokens 40")
    ap.add_argument("--keep-data-dir", action="store_true")
    ap.add_argument("--out", default=None, help="output path without extension "
                    "(default benchmarks/results/throughput_<device>[_quick])")
    args = ap.parse_args(argv)
    if args.quick:      # smaller defaults; options given explicitly still win
        for k, v in {"n": [1, 4], "new_tokens": 8, "prompt_tokens": 40}.items():
            if getattr(args, k) == ap.get_default(k):
                setattr(args, k, v)
    if min(args.n) < 1 or args.new_tokens < 2 or args.prompt_tokens < 8:
        ap.error("--n >= 1, --new-tokens >= 2, --prompt-tokens >= 8")

    quiet_logs()
    import torch
    from transformers import AutoTokenizer
    from potluck.engine.weights import resolve_model_dir

    dev = device_kind()
    out = Path(args.out or f"benchmarks/results/throughput_{dev}" + ("_quick" if args.quick else ""))
    t_start = time.perf_counter()
    load_before = os.getloadavg()
    code = code_version()
    log(f"code: commit {str(code.get('git_commit'))[:10]}, uncommitted engine files "
        f"{code.get('engine_uncommitted') or 'none'}; device {dev}; load average {load_before[0]:.2f} "
        f"on {os.cpu_count()} CPUs")
    ns = sorted(set(args.n))
    _, where, kw = resolve_model_dir("default")
    tok = AutoTokenizer.from_pretrained(where, **kw)
    # Fresh chats for every (path, N): no round finds its prompt in a tenant's prefix cache beyond the
    # chat template's fixed start, which the warm-up puts there for every tenant and every path alike.
    chats = {(p, n): user_messages(tok, n, args.prompt_tokens, seed=100 * (i + 1) + n)
             for i, p in enumerate(PATHS) for n in ns}
    tenants = [f"tenant{i:02d}" for i in range(max(ns))]

    data_dir = Path(tempfile.mkdtemp(prefix="potluck-bench-throughput-"))
    proc = EngineProcess(data_dir, kv_pages=args.kv_pages, max_body=1 << 20,
                         args=("--model=default", *args.engine_arg))
    rows: list[dict] = []
    t0 = time.perf_counter()
    proc.start(timeout=600)
    status = proc.status()
    log(f"engine ready in {time.perf_counter() - t0:.1f}s: {status['model']} on {status['device']['kind']}, "
        f"profile {status['profile']['name']}, {status['kv']['total_pages']} KV pages of "
        f"{status['kv']['page_size']}")
    try:
        tokens = create_tokens(proc, tenants + ["benchadmin"], admin=("benchadmin",))
        doors = Doors(proc.url, tokens)
        t0 = time.perf_counter()
        warm = user_messages(tok, len(tenants), 16, seed=7)
        doors.run("generate", tenants, warm, 2)
        doors.run("chat", tenants[:4], warm[:4], 2)
        if "inferlet" in args.paths:
            doors.run("inferlet", tenants[:4], warm[:4], 2)
        log(f"{len(tenants)} tenants and tokens made, warm-up (every tenant once, each path) "
            f"{time.perf_counter() - t0:.1f}s")
        for n in ns:
            row: dict = {"n": n, "paths": {}}
            outputs = {}
            for path in args.paths:
                before = admin_status(proc.url, tokens["benchadmin"])["stats"]
                m0 = engine_metrics(proc.url, tokens["benchadmin"])
                load0 = os.getloadavg()[0]
                clients = doors.run(path, tenants[:n], chats[(path, n)], args.new_tokens)
                m1 = engine_metrics(proc.url, tokens["benchadmin"])
                steps = step_delta(before, admin_status(proc.url, tokens["benchadmin"])["stats"])
                steps.update(metrics_delta(m0, m1))
                check(path, clients, args.new_tokens)
                s = summarize(clients, args.new_tokens)
                s["steps"] = steps
                s["load_average_1m_before"] = round(load0, 2)
                s["load_average_1m_after"] = round(os.getloadavg()[0], 2)
                if path == "inferlet":
                    s["run_start_latency_mean_s"] = statistics.mean(c["start_latency_s"] for c in clients)
                row["paths"][path] = s
                outputs[path] = clients
                t = s["ttft"]
                log(f"N={n:<3} {path:<9} {s['wall_s']:7.2f}s {s['tokens_per_s']:7.1f} tok/s  TTFT mean "
                    f"{t['mean_s']:.3f}s p95 {t['p95_s']:.3f}s  {steps['steps']} steps, "
                    f"{steps['mean_batch_seqs']:.1f} seqs/step, engine CPU {steps.get('engine_cpu_cores', float('nan')):.2f} "
                    f"cores, prompt tokens {s['prompt_tokens']}, cached "
                    f"{s['cached_tokens']}  (load {s['load_average_1m_after']:.2f})")
            rows.append(row)
        # Each round had its own prompts; the doors are compared on a few shared ones: the largest
        # generate round's first chats, asked again through every door (their prefix is cached by now).
        n_cmp = min(4, max(ns))
        same = chats[("generate", max(ns))][:n_cmp]
        ref = doors.run("generate", tenants[:n_cmp], same, args.new_tokens)
        via_chat = doors.run("chat", tenants[:n_cmp], same, args.new_tokens)
        agree = {"chat_text": agreement([c["text"] for c in ref], [c["text"] for c in via_chat])}
        if "inferlet" in args.paths:
            via_inf = doors.run("inferlet", tenants[:n_cmp], same, args.new_tokens)
            agree["inferlet_tokens"] = agreement([c["tokens"] for c in ref], [c["tokens"] for c in via_inf])
        log(f"greedy agreement with /api/generate on {n_cmp} shared prompts: "
            + ", ".join(f"{k} {v['identical']}/{v['compared']}" for k, v in agree.items()))
        for r in rows:
            r["greedy_agreement"] = agree
        final_status = admin_status(proc.url, tokens["benchadmin"])
    finally:
        t0 = time.perf_counter()
        exit_code = proc.stop()
        log(f"engine stopped in {time.perf_counter() - t0:.1f}s (exit code {exit_code})")
        if not args.keep_data_dir:
            shutil.rmtree(data_dir, ignore_errors=True)
        else:
            log(f"kept {data_dir}")

    seq = None
    gb = None
    if args.sequential or args.generate_batch:
        from potluck.engine.weights import load_model
        if args.threads:
            torch.set_num_threads(args.threads)
        dtype = torch.float32 if dev == "cpu" else torch.bfloat16
        lm = load_model("default", dtype, dev)
        if args.sequential:
            sample = chats[("generate", max(ns))][:args.sequential]
            baseline_sequential(lm, sample[:1], 2, dev)            # warm-up
            seq = baseline_sequential(lm, sample, args.new_tokens, dev)
            seq_tokens = seq.pop("tokens")
            log(f"model.generate one after another: {seq['per_request_s']:.2f}s per request, "
                f"{seq['tokens_per_s']:.1f} tok/s (the same at every N)")
            seq["greedy_identical_to_generate"] = agreement(seq_tokens, [c["tokens"] for c in ref])
        if args.generate_batch:
            gb = {}
            for n in ns:
                gb[str(n)] = baseline_generate_batch(lm, chats[("generate", n)], args.new_tokens)
                log(f"N={n:<3} generate_batch {gb[str(n)]['wall_s']:7.2f}s {gb[str(n)]['tokens_per_s']:7.1f} tok/s")

    result = {
        "benchmark": "generation throughput of one engine process through /api/generate, OpenAI chat and inferlets",
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(load_before, final_status),
        "code": code,
        "config": {
            "model": final_status["model"], "device": final_status["device"]["kind"],
            "profile": final_status["profile"], "kv": final_status["kv"], "scheduler": final_status.get("scheduler"),
            "n": ns, "paths": args.paths, "new_tokens": args.new_tokens, "user_message_tokens": args.prompt_tokens,
            "greedy": True, "ignore_eos": True, "tenants": "one per request, each its own token",
            "inferlet_source": INFERLET_SRC,
            "clients": "asyncio + tornado SimpleAsyncHTTPClient (one connection per request) and tornado "
                       "websocket_connect for run events, in the benchmark process",
            "tokens_per_s": "N * new_tokens / (last request finished - first request sent)",
            "ttft": "client-side; inferlet: POST -> the run's 'running' event + the run's clock() at its first "
                    "token",
        },
        "results": rows,
        "sequential_generate": seq,
        "generate_batch": gb,
        "total_seconds": time.perf_counter() - t_start,
    }
    meta = {"prompt_tokens": args.prompt_tokens, "new_tokens": args.new_tokens, "device": dev}
    save(out, result, lambda png: plot(rows, seq, gb, png, meta))
    print()
    print(table(rows, seq))
    return 0


if __name__ == "__main__":
    sys.exit(main())
