"""Every reproduced family against transformers' own class of the family, where users, libraries and
transformers' own tests take it: output flags set on the config or the call, ``return_dict``, the caches
generation uses (dynamic, static, compiled), every RoPE type transformers knows, the configuration
class's keys and defaults, the input embedding's padding row, task heads with labels, resizing the
vocabulary, save and load, and PEFT's LoRA targets.

One table, FAMILIES, drives every test: a family added there gets all of them. Each family's pair (a
tiny transformers model, random weights, and the scaffold model of the same config with those weights)
is built once per module; a test that needs other numbers builds new models from the pair's configs,
which needs no new rendering (numbers are config, structure is code).
"""

from __future__ import annotations

import copy
import json
from itertools import product

import pytest
import torch

from tests._parity import TINY_HF, assert_close, model_table, scaffold_model, tiny_hf_model

MIXED = ["full_attention", "sliding_attention"]  # per layer, as transformers' layer_types

# family -> overrides of the tiny transformers config (tests/_parity.py's sizes underneath)
FAMILIES = {
    "llama": {},
    "mistral": {"sliding_window": 6},
    "qwen2": {"use_sliding_window": True, "sliding_window": 6, "layer_types": MIXED},
    "qwen3": {"use_sliding_window": True, "sliding_window": 6, "layer_types": MIXED},
    "gemma": {},
    "gemma2": {"head_dim": 16, "sliding_window": 4},  # Gemma 2 alternates sliding and full layers
    "olmo2": {},
    # Phi-3's config defaults its special tokens to ids of its own 32k vocabulary
    "phi3": {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0},
    "gpt_neox": {},
}
# families whose layers mix attention types, so that transformers passes a mask per type
PER_LAYER_TYPES = ("qwen2", "qwen3", "gemma2")

_PAIRS: dict[str, tuple] = {}


def pair(family: str, tmp_path_factory) -> tuple:
    """(transformers' model, scaffold's model) of ``family``, same config and weights, eval mode."""
    if family not in _PAIRS:
        hf = tiny_hf_model(family, **FAMILIES[family])
        ours = scaffold_model(tmp_path_factory.mktemp(family), family, model_table(hf.config, family))
        load_weights(ours, hf)
        _PAIRS[family] = hf, ours
    return _PAIRS[family]


def load_weights(ours, theirs) -> None:
    """Load transformers' model's weights into ours, strictly. transformers' GPT-NeoX holds its output
    head as lm_head in memory (embed_out in checkpoints, and here): the one name that differs."""
    state = dict(theirs.state_dict())
    missing, extra = set(ours.state_dict()) - set(state), set(state) - set(ours.state_dict())
    if len(missing) == len(extra) == 1 and extra == {"lm_head.weight"}:
        state[missing.pop()] = state.pop("lm_head.weight")
    ours.load_state_dict(state, strict=True)


def twin(model, **config_changes):
    """A new model of ``model``'s class with its config changed, holding ``model``'s weights."""
    config = copy.deepcopy(model.config)
    for key, value in config_changes.items():
        setattr(config, key, value)
    new = type(model)(config).eval()
    new.load_state_dict(model.state_dict(), strict=True)
    return new


def ids(shape=(2, 12), seed=1) -> torch.Tensor:
    return torch.randint(3, TINY_HF["vocab_size"], shape, generator=torch.Generator().manual_seed(seed))


def assert_same_output(ours, theirs, what: str) -> None:
    """The same kind of output, the same fields in the same order, equal values (caches: same length)."""
    from transformers.cache_utils import Cache
    from transformers.utils import ModelOutput

    if isinstance(theirs, ModelOutput):
        assert type(ours).__name__ == type(theirs).__name__, f"{what}: {type(ours)} != {type(theirs)}"
        assert list(ours.keys()) == list(theirs.keys()), (
            f"{what}: fields {list(ours.keys())} != {list(theirs.keys())}"
        )
        for key in theirs.keys():
            assert_same_output(ours[key], theirs[key], f"{what}.{key}")
    elif isinstance(theirs, (tuple, list)):
        assert isinstance(ours, tuple) and len(ours) == len(theirs), (
            f"{what}: {type(ours)} of {len(ours)}, not {len(theirs)}"
        )
        for i, (a, b) in enumerate(zip(ours, theirs)):
            assert_same_output(a, b, f"{what}[{i}]")
    elif isinstance(theirs, Cache):
        assert isinstance(ours, Cache) and ours.get_seq_length() == theirs.get_seq_length(), what
    elif isinstance(theirs, torch.Tensor):
        assert_close(ours, theirs, 1e-5, what)
    else:
        assert ours == theirs, f"{what}: {ours!r} != {theirs!r}"


