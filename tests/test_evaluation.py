"""lightning_gpt.evaluation: bits per byte for every tokenizer, multiple-choice scoring as the harness scores it,
and the lm-evaluation-harness adapter (the same numbers as the harness's own Hugging Face model)."""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch

from lightning_gpt.errors import UserError
from lightning_gpt.evaluation import (
    Question,
    bits_per_byte,
    evaluate_bpb,
    evaluate_multiple_choice,
    loglikelihoods,
    loss_and_bytes,
    multiple_choice_counts,
    token_bytes,
)
from lightning_gpt.evaluation.multiple_choice import encode_pair
from lightning_gpt.models import build
from lightning_gpt.tokenizers import build_tokenizer

from .support.config import TINY_SHAKESPEARE
from .support.eval_tasks import HELLASWAG_TASK, LAMBADA_TASK, hellaswag_rows, lambada_rows, questions, write_tasks
from .support.tiers import fast_first

# The harness is an optional dependency (pip install lm_eval); its HF model needs accelerate.
needs_harness = pytest.mark.skipif(importlib.util.find_spec("lm_eval") is None, reason="lm_eval is not installed")
needs_hflm = pytest.mark.skipif(
    importlib.util.find_spec("lm_eval") is None or importlib.util.find_spec("accelerate") is None,
    reason="lm_eval's HFLM needs lm_eval and accelerate",
)
MULTIBYTE = "Ω café 東京"
TINY = {"n_layer": 2, "n_embd": 32, "block_size": 32}
FAMILY_SHAPES = {"gpt2": {"n_head": 2}, "llama": {"n_head": 2, "multiple_of": 32}, "mamba": {"d_state": 4}}


def tiny_model(family: str, vocab_size: int, seed: int = 0, **shape) -> torch.nn.Module:
    torch.manual_seed(seed)
    config = {"family": family, "vocab_size": vocab_size, **TINY, **FAMILY_SHAPES[family], **shape}
    return build(config).eval()


@pytest.fixture(scope="module")
def shakespeare() -> str:
    return TINY_SHAKESPEARE.read_text()


@pytest.fixture(scope="module")
def tokenizers(shakespeare) -> dict:
    """The five tokenizers we ship, char and bpe fit on Tiny Shakespeare (plus the multi-byte text for char)."""
    return {
        "char": build_tokenizer("char", [shakespeare + MULTIBYTE]),
        "byte": build_tokenizer("byte"),
        "bpe": build_tokenizer({"name": "bpe", "vocab_size": 512}, [shakespeare, MULTIBYTE]),
        "gpt2": build_tokenizer("gpt2"),
        "cl100k_base": build_tokenizer("cl100k_base"),
    }


# --- bits per byte ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", fast_first(["char", "gpt2", "byte", "bpe", "cl100k_base"], keep=2))
def test_token_bytes_sum_to_the_texts_utf8_length(tokenizers, shakespeare, name):
    tokenizer = tokenizers[name]
    table = token_bytes(tokenizer)
    assert table.dtype == torch.int64 and table.shape == (tokenizer.vocab_size,)
    for text in (shakespeare, MULTIBYTE, f"{MULTIBYTE}\n{shakespeare[:500]}"):
        assert int(table[tokenizer.encode(text)].sum()) == len(text.encode("utf-8"))
    if tokenizer.eot_id is not None:
        assert table[tokenizer.eot_id] == 0  # end-of-text holds no text


def test_tiktoken_special_and_unused_ids_have_no_bytes(tokenizers):
    table, encoding = token_bytes(tokenizers["cl100k_base"]), tokenizers["cl100k_base"].encoding
    special = [encoding.encode_single_token(t) for t in encoding.special_tokens_set]
    assert len(special) == 5 and all(table[i] == 0 for i in special)
    assert table[100256] == 0  # an id no token holds
    assert int((table == 0).sum()) == 5 + 16


def test_a_byte_models_bpb_is_its_mean_loss_over_ln2(shakespeare):
    model = tiny_model("gpt2", 257)
    ids = torch.tensor(list(shakespeare[:2000].encode()))  # no end-of-text inside
    x, y = ids[: 60 * 32].view(60, 32), ids[1 : 60 * 32 + 1].view(60, 32)
    with torch.no_grad():
        logits, mean_loss = model(x, y)
    loss_sum, num_bytes = loss_and_bytes(logits, y, token_bytes(build_tokenizer("byte")))
    assert int(num_bytes) == y.numel()
    assert bits_per_byte(loss_sum, num_bytes) == pytest.approx(float(mean_loss) / math.log(2), rel=1e-5)


