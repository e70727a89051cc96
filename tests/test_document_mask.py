"""Document masking on the model side (lightning_gpt/models/document_mask.py and the families' hidden_states):
with the data's doc_ids, a token's logits depend on its own document only, whatever was packed before it in the
window, through the real GPT-2 (learned positions) and Llama (rotary) models."""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict

import pytest
import torch
import torch.nn.functional as F

from lightning_gpt.data import GPTDataModule
from lightning_gpt.models import build
from lightning_gpt.models.base import LanguageModel
from lightning_gpt.models.document_mask import block_mask, check_doc_masking, positions, sdpa_mask
from lightning_gpt.schema import DataConfig, TrainConfig

FAMILIES = ["gpt2", "llama"]


def tiny(family: str, vocab: int = 260) -> LanguageModel:
    """Two blocks of the real family, in eval mode (no dropout)."""
    torch.manual_seed(0)
    shape = {"n_layer": 2, "n_head": 2, "n_embd": 32, "block_size": 64, "vocab_size": vocab}
    return build({"family": family, **shape}).eval()


def test_the_mask_is_same_document_and_causal_and_positions_restart():
    ids = torch.tensor([[0, 0, 1, 1, 1, 2], [0, 1, 1, 1, 1, 1]])
    assert positions(ids).tolist() == [[0, 1, 0, 1, 2, 0], [0, 0, 1, 2, 3, 4]]
    mask = sdpa_mask(ids)
    assert mask.shape == (2, 1, 6, 6)
    for b in range(2):
        for q in range(6):
            for k in range(6):
                assert mask[b, 0, q, k] == (k <= q and ids[b, q] == ids[b, k])


@pytest.mark.parametrize("family", FAMILIES)
def test_a_tokens_logits_do_not_change_when_an_earlier_document_in_its_window_does(family):
    model = tiny(family)
    idx = torch.randint(0, 256, (1, 48))
    ids = torch.tensor([[0] * 20 + [1] * 28])  # two documents in one window
    changed = idx.clone()
    changed[0, :20] = torch.randint(0, 256, (20,))  # another first document, the second one unchanged
    with torch.no_grad():
        a, b = model(idx, doc_ids=ids)[0], model(changed, doc_ids=ids)[0]
        alone = model(idx[:, 20:])[0]  # the second document as a window of its own, from position 0
        unmasked = model(idx)[0], model(changed)[0]
    assert torch.allclose(a[0, 20:], b[0, 20:], atol=1e-6)  # the second document does not see the first
    assert torch.allclose(a[0, 20:], alone[0], atol=1e-5)  # as if it were alone in its window, at position 0
    assert torch.allclose(a[0, :20], unmasked[0][0, :20], atol=1e-5)  # the first document: a plain prefix
    assert not torch.allclose(unmasked[0][0, 20:], unmasked[1][0, 20:], atol=1e-3)  # without the mask it does


@pytest.mark.parametrize("family", FAMILIES)
def test_without_doc_ids_the_model_is_unchanged_and_a_cache_refuses_them(family):
    """One document per row (doc_ids all 0) is the plain causal model; the cache path never takes doc_ids."""
    model = tiny(family)
    idx = torch.randint(0, 256, (2, 40))
    with torch.no_grad():
        plain, one = model(idx)[0], model(idx, doc_ids=torch.zeros_like(idx))[0]
    assert torch.allclose(plain, one, atol=1e-5)
    with pytest.raises(ValueError, match="doc_ids are for packed training rows, which never run with a cache"):
        model.hidden_states(idx, model.new_cache(2, idx.device, torch.float32), doc_ids=torch.zeros_like(idx))


def test_mamba_refuses_doc_ids():
    model = build({"family": "mamba", "n_layer": 1, "n_embd": 16, "vocab_size": 50, "block_size": 16})
    idx = torch.randint(0, 50, (1, 8))
    with pytest.raises(ValueError, match="the mamba family cannot keep packed documents apart"):
        model(idx, doc_ids=torch.zeros_like(idx))


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
    with pytest.raises(ValueError, match="^doc_masking=true keeps documents apart in attention, which the mamba"):
        check_doc_masking("mamba")


@pytest.mark.parametrize("family", FAMILIES)
def test_packed_rows_from_the_data_are_their_documents_run_alone(tmp_path, cache_dir, family):
    """From the data module (bos_aligned packing, doc_masking) to the logits: each segment of a packed row
    gets the logits it gets alone."""
    texts = [f"document {i} " + "ab" * (i % 9) for i in range(300)]
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    data = {**asdict(DataConfig()), "block_size": 64, "batch_size": 4, "seed": TrainConfig.seed}
    path = str(tmp_path / "docs.jsonl")
    settings = {"tokenizer": "byte", "cache_dir": str(cache_dir), "source": "local", "path": path}
    dm = GPTDataModule(**{**data, **settings, "packing": "bos_aligned", "doc_masking": True})
    batch = next(iter(dm.train_dataloader()))
    model = tiny(family)
    with torch.no_grad():
        packed = model(batch.x, doc_ids=batch.doc_ids)[0]
        for row in range(4):
            assert batch.doc_ids[row].max() > 0  # several documents in every row
            for segment in batch.doc_ids[row].unique():
                where = batch.doc_ids[row] == segment
                alone = model(batch.x[row][where][None])[0]
                assert torch.allclose(packed[row][where], alone[0], atol=1e-5)