def calls():
    """Every combination of the output flags given to the call: absent, False or True."""
    for hs, attn, rd in product((None, False, True), repeat=3):
        yield {
            k: v
            for k, v in (("output_hidden_states", hs), ("output_attentions", attn), ("return_dict", rd))
            if v is not None
        }


# ------------------------------------------------------------------------------------ output flags


@pytest.mark.parametrize("family", FAMILIES)
def test_output_flags_on_the_config_and_the_call(family, tmp_path_factory):
    """config.output_hidden_states / output_attentions / return_dict are the defaults a call overrides,
    in the base model and the causal LM alike: the same fields, tuples and values as transformers'."""
    hf, ours = pair(family, tmp_path_factory)
    x = ids()
    try:
        with torch.no_grad():
            for hs, attn in product((False, True), repeat=2):
                for model in (hf, ours):
                    model.config.output_hidden_states, model.config.output_attentions = hs, attn
                for kwargs in calls():
                    what = f"config hidden_states={hs} attentions={attn}, call {kwargs}"
                    assert_same_output(
                        ours.base_model(x, **kwargs), hf.base_model(x, **kwargs), f"base model, {what}"
                    )
                    assert_same_output(ours(x, **kwargs), hf(x, **kwargs), f"causal LM, {what}")
                # return_dict=False on the config: a tuple from the base model, as transformers' gives
                for model in (hf, ours):
                    model.config.return_dict = False
                assert_same_output(
                    ours.base_model(x), hf.base_model(x), f"base model, config return_dict=False, {what}"
                )
                # transformers' own causal LM fails here (its base model hands it a tuple); ours gives the
                # tuple transformers gives for return_dict=False on the call
                mine = ours(x)
                for model in (hf, ours):
                    model.config.return_dict = True
                assert_same_output(
                    mine, hf(x, return_dict=False), f"causal LM, config return_dict=False, {what}"
                )
    finally:
        for model in (hf, ours):
            model.config.output_hidden_states = model.config.output_attentions = False
            model.config.return_dict = True


@pytest.mark.parametrize("family", FAMILIES)
def test_use_cache_on_the_config(family, tmp_path_factory):
    hf, ours = pair(family, tmp_path_factory)
    with torch.no_grad():
        for use_cache in (False, True):
            a, b = twin(ours, use_cache=use_cache), twin(hf, use_cache=use_cache)
            assert_same_output(a(ids()), b(ids()), f"config use_cache={use_cache}")
            assert (a(ids()).past_key_values is None) == (not use_cache)


@pytest.mark.parametrize("family", FAMILIES)
def test_attentions_without_eager(family, tmp_path_factory):
    """sdpa materialises no weights: an empty tuple of attentions, as transformers' model gives."""
    hf, ours = pair(family, tmp_path_factory)
    if not (type(hf)._supports_sdpa and ours._supports_sdpa):
        pytest.skip(f"{family} does not run on sdpa")
    try:
        for model in (hf, ours):
            model.set_attn_implementation("sdpa")
        with torch.no_grad():
            assert_same_output(ours(ids(), output_attentions=True), hf(ids(), output_attentions=True), "sdpa")
    finally:
        for model in (hf, ours):
            model.set_attn_implementation("eager")


# ------------------------------------------------------------------------------------ generation

GREEDY = {"max_new_tokens": 10, "do_sample": False, "pad_token_id": 0, "eos_token_id": TINY_HF["vocab_size"]}


@pytest.mark.parametrize("cache", ["dynamic", "static"])
@pytest.mark.parametrize("family", FAMILIES)
def test_generation_with_each_cache(family, cache, tmp_path_factory):
    """Greedy generation with a dynamic and a static cache (families with per-layer attention types
    get a mapping of masks from transformers then) gives transformers' tokens, past the window."""
    hf, ours = pair(family, tmp_path_factory)
    prompt = ids((1, 6), seed=2)
    with torch.no_grad():
        mine = ours.generate(prompt, cache_implementation=cache, **GREEDY)
        assert torch.equal(mine, hf.generate(prompt, cache_implementation=cache, **GREEDY))


