"""The attention and position options of the 2025-26 families, unit by unit: what each resolves to
(per layer), the parts against transformers' own functions, the generated code with each option on a
family that lacks it (cache, packing, the option biting), and the combinations refused with their key."""

from __future__ import annotations

import pytest
import torch

from scaffold import arch
from scaffold.arch.hf_config import from_hf, to_hf
from scaffold.codegen.parts.attention import sink_eager_attention_forward
from scaffold.spec.blueprints import load as load_blueprint
from tests._parity import TINY_HF, assert_close, assert_packed_equals_alone


def _resolved(family: str, **model):
    bp = load_blueprint(family)
    m = bp.resolve(bp.preset(None), {"model": model} if model else None, {"project": {"name": "x"}})
    return arch.for_blueprint(bp, m["model"])


# -- what resolves, per layer ------------------------------------------------------------------------


def test_smollm3_every_fourth_layer_has_no_rope():
    a = _resolved("smollm3", num_hidden_layers=8)
    assert [layer.rope is not None for layer in a.layers] == [True, True, True, False] * 2
    assert a.nope_layers and a.transformers_class == "SmolLM3ForCausalLM"
    given = _resolved("smollm3", num_hidden_layers=3, no_rope_layers=[0, 1, 1])
    assert [layer.rope is not None for layer in given.layers] == [False, True, True]


def test_gemma3_sliding_layers_get_the_local_base():
    a = _resolved("gemma3", num_hidden_layers=6, rope_scaling={"rope_type": "linear", "factor": 8.0})
    assert a.layer_types == ["sliding_attention"] * 5 + ["full_attention"]
    assert [layer.rope.theta for layer in a.layers] == [10000.0] * 5 + [1e6]
    assert a.layers[5].rope.type == "linear" and a.layers[0].rope.type == "default"
    assert a.rope_parameters() == {
        "full_attention": {"rope_type": "linear", "rope_theta": 1e6, "factor": 8.0},
        "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
    }
    one = _resolved("gemma3", rope_local_base_freq=None)  # one RoPE for every layer: not Gemma 3's network
    assert one.local_rope is None and one.differences == ("rope_local_base_freq",)
    assert one.class_prefix == "ScaffoldGemma3"


def test_per_layer_type_rope_maps_both_ways():
    model = {
        "rope_theta": 1e6,
        "rope_local_base_freq": 1e4,
        "sliding_window": 4,
        "layer_types": ["sliding_attention", "full_attention"],
        "num_hidden_layers": 2,
    }
    a = arch.resolve(model, model_keys=["sliding_window", "layer_types"])
    hf = to_hf(a, model)
    assert set(hf["rope_parameters"]) == {"full_attention", "sliding_attention"}
    assert "rope_local_base_freq" not in hf and "rope_theta" not in hf
    back = from_hf(hf)
    assert back["rope_theta"] == 1e6 and back["rope_local_base_freq"] == 1e4 and back["rope_scaling"] is None
    # a published Gemma 3 config.json (transformers 4.x spelling) carries the flat key itself
    assert from_hf({"rope_theta": 1e6, "rope_local_base_freq": 1e4})["rope_local_base_freq"] == 1e4


def test_import_reads_nope_and_a_switched_off_window():
    out = from_hf({"no_rope_layers": [1, 0], "use_sliding_window": False, "sliding_window": 4096})
    assert out["nope_layers"] is True and out["sliding_window"] is None


# -- attention sinks ---------------------------------------------------------------------------------


def test_sink_attention_equals_gpt_oss_eager():
    from transformers.models.gpt_oss.modeling_gpt_oss import eager_attention_forward as theirs

    torch.manual_seed(0)

    class Module(torch.nn.Module):
        num_key_value_groups = 2

        def __init__(self):
            super().__init__()
            self.sinks = torch.nn.Parameter(torch.randn(4))

    module = Module().eval()
    q, k, v = torch.randn(2, 4, 6, 8), torch.randn(2, 2, 6, 8), torch.randn(2, 2, 6, 8)
    mask = torch.full((6, 6), float("-inf")).triu(1)[None, None].expand(2, 1, 6, 6)
    ours, w = sink_eager_attention_forward(module, q, k, v, mask, 0.3, s_aux=module.sinks)
    expected, expected_w = theirs(module, q, k, v, mask, 0.3)
    torch.testing.assert_close(ours, expected, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(w, expected_w, atol=1e-6, rtol=1e-6)
    assert (w.sum(-1) < 1).all()  # the sink took some of every row's attention


def _project(tmp_path, name, family="llama", test=None, **model):
    from scaffold.project.new import create_project

    sizes = {k: v for k, v in TINY_HF.items() if k in load_blueprint(family).model_keys}
    return create_project(
        name,
        family,
        projects_dir=tmp_path / "projects",
        overrides={"model": {**sizes, **model}, "test": {"attn_implementation": "eager", **(test or {})}},
    )


def _load(project, backend="eager"):
    from transformers import AutoConfig, AutoModelForCausalLM

    from scaffold.build import build
    from scaffold.project import load_project

    out = build(load_project(project)).output_dir
    config = AutoConfig.from_pretrained(out, trust_remote_code=True, attn_implementation=backend)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, trust_remote_code=True, dtype=torch.float32).eval()


