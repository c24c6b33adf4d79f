from slowed_plugin import SLowEDConfig


def test_three_forms_give_equal_objects():
    by_keywords = SLowEDConfig(tau=10, mask_ratio=0.2)
    assert SLowEDConfig.from_value([10, 0.2]) == by_keywords
    assert SLowEDConfig.from_value((10.0, 0.2)) == by_keywords
    assert SLowEDConfig.from_value({"tau": 10.0, "mask_ratio": 0.2}) == by_keywords
    assert isinstance(by_keywords.tau, float)


def test_defaults_and_switches():
    cfg = SLowEDConfig.from_value({"tau": None, "mask_ratio": 0})
    assert (cfg.slow_tuning, cfg.masking, cfg.active) == (False, False, False)
    cfg = SLowEDConfig(tau=1.0, mask_ratio=0.3)
    assert (cfg.mask_scope, cfg.project_every, cfg.tau_scope, cfg.reference_device) == (
        "sequence",
        "epoch",
        "layer",
        "cpu",
    )
    assert SLowEDConfig.from_value({"tau": 2, "mask_ratio": 0.1, "project_every": 5}).project_every == 5


def test_every_field_has_help():
    helps = SLowEDConfig.help()
    assert set(helps) == set(SLowEDConfig.keys())
    assert all(len(text) > 30 for text in helps.values())


# Bad values: tests/test_bad_input.py.


def test_describe_names_settings():
    line = SLowEDConfig(tau=10, mask_ratio=0.2).describe()
    assert "tau=10" in line and "mask_ratio=0.2" in line
    assert "Slow Tuning off" in SLowEDConfig(tau=None, mask_ratio=0.2).describe()


def test_startup_line_names_the_unit_of_project_every():
    assert "(layer, every 2 optimizer steps)" in SLowEDConfig(tau=1.0, mask_ratio=0.0, project_every=2).describe()
    assert "(layer, every 1 optimizer step)" in SLowEDConfig(tau=1.0, mask_ratio=0.0, project_every=1).describe()
    assert "(global, every epoch)" in SLowEDConfig(tau=1.0, mask_ratio=0.0, tau_scope="global").describe()
