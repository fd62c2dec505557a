"""SFT stage: ``run_sft.py`` (entry point), ``SFTTrainer`` (token-mean answer NLL); its typed arguments are
the shared ones of ``alignment.training.arguments`` (``SFTModelArguments`` = ``ModelArguments``).

    python alignment/sft/run_sft.py config/llama/tiny/sft_argument.json [--flag value ...]
"""

from .config import SFTModelArguments
from .trainer import SFTTrainer, answer_nll

__all__ = ["SFTTrainer", "SFTModelArguments", "answer_nll"]
