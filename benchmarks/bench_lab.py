"""A teaching lab on one engine: 30 students chatting from notebooks while 2 researchers run batch inferlets.

The scenario, run for ``--duration`` seconds under each scheduler (``--schedulers
fair fcfs``; the engine is restarted with ``--scheduler=...`` in between, and
both runs use the same seeds, so every student asks the same questions after
the same think times):

  students     ``--students`` simulated notebooks (default 30), each its own
               tenant and token, member of the group ``students``. Each is
               ``potluck.kernel.client.Client``, the class a notebook's
               ``potluck.chat`` / ``%%chat`` uses, streaming a chat turn through
               ``POST /api/generate``; between turns it thinks for an
               exponential time (mean ``--think`` s). A turn asks for 30-60
               new tokens (``--turn-tokens``) with the whole conversation so
               far, which grows turn by turn (a new conversation after
               ``--turns-per-conversation`` turns).
  researchers  ``--researchers`` tenants (default 2) in the group ``researchers``,
               each running one long inferlet (started and followed with the
               same client class, as ``potluck.run`` does) that loops until the
               end: ``--batch`` fresh chat prompts at once, ``generate_all``
               them ``--batch-tokens`` tokens each in shared steps, drop them,
               repeat.

Groups and quotas: standalone tokens carry no Hub groups, so the engine is
given a small authenticator (written to its ``potluck_config.py``) that puts
``student*`` tenants in ``students`` and ``researcher*`` in ``researchers``,
with the group quotas below, exactly as a Hub's group properties would reach
the engine. The quotas are the README's example.

Reported per scheduler: every student's turns, p50/p95 turn latency and time
to first token (TTFT) as the notebook sees them; the researchers' generated
tokens/s; the students' and the engine's total tokens/s over the window (from
the engine's per-tenant usage); a timeline of both groups' tokens/s. Fair
sharing must keep students responsive while researchers saturate the engine.

    .venv/bin/python benchmarks/bench_lab.py              # 30 students, 2 researchers, 2 x 120 s (~5.5 min)
    .venv/bin/python benchmarks/bench_lab.py --quick      # 6 students, 1 researcher, 2 x 30 s (~2 min)

Writes ``benchmarks/results/lab_<device>.json`` and ``.png`` and prints a
markdown table. The numbers are what was measured; nothing is adjusted.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import logging
import os
import random
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from common import (SENTENCES, code_version, create_tokens, device_kind, engine_metrics, log,  # noqa: E402
                    machine_info, metrics_delta, save)
from support.engine_process import EngineProcess  # noqa: E402  (the tests' engine launcher)

from potluck.kernel.client import Client, PotluckError  # noqa: E402  (what a notebook uses)

GROUPS = {
    "students": {"weight": 1, "tokens_per_minute": 5000},
    # Long batch runs: no wall-clock or fuel limit on the run itself.
    "researchers": {"weight": 3, "kv_pages": 8192, "max_run_seconds": None, "fuel_per_run": None},
}

AUTH_CONFIG = """# Written by benchmarks/bench_lab.py: standalone tokens, with groups as a JupyterHub would give them.
from potluck.engine.auth import Identity, TokenAuthenticator

GROUPS = {groups!r}
MEMBERS = {{"student": "students", "researcher": "researchers"}}


class LabGroups(TokenAuthenticator):
    async def identify(self, token):
        ident = await super().identify(token)
        if ident is None:
            return None
        groups = {{g: dict(GROUPS[g]) for prefix, g in MEMBERS.items() if ident.tenant.startswith(prefix)}}
        return Identity(tenant=ident.tenant, groups=groups, is_admin=ident.is_admin)


c.PotluckEngine.authenticator_class = LabGroups
"""

RESEARCH_SRC = """
import random
from potluck_inferlet import Context, args, clock, generate_all, send

rnd = random.Random(args["seed"])
sentences = list(args["sentences"])
r = 0
while clock() < args["duration"]:
    ctxs = []
    for i in range(args["batch"]):
        rnd.shuffle(sentences)
        text = f"Item {args['seed']}-{r}-{i}. Which topic is this about? " + " ".join(sentences[:args["sentences_per_prompt"]])
        ctxs.append(Context().fill_chat([{"role": "user", "content": text}]))
    outs = generate_all(ctxs, max_tokens=args["new_tokens"], stop_at_eos=False)
    for c in ctxs:
        c.drop()
    send({"round": r, "tokens": sum(len(o.tokens) for o in outs), "t": clock()})
    r += 1
