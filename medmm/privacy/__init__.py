"""Privacy audits: the membership-inference attack on a trained run (DP-SGD training itself is
part of the engine: :mod:`medmm.engine.dp`)."""
