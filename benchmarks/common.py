"""What the benchmarks share: the run's set-up and record, prompts, and clients of a running engine.

- a run's frame: ``begin`` (quiet logs, output path, which code), ``log``, ``machine_info``,
  ``code_version``, ``device_kind``, ``save`` (JSON + PNG);
- prompts: ``SENTENCES``, ``build_prompts``;
- the ``generate_batch`` baseline (transformers' continuous batching): ``run_generate_batch``;
- HTTP rounds: ``SSEClient``, ``summarize`` (tokens/s and TTFT of a round), ``step_delta``;
- a running engine process: ``create_tokens``, ``engine_metrics``, ``metrics_delta``.

Benchmarks import this module and ``tests/support`` (the engine launcher and fault helpers the
tests use too); never each other. This module never loads a model or starts an engine, and
imports torch and transformers only inside the functions that need them.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # tests/support, imported as support.*

if TYPE_CHECKING:
    from support.engine_process import EngineProcess

# Varied sentences (different topics, styles and vocabulary) so that prompts
# built from them share no prefix and look like real traffic.
SENTENCES = [
    "The committee postponed its vote on the harbour expansion until the environmental survey is finished.",
    "Preheat the oven to 200 degrees, then roast the squash with olive oil, cumin and a pinch of salt.",
    "In 1887 the railway reached the valley, and within a decade the village had doubled in size.",
    "A binary search tree keeps its keys ordered so that lookups take logarithmic time on average.",
    "She tuned the violin twice before the concert, worried that the humid hall would pull the strings flat.",
    "Photosynthesis converts light energy into chemical energy stored in the bonds of glucose.",
    "The quarterly report shows revenue up eight percent, driven mostly by subscriptions in Asia.",
    "Our hiking group reached the ridge at dawn and watched fog pour slowly over the eastern pass.",
    "To reset the router, hold the small button on the back for ten seconds until the light blinks.",
    "Medieval scribes often added tiny drawings of snails and rabbits in the margins of manuscripts.",
    "The defendant's lawyer argued that the contract had never been signed by both parties.",
    "Glaciers carve U-shaped valleys, while rivers tend to cut narrower V-shaped ones.",
    "He replaced the worn brake pads, bled the lines, and took the bicycle for a careful test ride.",
    "Inflation expectations can become self-fulfilling if wages and prices chase each other upward.",
    "The telescope's new mirror will let astronomers study galaxies formed a few hundred million years after the Big Bang.",
    "Please submit your assignment as a single PDF no later than Friday at noon.",
    "Octopuses can change both the colour and the texture of their skin in a fraction of a second.",
    "The novel follows two sisters who inherit a failing vineyard and a decades-old family secret.",
    "Compile the project with optimisations enabled, then run the test suite before opening a pull request.",
    "Tea was first traded along caravan routes that linked the mountains of Yunnan with Tibet.",
    "A sudden frost in April destroyed most of the apricot blossoms across the region.",
    "The museum's new wing displays textiles, ceramics and tools from coastal settlements.",
    "When the power failed, the hospital's backup generators started within eight seconds.",
    "Quantum computers use superposition and entanglement to explore many states at once.",
    "Our neighbour's dog barks at every delivery van but ignores the cats entirely.",
    "The recipe calls for two cups of flour, one egg, and enough buttermilk to make a soft dough.",
    "Students in the seminar debated whether the treaty had prevented the war or merely delayed it.",
    "The sensor logs temperature every five minutes and uploads the readings once an hour.",
    "Migratory birds navigate using the sun, the stars and the Earth's magnetic field.",
    "The startup pivoted from selling furniture online to renting office equipment to small firms.",
    "After the storm, volunteers cleared fallen branches from the park's walking paths.",
    "Gradient descent updates each parameter in the direction that most reduces the loss.",
    "The old lighthouse keeper kept a diary of every ship that passed during forty winters.",
    "Chess engines evaluate millions of positions per second, pruning branches that cannot matter.",
    "The city council approved new bicycle lanes along three of the busiest avenues downtown.",
    "Volcanic soil is often fertile, which is why farms cling to the slopes of active volcanoes.",
    "Remember to water the basil every morning; it wilts quickly in direct afternoon sun.",
    "The orchestra rehearsed the final movement until the brass entrances were perfectly together.",
    "Encryption keys should be rotated regularly and never stored next to the data they protect.",
    "Archaeologists found a bronze mirror, a bone comb and dozens of glass beads in the grave.",
]


def code_version() -> dict:
    """Which engine code was measured: the commit, uncommitted engine files, the runner's hash."""
    import hashlib
    import subprocess
    root = Path(__file__).resolve().parent.parent
    info: dict = {}
    try:
        info["git_commit"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                                            text=True, timeout=10).stdout.strip() or None
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "engine"], cwd=root, capture_output=True,
                               text=True, timeout=10).stdout.splitlines()
        info["engine_uncommitted"] = sorted(line[3:] for line in dirty)
    except (OSError, subprocess.SubprocessError):
        info["git_commit"] = None
    # The engine actually imported: a baseline measured from another tree (PYTHONPATH) says so here.
    import importlib.util
    spec = importlib.util.find_spec("potluck.engine")
    engine_dir = Path(spec.origin).resolve().parent if spec and spec.origin else root / "engine"
    info["engine_dir"] = str(engine_dir)
    if engine_dir != (root / "engine").resolve():
        base = subprocess.run(["git", "rev-parse", "HEAD"], cwd=engine_dir, capture_output=True, text=True)
        info["engine_git_commit"] = base.stdout.strip() or None
    runner = engine_dir / "model_runner.py"
    if runner.exists():
        info["model_runner_sha256"] = hashlib.sha256(runner.read_bytes()).hexdigest()[:16]
    return info