def _ids(seed=3, shape=(2, 20)):
    return torch.randint(3, 300, shape, generator=torch.Generator().manual_seed(seed))


def _check_generation(model):
    prompt = _ids(seed=2, shape=(1, 6))
    greedy = {"max_new_tokens": 8, "do_sample": False, "pad_token_id": 0, "eos_token_id": 300}
    with torch.no_grad():
        assert torch.equal(
            model.generate(prompt, **greedy), model.generate(prompt, use_cache=False, **greedy)
        )


def test_sinks_on_a_llama(tmp_path):
    """Sinks at -inf-like logits give exactly the network without them; trained ones change it."""
    sinks = _load(_project(tmp_path, "sinks", attention_sinks=True))
    plain = _load(_project(tmp_path, "plain"))
    assert type(sinks).__name__ == "ScaffoldLlamaForCausalLM"  # not transformers' Llama network any more
    assert sinks.model.layers[0].self_attn.sinks.shape == (4,)
    assert not sinks._supports_sdpa
    state = {k: v for k, v in sinks.state_dict().items() if not k.endswith("sinks")}
    plain.load_state_dict(state, strict=True)
    ids = _ids()
    with torch.no_grad():
        for layer in sinks.model.layers:
            layer.self_attn.sinks.fill_(-1e4)
        assert_close(sinks(ids).logits, plain(ids).logits, 1e-5, "sinks switched off")
        for layer in sinks.model.layers:
            layer.self_attn.sinks.fill_(2.0)
        assert (sinks(ids).logits - plain(ids).logits).abs().max() > 1e-3
    _check_generation(sinks)
    assert_packed_equals_alone(sinks)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="flex attention takes sink logits on CUDA only")
def test_sinks_on_flex_attention_equal_eager(tmp_path):
    model = _load(_project(tmp_path, "sinks_flex", attention_sinks=True)).cuda()
    ids = _ids().cuda()
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.sinks.normal_()
        eager = model(ids).logits
        model.set_attn_implementation("flex_attention")
        assert_close(model(ids).logits, eager, 1e-4, "flex_attention against eager, with sinks")


# -- Granite's scalings and NoPE on another family --------------------------------------------------


def test_granite_scalings_on_qwen3_and_nope_layers_on_mistral(tmp_path):
    """The keys combine where no transformers class has them: eager = sdpa, cache, packing."""
    from tests._parity import assert_family_checks

    scaled = _load(
        _project(
            tmp_path,
            "scaled",
            "qwen3",
            embedding_multiplier=2.0,
            residual_multiplier=0.5,
            attention_multiplier=0.2,
            logits_scaling=3.0,
        )
    )
    assert scaled.model.layers[0].self_attn.scaling == 0.2
    assert_family_checks(scaled)
    nope = _load(_project(tmp_path, "nope", "mistral", nope_layers=True, no_rope_layers=[0, 1]))
    assert [layer.self_attn.use_rope for layer in nope.model.layers] == [False, True]
    assert_family_checks(nope)


# -- refused combinations ------------------------------------------------------------------------------

REFUSED = [
    ("llama", {"attention_sinks": True}, {"attn_implementation": "sdpa"}, "test.attn_implementation", "sink"),
    ("gemma2", {"attention_sinks": True}, None, "model.attention_sinks", "soft-caps"),
    ("llama", {"nope_layers": True, "position_embedding": "alibi"}, None, "model.nope_layers", "'alibi'"),
    (
        "smollm3",
        {"no_rope_layers": [1, 0]},
        None,
        "model.no_rope_layers",
        "2 entries for num_hidden_layers = 4",
    ),
    ("smollm3", {"no_rope_layers": [1, 0, 2, 1]}, None, "model.no_rope_layers", "0 or 1"),
    ("llama", {"no_rope_layers": [1, 1, 1, 1]}, None, "model.no_rope_layers", "unknown key"),
    (
        "gemma3",
        {"position_embedding": "none"},
        None,
        "model.rope_local_base_freq",
        "position_embedding = rope",
    ),
    ("gemma2", {"attention_multiplier": 0.1}, None, "model.attention_multiplier", "query_pre_attn_scalar"),
    (
        "llama",
        {"residual_multiplier": 0.5, "norm_position": "post"},
        None,
        "model.residual_multiplier",
        "pre",
    ),
    ("gemma", {"embedding_multiplier": 2.0}, None, "model.embedding_multiplier", "embedding_scale"),
]


@pytest.mark.parametrize(
    ("family", "model", "test", "key", "message"),
    REFUSED,
    ids=[
        "sinks-sdpa",
        "sinks-softcap",
        "nope-alibi",
        "nope-length",
        "nope-values",
        "nope-list-without-nope",
        "local-rope-without-rope",
        "two-score-scales",
        "residual-multiplier-post-norm",
        "two-embedding-scales",
    ],
)
def test_manifest_names_the_bad_key(tmp_path, family, model, test, key, message):
    from scaffold.errors import ManifestError
    from scaffold.project.new import create_project

    overrides = {"model": model, "test": {"attn_implementation": "eager", **(test or {})}}
    with pytest.raises(ManifestError) as err:
        create_project("bad", family, projects_dir=tmp_path, overrides=overrides)
    assert key in str(err.value) and message in str(err.value)
    assert not (tmp_path / "bad").exists()


