"""Tabular data: column typing, preprocessing and targets (:mod:`medmm.data.tabular.preprocess`)."""
