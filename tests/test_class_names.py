"""A built model directory names a transformers class only when it is that class's network.

Tools that pick a class by the name in ``config.json``'s ``architectures`` (``getattr(transformers,
name)``, TRL's ``SFTTrainer(model="dir")``) must never build transformers' stock class from a directory
whose structure differs: for a stock reproduction they build the same network, for any other
structure the generated classes carry names no library owns, so those tools build the generated
code (TRL falls back to ``auto_map``) or fail loudly."""

from __future__ import annotations

import pytest
import torch
import transformers

from scaffold.arch import for_blueprint
from scaffold.build import build
from scaffold.project import load_project
from scaffold.project.new import create_project
from scaffold.spec.blueprints import load as load_blueprint
from tests._families import tiny

# (family, one structural change or None for the family's own structure)
CASES = [
    ("llama", None),
    ("llama", {"norm_type": "layernorm"}),
    ("llama", {"position_embedding": "alibi"}),
    ("llama", {"qk_norm": "head"}),
    ("llama", {"norm_position": "post"}),
    ("qwen3", None),
    ("qwen3", {"norm_type": "layernorm"}),
    ("gemma2", None),
    ("gemma2", {"final_logit_softcapping": None}),
    ("gpt_neox", None),
    ("phi3", None),
]


def _ids(case):
    family, change = case
    return family + ("" if change is None else "-" + "-".join(f"{k}={v}" for k, v in change.items()))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Each case built and saved with weights (save_pretrained, as a user does after training)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    out = {}
    for case in CASES:
        family, change = case
        root = tmp_path_factory.mktemp(_ids(case))
        model = tiny(family, **(change or {}))
        project = create_project("p", family, projects_dir=root, overrides={"model": model})
        model_dir = build(load_project(project)).output_dir
        torch.manual_seed(0)
        config = AutoConfig.from_pretrained(model_dir, trust_remote_code=True)
        ours = AutoModelForCausalLM.from_config(config, trust_remote_code=True, dtype=torch.float32).eval()
        ours.save_pretrained(model_dir)
        out[_ids(case)] = (model_dir, ours)
    return out