@pytest.mark.parametrize("family", ["llama", *PER_LAYER_TYPES])
def test_compiled_generation(family, tmp_path_factory):
    """generate's compiled decoding (a static cache, the forward traced whole by dynamo; the eager
    backend keeps it quick on CPU) runs and gives transformers' tokens."""
    from transformers import CompileConfig

    hf, ours = pair(family, tmp_path_factory)
    compile_config = CompileConfig(backend="eager", fullgraph=True, mode="default")
    compile_config._compile_all_devices = True  # transformers compiles on accelerators only otherwise
    prompt = ids((1, 6), seed=2)
    greedy = {**GREEDY, "cache_implementation": "static", "compile_config": compile_config}
    with torch.no_grad():
        assert torch.equal(ours.generate(prompt, **greedy), hf.generate(prompt, **GREEDY))


# ------------------------------------------------------------------------------------ RoPE types


def rope_parameters(kind: str, rotary_dim: int) -> dict:
    """Parameters of each transformers RoPE type, scaled for the tiny models (positions beyond 8 count
    as long, so that every scaling bites within the test's 24 tokens)."""
    half = rotary_dim // 2
    return {
        "linear": {"factor": 2.0},
        "dynamic": {"factor": 2.0},
        "yarn": {"factor": 2.0, "original_max_position_embeddings": 8},
        "longrope": {
            "short_factor": [1.0 + 0.1 * i for i in range(half)],
            "long_factor": [2.0 + 0.5 * i for i in range(half)],
            "original_max_position_embeddings": 8,
        },
        "llama3": {
            "factor": 2.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8,
        },
    }.get(kind, {"factor": 2.0})


def _rope_types() -> list[str]:
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    return sorted(ROPE_INIT_FUNCTIONS)


@pytest.mark.parametrize("kind", _rope_types())
@pytest.mark.parametrize("family", FAMILIES)
def test_every_rope_type(family, kind, tmp_path_factory):
    """Each of transformers' RoPE types acts as in transformers' class (short and long inputs, and the
    dynamic ones growing and shrinking back), or is refused naming rope_parameters.rope_type."""

    hf, ours = pair(family, tmp_path_factory)
    rope = {
        k: v for k, v in hf.config.rope_parameters.items() if k in ("rope_theta", "partial_rotary_factor")
    }
    rotary_dim = int(ours.config.head_dim * rope.get("partial_rotary_factor", 1.0))
    rope |= {"rope_type": kind, **rope_parameters(kind, rotary_dim)}
    changes = {"max_position_embeddings": 16, "rope_parameters": rope}
    if family == "phi3" and kind == "longrope":
        changes["original_max_position_embeddings"] = 8  # Phi-3 keeps it at the top level too
    try:  # the pair's weights: the same seed and shapes
        theirs = tiny_hf_model(family, **{**FAMILIES[family], **changes})
    except Exception as err:  # transformers' config validation raises its own kinds
        theirs, refused = None, err
    if kind not in type(ours.base_model.rotary_emb).ROPE_TYPES:
        with pytest.raises(ValueError, match=r"rope_parameters\.rope_type"):
            twin(ours, **changes)
        return
    if theirs is None:
        pytest.skip(f"transformers' {family} refuses rope_type {kind}: {refused}")
    mine = twin(ours, **changes)
    load_weights(mine, theirs)
    with torch.no_grad():
        for length in (6, 24, 20, 6):  # short, long, shorter but still long, short again
            x = ids((1, length), seed=length)
            assert_close(mine(x).logits, theirs(x).logits, 1e-5, f"{kind}, {length} tokens")


# ------------------------------------------------------------------------------------ configuration


def config_class(family, tmp_path_factory):
    return type(pair(family, tmp_path_factory)[1].config)


@pytest.mark.parametrize("family", FAMILIES)
def test_config_defaults_and_keywords_build_a_model(family, tmp_path_factory):
    """The configuration class with its defaults, and built from keyword arguments alone (as
    transformers' tests and scripts build one), builds a model that runs."""
    hf, ours = pair(family, tmp_path_factory)
    cls = config_class(family, tmp_path_factory)
    # the tiny sizes, as keywords of transformers' config of the family (GPT-NeoX has no num_key_value_heads)
    sizes = {k: v for k, v in TINY_HF.items() if k in type(hf.config)().to_dict()}
    for config in (cls(), cls(**sizes), cls(**sizes, rope_theta=500000.0)):
        model = type(ours)(config).eval()
        with torch.no_grad():
            assert model(ids((1, 4))).logits.shape == (1, 4, config.vocab_size)
    assert cls(**sizes, rope_theta=500000.0).rope_parameters["rope_theta"] == 500000.0


