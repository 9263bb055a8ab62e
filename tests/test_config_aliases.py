"""Deprecated config keys: ``model.backbone_lr_scale`` (image-cls) is now ``model.encoder_lr_scale``,
the name text-cls and fusion use. The old key warns and maps from YAML, ``--set``, a saved run's
``config.yaml`` and the constructor; both names at once are a one-line error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from medmm.config import resolve, run_config, task_defaults
from medmm.errors import ConfigError
from medmm.plugins import load_plugins
from medmm.runner import resolved_config
from medmm_plugins.image_cls.config import ImageClsModel

OLD, NEW = "model.backbone_lr_scale", "model.encoder_lr_scale"


@pytest.fixture(scope="module")
def spec():
    return load_plugins().registry.get("task", "image-cls")


def test_new_key_works_without_warning(spec, recwarn: pytest.WarningsRecorder) -> None:
    cfg = resolve(task_defaults(spec), None, [f"{NEW}=0.25"])
    assert cfg.model.encoder_lr_scale == 0.25
    assert not [w for w in recwarn if issubclass(w.category, DeprecationWarning)]
    assert "backbone_lr_scale" not in cfg.model.model_dump()  # one name in the resolved config.yaml


def test_old_key_warns_and_maps_from_set_and_yaml(spec, tmp_path: Path) -> None:
    with pytest.warns(DeprecationWarning, match=r"'model\.backbone_lr_scale' is deprecated; use 'model\.enc"):
        cfg = resolve(task_defaults(spec), None, [f"{OLD}=0.05"])
    assert cfg.model.encoder_lr_scale == 0.05
    user = tmp_path / "mine.yaml"
    user.write_text("model:\n  backbone_lr_scale: 0.2\n")
    with pytest.warns(DeprecationWarning):
        assert resolve(task_defaults(spec), user).model.encoder_lr_scale == 0.2
    with pytest.warns(DeprecationWarning):
        assert ImageClsModel(backbone_lr_scale=0.3).encoder_lr_scale == 0.3
    model = ImageClsModel(encoder_lr_scale=0.4)
    with pytest.warns(DeprecationWarning):  # the deprecated dict bridge answers to the old name too
        assert "backbone_lr_scale" in model and model["backbone_lr_scale"] == 0.4
    assert "backbone_lr_scale" not in model.keys()  # one name in the config
    with pytest.warns(DeprecationWarning), pytest.raises(ConfigError, match=r"encoder_lr_scale' must be >="):
        resolve(task_defaults(spec), None, [f"{OLD}=-1"])  # checked as the new key


def test_both_names_are_a_one_line_error(spec, tmp_path: Path) -> None:
    with pytest.warns(DeprecationWarning), pytest.raises(ConfigError, match="two names of one") as exc:
        resolve(task_defaults(spec), None, [f"{OLD}=0.1", f"{NEW}=0.2"])
    assert "\n" not in str(exc.value)
    user = tmp_path / "both.yaml"
    user.write_text("model:\n  backbone_lr_scale: 0.1\n  encoder_lr_scale: 0.2\n")
    with pytest.raises(ConfigError, match=r"'model\.backbone_lr_scale' \(deprecated\) and 'model\.encoder_lr"):
        resolve(task_defaults(spec), user)
    with pytest.raises(ConfigError, match="both given"):
        ImageClsModel(backbone_lr_scale=0.1, encoder_lr_scale=0.2)


def test_old_run_dir_still_loads(spec, tmp_path: Path) -> None:
    """What ``medmm predict`` / ``resume`` read: a run dir written before the rename."""
    saved = task_defaults(spec).model_dump(mode="json")
    saved["model"]["backbone_lr_scale"] = saved["model"].pop("encoder_lr_scale")
    saved["model"]["backbone_lr_scale"] = 0.1
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(saved))
    (tmp_path / "run.json").write_text(json.dumps({"task": "image-cls"}))
    with pytest.warns(DeprecationWarning):
        cfg = run_config(spec, tmp_path)
    assert cfg.model.encoder_lr_scale == 0.1


def test_old_key_set_by_the_user_beats_the_recipe(spec) -> None:
    """efficientnet_lite0's recipe sets encoder_lr_scale=0.1 unless the user set it, by either name."""
    with pytest.warns(DeprecationWarning):
        cfg = resolved_config(spec, None, ["model.backbone=efficientnet_lite0", f"{OLD}=0.5"])
    assert cfg.model.encoder_lr_scale == 0.5 and NEW not in cfg.provenance
    assert resolved_config(spec, None, ["model.backbone=efficientnet_lite0"]).model.encoder_lr_scale == 0.1


def test_recipe_written_with_the_old_key_does_not_beat_the_user(spec, monkeypatch: pytest.MonkeyPatch) -> None:
    """A (third-party) backbone recipe naming the deprecated key is read as the current key."""
    import types

    import medmm.plugins
    from medmm.recipes import apply_recipe

    backbone = types.SimpleNamespace(extra={"recipe": {OLD: 0.7, "engine.lr": 0.002}})
    monkeypatch.setattr(medmm.plugins, "get_registry", lambda: types.SimpleNamespace(get=lambda kind, name: backbone))
    cfg = apply_recipe(resolve(task_defaults(spec), None, [f"{NEW}=0.5"]), spec, {NEW})
    assert cfg.model.encoder_lr_scale == 0.5 and NEW not in cfg.provenance and OLD not in cfg.provenance
    assert cfg.engine.lr == 0.002  # the rest of the recipe applies
    cfg = apply_recipe(resolve(task_defaults(spec)), spec, set())
    assert cfg.model.encoder_lr_scale == 0.7 and cfg.provenance[NEW] == "recipe of backbone " + cfg.model.backbone
