"""Built models in the tools users take them into: transformers' ``pipeline`` and ``Trainer``, and TRL.

Each family is built with ``scaffold new`` / ``scaffold build`` at tiny size, given weights (a seeded
init, spread so that greedy decoding does not repeat one token) with ``save_pretrained``, and then used
only through the tools' own entry points with ``trust_remote_code=True``, as README's "Using the model
with..." section shows. lm-eval's ``HFLM`` (in the dev extra) is checked by ``bench/ecosystem.py``'s
``check``, which the last test runs.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.test_families import built_dir

ROOT = Path(__file__).resolve().parent.parent
FAMILIES = ["llama", "causal_lm", "deepone", "single_head", "qwen3", "gpt_neox"]
PROMPTS = ["The quick brown fox", "Hi"]  # different lengths: the batch pads the second on the left
CODE_FILES = ("modeling_{}.py", "configuration_{}.py")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("ecosystem")


_WEIGHTED: dict[str, Path] = {}


def weighted_dir(workdir: Path, family: str) -> Path:
    """The family's tiny model directory with weights, saved by ``save_pretrained`` as a user's
    trained model would be (cached per module)."""
    if family not in _WEIGHTED:
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        from scaffold.spec.blueprints import load as load_blueprint

        built = built_dir(workdir, family, load_blueprint(family).default_preset)
        config = AutoConfig.from_pretrained(built, trust_remote_code=True)
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=True)
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for p in model.parameters():  # spread the init: greedy decoding of an untrained model repeats
                p.add_(0.3 * torch.randn(p.shape, generator=g))
        out = workdir / f"{family}-weighted"
        model.save_pretrained(out)
        AutoTokenizer.from_pretrained(built, trust_remote_code=True).save_pretrained(out)
        _WEIGHTED[family] = out
    return _WEIGHTED[family]


def _readme_block(marker: str) -> str:
    """The README's python block holding ``marker``: the tests run README's snippets as written."""
    import re

    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(encoding="utf-8"), flags=re.S)
    (block,) = [b for b in blocks if marker in b]
    return block


def _load(path: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=True)
    return tokenizer, AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True).eval()


def _is_ours(model) -> bool:
    """The generated code loaded from the model directory, not a transformers class of the same name."""
    return type(model).__module__.startswith("transformers_modules")


# ------------------------------------------------------------------------------------------ pipeline


@pytest.mark.parametrize("family", FAMILIES)
def test_pipeline_generates_what_generate_does(workdir, family):
    path = weighted_dir(workdir, family)
    tokenizer, model = _load(path)
    expected = []
    for prompt in PROMPTS:
        ids = tokenizer(prompt, return_tensors="pt").input_ids
        out = model.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        expected.append(out[0].tolist())
    assert len({*expected[0][-6:], *expected[1][-6:]}) > 3  # not one token repeated: a broken cache shows

    scope = {"path": str(path)}
    exec(_readme_block('pipeline("text-generation"'), scope)
    generator, batch = scope["generator"], scope["outputs"]
    one = [generator(p, max_new_tokens=6, do_sample=False, return_tensors=True) for p in PROMPTS]

    assert _is_ours(generator.model)
    assert [r[0]["generated_token_ids"] for r in one] == expected
    assert generator.tokenizer.padding_side == "left"
    for result, want in zip(batch, expected, strict=True):
        got = result[0]["generated_token_ids"]
        pads = len(got) - len(want)
        assert got[pads:] == want and got[:pads] == [tokenizer.pad_token_id] * pads
    assert len(batch[1][0]["generated_token_ids"]) > len(expected[1])  # the short prompt was padded


# ------------------------------------------------------------------------------------------- Trainer


def _trainer(path: Path, output_dir: Path, options: str = ""):
    """README's Trainer snippet up to ``trainer.train()``, with ``options`` added to its TrainingArguments."""
    block = _readme_block("TrainingArguments(")
    assert block.rstrip().endswith("trainer.train()")
    block = block.rstrip().removesuffix("trainer.train()")
    if options:
        assert "use_cpu=True)" in block
        block = block.replace("use_cpu=True)", f"use_cpu=True, {options})")
    token_ids = torch.randint(6, 262, (8, 16), generator=torch.Generator().manual_seed(0)).tolist()
    scope = {"path": str(path), "output_dir": str(output_dir), "token_ids": token_ids}
    exec(block, scope)
    return scope["trainer"]


