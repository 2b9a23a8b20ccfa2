"""The built models where users take them: devices and backends the commands accept or refuse."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

from scaffold.cli import cli
from scaffold.devices import resolve_device
from scaffold.errors import EXIT_USAGE
from tests.conftest import make_project


def _flex_trains_on_cpu() -> bool:
    try:
        from torch.nn.attention.flex_attention import flex_attention
    except ImportError:
        return False
    q = torch.zeros(1, 1, 2, 8, requires_grad=True)
    try:
        flex_attention(q, q, q).sum().backward()
    except NotImplementedError:
        return False
    return True


def test_show_accepts_meta_device(tmp_path):
    project = make_project(tmp_path)
    result = CliRunner().invoke(cli, ["show", str(project), "--device", "meta"])
    assert result.exit_code == 0, result.output
    assert "lm_head" in result.output
    assert "meta" in result.output


@pytest.mark.parametrize("spelling", ["cpu", "cpu:0", "auto"])
def test_device_spellings_torch_accepts(spelling):
    assert resolve_device(spelling).type in ("cpu", "cuda")


def test_test_refuses_meta_device_with_reason(tmp_path):
    project = make_project(tmp_path)
    result = CliRunner().invoke(cli, ["test", str(project), "--device", "meta", "--steps", "1"])
    assert result.exit_code == EXIT_USAGE
    assert "test.device" in result.output and "show --device meta" in result.output


@pytest.mark.skipif(_flex_trains_on_cpu(), reason="this torch trains flex_attention on CPU")
def test_flex_on_cpu_is_refused_up_front(tmp_path):
    project = make_project(tmp_path)
    result = CliRunner().invoke(
        cli,
        ["test", str(project), "--device", "cpu", "--attn-implementation", "flex_attention", "--steps", "1"],
    )
    assert result.exit_code == EXIT_USAGE, result.output
    line = result.output.strip().splitlines()[-1]
    assert "flex_attention" in line and "cannot train on cpu" in line and "sdpa" in line
    assert "Traceback" not in result.output


# ------------------------------------------------------------------------------------ every family

from pathlib import Path  # noqa: E402

from scaffold.spec.blueprints import load as load_blueprint  # noqa: E402
from tests._families import ALL  # noqa: E402
from tests.test_families import built_dir  # noqa: E402

FAMILIES = list(ALL)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("hf_compat")


def family_dir(workdir: Path, family: str) -> Path:
    return built_dir(workdir, family, load_blueprint(family).default_preset)


def _auto(cls_name: str, model_dir: Path, backend: str = "eager", seed: int = 0, **config_kwargs):
    import transformers

    config = transformers.AutoConfig.from_pretrained(model_dir, trust_remote_code=True, **config_kwargs)
    torch.manual_seed(seed)
    auto = getattr(transformers, cls_name)
    return auto.from_config(config, trust_remote_code=True, attn_implementation=backend).eval()


def _padded_batch(vocab: int, pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two rows of 7 tokens, the second left-padded by 3."""
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(6, vocab, (2, 7), generator=g)
    mask = torch.ones_like(ids)
    ids[1, :3], mask[1, :3] = pad, 0
    return ids, mask


def _heads(config) -> int:
    return (
        getattr(config, "num_attention_heads", 1) if getattr(config, "attention", "") != "single_head" else 1
    )


@pytest.mark.parametrize("family", FAMILIES)
def test_output_attentions_eager(workdir, family):
    model = _auto("AutoModelForCausalLM", family_dir(workdir, family))
    ids, mask = _padded_batch(model.config.vocab_size, model.config.pad_token_id)
    out = model(ids, attention_mask=mask, output_attentions=True)
    assert out.attentions is not None and len(out.attentions) == model.config.num_hidden_layers
    for weights in out.attentions:
        assert weights.shape == (2, _heads(model.config), 7, 7)
        torch.testing.assert_close(weights[0].sum(-1), torch.ones(_heads(model.config), 7))
        torch.testing.assert_close(weights[1, :, 3:].sum(-1), torch.ones(_heads(model.config), 4))
        # causal: nothing from the future (the padded row's padding queries attend by convention only)
        assert torch.triu(weights[0], diagonal=1).abs().max() == 0
        assert torch.triu(weights[1, :, 3:, 3:], diagonal=1).abs().max() == 0
        assert weights[1, :, 3:, :3].abs().max() == 0  # nothing from the padding
    assert model(ids, attention_mask=mask).attentions is None  # only when asked


@pytest.mark.parametrize("family", FAMILIES)
def test_output_attentions_through_generate(workdir, family):
    model = _auto("AutoModelForCausalLM", family_dir(workdir, family))
    ids, mask = _padded_batch(model.config.vocab_size, model.config.pad_token_id)
    gen = model.generate(
        ids,
        attention_mask=mask,
        max_new_tokens=3,
        do_sample=False,
        output_attentions=True,
        return_dict_in_generate=True,
        pad_token_id=model.config.pad_token_id,
    )
    assert len(gen.attentions) == 3
    heads, layers = _heads(model.config), model.config.num_hidden_layers
    assert [a.shape for a in gen.attentions[0]] == [(2, heads, 7, 7)] * layers
    assert [a.shape for a in gen.attentions[2]] == [(2, heads, 1, 9)] * layers
    torch.testing.assert_close(gen.attentions[2][0].sum(-1), torch.ones(2, heads, 1))


def test_output_attentions_need_eager(workdir):
    model = _auto("AutoModelForCausalLM", family_dir(workdir, "llama"), backend="sdpa")
    out = model(torch.randint(6, 200, (1, 5)), output_attentions=True)
    # sdpa computes no weights (a warning says so): no attentions, exactly as transformers' own model
    # gives them in this environment (test_transformers_equivalence compares the two)
    assert not out.attentions


