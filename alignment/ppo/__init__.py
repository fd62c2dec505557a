"""PPO stage (and GRPO / Dr.GRPO / RLOO / REINFORCE++ as configurations of it).

    python alignment/ppo/run_ppo.py config/llama/ppo_argument.json
    python -m paddle.distributed.launch --nproc_per_node 2 alignment/ppo/run_ppo.py config/llama/ppo_argument.json

Modules: ``config`` (typed arguments), ``models`` (creating the 3-4 models through the strategy),
``advantages`` (once per rollout batch), ``updates`` (actor/critic/ptx mini-batch steps), ``trainer``
(the orchestrator), ``checkpoint`` (resume + final policy/value), ``reporting`` (console, jsonl,
VisualDL/TensorBoard, PNG), ``feeding`` (resumable batch order), ``optim``, ``rewards`` (reward functions).
"""

from .config import DataArgument, ModelArgument, PPOArguments
from .trainer import PPOModels, PPOTrainer

__all__ = ["DataArgument", "ModelArgument", "PPOArguments", "PPOModels", "PPOTrainer"]
