"""distillw2v2: reproduce DistillW2V2 (Fu et al., 2023) with Kaldi-style recipes and pure-PyTorch LF-MMI.

from distill import Recognizer
r = Recognizer.from_pretrained("exp/stage2/model")
print(r.transcribe("x.wav").text)
"""

import importlib
from typing import Any

__version__ = "0.1.0"

# Re-exported lazily (PEP 562), so that ``import distill`` (and every subpackage, which imports this
# one first) stays light: torch and the decoders load only when ``distill.Recognizer`` is used. An
# importlib call is not an import statement: this bottom-layer module does not import the decode layer.
_EXPORTS = {"Recognizer": "distill.decode.recognizer", "Result": "distill.decode.recognizer"}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'distill' has no attribute {name!r}")


__all__ = ["Recognizer", "Result", "__version__"]
