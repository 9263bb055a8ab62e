"""Config: typed models (engine defaults defined once), task YAMLs of differences, user file and
--set layers, one-line errors naming the dotted key, JSON Schema, saved runs and legacy YAML tasks."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from medmm.config import (EngineConfig, Range, TaskConfig, apply_overrides, json_schema, load_yaml, resolve,
                          task_defaults)
from medmm.errors import ConfigError
from medmm.plugins import load_plugins
from medmm.runner import resolved_config
from medmm.task import TaskSpec
from medmm_configs import CONFIG_DIR

TASKS = ["text-cls", "image-cls", "tabular-risk", "fusion"]
# A legacy task: its YAML of defaults is the schema (third-party plugins written before the typed config).
DEFAULTS = {"seed": 0, "data": {"window": None, "size": 224, "frac": 0.2, "name": "x", "cols": ["a"]},
            "engine": {"precision": "auto", "epochs": 3, "tensorboard": False, "lr": 0.001}}
CHOICES = {"data.name": ["x", "y", "123"], "data.size": Range(1)}


def _spec(task: str) -> TaskSpec:
    return load_plugins().registry.get("task", task)


def test_overrides_are_coerced_to_the_field_type() -> None:
    cfg = apply_overrides(DEFAULTS, ["engine.epochs=7", "engine.lr=1e-4", "data.frac=1", "engine.tensorboard=true",
                                     "data.window=40,400", "data.name=123", "data.cols=[b, c]", "seed=5"], CHOICES)
    assert cfg.engine.epochs == 7 and cfg.engine.lr == pytest.approx(1e-4)
    assert cfg.data.frac == 1.0 and isinstance(cfg.data.frac, float)
    assert cfg.engine.tensorboard is True
    assert cfg.data.window == "40,400" and cfg.data.name == "123"
    assert cfg.data.cols == ["b", "c"] and cfg.seed == 5
    assert cfg.engine.min_steps == EngineConfig().min_steps  # a legacy YAML inherits every other engine default
    assert DEFAULTS["engine"]["epochs"] == 3  # defaults untouched
    assert cfg["engine"]["epochs"] == 7 and cfg.get("nope", 1) == 1  # the deprecated dict-style path still reads


@pytest.mark.parametrize("item, message", [
    ("engine.epoch=3", "unknown config key 'engine.epoch'; did you mean 'epochs'"),
    ("engine.epochs=three", "'engine.epochs' must be an integer"),
    ("engine.epochs=2.5", "'engine.epochs' must be an integer"),
    ("engine.epochs=true", "'engine.epochs' must be an integer"),
    ("engine.epochs=0", "'engine.epochs' must be >= 1 (got 0)"),
    ("engine.warmup_ratio=1", "'engine.warmup_ratio' must be in [0, 1) (got 1)"),
    ("engine.tensorboard=maybe", "must be true or false"),
    ("engine.precision=fp8", "must be one of: auto, fp32, bf16, fp16"),
    ("engine.privacy.accountant=gdp", "'engine.privacy.accountant' must be one of: rdp, prv"),
    ("engine.privacy.enabled.x=1", "'engine.privacy.enabled' is not a section"),
    ("engine.privacy=1", "'engine.privacy' is a section"),
    ("data.name=z", "'data.name' must be one of: x, y, 123"),  # a legacy task's choices table
    ("data.size=0", "'data.size' must be >= 1"),  # ... and its ranges
    ("nosuch.key=1", "unknown config key 'nosuch'"),
    ("engine=1", "is a section"),
    ("epochs", "--set expects KEY=VALUE"),
])
def test_bad_overrides_are_one_line_naming_the_key(item: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)) as info:
        apply_overrides(DEFAULTS, [item], CHOICES)
    assert "\n" not in str(info.value)


def test_user_file_merges_and_unknown_keys_fail(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("engine:\n  epochs: 9\n  lr: 1e-4\n")  # YAML 1.1 reads 1e-4 as a string: still a number
    assert resolve(DEFAULTS, good, ["engine.epochs=2"], CHOICES).engine.epochs == 2
    cfg = resolve(DEFAULTS, good, [], CHOICES)
    assert cfg.engine.epochs == 9 and cfg.engine.lr == pytest.approx(1e-4)
    bad = tmp_path / "bad.yaml"
    bad.write_text("engine:\n  epochz: 9\n")
    with pytest.raises(ConfigError, match="engine.epochz"):
        resolve(DEFAULTS, bad, [], CHOICES)
    typed = tmp_path / "typed.yaml"
    typed.write_text("engine:\n  privacy:\n    target_epsilon: lots\n")
    with pytest.raises(ConfigError, match="'engine.privacy.target_epsilon' must be a number, got 'lots'"):
        resolve(task_defaults(_spec("text-cls")), typed)


def test_malformed_yaml_reports_the_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("engine:\n  epochs: [1,\n")
    with pytest.raises(ConfigError, match=r"malformed YAML .* \(line 3"):
        load_yaml(bad)
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_yaml(tmp_path / "list.yaml")


@pytest.mark.parametrize("task", TASKS)
def test_task_yaml_holds_only_what_differs_from_the_model_defaults(task: str) -> None:
    spec = _spec(task)
    cls = type(task_defaults(spec))
    assert issubclass(cls, TaskConfig) and spec.config_model is not None
    model_defaults = cls().model_dump()
    shipped = load_yaml(spec.config)
    assert shipped, "a task YAML with no differences should not exist"
    for section, values in shipped.items():
        for key, value in values.items():
            assert model_defaults[section][key] != value, f"{spec.config}: {section}.{key} repeats the default"
    assert "#" in Path(spec.config).read_text()  # commented
    assert not (CONFIG_DIR / "engine.yaml").exists()  # the engine block is defined once, in EngineConfig


@pytest.mark.parametrize("task", TASKS)
def test_resolved_defaults_validate_and_round_trip(task: str) -> None:
    spec = _spec(task)
    cfg = resolved_config(spec, None, [])
    defaults = task_defaults(spec).model_dump()
    for key in cfg.provenance:  # the backbone's recipe / auto choices differ from the YAML by design (medmm.recipes)
        section, name = key.split(".")
        defaults[section][name] = cfg[section][name]
    assert cfg.model_dump() == defaults
    again = type(cfg).model_validate(yaml.safe_load(yaml.safe_dump(cfg.model_dump(mode="json"))))
    assert again.model_dump() == cfg.model_dump()


@pytest.mark.parametrize("task", TASKS)
def test_json_schema_validates_the_shipped_yaml_and_the_resolved_config(task: str) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    spec = _spec(task)
    schema = json_schema(spec)
    validator = jsonschema.Draft202012Validator(schema)
    validator.validate(load_yaml(spec.config))
    validator.validate(resolved_config(spec, None, []).model_dump(mode="json"))
    assert not validator.is_valid({"engine": {"epochz": 3}})
    assert not validator.is_valid({"engine": {"precision": "fp8"}})
    engine = schema["$defs"]["EngineConfig"]["properties"]
    assert engine["epochs"]["default"] == task_defaults(spec).engine.epochs  # the task's resolved default
    assert "description" in engine["batch_size"]  # YAML comments became descriptions: an editor shows them


def test_saved_run_config_loads_when_keys_changed(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """An old run dir: every key spelled out, one that this version no longer knows, no privacy section."""
    spec = _spec("tabular-risk")
    old = task_defaults(spec).model_dump(mode="json")
    del old["engine"]["privacy"], old["eval"]
    old["engine"]["retired_key"] = 1
    old["data"]["target"] = "y"
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(old))
    (tmp_path / "run.json").write_text(json.dumps({"task": "tabular-risk"}))
    with caplog.at_level("WARNING", logger="medmm"):
        cfg = resolve(task_defaults(spec), tmp_path / "config.yaml")
    assert cfg.data.target == "y" and cfg.engine.privacy.enabled is False
    assert "engine.retired_key" in caplog.text
    (tmp_path / "run.json").unlink()  # a user's --config file is never read leniently
    with pytest.raises(ConfigError, match="engine.retired_key"):
        resolve(task_defaults(spec), tmp_path / "config.yaml")


def test_recipe_provenance_and_user_wins() -> None:
    spec = _spec("text-cls")
    cfg = resolved_config(spec, None, [])
    assert cfg.engine.lr == 0.0005 and cfg.provenance["engine.lr"] == "recipe of backbone minilm-l6"
    mine = resolved_config(spec, None, ["engine.lr=0.001"])
    assert mine.engine.lr == 0.001 and "engine.lr" not in mine.provenance
    assert "model.encoder_lr_scale" not in mine.provenance  # coupled to engine.lr: the task's own value
    assert mine.user == {"engine.lr"}


def test_legacy_yaml_task_keeps_working(tmp_path: Path) -> None:
    """A third-party TaskSpec with only a YAML (no config_model): its defaults are the schema."""
    (tmp_path / "mine.yaml").write_text("data:\n  column: text\n  k: 3\nengine:\n  epochs: 2\n")
    spec = TaskSpec(name="mine", modality="text", summary="x", config=tmp_path / "mine.yaml", impl="x:y")
    cfg = resolve(task_defaults(spec), None, ["data.k=5"])
    assert cfg.data.k == 5 and cfg.engine.epochs == 2 and cfg.engine.batch_size == EngineConfig().batch_size
    with pytest.raises(ConfigError, match="data.k"):
        resolve(task_defaults(spec), None, ["data.k=many"])  # the default's type is the schema
    assert json_schema(spec)["properties"]["data"]


def test_removed_taskspec_fields_name_their_replacement(tmp_path: Path) -> None:
    from medmm.errors import PluginError

    for field in ("choices", "ranges"):
        with pytest.raises(PluginError, match=rf"TaskSpec\({field}=...\) was removed; .* config_model") as err:
            TaskSpec(name="mine", modality="text", summary="x", config=tmp_path / "m.yaml", impl="x:y",
                     **{field: {"data.k": Range(1)}})
        assert "\n" not in str(err.value)
