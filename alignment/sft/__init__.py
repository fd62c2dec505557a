"""SFT stage: ``run_sft.py`` (entry point), ``SFTTrainer`` (token-mean answer NLL), typed arguments.

    python alignment/sft/run_sft.py config/llama/tiny/sft_argument.json [--flag value ...]
"""

from .config import DataArguments, SFTModelArguments
from .trainer import GlobalBatchSampler, SFTTrainer, answer_nll

__all__ = ["SFTTrainer", "SFTModelArguments", "DataArguments", "GlobalBatchSampler", "answer_nll"]
