"""Two runs of one user talking over a topic.

Start this twice with different names: each run subscribes to the topic,
the one with ``"opens": true`` speaks first, and then they take turns: read
the other's line from the topic, add it to its own context, answer, publish.
Topics belong to the user: runs of other users never see them.

args:   {"topic": str, "me": str, "other": str, "subject": str, "opens": bool, "turns": int = 2,
         "max_tokens": int = 20}
result: send({"transcript": [{"speaker": str, "text": str}]})
        2 * turns lines, alternating speakers, starting with the opener; both runs send the same transcript
"""

from potluck_inferlet import Context, Topic, args, send

me, other, turns = args["me"], args["other"], int(args.get("turns", 2))
topic = Topic(args["topic"])
ctx = Context()
ctx.fill_chat([{"role": "system", "content": f"You are {me}, debating {other} about {args['subject']}. "
                                             "Answer in one short sentence."},
               {"role": "user", "content": f"{other} is listening. Say your view on {args['subject']}."}])
transcript = []


def speak():
    line = ctx.generate(max_tokens=int(args.get("max_tokens", 20)), stop="\n").strip() or "I agree."
    transcript.append({"speaker": me, "text": line})
    topic.publish({"speaker": me, "text": line})


def listen():
    msg = topic.receive(timeout=300)
    if msg is None:
        raise RuntimeError(f"{other} did not answer")
    transcript.append(msg)
    ctx.fill(f"\n{other}: {msg['text']}\n{me}:")


for turn in range(turns):
    if args.get("opens"):
        speak()
        listen()
    else:
        listen()
        speak()
print("\n".join(f"{m['speaker']}: {m['text']}" for m in transcript))
send({"transcript": transcript})
