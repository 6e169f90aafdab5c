"""Best-of-n: sample n answers from forks of one prompt, keep the most likely.

The prompt goes into the cache once; ``fork(n)`` shares it copy-on-write,
and ``generate_all`` advances all n forks in the same engine step.

args:   {"question": str, "n": int = 4, "max_tokens": int = 24, "temperature": float = 0.8}
result: send({"best": str, "candidates": [{"text": str, "logprob": float, "mean_logprob": float}]})
        candidates sorted by mean log-probability, best first; best == candidates[0]["text"]
"""

from potluck_inferlet import Context, args, generate_all, send

n = int(args.get("n", 4))
prompt = Context()
prompt.fill_chat([{"role": "user", "content": args["question"]}])
forks = prompt.fork(n)
outs = generate_all(forks, max_tokens=int(args.get("max_tokens", 24)),
                    temperature=float(args.get("temperature", 0.8)), seed=args.get("seed"))
candidates = sorted(
    ({"text": str(o), "logprob": o.logprob, "mean_logprob": o.logprob / max(1, len(o.tokens))} for o in outs),
    key=lambda c: c["mean_logprob"], reverse=True)
for c in candidates:
    print(f"{c['mean_logprob']:7.3f}  {c['text']!r}")
send({"best": candidates[0]["text"], "candidates": candidates})
