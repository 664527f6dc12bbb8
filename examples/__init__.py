"""The example scripts, importable as `examples.<name>` from the repository
root: importing one registers its custom layers, which is what
`python -m keras_attention.serving export MODEL.keras BASE_PATH --import
examples.<name>` needs to load a model that a script saved.

The scripts import their helpers as top-level modules (`import _common`),
as they do when run as scripts, so importing this package puts its folder
on `sys.path`.
"""

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.append(_HERE)
