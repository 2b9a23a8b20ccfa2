"""no_init_weights, default_dtype, meta construction and materialising, on real torch and transformers.

"No init ran" is shown by the global RNG state (every random init draws from it) and by
``constant_`` inits that did not write their value; "init ran" by the values init gives.
"""

from __future__ import annotations

import importlib.util
import math
import sys

import pytest
import torch
from torch import nn
from transformers import AutoConfig

import scaffold
from scaffold.build.construct import (
    construct,
    default_dtype,
    init_is_disabled,
    initialize_weights,
    materialize,
    no_init_weights,
)
from scaffold.codegen.parts.rotary import rope_inv_freq
from scaffold.errors import DeviceError
from tests._construct_util import TINY, build_model_dir, load_model, logits, make_project

# A module written to disk and imported *before* any no_init_weights block, binding init
# functions at import time, as torch's own modules and much user code do.
BOUND_MODULE = '''
import torch
from torch import nn
from torch.nn.init import normal_, constant_
from transformers.initialization import trunc_normal_ as hf_trunc_normal_


class Bound(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Parameter(torch.empty(64, 64))
        self.b = nn.Parameter(torch.empty(64))
        self.c = nn.Parameter(torch.empty(64, 64))
        normal_(self.a)
        constant_(self.b, 7.0)
        hf_trunc_normal_(self.c, std=0.02)


class TensorMethods(nn.Module):
    """Inits in reset_parameters with tensor methods, which no function patch can see."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.empty(64, 64))
        self.v = nn.Parameter(torch.empty(64))
        self.reset_parameters()

    def reset_parameters(self):
        self.w.data.uniform_(-1, 1)
        self.v.data.fill_(7.0)


class Torchy(nn.Module):
    """Plain torch modules: Linear, Embedding, LayerNorm, MultiheadAttention init themselves."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(64, 64)
        self.embedding = nn.Embedding(100, 64)
        self.norm = nn.LayerNorm(64)
        self.mha = nn.MultiheadAttention(64, 4)
'''


