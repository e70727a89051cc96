"""tokenizer=bpe: a byte-level BPE trained on the corpus, saved with the data and in checkpoints, sampled with,
and exported so that transformers' AutoTokenizer gives our ids."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lightning_gpt import read_checkpoint
from lightning_gpt.apps.sample import write_samples
from lightning_gpt.data.cache import TokenCache, fingerprint
from lightning_gpt.data.sources import Source
from lightning_gpt.errors import UserError
from lightning_gpt.tokenizers import BPETokenizer, build_tokenizer, fits_on_corpus, tokenizer_from_dict, tokenizer_spec

from .support.config import SHARED, TINY, TINY_SHAKESPEARE, compose
from .test_readme import readme_commands, train_overrides

TEXTS = ["hello world", "  two spaces, a tab\tand\nnew lines\n\n", "naïve café 日本語 🙂 Ω", "a<|endoftext|>b", ""]


@pytest.fixture(scope="module")
def shakespeare() -> str:
    return TINY_SHAKESPEARE.read_text()[:200_000]


def test_the_same_corpus_trains_the_same_vocabulary_which_saves_and_round_trips(shakespeare):
    tok = build_tokenizer({"name": "bpe", "vocab_size": 1000}, iter([shakespeare]))
    again = build_tokenizer({"name": "bpe", "vocab_size": 1000}, [shakespeare[:100_000], shakespeare[100_000:]])
    assert (tok.vocab_size, tok.eot_id) == (1000, 0)
    assert tok.to_dict() == again.to_dict()
    saved = tokenizer_from_dict(json.loads(json.dumps(tok.to_dict())))  # as meta.json and checkpoints hold it
    assert not fits_on_corpus(tok.to_dict()) and fits_on_corpus("bpe") and fits_on_corpus("char")
    for text in TEXTS:
        assert saved.encode(text) == tok.encode(text)
        assert tok.decode(tok.encode(text)) == text  # byte-level: any text, no unknown tokens
    assert saved.encode_batch(TEXTS) == [tok.encode(t) for t in TEXTS]
    assert tok.encode("a<|endoftext|>b")[1] == tok.eot_id  # as transformers reads it
    assert tok.encode_documents(["ROMEO:", "JULIET:"]) == [tok.encode("ROMEO:") + [0], tok.encode("JULIET:") + [0]]
    assert len(tok.encode(shakespeare)) < len(shakespeare) / 2.5  # it learned Shakespeare's words


def test_bad_bpe_settings_are_one_line_errors():
    with pytest.raises(UserError, match=r"tokenizer.vocab_size=100 cannot hold a byte-level BPE.*257"):
        build_tokenizer({"name": "bpe", "vocab_size": 100}, ["abc"])
    with pytest.raises(UserError, match=r"tokenizer=bpe learns tokenizer.vocab_size tokens: set it"):
        build_tokenizer("bpe", ["abc"])
    with pytest.raises(UserError, match=r"tokenizer.vocab_size is not a setting of the gpt2 tokenizer"):
        build_tokenizer({"name": "gpt2", "vocab_size": 4096})


def test_the_vocabulary_size_is_part_of_the_cache_fingerprint():
    source = Source("embedded")
    assert tokenizer_spec({"name": "gpt2", "vocab_size": None}) == "gpt2"  # existing caches keep their fingerprint
    configs = [compose("train", "tokenizer=bpe", f"tokenizer.vocab_size={n}").tokenizer for n in (4096, 32000)]
    specs = [tokenizer_spec(c) for c in configs]
    assert specs == [{"name": "bpe", "vocab_size": 4096}, {"name": "bpe", "vocab_size": 32000}]
    assert len({fingerprint(source, spec, 0.1) for spec in [*specs, "bpe", "gpt2"]}) == 4


@pytest.mark.slow
def test_a_rebuilt_cache_and_worker_processes_give_the_same_vocabulary_and_tokens(tmp_path, shakespeare):
    """A deleted cache is rebuilt with the ids a checkpoint was trained on; the trained tokenizer travels to
    datasets' worker processes."""
    import numpy as np

    from lightning_gpt.data.cache import prepare_tokens

    for i in range(4):
        (tmp_path / f"part{i}.txt").write_text("\n\n".join(shakespeare.split("\n\n")[i::4]))
    source, spec = Source("local", path=str(tmp_path / "*.txt")), {"name": "bpe", "vocab_size": 2000}
    caches = [TokenCache(prepare_tokens(source, spec, 0.1, str(tmp_path / f"cache{n}"), n)) for n in (1, 2)]
    assert caches[0].meta["tokenizer"] == caches[1].meta["tokenizer"]
    assert np.array_equal(caches[0].tokens(), caches[1].tokens())
    assert int((np.asarray(caches[0].tokens()) == caches[0].tokenizer.eot_id).sum()) == 4  # a file is a document


def readme_bpe_overrides() -> list[str]:
    """The README's bpe training command, its data path as seen from a checkout beside ../shared."""
    [command] = [c for c in readme_commands() if "tokenizer=bpe" in c and train_overrides(c) is not None]
    return [w.replace("../shared", str(SHARED)) for w in train_overrides(command)]


