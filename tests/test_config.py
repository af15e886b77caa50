import pytest
from hypothesis import given
from hypothesis import strategies as st

from lococo import ConfigError, LoCoCoConfig


def test_defaults_follow_the_paper():
    cfg = LoCoCoConfig()
    assert (cfg.mem_size, cfg.segment_size, cfg.kernel_size, cfg.buffer) == (128, 512, 21, 16)
    assert cfg.n_heavy == 64 and cfg.n_fused == 64
    assert cfg.lambda_init == 0.5 and cfg.score_mode == "last"


@given(
    mem=st.integers(1, 1024),
    rho=st.floats(0, 1),
    kernel=st.integers(0, 20).map(lambda k: 2 * k + 1),
    mode=st.sampled_from(["last", "accumulated"]),
)
def test_json_round_trip(mem, rho, kernel, mode):
    cfg = LoCoCoConfig(mem_size=mem, hh_keep_rate=rho, kernel_size=kernel, score_mode=mode)
    again = LoCoCoConfig.from_json(cfg.to_json())
    assert again == cfg
    assert again.n_heavy + again.n_fused == mem


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(mem_size=0), "mem_size"),
        (dict(kernel_size=4), "odd"),
        (dict(hh_keep_rate=1.5), "hh_keep_rate"),
        (dict(score_mode="sum"), "score_mode"),
        (dict(local_window=100, mem_size=128, hh_keep_rate=0.5), "local_window"),
        (dict(activation="tanh"), "activation"),
        (dict(segment_size=2.5), "integer"),
        (dict(positions="clamped"), "positions"),
        (dict(bottleneck=-1), "bottleneck"),
        (dict(separable=1), "separable"),
    ],
)
def test_bad_values_name_the_field(kwargs, words):
    with pytest.raises(ConfigError, match=words):
        LoCoCoConfig(**kwargs)


def test_unknown_json_field_is_refused():
    with pytest.raises(ConfigError, match="unknown LoCoCoConfig field"):
        LoCoCoConfig.from_dict({"mem_size": 8, "memsize": 9})


def test_save_and_load(tmp_path):
    cfg = LoCoCoConfig(mem_size=64, buffer=8)
    cfg.save(tmp_path / "c.json")
    assert LoCoCoConfig.load(tmp_path / "c.json") == cfg


@pytest.mark.parametrize("bad", [-0.1, 1.5, "0.5", True])
def test_lambda_init_outside_the_unit_interval_is_refused(bad):
    with pytest.raises(ConfigError, match="lambda_init must be a number in \\[0, 1\\]"):
        LoCoCoConfig(lambda_init=bad)


def test_lococo_0_1_configs_with_clamp_lambda_still_load():
    cfg = LoCoCoConfig.from_dict({"mem_size": 64, "clamp_lambda": False})
    assert cfg.mem_size == 64 and "clamp_lambda" not in cfg.to_dict()
