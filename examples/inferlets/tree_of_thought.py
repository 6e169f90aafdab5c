"""Tree of thought: branch, let the model judge each branch, follow the best one.

At each level the current path is forked into ``branches`` candidate next
thoughts (sampled in one batched ``generate_all``). Each candidate is then
judged by the model itself: a fork of it is asked "Is this a good next step?"
and the probability of "Yes" is its score (one batched ``distributions``
call). The best candidate becomes the path; the others are dropped.

args:   {"problem": str, "branches": int = 3, "depth": int = 2, "max_tokens": int = 16}
result: send({"path": [str, ...], "scores": [float, ...], "considered": int})
        len(path) == len(scores) == depth; scores are probabilities in [0, 1]
"""

from potluck_inferlet import Context, args, distributions, encode, generate_all, send

branches = int(args.get("branches", 3))
depth = int(args.get("depth", 2))
yes = set(encode("Yes")[:1] + encode(" Yes")[:1] + encode("yes")[:1])

path_ctx = Context()
path_ctx.fill_chat([{"role": "user", "content": f"Solve step by step: {args['problem']}"}])
path, scores, considered = [], [], 0
for level in range(depth):
    forks = path_ctx.fork(branches)
    thoughts = generate_all(forks, max_tokens=int(args.get("max_tokens", 16)), temperature=0.9,
                            seed=args.get("seed", 0) + 100 * level, stop="\n")
    judges = []
    for ctx, thought in zip(forks, thoughts):
        judge = ctx.fork()
        judge.fill(f"\n\nQuestion: is the step above correct and useful? Answer Yes or No.\nAnswer:")
        judges.append(judge)
    tops = distributions(judges, k=20)
    level_scores = [sum(p for t, p in top if t in yes) for top in tops]
    for judge in judges:
        judge.drop()
    considered += len(forks)
    best = max(range(branches), key=lambda i: level_scores[i])
    print(f"level {level}: " + " | ".join(f"{s:.2f} {t.strip()!r}" for s, t in zip(level_scores, thoughts)))
    path.append(thoughts[best].strip())
    scores.append(level_scores[best])
    for i, ctx in enumerate(forks):
        if i != best:
            ctx.drop()
    path_ctx.drop()
    path_ctx = forks[best]
    path_ctx.fill("\n")
send({"path": path, "scores": scores, "considered": considered})
