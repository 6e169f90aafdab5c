"""The paged attention's decode path against attention written out by hand, in float32 and bfloat16."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from potluck.engine.model_runner import StepMeta, decode_groups, paged_attention
from potluck.engine.pages import KvPool


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_decode_rows_of_different_lengths_attend_to_exactly_their_own_keys(dtype):
    torch.manual_seed(0)
    heads, kvh, dim, ps = 6, 2, 8, 4
    pool = KvPool(num_layers=1, num_slots=128, page_size=ps, kv_heads=kvh, head_dim=dim, dtype=dtype, device="cpu")
    pool.k.normal_()
    pool.v.normal_()
    lengths = [3, 41, 37, 300]                      # keys each row reads, its new token included
    starts = [0, 16, 64, 120]                        # each context's first slot (page-aligned, disjoint)
    gathers = [torch.arange(s, s + n) for s, n in zip(starts, lengths)]
    rows = len(lengths)
    q = torch.randn(1, heads, rows, dim, dtype=dtype)
    k = torch.randn(1, kvh, rows, dim, dtype=dtype)
    v = torch.randn(1, kvh, rows, dim, dtype=dtype)
    decodes = []
    for group in decode_groups(lengths):
        lmax = lengths[group[0]]
        gidx = torch.zeros((len(group), lmax), dtype=torch.long)
        mask = torch.zeros((len(group), 1, 1, lmax), dtype=torch.bool)
        for r, i in enumerate(group):
            gidx[r, :lengths[i]] = gathers[i]
            mask[r, 0, 0, :lengths[i]] = True
        decodes.append((torch.tensor(group), gidx, mask))
    assert len(decodes) == 2                         # the short rows have their own call
    slot_mapping = torch.tensor([int(g[-1]) for g in gathers])
    meta = StepMeta(pool, slot_mapping, decodes, [])
    out, _ = paged_attention(SimpleNamespace(layer_idx=0), q, k, v, None, scaling=dim ** -0.5,
                             potluck_step=meta)
    kc = pool.k[0].view(-1, kvh, dim).float()
    vc = pool.v[0].view(-1, kvh, dim).float()
    for i, g in enumerate(gathers):
        keys = kc[g].repeat_interleave(heads // kvh, dim=1)      # [n, heads, d]: query head h reads kv h // 3
        vals = vc[g].repeat_interleave(heads // kvh, dim=1)
        scores = torch.einsum("hd,nhd->hn", q[0, :, i].float(), keys) * dim ** -0.5
        want = torch.einsum("hn,nhd->hd", scores.softmax(-1), vals)
        tol = 1e-5 if dtype == torch.float32 else 3e-2
        torch.testing.assert_close(out[0, i].float(), want, rtol=tol, atol=tol)
