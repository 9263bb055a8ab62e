"""Tabular risk models: regression, binary risk and Cox survival on patient tables."""

from medmm import hookimpl
from medmm.config import Range
from medmm.registry import Component
from medmm.task import TaskSpec
from medmm_configs import path


@hookimpl
def register_tasks(register):
    register(TaskSpec(
        name="tabular-risk",
        modality="tabular",
        summary="risk from patient tables: regression, binary risk or survival (Cox)",
        config=path("tabular-risk"),
        impl="medmm_plugins.tabular_risk.task:TabularRiskTask",
        choices={
            "data.problem": ["auto", "regression", "binary", "survival"],
            "model.loss": ["mse", "huber"],
        },
        demo="medmm_plugins.tabular_risk.demo:build",
        ranges={"data.val_fraction": Range(0, 1, hi_open=True), "data.test_fraction": Range(0, 1, hi_open=True),
                "model.hidden": Range(1), "model.blocks": Range(0), "model.dropout": Range(0, 1, hi_open=True)},
    ))


@hookimpl
def register_backbones(register):
    register(Component("mlp", "medmm.models.tabular:TabularMLP", "tabular", "residual MLP with dropout"))
    register(Component("linear", "medmm.models.tabular:TabularLinear", "tabular",
                       "linear / logistic / linear-Cox risk score (the classic baseline)"))
