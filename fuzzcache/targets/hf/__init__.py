"""HF transformers as a target: ``hf:<arch>`` (see ``target.py`` for the mapping onto transformers' paths)."""

from fuzzcache.targets.hf.target import PATHS, HFTarget
from fuzzcache.targets.tiny_models import quiet_transformers

__all__ = ["PATHS", "HFTarget", "quiet_transformers"]