@pytest.fixture(scope="module")
def bound(tmp_path_factory):
    path = tmp_path_factory.mktemp("bound") / "bound_inits.py"
    path.write_text(BOUND_MODULE, encoding="utf-8")
    spec = importlib.util.spec_from_file_location("bound_inits", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bound_inits"] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("bound_inits", None)


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    """Built model directories of a tiny untied and a tiny tied llama project."""
    projects = tmp_path_factory.mktemp("projects")
    untied = build_model_dir(make_project(projects, "untied"))
    tied = build_model_dir(make_project(projects, "tied", tie_word_embeddings=True))
    return {"untied": untied, "tied": tied}


def rng_untouched(fn):
    before = torch.random.get_rng_state()
    out = fn()
    return out, torch.equal(before, torch.random.get_rng_state())


@pytest.mark.parametrize("cls", ["Bound", "TensorMethods", "Torchy"])
def test_no_init_runs_no_init_even_bound_at_import_time(bound, cls):
    with no_init_weights():
        module, untouched = rng_untouched(getattr(bound, cls))
    assert untouched, f"{cls}: an init drew random numbers inside no_init_weights"
    if cls == "Bound":
        assert not torch.all(module.b == 7.0), "constant_ bound at import time still ran"
    if cls == "TensorMethods":
        assert not torch.all(module.v == 7.0), "reset_parameters still ran"
    # outside the block every init runs again, through the very same bound names
    module, untouched = rng_untouched(getattr(bound, cls))
    assert not untouched
    if cls == "Bound":
        assert torch.all(module.b == 7.0)
    if cls == "TensorMethods":
        assert torch.all(module.v == 7.0)


def test_no_init_covers_classes_defined_inside_the_block():
    with no_init_weights():

        class Late(nn.Module):
            def __init__(self):
                super().__init__()
                self.w = nn.Parameter(torch.empty(32))
                self.reset_parameters()

            def reset_parameters(self):
                self.w.data.fill_(3.0)

        late = Late()
    assert not torch.all(late.w == 3.0)
    assert torch.all(Late().w == 3.0), "the class stays patched after the block"


def test_no_init_nests_and_restores_after_an_error():
    linear_reset = nn.Linear.reset_parameters
    normal_code = torch.nn.init.normal_.__code__
    with pytest.raises(ValueError, match="boom"):
        with no_init_weights():
            with no_init_weights():
                assert init_is_disabled()
            assert init_is_disabled(), "leaving the inner block re-enabled init"
            raise ValueError("boom")
    assert not init_is_disabled()
    assert nn.Linear.reset_parameters is linear_reset
    assert torch.nn.init.normal_.__code__ is normal_code
    assert "__init_subclass__" not in nn.Module.__dict__


def test_public_names():
    assert scaffold.no_init_weights is no_init_weights
    assert scaffold.default_dtype is default_dtype


@pytest.mark.parametrize("which", ["untied", "tied"])
def test_llama_under_no_init_then_explicit_init_is_complete(tiny_dirs, which):
    config = AutoConfig.from_pretrained(tiny_dirs[which], trust_remote_code=True)
    model, untouched = rng_untouched(lambda: construct(config, init_weights=False))
    assert untouched, "constructing the llama drew random numbers under no-init"
    assert (model.lm_head.weight is model.model.embed_tokens.weight) == (which == "tied")
    initialize_weights(model)
    h, layers = TINY["hidden_size"], TINY["num_hidden_layers"]
    trunc = 0.986  # std of a normal truncated at 3 sigma, relative to sigma
    layer = model.model.layers[0]
    assert torch.all(layer.input_layernorm.weight == 1) and torch.all(model.model.norm.weight == 1)
    assert layer.self_attn.q_proj.weight.std().item() == pytest.approx(0.02 * trunc, rel=0.15)
    out_std = 0.02 / math.sqrt(2 * layers)
    assert layer.mlp.down_proj.weight.std().item() == pytest.approx(out_std * trunc, rel=0.15)
    assert model.lm_head.weight.std().item() == pytest.approx(h**-0.5 * trunc, rel=0.1)
    if which == "untied":
        assert model.model.embed_tokens.weight.std().item() == pytest.approx(1.0, rel=0.1)
    assert torch.isfinite(logits(model)).all()


def test_initialize_weights_refuses_inside_no_init_and_on_meta(tiny_dirs):
    model = construct(tiny_dirs["untied"], device="meta")
    with pytest.raises(DeviceError, match="meta device"):
        initialize_weights(model)
    with no_init_weights(), pytest.raises(RuntimeError, match="would do nothing"):
        initialize_weights(nn.Linear(2, 2))


@pytest.mark.parametrize("which", ["untied", "tied"])
def test_meta_construction_then_materialize(tiny_dirs, which):
    model = construct(tiny_dirs[which], device="meta")
    assert all(p.is_meta for p in model.parameters())
    materialize(model, "cpu")
    assert not any(t.is_meta for t in [*model.parameters(), *model.buffers()])
    assert (model.lm_head.weight is model.model.embed_tokens.weight) == (which == "tied"), (
        "to_empty broke the tie"
    )
    rope = model.config.rope_parameters
    expected = rope_inv_freq(model.config.head_dim, rope["rope_theta"], rope)
    assert torch.equal(model.model.rotary_emb.inv_freq, expected), (
        "the non-persistent RoPE table was not rebuilt"
    )
    assert torch.all(model.model.norm.weight == 1), "materialize(init=True) did not init"
    assert torch.isfinite(logits(model)).all()


def test_materialize_without_init_keeps_buffers_right(tiny_dirs):
    reference = load_model(tiny_dirs["untied"])
    model = construct(tiny_dirs["untied"], device="meta")
    materialize(model, "cpu", init=False)
    model.load_state_dict(reference.state_dict())
    assert torch.equal(logits(model), logits(reference))


def test_default_dtype(tiny_dirs):
    before = torch.get_default_dtype()
    with default_dtype("bfloat16"):
        assert torch.get_default_dtype() == torch.bfloat16
        model = load_model(tiny_dirs["untied"])
    assert torch.get_default_dtype() == before
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert model.model.rotary_emb.inv_freq.dtype == torch.float32, "RoPE table must stay float32"
    with pytest.raises(KeyError), default_dtype(torch.float16):
        raise KeyError("x")
    assert torch.get_default_dtype() == before
    with pytest.raises(DeviceError, match="unknown dtype"), default_dtype("float8"):
        pass
    with pytest.raises(DeviceError, match="floating"), default_dtype(torch.int64):
        pass


def test_seed_usage_no_init_and_default_dtype_together(tiny_dirs):
    """The seed's recipe: `with no_init_weights(), default_dtype(torch.bfloat16): from_config(...)`."""
    from transformers import AutoModelForCausalLM

    config = AutoConfig.from_pretrained(tiny_dirs["tied"], trust_remote_code=True)
    with no_init_weights(), default_dtype(torch.bfloat16):
        model, untouched = rng_untouched(
            lambda: AutoModelForCausalLM.from_config(config, trust_remote_code=True)
        )
    assert untouched
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert model.lm_head.weight is model.model.embed_tokens.weight


@pytest.fixture(scope="module")
def big_dirs(tmp_path_factory):
    """Model directories (no weights) of the 7B-class presets."""
    from scaffold.build import build
    from scaffold.project import load_project
    from scaffold.project.new import create_project
    from scaffold.spec.blueprints import load as load_blueprint

    projects = tmp_path_factory.mktemp("big")
    out = {}
    for preset in ("llama2_7b", "llama3.2_1b"):
        vocab = load_blueprint("llama").preset(preset)["model"][
            "vocab_size"
        ]  # as published, not the tokenizer's
        path = create_project(
            preset.replace(".", "_"),
            "llama",
            projects_dir=projects,
            preset=preset,
            overrides={"model": {"vocab_size": vocab}},
        )
        out[preset] = build(load_project(path)).output_dir
    return out


@pytest.mark.parametrize(
    ("preset", "parameters", "tied"),
    [("llama2_7b", 6_738_415_616, False), ("llama3.2_1b", 1_235_814_400, True)],
)
def test_large_presets_on_meta(big_dirs, preset, parameters, tied):
    model = construct(big_dirs[preset], device="meta")
    assert all(p.is_meta for p in model.parameters())
    assert sum(p.numel() for p in model.parameters()) == parameters
    assert (model.lm_head.weight is model.model.embed_tokens.weight) == tied


def test_large_preset_under_no_init_allocates_without_touching(big_dirs):
    """1.2B parameters in bfloat16 under no-init: allocated, never written, RNG untouched."""
    model, untouched = rng_untouched(
        lambda: construct(big_dirs["llama3.2_1b"], init_weights=False, dtype=torch.bfloat16)
    )
    assert untouched
    assert sum(p.numel() for p in model.parameters()) == 1_235_814_400
    assert next(model.parameters()).device.type == "cpu"
    del model


def test_construct_from_config_object_and_attn_implementation(tiny_dirs):
    config = AutoConfig.from_pretrained(tiny_dirs["untied"], trust_remote_code=True)
    model = construct(config, device="meta", attn_implementation="eager")
    assert model.config._attn_implementation == "eager"