@pytest.fixture(scope="module")
def bpe_run(tmp_path_factory, cache_dir) -> Path:
    """The README's command with TINY's model, for 10 steps."""
    from lightning_gpt.apps.train import main

    root = tmp_path_factory.mktemp("bpe")
    overrides = readme_bpe_overrides()
    assert "tokenizer.vocab_size=4096" in overrides and f"data.path={TINY_SHAKESPEARE}" in overrides
    paths = [f"paths.root_dir={root}", f"hydra.run.dir={root / 'run'}", f"paths.cache_dir={cache_dir}"]
    assert main([*paths, *TINY, *overrides, "trainer.max_steps=10", "trainer.val_check_interval=10"]) == 0
    return root / "run"


@pytest.mark.slow
def test_the_checkpoint_holds_the_trained_tokenizer_and_sampling_decodes_with_it(bpe_run, cache_dir):
    model_config, saved, _ = read_checkpoint(bpe_run / "checkpoints" / "last.ckpt")
    [meta] = [TokenCache(p.parent) for p in cache_dir.glob("*/manifest.json") if '"name": "bpe"' in p.read_text()]
    assert saved == meta.meta["tokenizer"] and saved["name"] == "bpe"
    tokenizer = tokenizer_from_dict(saved)
    assert isinstance(tokenizer, BPETokenizer) and tokenizer.vocab_size == model_config["vocab_size"] == 4096
    assert meta.meta["dtype"] == "uint16"
    logged = (bpe_run / "csv" / "hparams.yaml").read_text()  # the loggers get its name and size, not its merges
    assert "name: bpe" in logged and "vocab_size: 4096" in logged and "tokenizer_json" not in logged

    class Out:
        text = ""

        def write(self, text: str) -> None:
            self.text += text

        def flush(self) -> None:
            pass

    prompt = "ROMEO: naïve 🙂"
    cfg = compose("sample", f"ckpt_path={bpe_run}", "device=cpu", f"prompt='{prompt}'", "seed=1")
    [text] = write_samples(cfg, Out())
    assert text.startswith(prompt) and len(text) > len(prompt)
    assert tokenizer.decode(tokenizer.encode(text)) == text


@pytest.mark.slow
def test_the_exported_tokenizer_loads_in_transformers_with_our_ids(bpe_run, tmp_path, capsys):
    from transformers import AutoTokenizer

    from lightning_gpt.apps.export import main

    tmp_path = tmp_path / "hf"
    assert main([f"ckpt_path={bpe_run}", f"out_dir={tmp_path}"]) == 0
    out = capsys.readouterr().out
    assert "tokenizer.json" in out and "no tokenizer files" not in out
    ours = tokenizer_from_dict(read_checkpoint(bpe_run)[1])
    theirs = AutoTokenizer.from_pretrained(str(tmp_path))
    for text in [*TEXTS, TINY_SHAKESPEARE.read_text()[-3000:]]:
        ids = theirs(text)["input_ids"]
        assert ids == ours.encode(text)
        assert theirs.decode(ids) == ours.decode(ids)
    assert theirs.eos_token_id == theirs.bos_token_id == ours.eot_id == 0
    config = json.loads((tmp_path / "config.json").read_text())
    assert (config["vocab_size"], config["eos_token_id"], config["bos_token_id"]) == (4096, 0, 0)


@pytest.mark.slow
def test_resuming_with_another_vocabulary_size_is_refused(bpe_run, tmp_path, cache_dir, capsys):
    from lightning_gpt.apps.train import main

    overrides = [o for o in readme_bpe_overrides() if not o.startswith("tokenizer.vocab_size")]
    paths = [f"paths.root_dir={tmp_path}", f"paths.cache_dir={cache_dir}"]
    ckpt = f"ckpt_path={bpe_run / 'checkpoints' / 'last.ckpt'}"
    assert main([*paths, *TINY, *overrides, "tokenizer.vocab_size=2000", ckpt]) == 2
    assert "its bpe vocabulary, learned from its training data, differs" in capsys.readouterr().err


@pytest.mark.slow
def test_lgpt_info_sizes_the_model_for_the_vocabulary_bpe_learns():
    from .test_info import info

    assert info("tokenizer=bpe")["vocab_size"] == 32000
    assert info("tokenizer=bpe", "tokenizer.vocab_size=4096")["vocab_size"] == 4096


@pytest.mark.slow
def test_eval_reads_the_corpus_with_the_saved_tokenizer_and_reproduces_the_validation_loss(
    bpe_run, tmp_path, cache_dir
):
    from lightning_gpt.apps.evaluate import evaluate

    from .test_eval import eval_args

    data = [o for o in readme_bpe_overrides() if o.startswith("data")]
    result = evaluate(
        compose("eval", *eval_args(bpe_run, tmp_path, cache_dir), *data, "windows=16", "data.batch_size=8")
    )
    [best] = (bpe_run / "checkpoints").glob("best-*.ckpt")
    assert result["loss"] == pytest.approx(float(best.stem.split("-val")[1]), abs=1e-4)
