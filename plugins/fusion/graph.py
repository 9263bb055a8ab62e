"""fusion runs as ONNX: one graph over the raw modality inputs plus the presence mask.

The graph takes ``mask`` ``[B, M]`` (bool, columns in the run's modality order) and each
modality's raw input — ``input_ids`` / ``attention_mask`` ``[B, L]``, ``image`` ``[B, C, H, W]``
in ``[0, 1]``, ``tabular`` ``[B, D]`` (the fitted preprocessor's output) — runs every encoder on
every row, and hands the embeddings and the mask to the head, which replaces the rows of missing
modalities by zeros before anything reads them. The torch path encodes only the present rows;
heads never mix rows, so both give the same scores (the export's parity check measures it).
Frozen-mode runs are exported the same way: their encoders' weights are in the run's artifacts,
which predict loads as the torch path does. :meth:`FusionTask.deploy_spec` hands both to export.
"""

from __future__ import annotations

from typing import Any

from medmm import GraphInput

TEXT_INPUTS = ("input_ids", "attention_mask")


def graph_inputs(names: list[str]) -> tuple[GraphInput, ...]:
    """The graph's inputs and their dynamic axes for a run with modalities ``names``."""
    inputs = [GraphInput("mask")]
    for name in names:
        if name == "text":
            inputs += [GraphInput(k, {0: "batch", 1: "sequence"}) for k in TEXT_INPUTS]
        else:
            inputs.append(GraphInput(name))
    return tuple(inputs)


def graph_module(task: Any, model: Any) -> Any:
    """``nn.Module`` whose ``forward`` takes the named inputs of :func:`graph_inputs` and returns scores."""
    import torch

    from medmm import scores_from_output

    names = list(model.names)
    inputs = tuple(i.name for i in graph_inputs(names))
    problem = task.problem

    class FusionScores(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def scores(self, feeds: dict[str, torch.Tensor]) -> torch.Tensor:
            embeddings = {}
            for name in names:  # every row; the head zeroes the rows whose modality is missing
                encoder = self.model.encoders[name]
                x = encoder(feeds["input_ids"], feeds["attention_mask"]) if name == "text" else encoder(feeds[name])
                embeddings[name] = x.float()
            out = self.model.head(embeddings, feeds["mask"].bool())
            return scores_from_output(problem, out.squeeze(-1) if problem == "binary" else out)

    # exporters read the input names from forward's signature: one named parameter per graph input
    params = ", ".join(inputs)
    namespace: dict[str, Any] = {}
    exec(f"def forward(self, {params}):\n    return self.scores(dict(zip({inputs!r}, ({params},))))",  # noqa: S102
         namespace)
    cls = type("FusionGraph", (FusionScores,), {"forward": namespace["forward"]})
    return cls().eval()
