"""The manifest schema: validation lists every problem with its key path; precedence CLI > file > defaults."""

import pytest

from scaffold.errors import ManifestError, UsageError
from scaffold.spec import manifest, schema
from scaffold.spec.blueprints import load as load_blueprint


@pytest.fixture()
def llama():
    return load_blueprint("llama")


def resolved(bp, *layers):
    return manifest.merge(*bp.base_layers(), bp.preset("4m"), *layers)


def problems(bp, *layers):
    with pytest.raises(ManifestError) as err:
        manifest.validate(resolved(bp, *layers), model_keys=bp.model_keys, path="p/scaffold.toml")
    return dict(err.value.problems), str(err.value)


def test_defaults_and_presets_validate(llama):
    for preset in llama.presets:
        m = manifest.merge(*llama.base_layers(), llama.preset(preset))
        manifest.validate(m, model_keys=llama.model_keys)


def test_every_problem_reported_at_once_with_key_paths(llama):
    found, text = problems(
        llama,
        {
            "model": {"hidden_size": -3, "vocab_size": 0, "num_layers": 2, "rope_theta": "big"},
            "test": {"dtype": "float8", "steps": 1.5},
            "extra": {"x": 1},
        },
    )
    assert found.keys() == {
        "model.hidden_size",
        "model.vocab_size",
        "model.num_layers",
        "model.rope_theta",
        "test.dtype",
        "test.steps",
        "extra",
    }
    assert "must be positive, got -3" in found["model.hidden_size"]
    assert found["model.num_layers"] == "unknown key"
    assert all(line.startswith("p/scaffold.toml: ") for line in text.splitlines())


def test_head_divisibility(llama):
    found, _ = problems(llama, {"model": {"hidden_size": 250, "head_dim": None, "num_attention_heads": 4}})
    assert "does not divide hidden_size = 250" in found["model.num_attention_heads"]
    found, _ = problems(llama, {"model": {"num_attention_heads": 4, "num_key_value_heads": 3}})
    assert "3 does not divide num_attention_heads = 4" in found["model.num_key_value_heads"]
    # an explicit head_dim makes any head count legal
    manifest.validate(
        resolved(llama, {"model": {"hidden_size": 250, "num_attention_heads": 4, "head_dim": 32}}),
        model_keys=llama.model_keys,
    )


def test_rope_scaling_checked(llama):
    found, _ = problems(llama, {"model": {"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}})
    assert "model.rope_scaling.low_freq_factor" in found
    found, _ = problems(llama, {"model": {"rope_scaling": {"rope_type": "yarn2"}}})
    assert "model.rope_scaling.rope_type" in found


def test_bool_is_not_a_number(llama):
    found, _ = problems(llama, {"model": {"hidden_size": True}})
    assert found["model.hidden_size"] == "must be an integer, got bool True"


def test_family_rejects_keys_it_does_not_have(llama):
    found, _ = problems(llama, {"model": {"layer_norm_eps": 1e-5}})
    assert found["model.layer_norm_eps"] == "unknown key for this blueprint"


def test_precedence_cli_over_file_over_defaults(llama):
    file_layer = {"model": {"hidden_size": 512, "num_hidden_layers": 6}}
    cli_layer = manifest.parse_sets(["hidden_size=128", "model.rope_theta=5e5"])
    m = resolved(llama, file_layer, cli_layer)
    assert m["model"]["hidden_size"] == 128  # CLI
    assert m["model"]["num_hidden_layers"] == 6  # file
    assert m["model"]["intermediate_size"] == 768  # preset
    assert m["model"]["rope_theta"] == 5e5
    assert m["test"]["steps"] == 3  # scaffold's defaults


def test_null_removes_a_key(llama):
    m = resolved(llama, {"model": {"sliding_window": 64}}, manifest.parse_sets(["sliding_window=null"]))
    assert "sliding_window" not in m["model"]


def test_parse_sets_reads_toml_values():
    layer = manifest.parse_sets(['rope_scaling={rope_type="linear", factor=2.0}', "tie_word_embeddings=true"])
    assert layer["model"] == {
        "rope_scaling": {"rope_type": "linear", "factor": 2.0},
        "tie_word_embeddings": True,
    }
    with pytest.raises(UsageError, match="no such manifest key"):
        manifest.parse_sets(["hiden_size=3"])
    with pytest.raises(UsageError, match="key=value"):
        manifest.parse_sets(["hidden_size"])


def test_dumps_round_trips(llama, tmp_path):
    m = resolved(llama, {"model": {"rope_scaling": {"rope_type": "linear", "factor": 2.0}}})
    path = tmp_path / "scaffold.toml"
    path.write_text(manifest.dumps(m, header="# hello"))
    assert manifest.load(path) == m


def test_bad_toml_names_the_file(tmp_path):
    path = tmp_path / "scaffold.toml"
    path.write_text("[model\nhidden_size = 3")
    with pytest.raises(ManifestError, match=r"scaffold.toml: not valid TOML"):
        manifest.load(path)


def test_schema_documents_every_key_once():
    text = schema.describe()
    paths = [f.path for f in schema.FIELDS]
    assert len(paths) == len(set(paths))
    for f in schema.FIELDS:
        assert f.doc and f.key in text