@pytest.mark.parametrize("family", FAMILIES)
def test_config_has_transformers_keys_and_defaults(family, tmp_path_factory):
    """Every key transformers' config of the family saves is in the config.json scaffold's saves; the
    keys the blueprint takes from transformers have transformers' defaults."""
    from scaffold.spec.blueprints import load

    hf, ours = pair(family, tmp_path_factory)
    cls = config_class(family, tmp_path_factory)
    out = tmp_path_factory.mktemp(f"{family}-config")
    hf.config.save_pretrained(out / "theirs")
    ours.config.save_pretrained(out / "ours")
    theirs = json.loads((out / "theirs" / "config.json").read_text())
    mine = json.loads((out / "ours" / "config.json").read_text())
    # Phi-3's resid_pdrop is the manifest's hidden_dropout (scaffold import reads it)
    renamed = set(load(family).meta.get("import_renames", {})) - set(
        load(family).meta.get("transformers_config_structure", {})
    )
    assert set(theirs) - set(mine) - renamed == set()
    defaults, their_defaults = cls().to_dict(), type(hf.config)().to_dict()
    bp = load(family)
    keys = [*bp.meta.get("transformers_config", {}), *bp.meta.get("transformers_config_structure", {})]
    for key in [*keys, *bp.meta.get("transformers_config_refused", {})]:
        # (GPT-NeoX's rotary_pct: older transformers releases save it, this one reads it only)
        assert defaults[key] == their_defaults.get(key, defaults[key]), key


def test_config_json_keys_tools_read(tmp_path_factory):
    """llama.cpp's converter reads GPT-NeoX's rotary_pct and Phi-3's original_max_position_embeddings."""
    neox = pair("gpt_neox", tmp_path_factory)[1].config.to_dict()
    assert neox["rotary_pct"] == neox["rope_parameters"]["partial_rotary_factor"] == 0.25
    assert "original_max_position_embeddings" in pair("phi3", tmp_path_factory)[1].config.to_dict()


def test_qwen_use_sliding_window_switch(tmp_path_factory):
    """As transformers' Qwen2 config: the window is off unless use_sliding_window is on."""
    cls = config_class("qwen2", tmp_path_factory)
    assert cls(**TINY_HF, sliding_window=4).sliding_window is None
    assert cls(**TINY_HF, sliding_window=4, use_sliding_window=True).sliding_window == 4
    # without layer_types, the layers from max_window_layers on slide (28 by default: none of these two)
    for first in (0, 1, 28):
        kwargs = {**TINY_HF, "sliding_window": 4, "use_sliding_window": True, "max_window_layers": first}
        theirs = type(pair("qwen2", tmp_path_factory)[0].config)(**kwargs)
        assert cls(**kwargs).layer_types == theirs.layer_types


@pytest.mark.parametrize("family", FAMILIES)
def test_input_embedding_padding_row(family, tmp_path_factory):
    """The input embedding has a padding row exactly where transformers' class of the family has one."""
    from transformers import AutoModelForCausalLM

    from tests._parity import tiny_hf_config

    ours = pair(family, tmp_path_factory)[1]
    theirs = AutoModelForCausalLM.from_config(
        tiny_hf_config(family, **{**FAMILIES[family], "pad_token_id": 5})
    )
    mine = twin(ours, pad_token_id=5)
    assert mine.get_input_embeddings().padding_idx == theirs.get_input_embeddings().padding_idx


# ------------------------------------------------------------------------------------ heads, resizing, files


@pytest.mark.parametrize("head", ["ForSequenceClassification", "ForTokenClassification"])
@pytest.mark.parametrize("family", FAMILIES)
def test_task_heads_with_labels(family, head, tmp_path_factory):
    """A task head on the same weights gives transformers' logits and loss."""
    import transformers

    hf, ours = pair(family, tmp_path_factory)
    module = __import__(type(ours).__module__, fromlist=["_"])
    prefix = type(ours).__name__.removesuffix("ForCausalLM")
    config = copy.deepcopy(ours.config)
    config.num_labels, config.pad_token_id = 3, 0
    mine = getattr(module, prefix + head)(config).eval()
    their_config = copy.deepcopy(hf.config)
    their_config.num_labels, their_config.pad_token_id = 3, 0
    name = type(hf).__name__.removesuffix("ForCausalLM") + head
    if not hasattr(transformers, name):
        pytest.skip(f"transformers has no {name}")
    theirs = getattr(transformers, name)(their_config).eval()
    body = {k: v for k, v in hf.state_dict().items() if k in theirs.state_dict()}
    theirs.load_state_dict({**theirs.state_dict(), **body}, strict=True)
    # transformers' GPT-NeoX names its token head `classifier`; scaffold's heads are all `score`
    state = {k.replace("classifier.", "score.", 1): v for k, v in theirs.state_dict().items()}
    mine.load_state_dict(state, strict=True)
    x = ids()
    labels = torch.tensor([0, 2]) if head == "ForSequenceClassification" else x % 3
    with torch.no_grad():
        assert_same_output(mine(x, labels=labels), theirs(x, labels=labels), head)
        assert_same_output(
            mine(x, labels=labels, return_dict=False), theirs(x, labels=labels, return_dict=False), head
        )


