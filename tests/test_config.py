"""The config tree: overrides, method switching, YAML round trip."""

from pathlib import Path

import pytest

from sslvit.methods import method_names
from sslvit.train.config import Config, apply_overrides, load_config


def test_numbers_in_exponent_form_are_numbers():
    # YAML 1.1 reads 1e-3 (no dot) as a string
    config = apply_overrides(Config(), ["optim.base_lr=1e-3", "optim.weight_decay=5E-2"])
    assert config.optim.base_lr == 1e-3 and config.optim.weight_decay == 0.05
    with pytest.raises(ValueError, match="^--set optim.base_lr: expected float, got 'fast'$"):
        apply_overrides(Config(), ["optim.base_lr=fast"])


def test_method_name_switches_to_that_methods_fields(tmp_path):
    config = apply_overrides(Config(), ["method.temperature=0.3", "method.name=simclr"])
    assert config.method.name == "simclr" and config.method.temperature == 0.3
    config.save(tmp_path / "c.yaml")
    again = load_config(tmp_path / "c.yaml")
    assert again.method == config.method
    with pytest.raises(ValueError):
        apply_overrides(Config(), ["method.temperature=0.3"])  # MAE has no temperature


@pytest.mark.parametrize("name", method_names())
def test_every_method_has_a_recipe_that_loads(name):
    recipe = Path(__file__).resolve().parents[1] / "sslvit" / "recipes" / f"{name}.yaml"
    assert load_config(recipe).method.name == name