def _losses(trainer) -> list[float]:
    return [h["loss"] for h in trainer.state.log_history if "loss" in h]


_TRAINED: dict[str, tuple] = {}


def trained(workdir: Path, family: str):
    """One Trainer run of 4 steps per family, checkpoints every 2 (cached per module)."""
    if family not in _TRAINED:
        trainer = _trainer(weighted_dir(workdir, family), workdir / f"{family}-trainer")
        trainer.train()
        _TRAINED[family] = (trainer, _losses(trainer))
    return _TRAINED[family]


def _probe(vocab: int) -> torch.Tensor:
    return torch.randint(6, vocab, (2, 9), generator=torch.Generator().manual_seed(5))


@pytest.mark.parametrize("family", FAMILIES)
def test_trainer_trains_and_its_checkpoint_holds_the_code(workdir, family):
    from transformers import AutoModelForCausalLM

    trainer, losses = trained(workdir, family)
    assert len(losses) == 4 and losses[-1] < losses[0]
    checkpoint = Path(trainer.args.output_dir) / "checkpoint-4"
    files = {p.name for p in checkpoint.iterdir()}
    assert {f.format(family) for f in CODE_FILES} <= files
    auto_map = json.loads((checkpoint / "config.json").read_text())["auto_map"]
    assert auto_map["AutoModelForCausalLM"].startswith(f"modeling_{family}.")
    loaded = AutoModelForCausalLM.from_pretrained(checkpoint, trust_remote_code=True).eval()
    assert _is_ours(loaded)
    ids = _probe(loaded.config.vocab_size)
    trainer.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, trainer.model(ids).logits, atol=0, rtol=0)