def device_kind() -> str:
    import torch
    return "cuda" if torch.cuda.is_available() else "cpu"


def machine_info(load_before, status: dict | None = None, **extra) -> dict:
    """The machine a result was measured on (``status``: the engine's /api/status, for its device)."""
    import torch
    import transformers
    from potluck.engine import __version__ as engine_version
    info = {
        "device": (status or {}).get("device", {}).get("kind") or device_kind(),
        "device_info": (status or {}).get("device"),
        "cuda_available": torch.cuda.is_available(),
        "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "processor": platform.processor() or platform.machine(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "potluck_engine": engine_version,
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        **extra,
    }
    if not torch.cuda.is_available():
        info["note"] = "no GPU on this machine (torch.cuda.is_available() is False): measured on the CPU"
    return info


def quiet_logs() -> None:
    """Only errors from transformers and the engine: progress lines are the benchmark's own."""
    logging.basicConfig(level=logging.WARNING)
    for lib in ("transformers", "potluck"):
        logging.getLogger(lib).setLevel(logging.ERROR)
    import transformers
    transformers.logging.set_verbosity_error()


def begin(name: str, out_arg: str | None, quick: bool) -> tuple[Path, float, dict]:
    """Quiet the libraries' logs, log which code and load this run starts with.

    Returns the output path (``results/<name>_<device>``, ``_quick`` appended for a
    smoke run, unless ``out_arg`` names one), the load average and :func:`code_version`.
    """
    quiet_logs()
    out = Path(out_arg or Path(__file__).resolve().parent / "results" /
               f"{name}_{device_kind()}{'_quick' if quick else ''}")
    load_before = os.getloadavg()
    code = code_version()
    log(f"code: commit {str(code.get('git_commit'))[:10]}, uncommitted engine files "
        f"{code.get('engine_uncommitted') or 'none'}; load average {load_before[0]:.2f} on {os.cpu_count()} CPUs")
    return out, load_before, code


