"""Document masking: attention that never crosses a document boundary inside a packed window, and positions
that restart at each document.

The data side (`lightning_gpt.data.windows`, `data.doc_masking=true`) gives every batch `doc_ids` (B, T):
which segment of its row each input token is in, 0, 1, 2, ... in order (a segment is a document with the
separator token before it, which plays the part of a BOS). From them:

- `sdpa_mask(doc_ids)`: the boolean mask (B, 1, T, T) for `F.scaled_dot_product_attention(attn_mask=...)`:
  True where query t may attend key s, i.e. s <= t and both are in the same segment;
- `positions(doc_ids)`: (B, T) positions counted from 0 at each segment's first token, for learned position
  embeddings (`wpe(positions)`) or rotary angles (`rotary_cos_sin` at per-token positions);
- `block_mask(doc_ids)`: the same mask as FlexAttention's `BlockMask` (`create_block_mask`), which skips the
  fully masked blocks: on CUDA with `torch.compile(flex_attention)`, the fast path for long packed rows.
  It also builds and runs (unfused, eagerly) on a CPU, which is how the tests check it.

A family without attention cannot honour the mask: `check_doc_masking` refuses it.
"""

from __future__ import annotations

import torch

# Families whose every token-mixing layer is attention: document masking is exact for them.
MASKABLE = ("gpt2", "llama")


def check_doc_masking(family: str) -> None:
    """Refuse doc_masking for a family that cannot keep documents apart (Mamba's scan carries its state across
    the boundary: it has no attention to mask). A ValueError naming the setting; the caller adds its key."""
    if family not in MASKABLE:
        raise ValueError(
            f"doc_masking=true keeps documents apart in attention, which the {family} family does not have "
            f"(its recurrent state carries across documents); use doc_masking=false, or a family with "
            f"attention: {', '.join(MASKABLE)}"
        )


def sdpa_mask(doc_ids: torch.Tensor) -> torch.Tensor:
    """(B, 1, T, T) bool: query t attends key s where s <= t and doc_ids[t] == doc_ids[s]."""
    T = doc_ids.size(-1)
    same = doc_ids[:, :, None] == doc_ids[:, None, :]
    causal = torch.ones(T, T, dtype=torch.bool, device=doc_ids.device).tril()
    return (same & causal)[:, None]


def positions(doc_ids: torch.Tensor) -> torch.Tensor:
    """(B, T) int64: each token's position counted from 0 at the first token of its segment."""
    T = doc_ids.size(-1)
    index = torch.arange(T, device=doc_ids.device).expand_as(doc_ids)
    starts = torch.ones_like(doc_ids, dtype=torch.bool)
    starts[:, 1:] = doc_ids[:, 1:] != doc_ids[:, :-1]
    first = torch.where(starts, index, torch.zeros_like(index)).cummax(dim=-1).values  # the segment's first index
    return index - first


def block_mask(doc_ids: torch.Tensor, block_size: int = 128):
    """FlexAttention's BlockMask for the same mask as `sdpa_mask`: pass it as
    `flex_attention(q, k, v, block_mask=...)`. T need not be a multiple of block_size."""
    from torch.nn.attention.flex_attention import create_block_mask

    B, T = doc_ids.shape

    def same_document_causal(b, h, q, k):
        return (q >= k) & (doc_ids[b, q] == doc_ids[b, k])

    return create_block_mask(
        same_document_causal, B, None, T, T, device=str(doc_ids.device), BLOCK_SIZE=min(block_size, T)
    )