# -- gated output, L2 qk-norm, interleaved RoPE ----------------------------------------------------------


def test_interleaved_rope_equals_glm():
    from transformers.models.glm.modeling_glm import apply_rotary_pos_emb as glm

    from scaffold.codegen.parts.rotary import RotaryEmbedding, apply_interleaved_rotary_pos_emb

    torch.manual_seed(0)
    q, k = torch.randn(2, 4, 5, 16), torch.randn(2, 2, 5, 16)
    for rotary_dim in (16, 8):  # whole heads, and GLM's half (partial_rotary_factor = 0.5)
        cos, sin = RotaryEmbedding(rotary_dim, 10000.0)(q, torch.arange(5)[None].expand(2, 5))
        ours = apply_interleaved_rotary_pos_emb(q, k, cos, sin)
        theirs = glm(q, k, cos, sin)
        for a, b in zip(ours, theirs):
            torch.testing.assert_close(a, b, atol=0, rtol=0)
        assert not torch.allclose(ours[0], apply_half(q, k, cos, sin)[0])


def apply_half(q, k, cos, sin):
    from scaffold.codegen.parts.rotary import apply_partial_rotary_pos_emb

    return apply_partial_rotary_pos_emb(q, k, cos, sin)


def test_l2_norm_equals_llama4s():
    from transformers.models.llama4.modeling_llama4 import Llama4TextL2Norm

    from scaffold.codegen.parts.norms import weightless_rms_norm

    x = torch.randn(2, 4, 5, 16, dtype=torch.bfloat16)
    assert torch.equal(weightless_rms_norm(x, 1e-5), Llama4TextL2Norm(1e-5)(x))


def test_qwen3_next_gated_attention_equals_transformers(tmp_path):
    """Qwen3-Next's full-attention layer (sigmoid output gate from q_proj, unit-offset per-head q/k norms,
    a quarter of each head rotated) against scaffold's attention with those keys."""
    from transformers import Qwen3NextConfig
    from transformers.models.qwen3_next.modeling_qwen3_next import Qwen3NextAttention

    config = Qwen3NextConfig(
        **{
            k: TINY_HF[k] for k in ("vocab_size", "hidden_size", "num_attention_heads", "num_key_value_heads")
        },
        head_dim=16,
        num_hidden_layers=1,
        partial_rotary_factor=0.25,
        attn_implementation="eager",
    )
    torch.manual_seed(0)
    theirs = Qwen3NextAttention(config, 0).eval()
    with torch.no_grad():
        for p in theirs.parameters():
            p.normal_(0, 0.3)
    model = _load(
        _project(
            tmp_path,
            "gated",
            "qwen3",
            num_hidden_layers=1,
            head_dim=16,
            norm_type="rmsnorm_unit_offset",
            partial_rotary_factor=0.25,
            attention_output_gate=True,
        )
    )
    ours = model.model.layers[0].self_attn
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(2, 7, TINY_HF["hidden_size"])
    mask = torch.full((7, 7), float("-inf")).triu(1)[None, None]
    with torch.no_grad():
        rope = model.model.rotary_emb(x, torch.arange(7)[None].expand(2, 7))
        expected, _ = theirs(x, rope, mask)
        torch.testing.assert_close(ours(x, mask, position_embeddings=rope), expected, atol=1e-5, rtol=1e-5)
        theirs.q_proj.weight[16:32].zero_()  # head 0's gate rows: sigmoid(0) = 1/2 on its output
        ours.load_state_dict(theirs.state_dict(), strict=True)
        torch.testing.assert_close(ours(x, mask, position_embeddings=rope), theirs(x, rope, mask)[0])
    _check_generation(model)


@pytest.mark.parametrize(
    "model",
    [
        {"qk_norm": "l2"},
        {"qk_norm": "l2", "nope_layers": True, "no_rope_layers": [1, 0]},
        {"rope_interleaved": True, "partial_rotary_factor": 0.5},
        {"attention_output_gate": True, "qk_norm": "head"},
    ],
    ids=["l2", "l2-nope", "interleaved-partial", "gate"],
)
def test_variant_on_a_llama(tmp_path, model):
    """Each option on a Llama: it changes the network, eager = sdpa, the cache and packing hold."""
    from tests._parity import assert_family_checks

    variant = _load(_project(tmp_path, "variant", **model))
    assert type(variant).__name__ == "ScaffoldLlamaForCausalLM"
    assert_family_checks(variant)
    if "no_rope_layers" in model:  # Llama 4 normalises only the layers that turn by RoPE
        source = (tmp_path / "projects" / "variant" / "modeling_llama.py").read_text()
        assert "        if self.use_rope:\n            cos, sin" in source
        assert source.count("weightless_rms_norm(q,") == 1
