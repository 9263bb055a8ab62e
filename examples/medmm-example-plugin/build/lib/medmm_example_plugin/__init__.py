"""Example medmm plugin: registration only (cheap); the models live in ``models.py``."""

from medmm import hookimpl
from medmm.registry import Component


@hookimpl
def register_backbones(register):
    register(Component("snn", "medmm_example_plugin.models:SelfNormalizingNet", "tabular",
                       "self-normalising MLP (SELU + AlphaDropout) from the example plugin"))


@hookimpl
def register_fusion_heads(register):
    register(Component("max", "medmm_example_plugin.models:MaxFusion", "any",
                       "element-wise max over the projected embeddings of present modalities"))