def test_loss_and_bytes_leave_out_padding_and_end_of_text():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 257)
    targets = torch.tensor([[65, 256, 66, -1], [-1, -1, 67, 68]])  # 256: end-of-text; -1: padding
    loss, nbytes = loss_and_bytes(logits, targets, token_bytes(build_tokenizer("byte")))
    kept = [(0, 0), (0, 2), (1, 2), (1, 3)]
    expected = sum(-torch.log_softmax(logits[b, t], -1)[targets[b, t]] for b, t in kept)
    assert int(nbytes) == 4 and float(loss) == pytest.approx(float(expected), rel=1e-6)


def uniform(model: torch.nn.Module) -> torch.nn.Module:
    """Every logit 0: the head's weights zeroed (GPT-2's head is its embedding, so that goes too)."""
    with torch.no_grad():
        model.lm_head.weight.zero_()
    return model


def test_a_uniform_models_bpb_is_log2_vocab_times_tokens_per_byte(tokenizers, shakespeare):
    text = shakespeare[:1500] + MULTIBYTE
    results = {}
    for name in ("byte", "gpt2"):
        tokenizer = tokenizers[name]
        result = evaluate_bpb(uniform(tiny_model("gpt2", tokenizer.vocab_size)), tokenizer, text, batch_size=4)
        tokens = len(tokenizer.encode(text))  # each predicted once, the first from end-of-text
        assert result["tokens"] == tokens and result["bytes"] == len(text.encode())
        assert result["loss"] == pytest.approx(math.log(tokenizer.vocab_size), rel=1e-5)
        assert result["bpb"] == pytest.approx(math.log2(tokenizer.vocab_size) * tokens / len(text.encode()), rel=1e-5)
        results[name] = result["bpb"]
    assert results["gpt2"] < results["byte"]  # 15.6 bits per ~4 bytes beats 8 bits per byte
    char = tokenizers["char"]  # no end-of-text: the first character is context, never predicted
    result = evaluate_bpb(uniform(tiny_model("gpt2", char.vocab_size)), char, text, batch_size=4)
    assert result["tokens"] == len(text) - 1 and result["bytes"] == len(text[1:].encode())
    assert result["bpb"] == pytest.approx(math.log2(char.vocab_size) * (len(text) - 1) / result["bytes"], rel=1e-5)


def test_bits_per_byte_refuses_no_bytes():
    with pytest.raises(ValueError, match="num_bytes"):
        bits_per_byte(1.0, 0)


# --- multiple choice -------------------------------------------------------------------------------------------


def harness_encodings(tokenizer):
    """The harness's own tokenization rules (TemplateLM.loglikelihood) over our tokenizer, returning the ids."""
    from lm_eval.api.model import TemplateLM

    class Encodings(TemplateLM):
        @property
        def eot_token_id(self):
            return tokenizer.eot_id

        def tok_encode(self, string, add_special_tokens=None, **kwargs):
            return tokenizer.encode(string)

        def _loglikelihood_tokens(self, requests, **kwargs):
            return [(ctx, cont) for _, ctx, cont in requests]

        def loglikelihood_rolling(self, requests, disable_tqdm=False):
            raise NotImplementedError

        def generate_until(self, requests, disable_tqdm=False):
            raise NotImplementedError

    return Encodings()


def instances(request_type: str, args: list[tuple]) -> list:
    from lm_eval.api.instance import Instance

    return [Instance(request_type=request_type, doc={}, arguments=a, idx=i) for i, a in enumerate(args)]


@needs_harness
@pytest.mark.parametrize("name", ["gpt2", "bpe", "byte"])
def test_text_becomes_ids_as_in_the_harness(tokenizers, name):
    pairs = [
        ("The quick brown", " fox"),
        ("Whitespace at the end moves  ", "to the choice"),
        ("ROMEO:\n", "But soft, what light"),
        ("", "An empty context stands on end-of-text"),
        ("Ω café", " 東京!"),
    ]
    harness = harness_encodings(tokenizers[name]).loglikelihood(instances("loglikelihood", pairs), disable_tqdm=True)
    assert [encode_pair(tokenizers[name], *pair) for pair in pairs] == harness