def test_attentions_and_scores_equal_transformers_llama(tmp_path):
    """The generated Llama's attention weights and sequence scores equal transformers' own classes'."""
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

    from tests._parity import TINY_HF, scaffold_model

    hf_config = LlamaConfig(
        **TINY_HF,
        pad_token_id=1,
        num_labels=3,
    )
    torch.manual_seed(0)
    theirs = LlamaForCausalLM._from_config(hf_config, attn_implementation="eager").eval()
    table = {
        **TINY_HF,
        "rms_norm_eps": hf_config.rms_norm_eps,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
    }
    ours = scaffold_model(tmp_path, "llama", table)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    ids, mask = _padded_batch(300, 1)
    a = ours(ids, attention_mask=mask, output_attentions=True).attentions
    b = theirs(ids, attention_mask=mask, output_attentions=True).attentions
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x[0], y[0], atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(
            x[1, :, 3:], y[1, :, 3:], atol=1e-6, rtol=1e-5
        )  # padded rows' queries differ by convention

    model_dir = tmp_path / "projects" / "parity" / "model"
    ours_cls = _auto("AutoModelForSequenceClassification", model_dir, num_labels=3)
    theirs_cls = LlamaForSequenceClassification._from_config(hf_config, attn_implementation="eager").eval()
    theirs_cls.load_state_dict(ours_cls.state_dict(), strict=True)
    right = ids.flip(-1)  # the padded row now ends in padding: the score is read before it
    right_mask = mask.flip(-1)
    for batch, m in ((ids, mask), (right, right_mask)):
        torch.testing.assert_close(
            ours_cls(batch, attention_mask=m).logits,
            theirs_cls(batch, attention_mask=m).logits,
            atol=1e-5,
            rtol=1e-5,
        )


@pytest.mark.parametrize("family", FAMILIES)
def test_auto_classes_resolve_to_ours_or_refuse(workdir, family):
    import transformers

    model_dir = family_dir(workdir, family)
    prefix = load_blueprint(family).prefix
    for head in ("SequenceClassification", "TokenClassification"):
        model = _auto(f"AutoModelFor{head}", model_dir, num_labels=2)
        assert type(model).__name__ == f"{prefix}For{head}"
        assert type(model).__module__.startswith(
            "transformers_modules"
        )  # our generated code, not transformers'
    config = transformers.AutoConfig.from_pretrained(model_dir, trust_remote_code=True)
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    assert type(config).__name__ not in set(CONFIG_MAPPING_NAMES.values())  # no name transformers owns
    with pytest.raises(ValueError, match="Unrecognized configuration class"):
        transformers.AutoModelForQuestionAnswering.from_config(config, trust_remote_code=True)


def _train(model, batch: dict, steps: int = 4) -> list[float]:
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(steps):
        loss = model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("family", FAMILIES)
def test_sequence_classification_pools_last_real_token_and_trains(workdir, family):
    model = _auto("AutoModelForSequenceClassification", family_dir(workdir, family), num_labels=3)
    pad = model.config.pad_token_id
    ids, mask = _padded_batch(model.config.vocab_size, pad)
    right, right_mask = torch.full_like(ids, pad), torch.zeros_like(mask)
    right[0], right_mask[0] = ids[0], 1
    right[1, :4], right_mask[1, :4] = ids[1, 3:], 1  # the padded row, right-padded instead
    alone = model(ids[1:, 3:]).logits
    torch.testing.assert_close(
        model(right, attention_mask=right_mask).logits[1:], alone, atol=1e-5, rtol=1e-4
    )
    losses = _train(model, {"input_ids": right, "attention_mask": right_mask, "labels": torch.tensor([0, 2])})
    assert losses[-1] < losses[0]
    model.config.problem_type = "regression"
    model.config.num_labels = 3
    out = model(right, attention_mask=right_mask, labels=torch.randn(2, 3))
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)


@pytest.mark.parametrize("family", FAMILIES)
def test_token_classification_trains(workdir, family):
    model = _auto("AutoModelForTokenClassification", family_dir(workdir, family), num_labels=4)
    ids, mask = _padded_batch(model.config.vocab_size, model.config.pad_token_id)
    labels = torch.randint(0, 4, ids.shape, generator=torch.Generator().manual_seed(0))
    labels[mask == 0] = -100
    assert model(ids, attention_mask=mask).logits.shape == (2, 7, 4)
    losses = _train(model, {"input_ids": ids, "attention_mask": mask, "labels": labels})
    assert losses[-1] < losses[0]


def _card_snippet(model_dir: Path, marker: str) -> str:
    import re

    card = (model_dir / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", card, flags=re.S)
    return next(b for b in blocks if marker in b)


@pytest.mark.parametrize("family", FAMILIES)
def test_lora_snippet_in_the_card_adapts_every_projection(workdir, family):
    pytest.importorskip("peft")
    model_dir = family_dir(workdir, family)
    model = _auto("AutoModelForCausalLM", model_dir)
    linears = {
        name.rsplit(".", 1)[-1]
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and ".layers." in f".{name}"
    }
    scope = {"model": model}
    exec(_card_snippet(model_dir, "LoraConfig"), scope)  # the card's own snippet, as a user runs it
    peft_model = scope["model"]
    adapted = {name.rsplit(".", 1)[-1] for name, m in peft_model.named_modules() if hasattr(m, "lora_A")}
    assert adapted == linears
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    ids = torch.randint(6, model.config.vocab_size, (2, 8))
    losses = _train(peft_model, {"input_ids": ids, "labels": ids}, steps=3)
    assert losses[-1] < losses[0]
