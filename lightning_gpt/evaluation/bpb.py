"""Bits per byte: a loss that compares models whatever their tokenizer.

A loss in nats per token depends on how much text a token holds: a byte model's 1.0 and a GPT-2 model's
3.0 say nothing about which predicts the text better. Bits per byte divides the summed loss by the UTF-8
bytes of the text it scored, which every tokenizer agrees on.

As nanochat does, the bytes come from a table, `token_bytes(tokenizer)[id]` = the UTF-8 length of token
id's own text (0 for special tokens such as end-of-text), so a training or validation step sums
`token_bytes[targets]` alongside its loss and never decodes. The sum over a text's ids is exactly the
text's UTF-8 length for every tokenizer we ship (char, byte, a trained byte-level BPE, tiktoken's).
Tokens with no bytes (end-of-text, padding) are left out of the loss as well as of the bytes.

    table = token_bytes(tokenizer)                          # once
    loss, nbytes = loss_and_bytes(logits, targets, table)   # each step: sums, reduce them across processes
    bits_per_byte(loss, nbytes)                             # at the end

`token_losses_and_bytes` gives the per-target values instead, for a step that also needs the mean loss over
every target (training's validation: val/loss counts end-of-text targets, val/bpb cannot).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from lightning_gpt.errors import UserError
from lightning_gpt.tokenizers import BPETokenizer, ByteTokenizer, CharTokenizer, TiktokenTokenizer

if TYPE_CHECKING:
    from lightning_gpt.models.base import LanguageModel
    from lightning_gpt.tokenizers import Tokenizer


def token_bytes(tokenizer: Tokenizer) -> torch.Tensor:
    """The UTF-8 byte length of each token's text (int64, one entry per id); 0 for special tokens."""
    if isinstance(tokenizer, CharTokenizer):
        lengths = [len(c.encode("utf-8")) for c in tokenizer.chars]
    elif isinstance(tokenizer, ByteTokenizer):
        lengths = [1] * 256 + [0]  # 256 is end-of-text
    elif isinstance(tokenizer, TiktokenTokenizer):
        lengths = _tiktoken_lengths(tokenizer)
    elif isinstance(tokenizer, BPETokenizer):
        lengths = _bpe_lengths(tokenizer)
    else:
        raise UserError(
            f"no byte table for the {tokenizer.name!r} tokenizer ({type(tokenizer).__name__}); bits per byte "
            "needs char, byte, bpe or a tiktoken encoding"
        )
    assert len(lengths) == tokenizer.vocab_size, (len(lengths), tokenizer.vocab_size)
    return torch.tensor(lengths, dtype=torch.int64)


def _tiktoken_lengths(tokenizer: TiktokenTokenizer) -> list[int]:
    encoding = tokenizer.encoding
    special = {encoding.encode_single_token(token) for token in encoding.special_tokens_set}
    lengths = []
    for i in range(tokenizer.vocab_size):
        try:
            lengths.append(0 if i in special else len(encoding.decode_single_token_bytes(i)))
        except KeyError:  # an unused id between the ranks and the special tokens (cl100k_base has 16)
            lengths.append(0)
    return lengths


def _bpe_lengths(tokenizer: BPETokenizer) -> list[int]:
    """A byte-level BPE spells each byte as a printable stand-in character (GPT-2's alphabet): undo it."""
    from lightning_gpt.hf.tokenizer import bytes_to_unicode

    byte_of = {char: byte for byte, char in bytes_to_unicode().items()}
    added = tokenizer.tokenizer.get_added_tokens_decoder()  # id -> AddedToken (<|endoftext|>)
    lengths = [0] * tokenizer.vocab_size
    for token, i in tokenizer.tokenizer.get_vocab(with_added_tokens=True).items():
        if i in added:
            lengths[i] = 0 if added[i].special else len(token.encode("utf-8"))
        else:
            lengths[i] = sum(1 for char in token if char in byte_of)
            assert lengths[i] == len(token), f"token {i} ({token!r}) is not spelled in the byte-level alphabet"
    return lengths


