import sys
from dataclasses import dataclass

import pytest

from harness.registry import Registry, UnknownNameError


@dataclass(frozen=True)
class Cfg:
    alpha: float = 1.0
    beta: int = 2


@pytest.fixture
def reg() -> Registry:
    r = Registry("widget")

    @r.register("double", config=Cfg)
    def double(x, config: Cfg):
        return 2 * x * config.alpha + config.beta

    @r.register()
    def plain(x):
        return x

    return r


def test_create_binds_default_config(reg):
    assert reg.create("double")(1) == 4.0


def test_create_replaces_fields_and_drops_none(reg):
    method = reg.create("double", alpha=3.0, beta=None)
    assert method.config == Cfg(alpha=3.0, beta=2)
    assert method(1) == 8.0


def test_unknown_setting_lists_fields(reg):
    with pytest.raises(TypeError, match="settings: \\['alpha', 'beta'\\]"):
        reg.create("double", gamma=1)


def test_unknown_name_lists_known_and_closest(reg):
    with pytest.raises(UnknownNameError) as e:
        reg.get("doubel")
    assert "did you mean 'double'" in str(e.value)
    assert "double, plain" in str(e.value)


def test_duplicate_name_refused(reg):
    with pytest.raises(ValueError, match="already registered"):
        reg.register("plain")(lambda x: x)


def test_names_filter_and_membership(reg):
    assert reg.names() == ["double", "plain"]
    assert reg.names("d*") == ["double"]
    assert "plain" in reg and "nope" not in reg and len(reg) == 2


def test_config_must_be_frozen_dataclass():
    @dataclass
    class Mutable:
        a: int = 1

    with pytest.raises(TypeError, match="frozen dataclass"):
        Registry("x").register("a", config=Mutable)


def test_entry_points_are_loaded_on_first_read(monkeypatch):
    reg = Registry("gadget", "harness.test-gadgets")
    loaded = []

    class FakeEntryPoint:
        def load(self):
            reg.register("external")(lambda: None)
            loaded.append(True)

    monkeypatch.setattr("harness.registry.entry_points", lambda group: [FakeEntryPoint()] if group == "harness.test-gadgets" else [])
    assert reg.names() == ["external"]
    assert reg.names() == ["external"] and loaded == [True]  # loaded once


def test_project_registries_are_filled():
    from harness.registry import ARCHS, ATTACKS, DATASETS, TRIGGERS

    assert "badencoder" in ATTACKS
    assert {"fmnist", "digits", "cifar10", "stl10", "gtsrb", "svhn"} <= set(DATASETS.names())
    assert "resnet18" in ARCHS and "patch" in TRIGGERS


def test_tags_say_what_kind_of_method_an_entry_is():
    reg = Registry("attack")
    reg.register("poison", tags=("supervised",))(lambda: None)
    reg.register("tamper")(lambda: None)
    assert reg.has_tag("poison", "supervised") and not reg.has_tag("tamper", "supervised")
    with pytest.raises(UnknownNameError):
        reg.has_tag("missing", "supervised")


BUILTIN: Registry = Registry("thing", builtins=("builtin_things",))  # filled by a module the next test writes


def test_a_registry_imports_its_built_in_modules_the_first_time_it_is_read(tmp_path, monkeypatch):
    (tmp_path / "builtin_things.py").write_text(
        "from tests.test_registry import BUILTIN\nBUILTIN.register('first')(lambda: 1)\nBUILTIN.register('second')(lambda: 2)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "builtin_things" not in sys.modules
    assert BUILTIN.names() == ["first", "second"] and "builtin_things" in sys.modules
    monkeypatch.delitem(sys.modules, "builtin_things")


def test_importing_the_method_packages_is_nobodys_chore():
    """A fresh interpreter reads the registries and finds every built-in method, one per module named after it."""
    import json
    import subprocess
    from pathlib import Path

    code = "import json; from harness.registry import ATTACKS, DEFENSES; print(json.dumps([ATTACKS.names(), DEFENSES.names()]))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    root = Path(__file__).resolve().parents[1]
    modules = [sorted(p.stem for p in (root / package).glob("*.py") if p.stem != "__init__") for package in ("attacks", "defenses")]
    assert json.loads(done.stdout) == modules
