"""Small from-scratch baselines: TextCNN and bidirectional GRU / LSTM text encoders."""

from medmm import Component, hookimpl

# Trained from scratch: a larger learning rate and more epochs than a pretrained encoder wants.
SCRATCH = {"engine.lr": 0.001, "engine.epochs": 10, "engine.patience": 3}


@hookimpl
def register_backbones(register):
    register(Component("textcnn", "medmm.models.text_baselines:TextCNN", "text",
                       "Kim-style TextCNN (kernel widths 3/4/5), trained from scratch", {"recipe": SCRATCH}))
    register(Component("bigru", "medmm.models.text_baselines:BiGRUAttention", "text",
                       "bidirectional GRU with attention pooling, trained from scratch", {"cell": "gru", "recipe": SCRATCH}))
    register(Component("bilstm", "medmm.models.text_baselines:BiGRUAttention", "text",
                       "bidirectional LSTM with attention pooling, trained from scratch", {"cell": "lstm", "recipe": SCRATCH}))
