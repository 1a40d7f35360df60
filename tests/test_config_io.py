import re
from dataclasses import dataclass, field

import pytest

from helm_scale.config_io import ConfigError, load_config, save_config


@dataclass(frozen=True)
class Optim:
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.95)

    def __post_init__(self):
        if self.lr <= 0:
            raise ValueError("lr must be > 0")


@dataclass(frozen=True)
class Run:
    name: str
    steps: int = 10
    resume: str | None = "auto"
    optim: Optim = field(default_factory=Optim)


def test_yaml_with_dotted_overrides_round_trips(tmp_path):
    (tmp_path / "c.yaml").write_text("name: tiny\noptim:\n  lr: 3e-4\n  betas: [0.9, 0.99]\n")
    cfg = load_config(Run, tmp_path / "c.yaml", ["steps=5", "optim.lr=1e-2", "resume=null"])
    assert cfg == Run("tiny", 5, None, Optim(1e-2, (0.9, 0.99)))
    save_config(cfg, tmp_path / "resolved.yaml")
    assert load_config(Run, tmp_path / "resolved.yaml") == cfg
    assert load_config(Run, tmp_path / "c.yaml").optim.lr == 3e-4  # YAML 1.1 reads 3e-4 as text


@pytest.mark.parametrize("overrides, message", [
    (["optim.lrr=1"], "unknown setting optim.lrr (did you mean optim.lr?)"),
    (["steps=ten"], "steps must be int"),
    (["optim.lr=-1"], "optim: lr must be > 0"),
    (["optim=3"], "optim must be a section"),
    (["steps"], "not of the form"),
    (["optim.betas=[a, b]"], "optim.betas[0] must be float"),
])
def test_bad_settings_name_the_dotted_key(overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(Run, None, ["name=x", *overrides])


def test_missing_required_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="name"):
        load_config(Run, None, [])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(Run, tmp_path / "nope.yaml")


def test_invalid_yaml_is_a_config_error(tmp_path):
    (tmp_path / "bad.yaml").write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml is not valid YAML"):
        load_config(Run, tmp_path / "bad.yaml")