def _logits(model) -> torch.Tensor:
    ids = torch.randint(0, 262, (1, 10), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        return model.eval()(ids).logits


@pytest.mark.parametrize("case", CASES, ids=[_ids(c) for c in CASES])
def test_the_architectures_name_builds_this_network_or_nothing(case, saved):
    family, change = case
    model_dir, ours = saved[_ids(case)]
    import json

    config = json.loads((model_dir / "config.json").read_text())
    name = config["architectures"][0]
    bp = load_blueprint(family)
    stock = bp.meta["transformers_class"]
    cls = getattr(transformers, name, None)
    if change is None:
        assert name == stock
        theirs = cls.from_pretrained(model_dir, dtype=torch.float32)
        torch.testing.assert_close(_logits(theirs), _logits(ours), atol=1e-5, rtol=1e-5)
    else:
        assert name != stock and cls is None, f"{name} names a class transformers owns"
        assert name == f"Scaffold{bp.prefix}ForCausalLM"
        assert all(not hasattr(transformers, v.split(".")[-1]) for v in config["auto_map"].values())


@pytest.mark.parametrize("case", CASES, ids=[_ids(c) for c in CASES])
def test_trl_given_the_folder_builds_this_network(case, saved):
    """TRL's SFTTrainer(model="dir") path (create_model_from_path) builds a network with our logits."""
    trl_utils = pytest.importorskip("trl.trainer.utils")
    model_dir, ours = saved[_ids(case)]
    theirs = trl_utils.create_model_from_path(str(model_dir), trust_remote_code=True, dtype=torch.float32)
    torch.testing.assert_close(_logits(theirs), _logits(ours), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("case", CASES, ids=[_ids(c) for c in CASES])
def test_the_card_says_which_case_a_build_is(case, saved):
    family, change = case
    model_dir, _ = saved[_ids(case)]
    card = " ".join((model_dir / "README.md").read_text().split())
    stock = load_blueprint(family).meta["transformers_class"]
    if change is None:
        assert f"This is the network of transformers' ``{stock}``" in card
    else:
        assert f"the network differs from it ({next(iter(change))}" in card


def test_differences_ignore_init_and_numbers():
    """The init scheme and a number (a window, a width) do not make a different network; a structural
    key does, and a number-valued structural key does by presence."""
    bp = load_blueprint("gemma2")
    m = bp.resolve(bp.preset(None), None, {"project": {"name": "x"}})["model"]
    assert (
        for_blueprint(bp, {**m, "init": "xavier", "hidden_size": 96}).transformers_class
        == "Gemma2ForCausalLM"
    )
    a = for_blueprint(bp, {**m, "attn_logit_softcapping": None})
    assert a.transformers_class is None and a.differences == ("attn_logit_softcapping",)
    assert a.causal_lm_class == "ScaffoldGemma2ForCausalLM"
    assert for_blueprint(bp, {**m, "attn_logit_softcapping": 20.0}).transformers_class == "Gemma2ForCausalLM"


@pytest.mark.parametrize("case", CASES, ids=[_ids(c) for c in CASES])
def test_peft_defaults_on_the_folder_apply_to_this_network_or_refuse(case, saved):
    """TRL's SFTTrainer(model="dir", peft_config=LoraConfig()) path: the class built from the folder, then
    PEFT's default targets looked up by its model_type. Transformers' own class (a stock build, the same
    network) gets PEFT's targets for it; a different network is our code, whose model type PEFT does not
    know, and PEFT refuses with its own message instead of adapting transformers' network."""
    trl_utils = pytest.importorskip("trl.trainer.utils")
    peft = pytest.importorskip("peft")
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as DEFAULTS

    _, change = case
    model_dir, ours = saved[_ids(case)]
    built = trl_utils.create_model_from_path(str(model_dir), trust_remote_code=True, dtype=torch.float32)
    # (a stock family PEFT has no defaults for, Phi-3's, refuses as transformers' own class does)
    if change is None and built.config.to_dict()["model_type"] in DEFAULTS:
        adapted = peft.get_peft_model(built, peft.LoraConfig(task_type="CAUSAL_LM"))
        torch.testing.assert_close(_logits(adapted), _logits(ours), atol=1e-5, rtol=1e-5)  # LoRA starts at 0
    else:
        with pytest.raises(ValueError, match="target_modules"):
            peft.get_peft_model(built, peft.LoraConfig(task_type="CAUSAL_LM"))


@pytest.mark.parametrize("case", CASES[:3], ids=[_ids(c) for c in CASES[:3]])
def test_pipeline_given_the_folder_builds_this_network(case, saved):
    """transformers' pipeline given the folder (trust_remote_code) runs the generated code: its model's
    logits are ours."""
    from transformers import pipeline

    model_dir, ours = saved[_ids(case)]
    pipe = pipeline("text-generation", model=str(model_dir), trust_remote_code=True, dtype=torch.float32)
    torch.testing.assert_close(_logits(pipe.model), _logits(ours), atol=1e-5, rtol=1e-5)
    assert type(pipe.model).__name__ == type(ours).__name__


@pytest.mark.parametrize("case", CASES, ids=[_ids(c) for c in CASES])
def test_lm_eval_given_the_folder_builds_this_network(case, saved):
    """lm-eval's ``HFLM(pretrained="dir", trust_remote_code=True)`` (it builds its model with
    ``AutoModelForCausalLM`` from the folder): the network it evaluates has our logits, for a stock
    build and for a changed structure alike."""
    huggingface = pytest.importorskip("lm_eval.models.huggingface")
    model_dir, ours = saved[_ids(case)]
    lm = huggingface.HFLM(pretrained=str(model_dir), trust_remote_code=True, device="cpu", dtype="float32")
    torch.testing.assert_close(_logits(lm.model), _logits(ours), atol=1e-5, rtol=1e-5)
    assert type(lm.model).__name__ == type(ours).__name__