def manual_loglikelihood(model, ids: list[int], n_cont: int) -> float:
    """log P(last n_cont ids | the ones before), one sequence, one forward, no batching."""
    ids = ids[-(model.config.block_size + 1) :]
    with torch.no_grad():
        logprobs = torch.log_softmax(model(torch.tensor([ids[:-1]]))[0][0].double(), -1)  # (T, V)
    return sum(float(logprobs[t - 1, ids[t]]) for t in range(len(ids) - n_cont, len(ids)))


@pytest.mark.parametrize("family", ["gpt2", "llama", "mamba"])
def test_batched_scores_are_each_sequence_scored_alone(tokenizers, family):
    """Right padding, sorting and batching change nothing; a long context is cut on the left, not refused."""
    tokenizer = tokenizers["gpt2"]
    model = tiny_model(family, tokenizer.vocab_size)
    requests = [
        ("To be, or not to be,", " that is the question"),
        ("A", " horse! a horse! my kingdom for a horse!"),
        ("Now is the winter of our discontent " * 6, "made glorious summer"),  # > block_size: cut on the left
        ("", "Friends, Romans, countrymen"),
    ]
    one_by_one = loglikelihoods(model, tokenizer, requests, batch_size=1)
    batched = loglikelihoods(model, tokenizer, requests, batch_size=3)
    for (ll, greedy), (ll_batched, greedy_batched), request in zip(one_by_one, batched, requests):
        ctx, cont = encode_pair(tokenizer, *request)
        assert ll == pytest.approx(manual_loglikelihood(model, ctx + cont, len(cont)), abs=1e-4)
        assert ll_batched == pytest.approx(ll, abs=1e-4) and greedy_batched == greedy


def test_multiple_choice_on_two_processes_sums_to_one_process(tokenizers):
    tokenizer = tokenizers["char"]
    model = tiny_model("llama", tokenizer.vocab_size, block_size=96)  # a line is up to ~70 characters
    qs = questions(hellaswag_rows(9))
    whole = multiple_choice_counts(model, tokenizer, qs, batch_size=8)
    forwards = []
    hook = model.register_forward_hook(lambda *args: forwards.append(1))
    shards = []
    for rank in range(2):
        forwards.clear()
        shards.append(multiple_choice_counts(model, tokenizer, qs, 8, rank=rank, world_size=2))
        assert len(forwards) == 3  # 20 and 16 choices in batches of 8: the second process idles once, as FSDP needs
    hook.remove()
    assert shards[0][2] == 5 and shards[1][2] == 4
    assert torch.equal(shards[0] + shards[1], whole)
    result = evaluate_multiple_choice(model, tokenizer, qs, batch_size=8)
    assert result == {"acc": int(whole[0]) / 9, "acc_norm": int(whole[1]) / 9, "n": 9}


def test_acc_and_acc_norm_follow_the_harness_rules(tokenizers):
    """acc: the highest summed log-likelihood; acc_norm: the highest per character of the choice (no delimiter)."""
    tokenizer = tokenizers["byte"]
    model = tiny_model("gpt2", tokenizer.vocab_size, seed=3, block_size=96)
    qs = questions(hellaswag_rows(12, seed=5))
    lls = [ll for ll, _ in loglikelihoods(model, tokenizer, [(q.context, " " + c) for q in qs for c in q.choices])]
    acc = acc_norm = 0
    for n, q in enumerate(qs):
        scores = lls[4 * n : 4 * n + 4]
        acc += max(range(4), key=lambda i: scores[i]) == q.label
        acc_norm += max(range(4), key=lambda i: scores[i] / len(q.choices[i])) == q.label
    assert evaluate_multiple_choice(model, tokenizer, qs) == {"acc": acc / 12, "acc_norm": acc_norm / 12, "n": 12}


def test_the_models_mode_is_put_back(tokenizers):
    model = tiny_model("gpt2", 257).train()
    evaluate_multiple_choice(model, tokenizers["byte"], [Question("Hi", ["there", "you"], 0)])
    assert model.training


def test_a_char_model_names_the_characters_it_never_saw(shakespeare):
    tokenizer = build_tokenizer("char", [shakespeare])
    model = tiny_model("gpt2", tokenizer.vocab_size)
    qs = [Question("Ω is", ["東京", "café"], 0), Question("plain", ["text", "ok"], 1)]
    with pytest.raises(UserError, match="never saw") as error:
        evaluate_multiple_choice(model, tokenizer, qs)
    assert all(c in str(error.value) for c in "Ω東京é") and "\n" not in str(error.value)


