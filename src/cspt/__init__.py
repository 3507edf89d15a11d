"""cspt: consecutive pretraining of Vision Transformers for remote sensing."""

from cspt.errors import CsptError

__version__ = "0.1.0"
__all__ = ["CsptError", "__version__"]
