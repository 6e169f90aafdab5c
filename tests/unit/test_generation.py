"""Batched paged generation equals plain `model.generate`, however the batch is mixed."""

from __future__ import annotations

import time

import torch

from tiny_engine import make_engine
from potluck.engine.sampling import Sampler


def reference_greedy(model, prompt: list[int], max_new: int) -> list[int]:
    out = model.generate(torch.tensor([prompt]), max_new_tokens=max_new, do_sample=False,
                         pad_token_id=0, attention_mask=torch.ones(1, len(prompt), dtype=torch.long))
    toks = out[0, len(prompt):].tolist()
    return toks[:-1] if toks and toks[-1] == 2 else toks


def wait_for(cond, timeout=60.0):
    end = time.time() + timeout
    while not cond():
        assert time.time() < end, "timed out"
        time.sleep(0.005)


def test_mixed_batch_of_ten_prompts_joining_and_leaving_matches_generate(tokenizer, tiny_weights, reference_model):
    # A small token budget chunks the longer prompts over several steps, so
    # prefill chunks and decode tokens share steps.
    eng = make_engine(tokenizer, tiny_weights, kv_pages=128, profile_overrides={"batch_token_budget": 24})
    steps = []
    eng.step_listeners.append(steps.append)
    g = torch.Generator().manual_seed(1)
    lengths = [3, 17, 40, 9, 33, 5, 61, 12, 26, 48]
    max_new = [4, 12, 7, 15, 3, 10, 6, 14, 9, 5]
    prompts = [torch.randint(3, 49152, (n,), generator=g).tolist() for n in lengths]
    with eng:
        gens = [eng.generate("alice" if i % 2 else "bob", tokens=prompts[i], max_tokens=max_new[i]) for i in range(4)]
        wait_for(lambda: len(gens[0].tokens) >= 2)
        gens += [eng.generate("carol", tokens=prompts[i], max_tokens=max_new[i]) for i in range(4, 7)]
        wait_for(lambda: len(gens[5].tokens) >= 1)
        gens += [eng.generate("bob", tokens=prompts[i], max_tokens=max_new[i]) for i in range(7, 10)]
        results = [gen.result(timeout=120) for gen in gens]
        assert eng.status()["kv"]["used_pages"] == 0
    for i, r in enumerate(results):
        assert r.tokens == reference_greedy(reference_model, prompts[i], max_new[i]), f"prompt {i} diverged"
    assert any(s["prefill_seqs"] and s["decode_seqs"] for s in steps), "no step mixed prefill and decode"
    assert max(s["seqs"] for s in steps) >= 4


def test_text_prompt_streams_decoded_text_and_stop_string_cuts(engine, reference_model, tokenizer):
    prompt = "The quick brown fox"
    ids = tokenizer.encode(prompt, add_special_tokens=False)
    ref = reference_greedy(reference_model, ids, 12)
    gen = engine.generate("alice", prompt=prompt, max_tokens=12)
    streamed = "".join(ev.text for ev in gen)
    r = gen.result()
    assert r.tokens == ref
    assert streamed == r.text == tokenizer.decode(ref, skip_special_tokens=True)
    # Stop on a string that appears in the middle of that output: text is cut before it.
    full = r.text
    middle = next(i for i in range(len(full) // 2, len(full) - 2) if full[i:i + 3].strip() == full[i:i + 3])
    stop = full[middle:middle + 3]
    r2 = engine.generate("alice", prompt=prompt, max_tokens=12, stop=[stop]).result()
    assert r2.finish_reason == "stop"
    assert r2.text == full[:full.find(stop)]


def test_seeded_sampling_is_reproducible_whatever_else_is_in_the_batch(engine):
    s = Sampler(temperature=1.0, top_p=0.9, seed=1234)
    alone = engine.generate("alice", tokens=[5, 6, 7], max_tokens=10, sampler=s, ignore_eos=True).result().tokens
    noise = [engine.generate("bob", tokens=[9, 10, 11, 12], max_tokens=10, sampler=Sampler(temperature=1.0),
                             ignore_eos=True) for _ in range(3)]
    crowded = engine.generate("alice", tokens=[5, 6, 7], max_tokens=10, sampler=s, ignore_eos=True)
    assert crowded.result().tokens == alone
    for n in noise:
        n.result()


def test_cancel_frees_pages_and_leaves_the_batch(engine):
    gen = engine.generate("alice", tokens=list(range(10, 60)), max_tokens=400, ignore_eos=True)
    wait_for(lambda: len(gen.tokens) >= 2)
    gen.cancel()
    r = gen.result(timeout=30)
    assert r.finish_reason == "cancelled"
    assert len(r.tokens) < 400
    st = engine.status()
    assert st["kv"]["used_pages"] == 0 and st["queue_depth"] == 0


def test_prefix_of_my_own_earlier_prompt_is_reused(engine):
    prompt = list(range(100, 180))   # 5 full pages of 16
    first = engine.generate("alice", tokens=prompt, max_tokens=3).result()
    again = engine.generate("alice", tokens=prompt, max_tokens=3).result()
    assert first.cached_tokens == 0
    assert again.cached_tokens == 64      # every full page but the one holding the last token
    assert again.tokens == first.tokens


def test_prefix_cache_never_matches_another_tenants_pages(engine):
    prompt = list(range(200, 280))
    engine.generate("alice", tokens=prompt, max_tokens=2).result()
    other = engine.generate("bob", tokens=prompt, max_tokens=2).result()
    assert other.cached_tokens == 0


def test_a_new_requests_feed_counts_its_wait_from_when_it_reached_the_engine(engine):
    # The composer spends a new request's wait (for the step in flight) from its latency target.
    seen = []
    submit = engine.loop.submit

    def spy(seq, tokens, arrived=None):
        cached = submit(seq, tokens, arrived)
        seen.append((len(tokens), arrived, seq.queued_at, time.monotonic()))
        return cached
    engine.loop.submit = spy
    before = time.monotonic()
    engine.generate("alice", tokens=list(range(10, 30)), max_tokens=3, ignore_eos=True).result(timeout=60)
    (n, arrived, queued_at, at), *decodes = seen
    assert n == 20 and before <= arrived == queued_at <= at
    assert decodes and all(a is None and q <= t for _, a, q, t in decodes)


def test_decodes_of_short_and_long_contexts_in_one_step_match_generate(engine, reference_model, monkeypatch):
    # A short chat beside long contexts gets its own padded attention call (decode_groups): both must
    # still be exactly what each would generate alone.
    from potluck.engine import model_runner
    groups = []
    real = model_runner.decode_groups
    monkeypatch.setattr(model_runner, "decode_groups", lambda lengths: groups.append(real(lengths)) or groups[-1])
    g = torch.Generator().manual_seed(4)
    prompts = [torch.randint(3, 49152, (n,), generator=g).tolist() for n in (12, 700, 650, 30)]
    max_new = [40, 6, 6, 40]
    gens = [engine.generate("alice" if i % 2 else "bob", tokens=p, max_tokens=m, ignore_eos=True)
            for i, (p, m) in enumerate(zip(prompts, max_new))]
    results = [gen.result(timeout=120) for gen in gens]
    for p, m, r in zip(prompts, max_new, results):
        assert r.tokens == reference_greedy(reference_model, p, m)
    assert any(len(grp) == 2 and sorted(map(len, grp)) == [2, 2] for grp in groups), groups