def test_bad_questions_are_one_clear_error(tokenizers):
    tokenizer = tokenizers["byte"]
    model = tiny_model("gpt2", tokenizer.vocab_size)
    for qs, match in [
        ([], "no questions"),
        ([Question("ctx", ["a", "b"], 2)], "label 2 but 2 choices"),
        ([Question("ctx", [], 0)], "no choices"),
        ([Question("ctx", ["a", ""], 0)], "empty choices"),
    ]:
        with pytest.raises(UserError, match=match):
            evaluate_multiple_choice(model, tokenizer, qs)
    with pytest.raises(UserError, match="longer than the model's context"):
        loglikelihoods(model, tokenizer, [("ctx", " " + "x" * 40)])
    with pytest.raises(UserError, match="batch_size"):
        evaluate_multiple_choice(model, tokenizer, [Question("ctx", ["a"], 0)], batch_size=0)


# --- the harness adapter ---------------------------------------------------------------------------------------


@needs_harness
def test_rolling_loglikelihood_predicts_every_token_once(tokenizers, shakespeare):
    from lightning_gpt.evaluation.harness import LightningGPTLM

    tokenizer = tokenizers["gpt2"]
    model = uniform(tiny_model("gpt2", tokenizer.vocab_size))
    lm = LightningGPTLM(model, tokenizer, batch_size=4)
    texts = [shakespeare[:600], "Short."]  # ~150 tokens: 5 windows of 32; and one window
    totals = lm.loglikelihood_rolling(instances("loglikelihood_rolling", [(t,) for t in texts]))
    for text, total in zip(texts, totals):
        assert total == pytest.approx(-len(tokenizer.encode(text)) * math.log(tokenizer.vocab_size), rel=1e-5)
    model = tiny_model("gpt2", tokenizer.vocab_size)  # one window is loglikelihood from an empty context
    lm = LightningGPTLM(model, tokenizer)
    [rolling] = lm.loglikelihood_rolling(instances("loglikelihood_rolling", [("Short text.",)]))
    [(ll, _)] = lm.loglikelihood(instances("loglikelihood", [("", "Short text.")]))
    assert rolling == pytest.approx(ll, abs=1e-5)


@needs_harness
def test_generate_until_is_greedy_and_stops_at_the_stop_string(tokenizers):
    from lightning_gpt.evaluation.harness import LightningGPTLM
    from lightning_gpt.generation import generate

    tokenizer = tokenizers["byte"]
    model = tiny_model("llama", tokenizer.vocab_size, seed=1)
    lm = LightningGPTLM(model, tokenizer, batch_size=2)
    contexts = ["ROMEO:", "JULIET:", "Long"]
    greedy = []
    for context in contexts:
        tokens = generate(model, torch.tensor([tokenizer.encode(context)]), 8, temperature=0, stop_token=256)
        greedy.append(tokenizer.decode([int(t) for t in torch.cat(list(tokens), 1)[0] if t != 256]))
    outputs = lm.generate_until(instances("generate_until", [(c, {"until": [], "max_gen_toks": 8}) for c in contexts]))
    assert outputs == greedy
    stop = greedy[0][3:5]  # a string the greedy text holds: the output ends before it
    [cut] = lm.generate_until(instances("generate_until", [("ROMEO:", {"until": [stop], "max_gen_toks": 8})]))
    assert cut == greedy[0].split(stop)[0]


@needs_harness
def test_harness_input_errors_are_one_line(tmp_path, tokenizers):
    from lightning_gpt.evaluation.harness import run_tasks

    tokenizer = tokenizers["byte"]
    model = tiny_model("gpt2", tokenizer.vocab_size)
    folder = write_tasks(tmp_path / "tasks", hellaswag_rows(4), [{"text": "a b c"}])
    for kwargs, match in [
        ({"limit": 0}, "limit must be a positive"),
        ({"limit": -3}, "limit must be a positive"),
        ({"num_fewshot": -1}, "num_fewshot"),
        ({"tasks_path": tmp_path / "nowhere"}, "not a folder"),
        ({"batch_size": 0}, "batch_size"),
    ]:
        with pytest.raises(UserError, match=match) as error:
            run_tasks(model, tokenizer, [HELLASWAG_TASK], **{"tasks_path": folder, **kwargs})
        assert "\n" not in str(error.value)
    (tmp_path / "tasks" / f"{HELLASWAG_TASK}.jsonl").unlink()  # a task YAML whose data file is gone
    with pytest.raises(UserError, match=f"task '{HELLASWAG_TASK}' reads data that could not be read"):
        run_tasks(model, tokenizer, [HELLASWAG_TASK], tasks_path=folder)


