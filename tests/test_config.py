import pytest

from nnscreener.config import ScreenerConfig, cpu_config, default_config, merge, parse_set_overrides, validate
from nnscreener.errors import ScreenerError


def test_roundtrip_through_dict_keeps_every_field():
    for cfg in (default_config(), cpu_config()):
        assert ScreenerConfig.from_dict(cfg.to_dict()) == cfg


def test_axis_order_properties_reverse_xyz():
    cfg = default_config()
    assert cfg.network.patch_size_xyz == (96, 96, 64)
    assert cfg.network.patch_size_zyx == (64, 96, 96)
    assert cfg.preprocessing.spacing_zyx == (2.25, 1.5, 1.5)


def test_cli_overrides_are_typed_and_nested():
    cfg = merge(cpu_config(), parse_set_overrides(["ssl.learning_rate=0.01", "network.patch_size_xyz=64,64,32",
                                                   "preprocessing.use_clahe=false"]))
    assert cfg.ssl.learning_rate == 0.01
    assert cfg.network.patch_size_xyz == (64, 64, 32)
    assert cfg.preprocessing.use_clahe is False


def test_unknown_keys_and_bad_choices_raise():
    with pytest.raises(ScreenerError, match="unknown config key"):
        merge(cpu_config(), {"ssl": {"no_such_field": 1}})
    with pytest.raises(ScreenerError, match="density.density"):
        validate(merge(cpu_config(), {"density": {"density": "kde"}}))
    with pytest.raises(ScreenerError, match="section.field=value"):
        parse_set_overrides(["oops"])


def test_kept_window_channel_adds_a_channel_and_needs_clahe():
    assert default_config().preprocessing.channels == 1  # the paper's single channel
    assert cpu_config().preprocessing.channels == 2  # the cpu preset keeps the window (measured, RESULTS.md)
    kept = validate(merge(default_config(), parse_set_overrides(["preprocessing.keep_window_channel=true"])))
    assert kept.preprocessing.channels == 2
    with pytest.raises(ScreenerError, match="keep_window_channel=true needs preprocessing.use_clahe"):
        validate(merge(kept, {"preprocessing": {"use_clahe": False}}))
