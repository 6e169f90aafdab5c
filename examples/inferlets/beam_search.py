"""Beam search: keep the `width` most likely continuations, one token at a time.

Each step asks the engine for the top-k next tokens of every beam in one
batched call (``distributions``), scores all extensions by total
log-probability, and keeps the best ``width`` as forks of their parents.

args:   {"prompt": str, "width": int = 3, "max_tokens": int = 8}
result: send({"beams": [{"text": str, "logprob": float}]})   # width beams, best first
"""

import math

from potluck_inferlet import Context, args, decode, distributions, model, send

width = int(args.get("width", 3))
root = Context().fill(args["prompt"])
beams = [(0.0, [], root)]            # (total log-probability, new tokens, context)
eos = set(model.eos_tokens)

for _ in range(int(args.get("max_tokens", 8))):
    live = [b for b in beams if not (b[1] and b[1][-1] in eos)]
    if not live:
        break
    tops = distributions([ctx for _, _, ctx in live], k=width)
    scored = [(score + math.log(max(p, 1e-30)), toks + [t], ctx)
              for (score, toks, ctx), top in zip(live, tops) for t, p in top]
    scored += [b for b in beams if b not in live]          # finished beams stay in the running
    scored.sort(key=lambda b: b[0], reverse=True)
    keep = scored[:width]
    new_beams = []
    for score, toks, parent in keep:
        if toks and toks[-1] in eos and (score, toks, parent) in beams:
            new_beams.append((score, toks, parent))       # a finished beam, unchanged
            continue
        child = parent.fork()
        child.fill([toks[-1]])
        new_beams.append((score, toks, child))
    for _, _, ctx in beams:                               # parents are no longer needed
        if all(ctx is not c for _, _, c in new_beams):
            ctx.drop()
    beams = new_beams

result = [{"text": decode([t for t in toks if t not in eos]), "logprob": score} for score, toks, _ in beams]
for b in result:
    print(f"{b['logprob']:7.3f}  {b['text']!r}")
send({"beams": result})
