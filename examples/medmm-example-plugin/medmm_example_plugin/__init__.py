"""Example medmm plugin: registration only (cheap); the task and models live in their own modules."""

from pathlib import Path

from medmm import Component, hookimpl, TaskSpec


@hookimpl
def register_tasks(register):
    register(TaskSpec(
        name="discrete-survival",
        modality="tabular",
        summary="risk of an event by a horizon from a patient table (discrete-time logistic-hazard survival)",
        config=Path(__file__).with_name("discrete-survival.yaml"),
        impl="medmm_example_plugin.discrete_survival:DiscreteSurvivalTask",
        runtime="medmm_example_plugin.runtime:SurvivalRows",  # torch-free: medmm export / serve / predict EXPORT
        demo="medmm_example_plugin.demo:build",
        config_model="medmm_example_plugin.config:DiscreteSurvivalConfig",  # types, bounds, descriptions
        study_key="data.study_column",  # rows name their imaging study: medmm predict --dicom-sr files an SR there
    ))


@hookimpl
def register_backbones(register):
    register(Component("snn", "medmm_example_plugin.models:SelfNormalizingNet", "tabular",
                       "self-normalising MLP (SELU + AlphaDropout) from the example plugin"))


@hookimpl
def register_fusion_heads(register):
    register(Component("max", "medmm_example_plugin.models:MaxFusion", "any",
                       "element-wise max over the projected embeddings of present modalities"))