def save(out: Path, result: dict, draw: Callable[[Path], None]) -> None:
    """Write ``out``.json, draw ``out``.png with ``draw(path)``, and say so."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    draw(out.with_suffix(".png"))
    log(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.png')} (total {result['total_seconds']:.0f}s)")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def build_prompts(tokenizer, n: int, length: int, seed: int = 1234) -> list[list[int]]:
    """``n`` distinct prompts of exactly ``length`` tokens, each a different mix of sentences."""
    prompts = []
    for i in range(n):
        rng = random.Random(seed + i)
        order = SENTENCES[:]
        rng.shuffle(order)
        text = f"Note {i}: " + " ".join(order)
        ids = tokenizer.encode(text, add_special_tokens=False)
        while len(ids) < length:
            ids += tokenizer.encode(" " + " ".join(order), add_special_tokens=False)
        prompts.append(ids[:length])
    assert len({tuple(p[:16]) for p in prompts}) == n, "prompts must differ from the start"
    return prompts


# ------------------------------------------------- the generate_batch baseline
def cb_config(n: int, prompt_tokens: int, new_tokens: int):
    """A paged cache sized for the workload.

    Left to itself, ``generate_batch`` on a CPU sizes its cache from ~90% of the
    machine's RAM (7.8 GB resident here, ~15 s of set-up per call). Room for
    every sequence at once plus a margin gives it the same generation speed with
    ~3 s of set-up, so this is the stronger (and machine-friendlier) baseline.
    """
    from transformers.generation.configuration_utils import ContinuousBatchingConfig
    page = ContinuousBatchingConfig().page_size
    blocks = n * -(-(prompt_tokens + new_tokens) // page) + 8
    return ContinuousBatchingConfig(num_blocks=max(64, blocks))


def run_generate_batch(model, prompts: list[list[int]], new_tokens: int) -> dict:
    from transformers import GenerationConfig
    gc = GenerationConfig(max_new_tokens=new_tokens, do_sample=False, eos_token_id=-1, pad_token_id=0)
    cfg = cb_config(len(prompts), max(len(p) for p in prompts), new_tokens)
    t0 = time.perf_counter()
    out = model.generate_batch(inputs=prompts, generation_config=gc, continuous_batching_config=cfg,
                               record_timestamps=True, progress_bar=False)
    wall = time.perf_counter() - t0
    if len(out) != len(prompts):
        raise AssertionError(f"generate_batch returned {len(out)} results for {len(prompts)} prompts")
    res = list(out.values())
    toks = []
    ttft = []
    for r in res:
        if r.error is not None or len(r.generated_tokens) != new_tokens:
            raise AssertionError(f"generate_batch made {len(r.generated_tokens)} tokens (error {r.error}), "
                                 f"wanted {new_tokens}")
        toks.append(list(r.generated_tokens))
        if r.timestamps:
            ttft.append(r.timestamps[0] - r.created_time)
    # The call's wall time includes building the manager and its cache (what a
    # caller pays each call); the span from the first request's arrival to the
    # last one's end is the generation alone.
    span = max(r.lifespan[1] for r in res) - min(r.created_time for r in res)
    return {
        "wall_s": wall,
        "tokens_per_s": len(prompts) * new_tokens / wall,
        "generation_s": span,
        "setup_s": wall - span,
        "tokens_per_s_excl_setup": len(prompts) * new_tokens / span,
        "mean_ttft_s": statistics.mean(ttft) if ttft else None,
        "num_blocks": cfg.num_blocks,
        "page_size": cfg.page_size,
        "tokens": toks,
    }


# ------------------------------------------------------------- HTTP rounds
class SSEClient:
    """Incremental parser of one server-sent event stream (fed raw body chunks)."""

    def __init__(self, on_event):
        self.buf = b""
        self.on_event = on_event

    def feed(self, chunk: bytes) -> None:
        self.buf += chunk
        while True:
            # Events end with a blank line; the server writes "\n", never "\r\n".
            cut = self.buf.find(b"\n\n")
            if cut < 0:
                return
            block, self.buf = self.buf[:cut], self.buf[cut + 2:]
            event, data = "message", []
            for line in block.decode("utf-8").split("\n"):
                if line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:"):
                    data.append(line[5:].lstrip(" "))
            self.on_event(event, "\n".join(data))


def pct(xs: list[float], q: float) -> float:
    import numpy as np
    return float(np.percentile(xs, q))


def ttft_stats(xs: list[float]) -> dict:
    return {"mean_s": sum(xs) / len(xs), "p50_s": pct(xs, 50), "p95_s": pct(xs, 95), "max_s": max(xs)}


def summarize(clients: list[dict], new_tokens: int) -> dict:
    """Tokens/s and TTFT over one round's clients (times are perf_counter seconds)."""
    start = min(c["t_send"] for c in clients)
    end = max(c["t_end"] for c in clients)
    wall = end - start
    ttft = [c["t_first"] - c["t_send"] for c in clients]
    return {
        "wall_s": wall,
        "tokens_per_s": len(clients) * new_tokens / wall,
        "ttft": ttft_stats(ttft),
        "ttft_all_s": [round(x, 4) for x in ttft],
        "mean_request_s": sum(c["t_end"] - c["t_send"] for c in clients) / len(clients),
        "cached_tokens": sum(c.get("cached_tokens") or 0 for c in clients),
    }


def step_delta(before: dict, after: dict) -> dict:
    """Engine steps over a round, from two ``status()["stats"]`` snapshots."""
    d = {k: after[k] - before[k] for k in ("steps", "batch_seqs", "batch_tokens", "decode_tokens",
                                           "prefill_tokens")}
    d["mean_batch_seqs"] = d["batch_seqs"] / d["steps"] if d["steps"] else 0.0
    return d


# ------------------------------------------------- a running engine process
def create_tokens(proc: EngineProcess, names: list[str], admin: tuple[str, ...] = ()) -> dict[str, str]:
    """Tokens for many tenants at once: the same ``Store.create_token`` that ``potluck token create``
    calls, on the engine's database (one CLI call per token costs ~1 s of imports each)."""
    from potluck.engine.store import Store
    store = Store("sqlite:///" + str(Path(proc.data_dir).resolve() / "potluck.sqlite"))
    try:
        return {n: store.create_token(n, is_admin=n in admin) for n in names}
    finally:
        store.close()


def engine_metrics(url: str, admin_token: str) -> dict:
    """Forward-step time and the engine process's CPU time so far, from ``GET /metrics``."""
    import requests
    text = requests.get(url.rstrip("/") + "/metrics", headers={"Authorization": f"Bearer {admin_token}"},
                        timeout=120).text
    want = {"potluck_step_seconds_sum": "step_seconds", "potluck_step_seconds_count": "steps",
            "process_cpu_seconds_total": "cpu_seconds"}
    out = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in want:
            out[want[name]] = float(value)
    out["t"] = time.monotonic()
    return out


def metrics_delta(a: dict, b: dict) -> dict:
    """Over an interval: the share of wall time the engine spent in forward steps, and the CPU cores
    its process used (low values on a busy machine mean other processes took the cores)."""
    wall = b["t"] - a["t"]
    d = {"wall_s": wall}
    if "step_seconds" in a and "step_seconds" in b:
        d["forward_busy_share"] = (b["step_seconds"] - a["step_seconds"]) / wall
    if "cpu_seconds" in a and "cpu_seconds" in b:
        d["engine_cpu_cores"] = (b["cpu_seconds"] - a["cpu_seconds"]) / wall
    return d
