"""The error every part of model loading raises (registry, int8 exports, external cards), kept apart so that none of
them imports another for it."""


class ModelLoadError(RuntimeError):
    """A model cannot be loaded: missing card or weights, sha256 mismatch, bad card, or analyzer failure."""
