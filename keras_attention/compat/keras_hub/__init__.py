"""Migration from keras-hub's cached attention: `convert_causal_lm(model)`
copies a keras-hub causal LM (GPT-2, OPT, Llama) with our attention layers
in place of keras-hub's, whose cache writes (`ops.slice_update`) become
`XlaDynamicUpdateSlice` on TensorFlow, an op TF Serving without XLA cannot
run. See docs/keras-hub.md.

This module imports keras-hub (`keras_attention.compat` does not), and
registers the converted models' classes under
`keras_attention.compat.keras_hub>` + keras-hub's class name, so import it
before loading a converted model's `.keras` file.
"""

from keras_attention.compat.keras_hub.conversion import convert_causal_lm
from keras_attention.compat.keras_hub.conversion import (
    register_keras_hub_classes,
)

register_keras_hub_classes()

__all__ = ["convert_causal_lm"]
