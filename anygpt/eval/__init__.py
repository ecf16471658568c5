"""Evaluation of AnyGPT on the toy world: probes that judge outputs by plain signal analysis (no models)."""
