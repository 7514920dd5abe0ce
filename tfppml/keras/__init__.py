"""Keras integration: private inference with `model.share` / `model.serve` and a `Client`."""

from tfppml.keras.convert import UnsupportedLayerError, layer_converter
from tfppml.keras.serving import Client, KerasHook

__all__ = ["Client", "KerasHook", "UnsupportedLayerError", "layer_converter"]
