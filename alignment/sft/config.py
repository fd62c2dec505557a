"""Typed arguments of the SFT stage: the shared model and data arguments (alignment/training/arguments.py).

SFT adds no fields of its own; ``SFTModelArguments`` is ``ModelArguments`` under the stage's name.
Training hyperparameters are PaddleNLP's ``TrainingArguments`` (learning_rate, max_steps, bf16, ...).
"""

from __future__ import annotations

from alignment.training.arguments import ModelArguments

__all__ = ["SFTModelArguments"]

SFTModelArguments = ModelArguments
