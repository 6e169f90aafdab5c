"""`make demo`: start the engine on the default model and show a shared, batched generation.

Two tenants ask at once; their requests share forward steps. The first start
de-quantizes the default model into the cache (about 20 s on a small CPU).
"""

from __future__ import annotations

import logging
import sys
import time

from .engine import Engine, EngineConfig


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print("Starting the Potluck engine on the default model (SmolLM2-135M-Instruct)...", flush=True)
    t0 = time.time()
    with Engine(EngineConfig()) as eng:
        st = eng.status()
        print(f"ready in {time.time() - t0:.1f} s: {st['model']} on {st['device']['name']}, "
              f"profile {st['profile']['name']}, {st['kv']['total_pages']} KV pages of "
              f"{st['kv']['page_size']} tokens\n", flush=True)
        asks = [("alice", "What is the capital of France?"),
                ("bob", "Write a haiku about sharing one GPU.")]
        gens = [(who, q, eng.generate(who, messages=[{"role": "user", "content": q}], max_tokens=64))
                for who, q in asks]
        # Stream alice's answer live; bob's runs in the same batch meanwhile.
        who, q, g = gens[0]
        print(f"[{who}] {q}\n  -> ", end="", flush=True)
        for ev in g:
            print(ev.text, end="", flush=True)
        print("\n")
        who, q, g = gens[1]
        print(f"[{who}] {q}\n  -> {g.result().text}\n")
        st = eng.status()["stats"]
        print(f"{st['steps']} batched forward steps, {st['prefill_tokens']} prompt + "
              f"{st['decode_tokens']} generated tokens, both tenants in the same steps.")
        for who, _ in asks:
            u = eng.tenant_report(who)["usage"]
            print(f"  {who}: {u['prefill_tokens']} prompt, {u['decode_tokens']} generated tokens")


if __name__ == "__main__":
    sys.exit(main())
