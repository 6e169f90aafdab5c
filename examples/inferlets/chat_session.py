"""A conversation kept across runs: the history in the key-value store, the KV cache saved by name.

Each run adds one turn. It opens the saved context of the session (if there
is one), brings it to the whole conversation with ``fill_chat`` (which keeps
the cache up to the first token that differs, so only the new turn is
computed), replies, and saves the context and the history for the next run.

args:   {"session": str, "message": str, "max_tokens": int = 32}
result: send({"reply": str, "turn": int, "reused_tokens": int, "new_tokens": int})
        turn counts from 1; from turn 2 on, reused_tokens > 0 (the earlier turns were not recomputed)
"""

import json

from potluck_inferlet import Context, InferletError, args, kv, send

session = args["session"]
history = json.loads(kv.get(f"chat:{session}", "[]"))
history.append({"role": "user", "content": args["message"]})
try:
    ctx = Context.open(f"chat:{session}")
except InferletError:
    ctx = Context()
cached = len(ctx)
ctx.fill_chat(history)
reused = len(ctx) - len(ctx.pending)          # tokens kept from the saved cache
reply = ctx.generate(max_tokens=int(args.get("max_tokens", 32)))
history.append({"role": "assistant", "content": str(reply)})
ctx.save(f"chat:{session}")
kv.put(f"chat:{session}", json.dumps(history))
print(reply)
send({"reply": str(reply), "turn": len(history) // 2, "reused_tokens": reused,
      "new_tokens": len(ctx) - reused})