@pytest.mark.parametrize("family", FAMILIES)
def test_resize_token_embeddings(family, tmp_path_factory):
    hf, ours = pair(family, tmp_path_factory)
    mine, theirs = twin(ours), twin(hf)
    for model in (mine, theirs):
        model.resize_token_embeddings(320, mean_resizing=False)
    assert mine.config.vocab_size == theirs.config.vocab_size == 320
    assert mine.get_output_embeddings().weight.shape == theirs.get_output_embeddings().weight.shape
    with torch.no_grad():  # the old rows unchanged: the same logits over the old vocabulary
        assert_close(mine(ids()).logits[..., :300], theirs(ids()).logits[..., :300], 1e-5, "resized")


@pytest.mark.parametrize("family", FAMILIES)
def test_save_and_load_round_trip(family, tmp_path_factory):
    from transformers import AutoModelForCausalLM

    hf, ours = pair(family, tmp_path_factory)
    folder = tmp_path_factory.mktemp(f"{family}-saved")
    ours.save_pretrained(folder)
    for dtype in (torch.float32, torch.float64):
        loaded = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True, dtype=dtype).eval()
        with torch.no_grad():
            logits = loaded(ids()).logits
            assert logits.dtype == dtype
            assert_close(logits.float(), hf(ids()).logits, 1e-5, f"loaded in {dtype}")


# ------------------------------------------------------------------------------------ PEFT


@pytest.mark.parametrize("family", FAMILIES)
def test_lora_targets_of_the_card(family, tmp_path_factory):
    """PEFT looks its default targets up by model type and does not know scaffold's, so LoraConfig()
    stops with PEFT's own message (as the card says); the card's targets cover the layers PEFT picks
    for transformers' class of the family, and adapt the model."""
    peft = pytest.importorskip("peft")
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as DEFAULTS

    from scaffold.arch import for_blueprint
    from scaffold.codegen.render import lora_targets
    from scaffold.spec.blueprints import load

    hf, ours = pair(family, tmp_path_factory)
    bp = load(family)
    targets = lora_targets(for_blueprint(bp, {**bp.structure, **model_table(hf.config, family)}))
    if hf.config.model_type in DEFAULTS:  # else PEFT's defaults fail for transformers' class too
        assert set(DEFAULTS[hf.config.model_type]) <= set(targets)
    with pytest.raises(ValueError, match="target_modules"):
        peft.get_peft_model(twin(ours), peft.LoraConfig())
    adapted = peft.get_peft_model(twin(ours), peft.LoraConfig(target_modules=targets, task_type="CAUSAL_LM"))
    with torch.no_grad():  # LoRA starts as the identity
        assert_close(adapted(ids()).logits, hf(ids()).logits, 1e-5, "adapted")


# ------------------------------------------------------------------------------------ the novel blueprints


NOVEL = {
    "deepone": ("deepone", {}),
    "single_head": ("single_head", {}),
    "decoder-alibi": ("decoder", {"position_embedding": "alibi"}),
}


