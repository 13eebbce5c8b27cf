"""A model as this service serves it: the name and version clients ask for, and the network."""

from __future__ import annotations

from dataclasses import dataclass

from gati.models import StagedModel


@dataclass
class ServedModel:
    name: str
    model: StagedModel
    version: str = "1"