"""

QUESTIONS = [
    "What does a KV cache store?", "Explain recursion with an example.", "Why is the sky blue?",
    "How do I reverse a list in Python?", "What is the difference between a list and a tuple?",
    "Summarise the causes of the First World War.", "What is gradient descent?",
    "Write a haiku about autumn.", "How does photosynthesis work?", "What is a hash table?",
    "Give me three tips for writing clear code.", "What is Bayes' theorem?",
    "How do vaccines train the immune system?", "What is the time complexity of binary search?",
    "Explain what an API is to a beginner.", "Why do we normalise data before training?",
    "What is overfitting?", "How does a for loop differ from a while loop?",
    "What is the capital of Australia, and why is it not Sydney?", "Explain entropy in one paragraph.",
]
FOLLOW_UPS = ["Can you give an example?", "Explain that more simply.", "Why is that?", "And what about the opposite?",
              "Can you make it shorter?", "How would I test that?", "What is a common mistake here?",
              "Summarise your answer in one sentence."]


def pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    import numpy as np
    return float(np.percentile(xs, q))


# ---------------------------------------------------------------- students
def student(i: int, url: str, token: str, args, t0: float, t_end: float, out: dict, stop: threading.Event,
            live: dict, closed: set) -> None:
    """One notebook: think, stream a chat turn with the conversation so far, repeat until the end.

    Turns start only before ``t_end``. ``live[i]`` is the stream being read, so the benchmark can
    close it when a turn is still going long after the end (the engine then cancels it; ``i`` is
    then in ``closed``); such a turn is kept as ``unfinished``.
    """
    rng = random.Random(args.seed * 7919 + i)
    client = Client(url, token, timeout=600)
    turns, errors, unfinished = [], [], []
    out[i] = {"turns": turns, "errors": errors, "unfinished": unfinished}
    history: list[dict] = []
    turn_in_conv = 0
    lo, hi = args.turn_tokens
    first = True
    while not stop.is_set():
        think = rng.uniform(0, args.think) if first else rng.expovariate(1.0 / args.think)
        first = False
        if stop.wait(think) or time.monotonic() >= t_end:
            break
        if turn_in_conv >= args.turns_per_conversation:
            history, turn_in_conv = [], 0
        q = rng.choice(QUESTIONS) if not history else rng.choice(FOLLOW_UPS)
        messages = history + [{"role": "user", "content": q}]
        max_tokens = rng.randint(lo, hi)
        seed = rng.randrange(1 << 30)
        t_send = time.monotonic()
        t_first = None
        pieces = []
        res = None
        err = None
        try:
            s = live[i] = client.stream(messages=messages, max_tokens=max_tokens, temperature=0.7, seed=seed,
                                        ignore_eos=True)
            for piece in s:
                if t_first is None:
                    t_first = time.monotonic()
                pieces.append(piece)
            res = s.result
        except Exception as e:      # noqa: BLE001 - PotluckError, or whatever a closed stream raises
            err = e
        finally:
            live.pop(i, None)
        if i in closed:             # still going long after the end: closed by the benchmark
            unfinished.append({"t_start": round(t_send - t0, 3), "waited_s": round(time.monotonic() - t_send, 3),
                               "ttft_s": None if t_first is None else round(t_first - t_send, 4),
                               "pieces": len(pieces)})
            break
        if err is not None or res is None:
            errors.append({"t": round(t_send - t0, 3), "error": str(err or "the stream ended without a result"),
                           "code": getattr(err, "code", type(err).__name__ if err else "truncated"),
                           "limit": getattr(err, "limit", None)})
            continue
        t_done = time.monotonic()
        reply = "".join(pieces)
        history = messages + [{"role": "assistant", "content": reply}]
        turn_in_conv += 1
        turns.append({"t_start": round(t_send - t0, 3), "ttft_s": round((t_first or t_done) - t_send, 4),
                      "latency_s": round(t_done - t_send, 4), "new_tokens": res.usage.get("completion_tokens"),
                      "prompt_tokens": res.usage.get("prompt_tokens"),
                      "cached_tokens": res.usage.get("cached_tokens"), "turn_in_conversation": turn_in_conv})


# ------------------------------------------------------------- researchers
def researcher(j: int, url: str, token: str, args, duration: float, t0: float, out: dict) -> None:
    """One long inferlet, started and followed exactly as ``potluck.run`` does in a notebook."""
    client = Client(url, token, timeout=600)
    run_args = {"seed": args.seed * 31 + j, "sentences": SENTENCES, "sentences_per_prompt": args.research_sentences,
                "batch": args.batch,
                "new_tokens": args.batch_tokens, "duration": duration}
    rec: dict = {"rounds": [], "state": None, "error": None, "usage": None}
    out[j] = rec
    try:
        rec["run_id"] = run_id = client.start(RESEARCH_SRC, run_args)
        rec["t_post"] = round(time.monotonic() - t0, 3)
        for ev in client.events(run_id):
            if ev["type"] == "message":
                rec["rounds"].append({**ev["body"], "t_bench": round(time.monotonic() - t0, 3)})
            elif ev["type"] == "usage":
                rec["usage"] = {k: v for k, v in ev.items() if k not in ("seq", "type")}
            elif ev["type"] == "status":
                rec["state"], rec["error"] = ev["state"], ev.get("error")
                if ev["state"] == "running":
                    rec["t_running"] = round(time.monotonic() - t0, 3)
    except PotluckError as e:
        rec["error"] = str(e)


# --------------------------------------------------------------- scenario
def group_tokens(tenants: list[dict]) -> dict:
    out = {"students": {"decode": 0, "prefill": 0}, "researchers": {"decode": 0, "prefill": 0},
           "per_tenant": {}}
    for t in tenants:
        u = t.get("usage") or {}
        name = t["name"]
        g = "students" if name.startswith("student") else "researchers" if name.startswith("researcher") else None
        out["per_tenant"][name] = {"decode": u.get("decode_tokens", 0), "prefill": u.get("prefill_tokens", 0)}
        if g:
            out[g]["decode"] += u.get("decode_tokens", 0)
            out[g]["prefill"] += u.get("prefill_tokens", 0)
    return out


def run_scenario(sched: str, args) -> dict:
    data_dir = Path(tempfile.mkdtemp(prefix=f"potluck-bench-lab-{sched}-"))
    (data_dir / "potluck_config.py").write_text(AUTH_CONFIG.format(groups=GROUPS))
    proc = EngineProcess(data_dir, kv_pages=args.kv_pages, max_body=1 << 20,
                         args=("--model=default", f"--scheduler={sched}"))
    t0 = time.monotonic()
    proc.start(timeout=600)
    status = proc.status()
    assert status["scheduler"] == sched, status.get("scheduler")
    log(f"[{sched}] engine ready in {time.monotonic() - t0:.1f}s ({status['device']['kind']}, "
        f"{status['kv']['total_pages']} KV pages)")
    students = [f"student{i:02d}" for i in range(args.students)]
    researchers = [f"researcher{j}" for j in range(args.researchers)]
    try:
        tokens = create_tokens(proc, students + researchers + ["labadmin"], admin=("labadmin",))
        admin = Client(proc.url, tokens["labadmin"])
        me = Client(proc.url, tokens[students[0]]).me() if students else None
        rme = Client(proc.url, tokens[researchers[0]]).me() if researchers else None
        # Warm-up: one short generation and one tiny run, by the admin (not a lab tenant).
        t1 = time.monotonic()
        admin.generate("Hello", max_tokens=2)
        w = admin.follow(admin.start("from potluck_inferlet import Context\nContext().fill('Hi').next_token()\n"))
        assert w.ok, w.error
        log(f"[{sched}] {len(tokens)} tokens made, warm-up {time.monotonic() - t1:.1f}s; group quotas seen by "
            f"the engine: students {me and {k: v for k, v in me['quota_source'].items() if v != 'default'}}, "
            f"researchers {rme and {k: v for k, v in rme['quota_source'].items() if v != 'default'}}")

        stop = threading.Event()
        s_out: dict = {}
        r_out: dict = {}
        samples: list[dict] = []
        live: dict = {}
        closed: set = set()

        def snapshot(t0: float) -> dict:
            # Both reads wait for the batch loop (between two steps): stamp the time after them.
            snap = {**group_tokens(admin.tenants()), "stats": admin.status()["stats"],
                    "metrics": engine_metrics(proc.url, tokens["labadmin"])}
            snap["t"] = round(time.monotonic() - t0, 2)
            return snap
        base = snapshot(0.0)
        t0 = base["t"]          # the window starts at the baseline snapshot
        base["t"] = 0.0
        t_end = t0 + args.duration
        samples.append(base)
        threads = [threading.Thread(target=researcher, args=(j, proc.url, tokens[r], args, args.duration, t0, r_out),
                                    daemon=True, name=r) for j, r in enumerate(researchers)]
        threads += [threading.Thread(target=student, args=(i, proc.url, tokens[s], args, t0, t_end, s_out, stop,
                                                           live, closed),
                                     daemon=True, name=s) for i, s in enumerate(students)]
        for t in threads:
            t.start()
        log(f"[{sched}] {len(students)} students and {len(researchers)} researchers started for "
            f"{args.duration:.0f}s")
        next_log = t0 + 30
        while True:
            now = time.monotonic()
            if now >= t_end:
                break
            time.sleep(min(args.sample_every, t_end - now))
            snap = snapshot(t0)
            samples.append(snap)
            if time.monotonic() >= next_log or time.monotonic() >= t_end:
                next_log += 30
                done = sum(len(v["turns"]) for v in s_out.values())
                waiting = len(live)
                d = snap["stats"]["decode_tokens"] - base["stats"]["decode_tokens"]
                log(f"[{sched}] t={snap['t']:5.0f}s: engine {d / snap['t']:.1f} tok/s so far, students "
                    f"{(snap['students']['decode'] - base['students']['decode']) / snap['t']:.1f} tok/s, "
                    f"researchers {(snap['researchers']['decode'] - base['researchers']['decode']) / snap['t']:.1f}"
                    f" tok/s; {done} student turns done, {waiting} in flight; engine CPU "
                    f"{metrics_delta(base['metrics'], snap['metrics']).get('engine_cpu_cores', float('nan')):.2f} cores "
                    f"(load {os.getloadavg()[0]:.1f})")
        end = samples[-1]
        window = end["t"]
        stop.set()
        # The researchers' runs end themselves at the deadline; cancel what is still going.
        for j, r in enumerate(researchers):
            rid = r_out.get(j, {}).get("run_id")
            if rid:
                try:
                    Client(proc.url, tokens[r]).cancel(rid)
                except PotluckError:
                    pass
        t_wait = time.monotonic()
        for t in threads:
            t.join(timeout=max(0.1, args.grace - (time.monotonic() - t_wait)))
        for i, st in list(live.items()):     # turns still going after the grace period
            closed.add(i)
            live.pop(i, None)
            st.close()
        for t in threads:
            t.join(timeout=30)
        log(f"[{sched}] window closed; in-flight turns ended in {time.monotonic() - t_wait:.1f}s "
            f"({len(closed)} still going after --grace {args.grace:.0f}s were closed)")
        tenants_end = admin.tenants()
    finally:
        code = proc.stop()
        if not args.keep_data_dir:
            shutil.rmtree(data_dir, ignore_errors=True)
    return summarize(sched, status, students, researchers, s_out, r_out, samples, base, end, window, code,
                     {"students": me, "researchers": rme}, tenants_end)


def summarize(sched, status, students, researchers, s_out, r_out, samples, base, end, window, code, me,
              tenants_end) -> dict:
    per_student = []
    for i, name in enumerate(students):
        rec = s_out.get(i, {"turns": [], "errors": [], "unfinished": []})
        lat = [t["latency_s"] for t in rec["turns"]]
        ttft = [t["ttft_s"] for t in rec["turns"]]
        per_student.append({
            "name": name, "turns": len(rec["turns"]), "errors": len(rec["errors"]),
            "unfinished": len(rec["unfinished"]), "unfinished_list": rec["unfinished"],
            "latency_p50_s": pct(lat, 50), "latency_p95_s": pct(lat, 95),
            "ttft_p50_s": pct(ttft, 50), "ttft_p95_s": pct(ttft, 95),
            "new_tokens": sum(t["new_tokens"] or 0 for t in rec["turns"]),
            "turn_list": rec["turns"], "error_list": rec["errors"][:5],
        })
    all_lat = [t["latency_s"] for i in s_out for t in s_out[i]["turns"]]
    all_ttft = [t["ttft_s"] for i in s_out for t in s_out[i]["turns"]]
    res = []
    for j, name in enumerate(researchers):
        rec = r_out.get(j, {})
        d = end["per_tenant"].get(name, {}).get("decode", 0) - base["per_tenant"].get(name, {}).get("decode", 0)
        res.append({"name": name, "tokens_in_window": d, "tokens_per_s": d / window, "state": rec.get("state"),
                    "error": rec.get("error"), "rounds": len(rec.get("rounds", [])),
                    "round_list": rec.get("rounds", []), "usage": rec.get("usage")})
    eng = end["stats"]["decode_tokens"] - base["stats"]["decode_tokens"]
    steps = end["stats"]["steps"] - base["stats"]["steps"]
    timeline = []
    for a, b in zip(samples, samples[1:]):
        dt = b["t"] - a["t"]
        if dt > 0:
            timeline.append({"t": b["t"],
                             "students_tok_s": (b["students"]["decode"] - a["students"]["decode"]) / dt,
                             "researchers_tok_s": (b["researchers"]["decode"] - a["researchers"]["decode"]) / dt,
                             "engine_tok_s": (b["stats"]["decode_tokens"] - a["stats"]["decode_tokens"]) / dt,
                             **{k: v for k, v in metrics_delta(a["metrics"], b["metrics"]).items() if k != "wall_s"}})
    served = [s for s in per_student if s["turns"]]
    return {
        "scheduler": sched,
        "engine_exit_code": code,
        "window_s": window,
        "engine_status_at_start": {k: status[k] for k in ("model", "device", "profile", "kv", "scheduler")},
        "quota_seen": {g: (m or {}).get("quota") for g, m in me.items()},
        "quota_source_seen": {g: (m or {}).get("quota_source") for g, m in me.items()},
        "students": {
            "count": len(students), "turns": sum(s["turns"] for s in per_student),
            "errors": sum(s["errors"] for s in per_student),
            "unfinished_turns": sum(s["unfinished"] for s in per_student),
            "students_without_a_turn": [s["name"] for s in per_student if not s["turns"]],
            "latency_p50_s": pct(all_lat, 50), "latency_p95_s": pct(all_lat, 95),
            "ttft_p50_s": pct(all_ttft, 50), "ttft_p95_s": pct(all_ttft, 95), "ttft_max_s": max(all_ttft or [0]),
            "worst_student_p95_ttft_s": max((s["ttft_p95_s"] for s in served), default=None),
            "worst_student_p95_latency_s": max((s["latency_p95_s"] for s in served), default=None),
            "tokens_in_window": end["students"]["decode"] - base["students"]["decode"],
            "tokens_per_s": (end["students"]["decode"] - base["students"]["decode"]) / window,
            "per_student": per_student,
        },
        "researchers": {
            "count": len(researchers),
            "tokens_per_s": sum(r["tokens_per_s"] for r in res),
            "per_researcher": res,
        },
        "engine": {"tokens_per_s": eng / window, "decode_tokens": eng, "steps": steps,
                   "prefill_tokens": end["stats"]["prefill_tokens"] - base["stats"]["prefill_tokens"],
                   "prefix_hit_tokens": end["stats"]["prefix_hit_tokens"] - base["stats"]["prefix_hit_tokens"],
                   "mean_batch_seqs": (end["stats"]["batch_seqs"] - base["stats"]["batch_seqs"]) / max(1, steps),
                   "mean_step_s": window / max(1, steps), **metrics_delta(base["metrics"], end["metrics"])},
        "timeline": timeline,
        "tenants_at_end": [{k: t.get(k) for k in ("name", "groups", "usage")} for t in tenants_end],
    }


# --------------------------------------------------------------- reporting
def table(runs: list[dict]) -> str:
    lines = ["| scheduler | student turns (errors) | turn latency p50 / p95 (s) | TTFT p50 / p95 / max (s) "
             "| worst student p95 TTFT (s) | students tok/s | researchers tok/s | engine tok/s | seqs/step "
             "| engine CPU cores / forward busy |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    f = lambda x: "-" if x is None else f"{x:.2f}"  # noqa: E731
    for r in runs:
        s, q, e = r["students"], r["researchers"], r["engine"]
        lines.append(f"| {r['scheduler']} | {s['turns']} ({s['errors']}) | {f(s['latency_p50_s'])} / "
                     f"{f(s['latency_p95_s'])} | {f(s['ttft_p50_s'])} / {f(s['ttft_p95_s'])} / {f(s['ttft_max_s'])} | "
                     f"{f(s['worst_student_p95_ttft_s'])} | {s['tokens_per_s']:.1f} | {q['tokens_per_s']:.1f} | "
                     f"{e['tokens_per_s']:.1f} | {e['mean_batch_seqs']:.1f} | {f(e.get('engine_cpu_cores'))} / "
                     f"{f(e.get('forward_busy_share'))} |")
    return "\n".join(lines)


def student_table(runs: list[dict]) -> str:
    head = "| student | " + " | ".join(f"{r['scheduler']}: turns, latency p50/p95, TTFT p50/p95 (s)" for r in runs) + " |"
    lines = [head, "|---|" + "---:|" * len(runs)]
    f = lambda x: "-" if x is None else f"{x:.2f}"  # noqa: E731
    for k in range(len(runs[0]["students"]["per_student"])):
        cells = []
        for r in runs:
            s = r["students"]["per_student"][k]
            cells.append(f"{s['turns']}, {f(s['latency_p50_s'])}/{f(s['latency_p95_s'])}, "
                         f"{f(s['ttft_p50_s'])}/{f(s['ttft_p95_s'])}")
        lines.append(f"| {runs[0]['students']['per_student'][k]['name']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(runs: list[dict], path: Path, meta: dict) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    colors = {"fair": "C0", "fcfs": "C1"}
    fig = plt.figure(figsize=(15, 9))
    gs = fig.add_gridspec(2, 3)
    ax1 = fig.add_subplot(gs[0, :])
    k = len(runs)
    w = 0.8 / k
    n = len(runs[0]["students"]["per_student"])
    for m, r in enumerate(runs):
        data = [[t["ttft_s"] for t in s["turn_list"]] or [float("nan")] for s in r["students"]["per_student"]]
        pos = [i + (m - (k - 1) / 2) * w for i in range(n)]
        bp = ax1.boxplot(data, positions=pos, widths=w * 0.9, patch_artist=True, showfliers=True,
                         flierprops={"markersize": 2})
        for b in bp["boxes"]:
            b.set_facecolor(colors.get(r["scheduler"], "C2"))
            b.set_alpha(0.6)
        ax1.plot([], [], "s", color=colors.get(r["scheduler"], "C2"), label=r["scheduler"])
    ax1.set_xticks(range(n))
    ax1.set_xticklabels([str(i) for i in range(n)], fontsize=7)
    ax1.set_xlabel("student")
    ax1.set_ylabel("time to first token (s)")
    if any(t["ttft_s"] > 0 for r in runs for s in r["students"]["per_student"] for t in s["turn_list"]):
        ax1.set_yscale("log")
        ax1.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax1.set_title(f"Every student's TTFT per turn ({meta['students']} students, think ~exp({meta['think']:g} s), "
                  f"{meta['turn_tokens'][0]}-{meta['turn_tokens'][1]} tokens/turn; {meta['researchers']} researchers "
                  f"x {meta['batch']} seqs; {meta['device']})", fontsize=9)
    ax1.grid(True, axis="y", alpha=0.3)
    ax1.legend(fontsize=8)

    ax2 = fig.add_subplot(gs[1, 0])
    for r in runs:
        ps = r["students"]["per_student"]
        c = colors.get(r["scheduler"], "C2")
        ax2.plot(range(n), [s["latency_p50_s"] or float("nan") for s in ps], "o-", color=c, ms=3,
                 label=f"{r['scheduler']} p50")
        ax2.plot(range(n), [s["latency_p95_s"] or float("nan") for s in ps], "v:", color=c, ms=3,
                 label=f"{r['scheduler']} p95")
    ax2.set_xlabel("student")
    ax2.set_ylabel("turn latency (s)")
    ax2.set_title("Turn latency per student", fontsize=9)
    ax2.grid(True, alpha=0.3)
    ax2.legend(fontsize=7)

    ax3 = fig.add_subplot(gs[1, 1])
    for r in runs:
        c = colors.get(r["scheduler"], "C2")
        tl = r["timeline"]
        ax3.plot([p["t"] for p in tl], [p["students_tok_s"] for p in tl], "-", color=c,
                 label=f"{r['scheduler']}: students")
        ax3.plot([p["t"] for p in tl], [p["researchers_tok_s"] for p in tl], "--", color=c,
                 label=f"{r['scheduler']}: researchers")
    ax3.set_xlabel("time (s)")
    ax3.set_ylabel("generated tokens / s")
    ax3.set_title("Throughput over time by group", fontsize=9)
    ax3.grid(True, alpha=0.3)
    ax3.legend(fontsize=7)

    ax4 = fig.add_subplot(gs[1, 2])
    groups = ["students", "researchers", "engine"]
    x = list(range(len(groups)))
    for m, r in enumerate(runs):
        vals = [r["students"]["tokens_per_s"], r["researchers"]["tokens_per_s"], r["engine"]["tokens_per_s"]]
        xs = [i + (m - (k - 1) / 2) * w for i in x]
        ax4.bar(xs, vals, w, color=colors.get(r["scheduler"], "C2"), label=r["scheduler"])
        for xi, v in zip(xs, vals):
            ax4.text(xi, v, f"{v:.0f}", ha="center", va="bottom", fontsize=7)
    ax4.set_xticks(x)
    ax4.set_xticklabels(groups)
    ax4.set_ylabel("generated tokens / s over the window")
    ax4.set_title("Throughput", fontsize=9)
    ax4.grid(True, axis="y", alpha=0.3)
    ax4.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -------------------------------------------------------------------- main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--students", type=int, default=30)
    ap.add_argument("--researchers", type=int, default=2)
    ap.add_argument("--duration", type=float, default=120.0, help="seconds of lab per scheduler")
    ap.add_argument("--think", type=float, default=5.0, help="mean think time between a student's turns (s)")
    ap.add_argument("--turn-tokens", type=int, nargs=2, default=[30, 60], metavar=("MIN", "MAX"),
                    help="new tokens per student turn (uniform)")
    ap.add_argument("--turns-per-conversation", type=int, default=8,
                    help="a student starts a new conversation after this many turns")
    ap.add_argument("--batch", type=int, default=16, help="sequences per researcher round (generate_all)")
    ap.add_argument("--batch-tokens", type=int, default=64, help="tokens per sequence per researcher round")
    ap.add_argument("--research-sentences", type=int, default=16,
                    help="sentences per researcher prompt (~22 tokens each; 16: ~360-token documents)")
    ap.add_argument("--schedulers", nargs="+", choices=["fair", "fcfs"], default=["fair", "fcfs"])
    ap.add_argument("--kv-pages", type=int, default=2048)
    ap.add_argument("--sample-every", type=float, default=5.0, help="seconds between usage samples")
    ap.add_argument("--grace", type=float, default=60.0,
                    help="seconds after the window for turns in flight to finish; then they are closed")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: 6 students, 1 researcher (batch 4), 30 s per scheduler, 30 s grace")
    ap.add_argument("--keep-data-dir", action="store_true")
    ap.add_argument("--out", default=None, help="output path without extension "
                    "(default benchmarks/results/lab_<device>[_quick])")
    args = ap.parse_args(argv)
    if args.quick:      # smaller defaults; options given explicitly still win
        for k, v in {"students": 6, "researchers": 1, "duration": 30.0, "batch": 4, "grace": 30.0}.items():
            if getattr(args, k) == ap.get_default(k):
                setattr(args, k, v)
    if args.students < 1 or args.duration <= 0 or args.think <= 0 or not 1 <= args.turn_tokens[0] <= args.turn_tokens[1]:
        ap.error("need --students >= 1, --duration > 0, --think > 0, 1 <= MIN <= MAX tokens per turn")
    logging.basicConfig(level=logging.WARNING)

    dev = device_kind()
    out = Path(args.out or f"benchmarks/results/lab_{dev}" + ("_quick" if args.quick else ""))
    t_start = time.perf_counter()
    load_before = os.getloadavg()
    code = code_version()
    log(f"code: commit {str(code.get('git_commit'))[:10]}, uncommitted engine files "
        f"{code.get('engine_uncommitted') or 'none'}; device {dev}; load average {load_before[0]:.2f} on "
        f"{os.cpu_count()} CPUs")
    runs = [run_scenario(s, args) for s in args.schedulers]
    for r in runs:
        s = r["students"]
        log(f"[{r['scheduler']}] students: {s['turns']} turns ({s['errors']} errors), TTFT p50 {s['ttft_p50_s']} "
            f"p95 {s['ttft_p95_s']}, latency p50 {s['latency_p50_s']} p95 {s['latency_p95_s']}; researchers "
            f"{r['researchers']['tokens_per_s']:.1f} tok/s; engine {r['engine']['tokens_per_s']:.1f} tok/s")
    by = {r["scheduler"]: r for r in runs}
    verdict = None
    if "fair" in by:
        fs = by["fair"]["students"]
        verdict = {"every_student_served_under_fair": not fs["students_without_a_turn"] and fs["turns"] > 0,
                   "student_errors_under_fair": fs["errors"]}
        if "fcfs" in by and by["fcfs"]["students"]["ttft_p50_s"] and fs["ttft_p50_s"]:
            cs = by["fcfs"]["students"]
            verdict["student_ttft_p50_fcfs_over_fair"] = cs["ttft_p50_s"] / fs["ttft_p50_s"]
            verdict["student_ttft_p95_fcfs_over_fair"] = cs["ttft_p95_s"] / fs["ttft_p95_s"]
            verdict["student_tok_s_fair_over_fcfs"] = (fs["tokens_per_s"] / cs["tokens_per_s"]
                                                      if cs["tokens_per_s"] else None)
    status0 = runs[0]["engine_status_at_start"]
    result = {
        "benchmark": "teaching lab: students chatting from notebooks + researchers' batch inferlets, fair vs fcfs",
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(load_before, status0),
        "code": code,
        "config": {
            "model": status0["model"], "device": status0["device"]["kind"], "profile": status0["profile"],
            "kv_pages": args.kv_pages, "students": args.students, "researchers": args.researchers,
            "duration_s": args.duration, "think_mean_s": args.think, "think": "first turn after uniform(0, think), "
            "then exponential(mean think) between turns", "turn_tokens": args.turn_tokens,
            "turns_per_conversation": args.turns_per_conversation, "student_sampling": "temperature 0.7, seeded, "
            "ignore_eos (every turn makes exactly its tokens)", "researcher_batch": args.batch,
            "researcher_batch_tokens": args.batch_tokens, "researcher_prompt_sentences": args.research_sentences,
            "schedulers": args.schedulers, "seed": args.seed,
            "groups": GROUPS, "group_assignment": "student* -> students, researcher* -> researchers (engine "
            "authenticator written to potluck_config.py)",
            "student_client": "potluck.kernel.client.Client.stream(messages=...) -> POST /api/generate stream=true",
            "researcher_client": "potluck.kernel.client.Client.start + events (POST /api/runs, events WebSocket)",
            "researcher_source": RESEARCH_SRC,
            "ttft": "client-side, to the first text piece of the stream",
            "throughput": "decode tokens from the engine's per-tenant usage (GET /api/admin/tenants) over the window",
        },
        "verdict": verdict,
        "runs": runs,
        "total_seconds": time.perf_counter() - t_start,
    }
    meta = {"students": args.students, "researchers": args.researchers, "think": args.think,
            "turn_tokens": args.turn_tokens, "batch": args.batch, "device": dev}
    save(out, result, lambda png: plot(runs, png, meta))
    print()
    print(table(runs))
    print()
    print(student_table(runs))
    if verdict:
        print()
        print("verdict:", json.dumps(verdict))
    return 0


if __name__ == "__main__":
    sys.exit(main())
