"""The tabular-risk task's config sections (the engine's live in :mod:`medmm.config.engine`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from medmm import DataConfig, Fraction, ModelConfig, NonNegInt, OptStrList, PosInt, TaskConfig


class TabularRiskData(DataConfig):
    problem: Literal["auto", "regression", "binary", "survival"] = Field(
        "auto", description="auto (from the target) | regression | binary | survival (predictions.csv 'risk' = "
                            "log hazard ratio, higher = earlier event)")
    target: str | None = Field(None, description="numeric (regression) or two-valued (binary) column")
    time: str | None = Field(None, description="survival: time to event or censoring")
    event: str | None = Field(None, description="survival: 1 = event observed, 0 = censored")
    features: OptStrList = Field(None, description="list of columns; null = every other column")
    exclude: OptStrList = Field(None, description="columns never used as features (e.g. follow-up time, outcomes "
                                                  "known later)")
    categorical: OptStrList = Field(None, description="list of columns forced categorical (else inferred)")
    numeric: OptStrList = Field(None, description="list of columns forced numeric")
    decimal: str = Field(".", description='decimal mark of numbers in text files: "." or "," ("1,5"); thousands '
                                          "separators are read either way")
    id_column: str | None = Field(None,
        description='row ids in predictions.csv and skipped.csv (default: row number); must be unique')
    group_column: str | None = Field(None, description="patient id: no patient in two splits")
    split_column: str | None = Field(None, description="use the table's own train / val / test assignment")
    val_fraction: Fraction = Field(0.15,
        description='share of rows (patients with data.group_column) held for validation')
    test_fraction: Fraction = Field(0.2,
        description='share of rows (patients with data.group_column) held for the test split')


class TabularRiskModel(ModelConfig):
    backbone: str = Field("auto", description="auto (trains linear and mlp, keeps linear unless the mlp is better "
                                              "on val beyond its noise) | mlp | linear (medmm backbones --modality "
                                              "tabular)")
    hidden: PosInt = Field(128, description='MLP width')
    blocks: NonNegInt = Field(2, description='MLP residual blocks (0 = linear model)')
    dropout: Fraction = Field(0.1, description='MLP dropout')
    loss: Literal["mse", "huber"] = Field("mse", description="regression: mse | huber")


class TabularRiskConfig(TaskConfig):
    """``medmm run tabular-risk``: regression, binary risk or Cox survival on patient tables."""

    data: TabularRiskData = Field(default_factory=TabularRiskData)
    model: TabularRiskModel = Field(default_factory=TabularRiskModel)