@needs_harness
def test_local_tasks_run_through_the_harness(tmp_path, tokenizers):
    from lightning_gpt.evaluation.harness import format_results, run_tasks

    tokenizer = tokenizers["byte"]
    model = tiny_model("gpt2", tokenizer.vocab_size, block_size=96)
    folder = write_tasks(tmp_path / "tasks", hellaswag_rows(8), [{"text": "To be or not to be"}] * 3)
    results = run_tasks(model, tokenizer, [HELLASWAG_TASK, LAMBADA_TASK], tasks_path=folder, bootstrap_iters=0)
    hellaswag, lambada = results["results"][HELLASWAG_TASK], results["results"][LAMBADA_TASK]
    ours = evaluate_multiple_choice(model, tokenizer, questions(hellaswag_rows(8)))
    assert hellaswag["acc,none"] == ours["acc"] and hellaswag["acc_norm,none"] == ours["acc_norm"]
    [(ll, _)] = loglikelihoods(model, tokenizer, [("To be or not to", " be")])
    assert lambada["perplexity,none"] == pytest.approx(math.exp(-ll), rel=1e-5)
    assert results["config"]["model_family"] == "gpt2"
    table = format_results(results)
    assert HELLASWAG_TASK in table and "acc_norm" in table and "perplexity" in table
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [f"{HELLASWAG_TASK}.jsonl", f"{LAMBADA_TASK}.jsonl", f"{HELLASWAG_TASK}.yaml", f"{LAMBADA_TASK}.yaml"]
    )  # nothing written beside the tasks


# --- slow: the harness's own model, other families and tokenizers, hub tasks ---------------------------------------


