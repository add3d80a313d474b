"""Backbones, heads and their composition (pure torch: no Hydra, no Lightning)."""

from crnn.models.backbones import CifarResNet, MobileNetV2Cifar
from crnn.models.blocks import LayerFactory, ReplacementBlock, parse_replace
from crnn.models.classifier import Classifier
from crnn.models.heads import LinearHead, SequenceHead

__all__ = [
    "CifarResNet",
    "Classifier",
    "LayerFactory",
    "LinearHead",
    "MobileNetV2Cifar",
    "ReplacementBlock",
    "SequenceHead",
    "parse_replace",
]
