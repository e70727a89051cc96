"""Document masking on the model side (lightning_gpt/models/document_mask.py): with the data's doc_ids, a
token's logits depend on its own document only, whatever was packed before it in the window.

GPT and Llama take no mask yet (phase 2 adds `hidden_states(idx, cache=None, *, doc_ids=None)`), so a tiny
pre-norm Transformer written here, with learned or rotary positions (Llama's own rotary functions), shows
what the helpers give a model."""

from __future__ import annotations

import warnings
from dataclasses import asdict

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from lightning_gpt.data import GPTDataModule
from lightning_gpt.errors import UserError
from lightning_gpt.models.document_mask import block_mask, check_doc_masking, positions, sdpa_mask
from lightning_gpt.models.llama.config import LlamaConfig
from lightning_gpt.models.llama.model import apply_rotary, rotary_cos_sin
from lightning_gpt.schema import DataConfig, TrainConfig


class TinyTransformer(nn.Module):
    """Two pre-norm blocks; positions learned (GPT-2) or rotary (Llama), restarting per document when
    doc_ids are given, and attention masked to each document."""

    def __init__(self, rotary: bool, vocab: int = 260, width: int = 32, heads: int = 2, context: int = 128):
        super().__init__()
        self.rotary, self.heads = rotary, heads
        self.wte = nn.Embedding(vocab, width)
        self.wpe = nn.Embedding(context, width)
        self.norms = nn.ModuleList(nn.LayerNorm(width) for _ in range(5))
        self.qkv = nn.ModuleList(nn.Linear(width, 3 * width) for _ in range(2))
        self.out = nn.ModuleList(nn.Linear(width, width) for _ in range(2))
        self.mlp = nn.ModuleList(
            nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width)) for _ in range(2)
        )
        self.head = nn.Linear(width, vocab)
        self.rope = LlamaConfig(n_embd=width, n_head=heads, block_size=context)

    def forward(self, idx: torch.Tensor, doc_ids: torch.Tensor | None = None) -> torch.Tensor:
        B, T = idx.shape
        pos = positions(doc_ids) if doc_ids is not None else torch.arange(T).expand(B, T)
        x = self.wte(idx) + (0 if self.rotary else self.wpe(pos))
        cos, sin = rotary_cos_sin(self.rope, 0, T, idx.device)  # (T, head_dim): rows picked per token below
        cos, sin = cos[pos][:, None], sin[pos][:, None]  # (B, 1, T, head_dim)
        mask = sdpa_mask(doc_ids) if doc_ids is not None else None
        for i in range(2):
            q, k, v = (
                t.view(B, T, self.heads, -1).transpose(1, 2) for t in self.qkv[i](self.norms[2 * i](x)).chunk(3, -1)
            )
            if self.rotary:
                q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None)
            x = x + self.out[i](y.transpose(1, 2).reshape(B, T, -1))
            x = x + self.mlp[i](self.norms[2 * i + 1](x))
        return self.head(self.norms[4](x))


def test_the_mask_is_same_document_and_causal_and_positions_restart():
    ids = torch.tensor([[0, 0, 1, 1, 1, 2], [0, 1, 1, 1, 1, 1]])
    assert positions(ids).tolist() == [[0, 1, 0, 1, 2, 0], [0, 0, 1, 2, 3, 4]]
    mask = sdpa_mask(ids)
    assert mask.shape == (2, 1, 6, 6)
    for b in range(2):
        for q in range(6):
            for k in range(6):
                assert mask[b, 0, q, k] == (k <= q and ids[b, q] == ids[b, k])


@pytest.mark.parametrize("rotary", [False, True], ids=["learned", "rotary"])
def test_a_tokens_logits_do_not_change_when_an_earlier_document_in_its_window_does(rotary):
    torch.manual_seed(0)
    model = TinyTransformer(rotary).eval()
    idx = torch.randint(0, 256, (1, 48))
    ids = torch.tensor([[0] * 20 + [1] * 28])  # two documents in one window
    changed = idx.clone()
    changed[0, :20] = torch.randint(0, 256, (20,))  # another first document, the second one unchanged
    with torch.no_grad():
        a, b = model(idx, ids), model(changed, ids)
        alone = model(idx[:, 20:], torch.zeros(1, 28, dtype=torch.long))
        unmasked = model(idx), model(changed)
    assert torch.allclose(a[0, 20:], b[0, 20:], atol=1e-6)  # the second document does not see the first
    assert torch.allclose(a[0, 20:], alone[0], atol=1e-5)  # as if it were alone in its window, at position 0
    assert not torch.allclose(unmasked[0][0, 20:], unmasked[1][0, 20:], atol=1e-3)  # without the mask it does


@pytest.mark.parametrize("length", [64, 100])
def test_flex_attentions_block_mask_is_the_same_mask(length):
    """create_block_mask builds on a CPU, and flex_attention runs there eagerly (unfused): same outputs."""
    from torch.nn.attention.flex_attention import flex_attention

    torch.manual_seed(1)
    ids = torch.sort(torch.randint(0, 5, (2, length)), dim=1).values
    ids = ids - ids[:, :1]
    q, k, v = (torch.randn(2, 2, length, 16) for _ in range(3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "flex_attention called without torch.compile()": fine for a check
        flex = flex_attention(q, k, v, block_mask=block_mask(ids, block_size=32))
    sdpa = F.scaled_dot_product_attention(q, k, v, attn_mask=sdpa_mask(ids))
    assert torch.allclose(flex, sdpa, atol=1e-5)


def test_a_family_without_attention_cannot_mask_documents():
    check_doc_masking("gpt2")
    check_doc_masking("llama")
    with pytest.raises(UserError, match="data.doc_masking=true keeps documents apart in attention, which the mamba"):
        check_doc_masking("mamba")


def test_packed_rows_from_the_data_are_their_documents_run_alone(tmp_path, cache_dir):
    """From the data module (bos_aligned packing, doc_masking) to the logits: each segment of a packed row
    gets the logits it gets alone."""
    import json

    texts = [f"document {i} " + "ab" * (i % 9) for i in range(300)]
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    data = {**asdict(DataConfig()), "block_size": 64, "batch_size": 4, "seed": TrainConfig.seed}
    path = str(tmp_path / "docs.jsonl")
    settings = {"tokenizer": "byte", "cache_dir": str(cache_dir), "source": "local", "path": path}
    dm = GPTDataModule(**{**data, **settings, "packing": "bos_aligned", "doc_masking": True})
    batch = next(iter(dm.train_dataloader()))
    torch.manual_seed(0)
    model = TinyTransformer(rotary=True).eval()
    with torch.no_grad():
        packed = model(batch.x, batch.doc_ids)
        for row in range(4):
            for segment in batch.doc_ids[row].unique():
                where = batch.doc_ids[row] == segment
                alone = model(batch.x[row][where][None])
                assert torch.allclose(packed[row][where], alone[0], atol=1e-5)