@pytest.mark.parametrize("case", NOVEL)
def test_new_task_heads_and_float64(case, tmp_path):
    """Heads new to a checkpoint start from finite, small weights; float64 loading works (ALiBi masks)."""
    from transformers import (
        AutoConfig,
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        AutoModelForTokenClassification,
    )

    from scaffold.build import build
    from scaffold.project import load_project
    from scaffold.project.new import create_project

    model = {
        k: TINY_HF[k]
        for k in (
            "vocab_size",
            "hidden_size",
            "num_hidden_layers",
            "intermediate_size",
            "max_position_embeddings",
        )
    }
    blueprint, structure = NOVEL[case]
    model |= structure
    if blueprint != "single_head":
        model["num_attention_heads"] = 4
    project = create_project("p", blueprint, projects_dir=tmp_path, overrides={"model": model})
    out = build(load_project(project)).output_dir
    config = AutoConfig.from_pretrained(out, trust_remote_code=True)
    AutoModelForCausalLM.from_config(config, trust_remote_code=True).save_pretrained(tmp_path / "weights")
    for auto in (AutoModelForSequenceClassification, AutoModelForTokenClassification):
        head = auto.from_pretrained(tmp_path / "weights", trust_remote_code=True, num_labels=3).score.weight
        assert torch.isfinite(head).all() and 0 < head.abs().max() < 1, auto.__name__
    loaded = AutoModelForCausalLM.from_pretrained(
        tmp_path / "weights", trust_remote_code=True, dtype=torch.float64
    )
    mask = torch.ones(2, 6, dtype=torch.long)
    mask[0, :2] = 0  # left padding: the mask's minimum must fit float64
    with torch.no_grad():
        logits = loaded(ids((2, 6)), attention_mask=mask).logits
    assert logits.dtype == torch.float64 and torch.isfinite(logits).all()


def test_gemma_bidirectional_attention_is_refused(tmp_path_factory):
    """A key transformers' Gemma honours and this code cannot is refused, naming it, never ignored."""
    cls = config_class("gemma", tmp_path_factory)
    assert cls().use_bidirectional_attention is None
    with pytest.raises(ValueError, match="use_bidirectional_attention"):
        cls(use_bidirectional_attention=True)


def test_structure_keys_of_transformers_config_are_checked(tmp_path_factory):
    """GPT-NeoX's use_parallel_residual names the structure: the value the code was generated for is
    accepted, another refused, naming the key (never silently ignored)."""
    cls = config_class("gpt_neox", tmp_path_factory)
    assert cls(use_parallel_residual=True).use_parallel_residual is True
    with pytest.raises(ValueError, match="use_parallel_residual"):
        cls(use_parallel_residual=False)


# ------------------------------------------------------------------------------------ RoPE in manifests

MANIFEST_ROPE = {
    "llama-dynamic": ("llama", {"rope_type": "dynamic", "factor": 2.0}),
    "phi3-longrope": (
        "phi3",
        {
            "rope_type": "longrope",
            "short_factor": [1.0 + 0.1 * i for i in range(8)],
            "long_factor": [2.0 + 0.5 * i for i in range(8)],
            "original_max_position_embeddings": 8,
        },
    ),
}


@pytest.mark.parametrize("case", MANIFEST_ROPE)
def test_manifest_rope_scaling_builds_transformers_model(case, tmp_path):
    """dynamic and longrope in a manifest (as scaffold import writes them) build the model transformers'
    class of the family computes, short and long inputs alike; Phi-3's config.json keeps the original
    context at the top level too, as transformers' does."""
    family, scaling = MANIFEST_ROPE[case]
    overrides = {**FAMILIES[family], "max_position_embeddings": 16}
    if family == "phi3":  # transformers' Phi-3 takes the top-level one over the table's
        overrides["original_max_position_embeddings"] = 8
    hf = tiny_hf_model(family, rope_parameters={**scaling, "rope_theta": 10000.0}, **overrides)
    table = model_table(hf.config, family)
    assert table["rope_scaling"]["rope_type"] == scaling["rope_type"]
    ours = scaffold_model(tmp_path, family, table)
    load_weights(ours, hf)
    if family == "phi3":
        assert ours.config.original_max_position_embeddings == 8
    with torch.no_grad():
        for length in (6, 24, 6):
            x = ids((1, length), seed=length)
            assert_close(ours(x).logits, hf(x).logits, 1e-5, f"{case}, {length} tokens")


def test_manifest_longrope_factors_checked():
    from scaffold.errors import ManifestError
    from scaffold.spec import manifest
    from scaffold.spec.blueprints import load

    bp = load("phi3")
    m = manifest.merge(*bp.base_layers(), bp.preset(bp.default_preset))
    m["model"]["rope_scaling"] = {"rope_type": "longrope", "short_factor": [1.0, -2.0], "long_factor": "x"}
    with pytest.raises(ManifestError) as err:
        manifest.validate(m, model_keys=bp.model_keys, path="p/scaffold.toml")
    found = dict(err.value.problems)
    assert "model.rope_scaling.short_factor" in found and "model.rope_scaling.long_factor" in found