def bits_per_byte(loss_sum_nats: float | torch.Tensor, num_bytes: int | torch.Tensor) -> float:
    """Summed next-token loss (nats) over the UTF-8 bytes of the scored targets, in bits per byte."""
    num_bytes = int(num_bytes)
    if num_bytes <= 0:
        raise ValueError(f"num_bytes must be positive to give bits per byte, got {num_bytes}")
    return float(loss_sum_nats) / (math.log(2) * num_bytes)


def token_losses_and_bytes(
    logits: torch.Tensor, targets: torch.Tensor, token_bytes: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each target's cross-entropy (nats, float32; 0 where ignored) and UTF-8 bytes (int64; 0 where ignored or
    special), flattened to (B*T,). One cross-entropy pass serves both the loss per token and bits per byte.

    logits (B, T, V), targets (B, T) with -1 where ignored (padding).
    """
    targets = targets.reshape(-1)  # (B*T,)
    losses = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), targets, ignore_index=-1, reduction="none")
    nbytes = torch.where(targets >= 0, token_bytes.to(targets.device)[targets.clamp(min=0)], 0)  # (B*T,)
    return losses, nbytes


def loss_and_bytes(
    logits: torch.Tensor, targets: torch.Tensor, token_bytes: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed cross-entropy (nats, float32) and summed UTF-8 bytes (int64) of the targets, for a validation step.

    logits (B, T, V), targets (B, T) with -1 where ignored (padding). Targets of 0 bytes (end-of-text) count in
    neither sum, as in nanochat. Both are sums, so processes all-reduce them and the ratio stays exact.
    """
    losses, nbytes = token_losses_and_bytes(logits, targets, token_bytes)
    return (losses * (nbytes > 0)).sum(), nbytes.sum()


@torch.no_grad()
def evaluate_bpb(model: LanguageModel, tokenizer: Tokenizer, text: str, batch_size: int = 8) -> dict[str, float]:
    """Bits per byte of a model on a text, scored as validation scores a split: disjoint windows of
    block_size targets, each token predicted once (the first from end-of-text where the tokenizer has one).

    Returns bpb, the mean loss per scored token (nats), and the token and byte counts.
    """
    from lightning_gpt.evaluation.multiple_choice import check_batch_size, check_encodable, evaluating

    check_batch_size(batch_size)
    check_encodable(tokenizer, [text])
    ids = ([tokenizer.eot_id] if tokenizer.eot_id is not None else []) + tokenizer.encode(text)
    if len(ids) < 2:
        raise UserError(f"the text {text[:40]!r} holds no token to predict; give a longer text")
    table = token_bytes(tokenizer)
    T = model.config.block_size
    n = math.ceil((len(ids) - 1) / T)
    tokens = torch.full((n * T + 1,), -1, dtype=torch.long)
    tokens[: len(ids)] = torch.tensor(ids)
    x = tokens[:-1].view(n, T).clamp(min=0)  # (n, T); padding reads token 0 and is never scored
    y = tokens[1:].view(n, T)  # (n, T); -1 past the end of the text
    device = next(model.parameters()).device
    loss_sum, byte_sum, token_sum = 0.0, 0, 0
    with evaluating(model):
        for start in range(0, n, batch_size):
            xb, yb = x[start : start + batch_size].to(device), y[start : start + batch_size].to(device)
            loss, nbytes = loss_and_bytes(model(xb)[0], yb, table)
            loss_sum += float(loss)
            byte_sum += int(nbytes)
            token_sum += int((table.to(device)[yb.clamp(min=0)] * (yb >= 0) > 0).sum())
    return {
        "bpb": bits_per_byte(loss_sum, byte_sum),
        "loss": loss_sum / token_sum,
        "tokens": token_sum,
        "bytes": byte_sum,
    }