def test_trainer_checkpoints_load_without_scaffold(workdir, tmp_path):
    """A fresh process that cannot import scaffold loads every family's checkpoint: same logits."""
    expected, paths = {}, {}
    for family in FAMILIES:
        trainer, _ = trained(workdir, family)
        paths[family] = str(Path(trainer.args.output_dir) / "checkpoint-4")
        trainer.model.eval()
        with torch.no_grad():
            expected[family] = trainer.model(_probe(trainer.model.config.vocab_size)).logits
    script = (
        "import sys, json, torch\n"
        "sys.modules['scaffold'] = None\n"
        "from transformers import AutoModelForCausalLM\n"
        "paths, out = json.loads(sys.argv[1]), {}\n"
        "for family, path in paths.items():\n"
        "    model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True).eval()\n"
        "    ids = torch.randint(6, model.config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(5))\n"
        "    with torch.no_grad():\n"
        "        out[family] = model(ids).logits\n"
        "torch.save(out, sys.argv[2])\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, json.dumps(paths), str(tmp_path / "logits.pt")],
        capture_output=True,
        text=True,
        cwd=tmp_path,  # not the repository: scaffold must not be importable from the working folder
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    got = torch.load(tmp_path / "logits.pt")
    for family in FAMILIES:
        torch.testing.assert_close(got[family], expected[family], atol=0, rtol=0, msg=family)


@pytest.mark.parametrize("family", FAMILIES)
def test_trainer_resumes_from_checkpoint(workdir, family, tmp_path):
    first, losses = trained(workdir, family)
    trainer = _trainer(weighted_dir(workdir, family), tmp_path)
    trainer.train(resume_from_checkpoint=str(Path(first.args.output_dir) / "checkpoint-2"))
    assert trainer.state.global_step == 4
    assert _losses(trainer)[2:] == losses[2:]  # steps 3 and 4 again, as the uninterrupted run took them
    for (name, a), (_, b) in zip(trainer.model.named_parameters(), first.model.named_parameters()):
        torch.testing.assert_close(a, b, atol=0, rtol=0, msg=name)


def _saved_for_backward(model, ids: torch.Tensor) -> int:
    """How many tensor elements one training step keeps for backward."""
    count = []

    def pack(t):
        count.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(ids, labels=ids).loss.backward()
    return sum(count)


@pytest.mark.parametrize("family", FAMILIES)
def test_trainer_gradient_checkpointing(workdir, family, tmp_path):
    trainer = _trainer(weighted_dir(workdir, family), tmp_path, "gradient_checkpointing=True")
    trainer.train()
    torch.testing.assert_close(_losses(trainer), trained(workdir, family)[1], atol=1e-5, rtol=1e-5)
    model, ids = trainer.model.train(), _probe(trainer.model.config.vocab_size)
    checkpointed = _saved_for_backward(model, ids)  # as the Trainer left it: the layers recompute
    model.gradient_checkpointing_disable()
    assert checkpointed < _saved_for_backward(model, ids) / 2


# ----------------------------------------------------------------------------------------------- TRL


@pytest.mark.parametrize("family", FAMILIES)
def test_trl_sft_trainer_trains(workdir, family, tmp_path):
    pytest.importorskip("trl")
    path = weighted_dir(workdir, family)
    scope = {"path": str(path), "output_dir": str(tmp_path)}
    exec(_readme_block("SFTTrainer("), scope)
    trainer = scope["trainer"]
    _, before = _load(path)
    before = dict(before.named_parameters())
    assert trainer.state.global_step == 2 and _is_ours(trainer.model)
    losses = _losses(trainer)
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
    assert all(not torch.equal(p.detach(), before[n]) for n, p in trainer.model.named_parameters())


@pytest.mark.parametrize("family", FAMILIES)
def test_trl_packing_keeps_documents_apart(workdir, family, tmp_path):
    """SFTConfig(packing=True) concatenates documents into one row with restarting position_ids and
    no attention mask: each document's logits in the packed row equal those of the document alone."""
    pytest.importorskip("trl")
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    tokenizer, model = _load(weighted_dir(workdir, family))
    dataset = Dataset.from_dict({"text": ["the cat sat on the mat", "a dog ran", "hello world", "tiny"]})
    config = SFTConfig(
        output_dir=str(tmp_path),
        packing=True,
        max_steps=1,
        per_device_train_batch_size=4,
        max_length=64,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        disable_tqdm=True,
    )
    trainer = SFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer)
    batch = next(iter(trainer.get_train_dataloader()))
    ids, positions = batch["input_ids"], batch["position_ids"]
    assert ids.shape[0] == 1 and "attention_mask" not in batch
    starts = (positions[0] == 0).nonzero().flatten().tolist()
    assert len(starts) == 4  # four documents in one row
    model.eval()
    with torch.no_grad():
        packed = model(input_ids=ids, position_ids=positions).logits[0]
        for start, end in zip(starts, [*starts[1:], ids.shape[1]]):
            alone = model(ids[:, start:end]).logits[0]
            torch.testing.assert_close(packed[start:end], alone, atol=1e-4, rtol=1e-4)
    trainer.train()
    assert trainer.state.global_step == 1


# -------------------------------------------------------------------------------------------- lm-eval


@pytest.mark.parametrize("family", FAMILIES)
def test_lm_eval_loglikelihood_equals_the_logits(workdir, family):
    """bench/ecosystem.py's check: HFLM's log-likelihoods are the sums of our logits' log-softmax."""
    pytest.importorskip("lm_eval", reason="lm-eval is not installed (pip install lm-eval)")
    sys.path.insert(0, str(ROOT / "bench"))
    from ecosystem import check

    module, theirs, ours = check(weighted_dir(workdir, family))
    assert module.startswith("transformers_modules")  # HFLM loaded the generated code
    assert len(set(theirs)) == len(theirs)  # four different requests, four different scores
    torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=1e-5)
