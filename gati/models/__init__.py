"""Staged base models: a network split into stages with named cut points."""

from gati.models.registry import ARCHITECTURES, load_model
from gati.models.staged import StagedModel, stage_sequential

__all__ = ["ARCHITECTURES", "StagedModel", "load_model", "stage_sequential"]
