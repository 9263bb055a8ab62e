"""Small from-scratch baselines: TextCNN and bidirectional GRU / LSTM text encoders."""

from medmm import hookimpl
from medmm.registry import Component


@hookimpl
def register_backbones(register):
    register(Component("textcnn", "medmm.models.text_baselines:TextCNN", "text",
                       "Kim-style TextCNN (kernel widths 3/4/5), trained from scratch"))
    register(Component("bigru", "medmm.models.text_baselines:BiGRUAttention", "text",
                       "bidirectional GRU with attention pooling, trained from scratch", {"cell": "gru"}))
    register(Component("bilstm", "medmm.models.text_baselines:BiGRUAttention", "text",
                       "bidirectional LSTM with attention pooling, trained from scratch", {"cell": "lstm"}))
