import math

import pytest

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


@pytest.mark.parametrize(
    "value, fragment",
    [
        ({"tau": -1, "mask_ratio": 0.2}, "`slowed.tau` must be a finite number > 0"),
        ({"tau": 0, "mask_ratio": 0.2}, "got 0"),
        ({"tau": math.nan, "mask_ratio": 0.2}, "got nan"),
        ({"tau": math.inf, "mask_ratio": 0.2}, "got inf"),
        ({"tau": "10", "mask_ratio": 0.2}, "got '10'"),
        ({"tau": True, "mask_ratio": 0.2}, "got True"),
        ({"tau": 1, "mask_ratio": 1.0}, "`slowed.mask_ratio` must be a number with 0 <= mask_ratio < 1"),
        ({"tau": 1, "mask_ratio": -0.1}, "got -0.1"),
        ({"tau": 1, "mask_ratio": math.nan}, "got nan"),
        ({"tau": 1, "mask_ratio": None}, "got None"),
        ({"tau": 1, "mask_ratio": 0.2, "mask_scope": "token"}, "`slowed.mask_scope` must be one of batch, sequence"),
        ({"tau": 1, "mask_ratio": 0.2, "tau_scope": "model"}, "`slowed.tau_scope` must be one of layer, global"),
        ({"tau": 1, "mask_ratio": 0.2, "project_every": 0}, "`slowed.project_every` must be `epoch` or a positive"),
        ({"tau": 1, "mask_ratio": 0.2, "project_every": "step"}, "got 'step'"),
        ({"tau": 1, "mask_ratio": 0.2, "project_every": 2.5}, "got 2.5"),
        ({"tau": 1, "mask_ratio": 0.2, "reference_device": "gpu"}, "`slowed.reference_device` must be one of"),
        ({"tau": 1, "mask_ratio": 0.2, "mask_ration": 0.1}, "`slowed.mask_ration` is not a SLowED key"),
        ({"mask_ratio": 0.2}, "`slowed.tau` is required"),
        ({"tau": 1.0}, "`slowed.mask_ratio` is required"),
        ([10], "short form must be [tau, mask_ratio] with 2 values, got 1"),
        ([10, 0.2, "batch"], "with 2 values, got 3"),
        ([10, 2.0], "`slowed.mask_ratio`"),
        ("10, 0.2", "`slowed` must be a mapping"),
        (10, "got 10"),
    ],
)
def test_bad_input_is_one_clear_line(value, fragment):
    with pytest.raises(ValueError) as err:
        SLowEDConfig.from_value(value)
    message = str(err.value)
    assert fragment in message
    assert "\n" not in message


def test_describe_names_settings():
    line = SLowEDConfig(tau=10, mask_ratio=0.2).describe()
    assert "tau=10" in line and "mask_ratio=0.2" in line
    assert "Slow Tuning off" in SLowEDConfig(tau=None, mask_ratio=0.2).describe()
