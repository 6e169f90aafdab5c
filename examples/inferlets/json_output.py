"""JSON-constrained output: the model fills in values, the program owns the structure.

The keys, quotes and punctuation are filled in by the program, so the output
is valid JSON by construction. The model writes each value: strings stop at
the closing quote, and integers may only use digit tokens (an ``allowed``
mask, applied on the engine's side of the sampler).

args:   {"description": str, "max_value_tokens": int = 12}
result: send({"json": {"name": str, "age": int, "city": str}, "text": str})
        text is the exact JSON text the context holds; json == json.loads(text)
"""

import json

from potluck_inferlet import Context, args, encode, send

SCHEMA = [("name", str), ("age", int), ("city", str)]
limit = int(args.get("max_value_tokens", 12))

ctx = Context()
ctx.fill_chat([{"role": "system", "content": "You answer with one JSON object and nothing else."},
               {"role": "user", "content": "Describe this person as JSON with the keys name, age and city: "
                                           + args["description"]}])
digits = sorted({t for d in "0123456789" for t in encode(d)})
comma = encode(",")
text = "{"
ctx.fill("{")
for i, (key, kind) in enumerate(SCHEMA):
    head = ("" if i == 0 else ", ") + json.dumps(key) + ": "
    if kind is str:
        head += '"'
    ctx.fill(head)
    text += head
    start = len(ctx)
    if kind is str:
        out = ctx.generate(max_tokens=limit, stop='"')
        value = out.replace("\n", " ").strip() or "unknown"
        # Replace what the model wrote (the closing quote may sit inside a token
        # with more after it) by exactly the value and the quote.
        ctx.truncate(start)
        piece = json.dumps(value)[1:]
        ctx.fill(piece)
        text += piece
    else:
        out = ctx.generate(max_tokens=4, allowed=digits + comma, stop=",")
        value = int(out.strip() or 0) if out.strip().isdigit() else 0
        ctx.truncate(start)
        ctx.fill(str(value))
        text += str(value)
text += "}"
ctx.fill("}")
print(text)
send({"json": json.loads(text), "text": text})