def trained(family: str, tokenizer, text: str, steps: int = 20, **shape) -> torch.nn.Module:
    """A tiny model after a few AdamW steps on the text, so its predictions are not uniform."""
    model = tiny_model(family, tokenizer.vocab_size, **shape).train()
    ids = torch.tensor(tokenizer.encode(text[:20000]))
    T = model.config.block_size
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        starts = torch.randint(0, len(ids) - T - 1, (8,), generator=generator)
        x = torch.stack([ids[i : i + T] for i in starts])  # (8, T)
        y = torch.stack([ids[i + 1 : i + T + 1] for i in starts])  # (8, T)
        _, loss = model(x, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def long_context_rows(text: str, n: int = 4) -> list[dict]:
    """HellaSwag-style rows whose contexts (ten lines) are longer than a 64-token window: cut on the left."""
    lines = [line for line in text.splitlines()[:1000] if line.strip() and not line.endswith(":")]
    return [
        {
            "ctx": " ".join(lines[10 * i : 10 * i + 10]),
            "endings": [lines[10 * i + 10], lines[150 + i], lines[250 + i]],
            "label": 0,
        }
        for i in range(n)
    ]


def responses(results: dict, task: str) -> list[tuple[float, bool]]:
    """Each request's (log-likelihood, is_greedy) in document order, from simple_evaluate's logged samples."""
    samples = sorted(results["samples"][task], key=lambda sample: sample["doc_id"])
    return [tuple(response[0]) for sample in samples for response in sample["resps"]]


@pytest.mark.slow
@needs_hflm
@pytest.mark.parametrize("family", ["gpt2", "llama", "mamba"])
def test_the_harness_scores_our_model_as_it_scores_the_exported_transformers_model(tmp_path, shakespeare, family):
    """The headline check: our adapter and lm_eval's HFLM on the exported folder give the same per-request
    log-likelihoods (within 1e-4), the same acc / acc_norm, perplexity and rolling log-likelihoods."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    from lightning_gpt.evaluation.harness import LightningGPTLM, run_tasks, task_manager
    from lightning_gpt.hf import export

    tokenizer = build_tokenizer("gpt2")
    model = trained(family, tokenizer, shakespeare, block_size=64)
    export(model, tokenizer, tmp_path / "hf")
    rows = hellaswag_rows(24) + long_context_rows(shakespeare)
    assert all(len(tokenizer.encode(row["ctx"])) > 64 for row in rows[24:])  # these windows are cut on the left
    folder = write_tasks(tmp_path / "tasks", rows, lambada_rows(12))
    tasks = [HELLASWAG_TASK, LAMBADA_TASK]
    ours = run_tasks(model, tokenizer, tasks, tasks_path=folder, batch_size=8, log_samples=True, bootstrap_iters=0)
    hflm = HFLM(pretrained=str(tmp_path / "hf"), batch_size=8, device="cpu")
    theirs = lm_eval.simple_evaluate(
        model=hflm, tasks=tasks, task_manager=task_manager(tasks, folder), log_samples=True, bootstrap_iters=0
    )
    for task in tasks:
        a, b = responses(ours, task), responses(theirs, task)
        assert len(a) == len(b) > 0
        assert max(abs(x[0] - y[0]) for x, y in zip(a, b)) < 1e-4
        assert [x[1] for x in a] == [y[1] for y in b]
    for metric in ("acc,none", "acc_norm,none"):
        assert ours["results"][HELLASWAG_TASK][metric] == theirs["results"][HELLASWAG_TASK][metric]
    assert ours["results"][LAMBADA_TASK]["acc,none"] == theirs["results"][LAMBADA_TASK]["acc,none"]
    ppl = ours["results"][LAMBADA_TASK]["perplexity,none"]
    assert ppl == pytest.approx(theirs["results"][LAMBADA_TASK]["perplexity,none"], rel=1e-4)
    ours_mc = evaluate_multiple_choice(model, tokenizer, questions(rows), batch_size=8)
    assert ours_mc["acc"] == ours["results"][HELLASWAG_TASK]["acc,none"]
    assert ours_mc["acc_norm"] == ours["results"][HELLASWAG_TASK]["acc_norm,none"]
    texts = instances("loglikelihood_rolling", [(shakespeare[:1500],), ("Short.",)])  # ~400 tokens: 7 windows
    rolling_ours = LightningGPTLM(model, tokenizer, batch_size=4).loglikelihood_rolling(texts)
    rolling_theirs = hflm.loglikelihood_rolling(texts, disable_tqdm=True)
    assert rolling_ours == pytest.approx(rolling_theirs, abs=1e-3)


@pytest.mark.slow
@needs_harness
@pytest.mark.parametrize(("family", "tokenizer_name"), [("mamba", "char"), ("llama", "bpe")])
def test_local_tasks_on_other_families_and_tokenizers(tmp_path, tokenizers, shakespeare, family, tokenizer_name):
    from lightning_gpt.evaluation.harness import run_tasks

    tokenizer = tokenizers[tokenizer_name]
    model = trained(family, tokenizer, shakespeare, block_size=96)
    folder = write_tasks(tmp_path / "tasks", hellaswag_rows(20))
    results = run_tasks(model, tokenizer, [HELLASWAG_TASK, LAMBADA_TASK], tasks_path=folder, limit=20, batch_size=8)
    hellaswag, lambada = results["results"][HELLASWAG_TASK], results["results"][LAMBADA_TASK]
    assert 0 <= hellaswag["acc,none"] <= 1 and 0 <= hellaswag["acc_norm,none"] <= 1
    assert 0 <= lambada["acc,none"] <= 1 and 1 < lambada["perplexity,none"] < math.inf
    assert results["config"]["model_family"] == family and results["config"]["tokenizer"] == tokenizer_name


@pytest.mark.slow
@needs_harness
def test_unknown_tasks_and_unreachable_datasets_are_one_line(tmp_path, tokenizers):
    from lightning_gpt.evaluation.harness import run_tasks

    tokenizer = tokenizers["byte"]
    model = tiny_model("gpt2", tokenizer.vocab_size)
    with pytest.raises(UserError, match="unknown task 'hellaswg' .did you mean hellaswag") as error:
        run_tasks(model, tokenizer, ["hellaswg"], limit=2)
    assert "\n" not in str(error.value)
    with pytest.raises(UserError, match="task 'hellaswag' needs the dataset 'Rowan/hellaswag'") as error:
        run_tasks(model, tokenizer, ["hellaswag"], limit=2)  # offline here
    assert "\n" not in str(error.value) and "dataset_path: json" in str(error.value)
