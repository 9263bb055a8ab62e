"""Explanations of trained runs: attributions per modality (captum) and faithfulness checks."""
