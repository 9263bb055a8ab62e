"""Tabular risk models: regression, binary risk and Cox survival on patient tables."""

from medmm import Component, hookimpl, TaskSpec
from medmm_configs import path


@hookimpl
def register_tasks(register):
    register(TaskSpec(
        name="tabular-risk",
        modality="tabular",
        summary="risk from patient tables: regression, binary risk or survival (Cox)",
        config=path("tabular-risk"),
        config_model="medmm_plugins.tabular_risk.config:TabularRiskConfig",
        impl="medmm_plugins.tabular_risk.task:TabularRiskTask",
        runtime="medmm_plugins.tabular_risk.runtime:TabularInputs",  # torch-free reader of its exports
        demo="medmm_plugins.tabular_risk.demo:build",
    ))


@hookimpl
def register_backbones(register):
    register(Component("mlp", "medmm.models.tabular:TabularMLP", "tabular", "residual MLP with dropout"))
    register(Component("linear", "medmm.models.tabular:TabularLinear", "tabular",
                       "linear / logistic / linear-Cox risk score (the classic baseline)",
                       {"recipe": {"engine.lr": 0.02}}))  # convex: at 3e-3 it had not converged in 300 steps (#14)
