"""What every analyzer made from a model card shares: its identity from the card and torch set up for its device."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from triage_node.inference.card import ModelCard
from triage_node.inference.precision import resolve
from triage_node.inference.types import ModelOutput
from triage_node.preprocess.volume import Volume


class CardAnalyzer(ABC):
    """An ``inference.types.Analyzer`` loaded from ``card``: name, version and Device UID come from the card; torch
    runs on ``device`` with ``threads`` CPU threads; ``precision`` is resolved for the device (``models.precision``).
    Subclasses load their network and implement ``analyze``."""

    def __init__(self, card: ModelCard, threads: int = 1, device: str = "cpu", precision: str = "fp32") -> None:
        self.card = card
        self.name = card.name
        self.version = card.version
        self.device_uid = card.device_uid
        self.threads = threads
        self.device = torch.device(device)
        self.precision = resolve(precision, device)
        torch.set_num_threads(threads)

    @abstractmethod
    def analyze(self, volume: Volume) -> ModelOutput:
        """The findings, masks and heat maps of ``volume``."""
