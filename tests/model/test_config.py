import pytest

from model.config import PRESETS, ConfigError, ModelConfig, get_preset
from model.transformer import Transformer


@pytest.mark.parametrize("changes, field", [
    ({"n_heads": 6}, "n_heads"),
    ({"n_kv_heads": 3}, "n_kv_heads"),
    ({"top_k": 9}, "top_k"),
    ({"rope_scaling": "dynamic"}, "rope_scaling"),
    ({"n_dense_layers": 5}, "n_dense_layers"),
    ({"d_model": 0}, "d_model"),
    ({"rope_factor": 0.5}, "rope_factor"),
    ({"n_shared_experts": 2}, "n_shared_experts"),
])
def test_invalid_config_names_the_field(changes, field):
    with pytest.raises(ConfigError, match=field):
        get_preset("small", **changes)


def test_unknown_preset_and_fields_are_refused():
    with pytest.raises(ConfigError, match="huge"):
        get_preset("huge")
    with pytest.raises(ConfigError, match="n_expert\\b"):
        ModelConfig.from_dict({**get_preset("tiny").to_dict(), "n_expert": 3})


def test_presets_round_trip_and_count_parameters():
    for name, cfg in PRESETS.items():
        assert ModelConfig.from_dict(cfg.to_dict()) == cfg, name
    # every kind of layer counted: dense layers, shared experts, tied embeddings
    for cfg in (get_preset("tiny"), get_preset("tiny", n_dense_layers=1),
                get_preset("tiny", n_shared_experts=1), get_preset("tiny", tie_embeddings=True),
                get_preset("tiny", n_layers=3, n_dense_layers=1, n_shared_experts=1,
                           tie_embeddings=True)):
        assert Transformer(cfg).num_parameters() == cfg.param_counts()["total"], cfg
    base = get_preset("base").param_counts()
    assert base["active"] >= 100e6 and base["total"] > 3 * base["active"]


def test_total_parameters_grow_with_experts_but_active_do_not():
    few, many = get_preset("small", n_experts=4), get_preset("small", n_experts=16)
    assert many.param_counts()["total"] > few.param_counts()["total"]
    # only the router grows with E among the active parameters
    router_growth = 12 * many.d_model * (many.n_layers - many.n_dense_layers)
    assert many.param_counts()["active"] - few.param_counts()["active"] == router_growth
