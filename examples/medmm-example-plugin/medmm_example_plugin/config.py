"""``discrete-survival``'s typed config: its ``data`` and ``model`` sections (the engine's come from
medmm). Each field's type, bounds and description are what ``medmm config discrete-survival``
shows and what a bad ``--set`` is checked against; the YAML next to this file holds only the
values that differ from these defaults."""

from __future__ import annotations

from pydantic import Field

from medmm import DataConfig, Fraction, ModelConfig, NonNegInt, OptStrList, PosInt, TaskConfig


class SurvivalData(DataConfig):
    time: str | None = Field(None, description="time to event or censoring (> 0), in any unit")
    event: str | None = Field(None, description="1 = event observed, 0 = censored")
    horizon: float | None = Field(None, gt=0, description="risk = cumulative hazard by this time; null = median "
                                                          "follow-up of the training rows")
    bins: int = Field(10, ge=2, description="follow-up intervals, cut at quantiles of the training event times")
    features: OptStrList = Field(None, description="list of columns; null = every other column")
    exclude: OptStrList = Field(None, description="columns never used as features")
    decimal: str = Field(".", description='decimal mark of numbers in text files: "." or ","')
    id_column: str | None = Field(None, description="row ids in predictions.csv (default: row number)")
    group_column: str | None = Field(None, description="patient id: no patient in two splits")
    study_column: str | None = Field(None, description="each row's imaging StudyInstanceUID (never a feature): "
                                                       "predictions.csv keeps it and --dicom-sr files an SR "
                                                       "in that study")
    accession_column: str | None = Field(None, description="the study's accession number (never a feature), "
                                                           "copied into the SR's request reference")
    val_fraction: Fraction = Field(0.15, lt=1, description="share of rows (patients) held for validation")
    test_fraction: Fraction = Field(0.2, lt=1, description="share of rows (patients) held for the test split")


class SurvivalModel(ModelConfig):
    backbone: str = Field("mlp", description="any tabular backbone: mlp | linear | snn (this plugin)")
    hidden: PosInt = Field(64, description="hidden width")
    blocks: NonNegInt = Field(1, description="hidden blocks")
    dropout: Fraction = Field(0.1, lt=1, description="dropout")


class DiscreteSurvivalConfig(TaskConfig):
    """``medmm run discrete-survival``: logistic-hazard survival on a patient table."""

    data: SurvivalData = Field(default_factory=SurvivalData)
    model: SurvivalModel = Field(default_factory=SurvivalModel)
