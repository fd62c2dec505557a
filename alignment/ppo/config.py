"""Typed arguments of the PPO stage (and of GRPO / REINFORCE++ / RLOO, which are configurations of it).

Three dataclasses, named like PaddleNLP's (``ModelArgument``, ``DataArgument``, ``PPOArguments``) so
``config/llama/ppo_argument.json`` keeps the seed's key names. Every field has a help string and a
default; ``__post_init__`` checks values and names the field and the allowed values. The layout
(tensor / pipeline / sharding degrees, ``sharding`` stage, ``eval_mode``) is checked by
``alignment.parallel.ParallelStrategy``. ``offload_level`` moves models and optimizer
states to host memory between the phases that need them (``alignment.parallel.offload``). ``bf16`` / ``fp16``
(``fp16_opt_level`` O1 / O2) are ``alignment.training.precision.MixedPrecision``: a GPU, one process or data
parallel; a CPU-only Paddle gets one clear line. ``use_fusemt``
(on by default) runs the fused operators of ``csrc/`` (``alignment.ops``) where their build succeeds (not under
bf16 / fp16: the operators are float32 kernels).

Step vocabulary: one *step* is one rollout batch (generate -> experience -> advantages -> updates);
``max_steps``, ``logging_steps``, ``eval_steps`` and ``save_steps`` count steps. Inside a step the
actor and the critic take ``update_iters * rows / (per_device_train_batch_size *
gradient_accumulation_steps)`` optimizer steps each, where rows = per_device_prompt_batch_size *
num_return_sequences.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import List, Optional

from alignment.models.loading import LoraArguments

__all__ = [
    "ModelArgument",
    "DataArgument",
    "PPOArguments",
    "RL_ALGORITHMS",
    "LR_SCHEDULERS",
    "check_consistency",
]

# rl_algorithm -> (advantage estimator name in the registry, needs a critic, KL in reward by default)
RL_ALGORITHMS = {
    "ppo": ("gae", True, True),
    "grpo": ("grpo", False, False),
    "dr_grpo": ("dr_grpo", False, False),
    "rloo": ("rloo", False, True),
    "reinforce_plus_plus": ("reinforce_plus_plus", False, True),
}
LR_SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine")
LOSS_AGG_MODES = ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm")
# TRL's GRPO loss_type -> (loss_agg_mode, normaliser): "local" = this micro-batch, "max_dec_len" = B x max_dec_len,
# "global" = every token of the optimizer step on every data-parallel rank
LOSS_TYPES = {
    "grpo": ("seq-mean-token-mean", "local"),
    "bnpo": ("token-mean", "local"),
    "dr_grpo": ("seq-mean-token-sum-norm", "max_dec_len"),
    "dapo": ("token-mean", "global"),
}
SCALE_REWARDS = ("group", "batch", "none")
IS_LEVELS = ("token", "sequence")
STRATEGIES = ("no", "steps", "epoch")


def _choice(obj, name: str, allowed) -> None:
    value = getattr(obj, name)
    if value not in allowed:
        raise ValueError(f"{name}='{value}' is not valid; allowed values: {', '.join(map(str, allowed))}")


def _positive(obj, *names: str, allow_zero: bool = False) -> None:
    for name in names:
        value = getattr(obj, name)
        if value is None:
            continue
        if value < 0 or (value == 0 and not allow_zero):
            raise ValueError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value}")


@dataclass
class ModelArgument(LoraArguments):
    """Which checkpoints make the four models; with ``lora`` the actor trains LoRA adapters (its reference is the
    same model with the adapters off, no second copy) and, unless ``critic_lora`` is false, so does the critic
    (adapters + its score head)."""

    lora_dropout: float = field(  # PPO's default differs from the other stages' 0.05
        default=0.0, metadata={"help": "Dropout on the LoRA input, in [0, 1). 0 by default in PPO: the old log-probs "
                                       "are scored in eval mode, so dropout in the update would make the first ratio "
                                       "differ from 1 (measured: mean |dlogp| 0.045 at 0.05)."}
    )
    actor_model_name_or_path: Optional[str] = field(
        default=None, metadata={"help": "SFT checkpoint (local dir or hub name) for the actor and the reference."}
    )
    reward_model_name_or_path: Optional[str] = field(
        default=None,
        metadata={"help": "Score-model checkpoint of the frozen reward model (may use its own tokenizer)."},
    )
    reward_critic_model_name_or_path: Optional[str] = field(
        default=None,
        metadata={
            "help": "Checkpoint that initialises the critic (PPO only). Default: the reward model. An LM "
            "checkpoint gets a new score head. Its tokenizer must match the actor's."
        },
    )
    cost_model_name_or_path: Optional[str] = field(
        default=None,
        metadata={"help": "Score-model checkpoint of a frozen COST model (alignment/rm with score_type cost): when "
                          "set, training is PPO-Lagrangian (Safe RLHF) under any rl_algorithm; cost > 0 reads as unsafe."},
    )
    cost_critic_model_name_or_path: Optional[str] = field(
        default=None,
        metadata={"help": "Checkpoint that initialises the cost critic (critic-based rl_algorithm only). Default: the "
                          "cost model. Its tokenizer must match the actor's."},
    )
    use_flash_attention: bool = field(default=False, metadata={"help": "Passed to the model configs."})
    recompute_granularity: str = field(
        default="full", metadata={"help": "Recompute granularity of the actor (full | full_attn | core_attn)."}
    )
    critic_recompute_granularity: str = field(
        default="full", metadata={"help": "Recompute granularity of the critic (full | full_attn | core_attn)."}
    )
    critic_lora: Optional[bool] = field(
        default=None, metadata={"help": "LoRA adapters on the critic's backbone, its score head trained in full "
                                        "(default: as lora)."}
    )
    merge_lora_on_save: bool = field(
        default=True, metadata={"help": "With lora: the final policy/ and value/ are merged models (next to the "
                                        "adapter files); false: adapters (+ the critic's head) only."}
    )

    def __post_init__(self) -> None:
        super().__post_init__()  # the LoRA fields
        if self.critic_lora is None:
            self.critic_lora = bool(self.lora)
        for name in ("reward_model_name_or_path", "reward_critic_model_name_or_path", "cost_model_name_or_path",
                     "cost_critic_model_name_or_path"):
            if getattr(self, name) in ("", "none", "None"):  # a config's model switched off from the command line
                setattr(self, name, None)
        for name in ("recompute_granularity", "critic_recompute_granularity"):
            _choice(self, name, ("full", "full_attn", "core_attn"))


@dataclass
class DataArgument:
    """Prompt, evaluation and ptx datasets (specs understood by ``alignment.data``, e.g. 'PKU-SafeRLHF/train')."""

    train_datasets: Optional[str] = field(
        default=None,
        metadata={"help": "Prompt datasets, 'name[:proportion[:path]]' joined by ','; e.g. PKU-SafeRLHF/train."},
    )
    eval_datasets: Optional[str] = field(default=None, metadata={"help": "Prompt datasets for evaluation."})
    ptx_datasets: Optional[str] = field(
        default=None, metadata={"help": "Supervised datasets for the ptx loss (used when ptx_coeff > 0)."}
    )
    max_length: int = field(
        default=2048, metadata={"help": "Longest prompt + response in tokens (also caps ptx examples)."}
    )
    max_prompt_len: Optional[int] = field(
        default=None,
        metadata={"help": "Longest prompt in tokens (default: max_length - max_dec_len, at least 1/2 max_length)."},
    )

    def __post_init__(self) -> None:
        _positive(self, "max_length", "max_prompt_len")
        from alignment.training.arguments import spec_from_text  # a dict / list spec given as JSON text

        for name in ("train_datasets", "eval_datasets", "ptx_datasets"):
            setattr(self, name, spec_from_text(getattr(self, name), name))


@dataclass
class PPOArguments:
    """Rollout, optimisation, logging and checkpointing of PPO (and GRPO / REINFORCE++ / RLOO)."""

    output_dir: str = field(default="checkpoints/ppo", metadata={"help": "Where checkpoints and logs go."})
    seed: int = field(default=42, metadata={"help": "Random seed (each rank samples with seed + rank)."})
    do_train: bool = field(default=True, metadata={"help": "Run training."})
    do_eval: bool = field(default=False, metadata={"help": "Evaluate on eval_datasets (every eval_steps)."})

    # ---- algorithm
    rl_algorithm: str = field(
        default="ppo",
        metadata={"help": f"One of {', '.join(RL_ALGORITHMS)}; only ppo trains a critic (GAE advantages)."},
    )
    update_iters: int = field(default=1, metadata={"help": "Passes (epochs) over each rollout batch."})
    kl_coeff: Optional[float] = field(
        default=None,
        metadata={"help": "beta of the per-token KL penalty in the reward. Default 0.02 (0 for grpo/dr_grpo)."},
    )
    kl_estimator: str = field(
        default="k1", metadata={"help": "KL estimator of the reward penalty (k1 | k2 | k3)."}
    )
    kl_loss_coeff: Optional[float] = field(
        default=None,
        metadata={"help": "Weight of the KL-to-reference term in the actor loss. Default 0.001 for "
                  "grpo/dr_grpo, 0 otherwise. With kl_coeff and kl_loss_coeff both 0 no reference is loaded."},
    )
    kl_loss_estimator: str = field(
        default="k3", metadata={"help": "KL estimator of the actor-loss KL term (k1 | k2 | k3)."}
    )
    policy_loss: str = field(
        default="ppo", metadata={"help": "Registered policy loss: ppo | gspo | cispo | sapo."}
    )
    importance_sampling_level: str = field(
        default="token", metadata={"help": "token | sequence (TRL's spelling of GSPO: policy_loss gspo)."}
    )
    loss_type: Optional[str] = field(
        default=None,
        metadata={"help": "TRL GRPO loss preset, sets the aggregation: grpo (seq-mean-token-mean), bnpo "
                  "(token-mean of the micro-batch), dr_grpo (token sum / (B x max_dec_len)), dapo (token sum / "
                  "the tokens of the optimizer step over all ranks). None: use loss_agg_mode."},
    )
    scale_rewards: str = field(
        default="group", metadata={"help": "GRPO advantage scaling: group (divide by the group std) | batch (by the "
                                           "std of every reward of the step, all ranks) | none (Dr. GRPO)."}
    )
    mask_truncated_completions: bool = field(
        default=False, metadata={"help": "Exclude completions cut by max_dec_len (no EOS) from the loss (DAPO "
                                         "overlong filtering)."}
    )
    top_entropy_quantile: float = field(
        default=1.0, metadata={"help": "Train the policy loss only on this top fraction of tokens by entropy "
                                       "(1 = all tokens; 0.2 as arXiv 2506.01939)."}
    )
    epsilon: Optional[float] = field(default=None, metadata={"help": "TRL alias of clip_range_ratio."})
    epsilon_high: Optional[float] = field(default=None, metadata={"help": "TRL alias of clip_range_ratio_high."})
    delta: Optional[float] = field(
        default=None, metadata={"help": "Two-sided clip: cap of the ratio in the unclipped term (> 1 + eps_high)."}
    )
    sapo_tau_pos: float = field(default=1.0, metadata={"help": "SAPO gate temperature for positive advantages."})
    sapo_tau_neg: float = field(default=1.05, metadata={"help": "SAPO gate temperature for negative advantages."})
    dynamic_sampling: bool = field(
        default=False, metadata={"help": "DAPO dynamic sampling: drop groups whose rewards are all equal and refill "
                                         "the step from further prompt batches."}
    )
    max_gen_batches: int = field(
        default=3, metadata={"help": "Most prompt batches generated per step under dynamic_sampling; if still short, "
                                     "the step is filled with dropped groups (zero advantage)."}
    )
    overlong_buffer_len: int = field(
        default=0, metadata={"help": "DAPO soft overlong punishment: length of the penalty ramp before max_dec_len "
                                     "(0 = off)."}
    )
    overlong_penalty_factor: float = field(default=1.0, metadata={"help": "Scale of the overlong punishment."})
    tis_cap: Optional[float] = field(
        default=None, metadata={"help": "Truncated importance sampling: weight the policy loss by min(pi_train / "
                                        "pi_rollout, tis_cap) per token (None = off). The |dlogp| mismatch is "
                                        "logged every step either way."}
    )
    reward_funcs: Optional[List[str]] = field(
        default=None,
        metadata={"help": "Reward functions by name: accuracy, format, length, repetition, remote, or "
                  "module.path:function; combined with reward_model_name_or_path when that is set too."},
    )
    reward_weights: Optional[List[float]] = field(
        default=None,
        metadata={"help": "One weight per reward function (the reward model's weight last when one is set); "
                  "default all 1."},
    )
    reward_format_pattern: Optional[str] = field(
        default=None, metadata={"help": "Regular expression of the 'format' reward (default <think>..</think>"
                                        "<answer>..</answer>)."}
    )
    reward_target_length: int = field(default=64, metadata={"help": "Target tokens of the 'length' reward."})
    reward_repetition_ngram: int = field(default=3, metadata={"help": "n of the 'repetition' reward."})
    reward_repetition_max_penalty: float = field(
        default=-1.0, metadata={"help": "Penalty of a fully repetitive completion ('repetition' reward)."}
    )
    reward_server_url: str = field(
        default="http://127.0.0.1:8731", metadata={"help": "URL of the reward server of the 'remote' reward."}
    )
    reward_server_timeout: float = field(default=30.0, metadata={"help": "Seconds per reward-server request."})
    reward_server_retries: int = field(
        default=2, metadata={"help": "Retries of a failed reward-server request (timeouts, refused connections)."}
    )
    pg_loss_coeff: float = field(default=1.0, metadata={"help": "Weight of the clipped policy-gradient loss."})
    entropy_coeff: float = field(default=0.0, metadata={"help": "Weight of the entropy bonus."})
    clip_range_ratio: float = field(default=0.2, metadata={"help": "PPO epsilon of the ratio clip."})
    clip_range_ratio_low: Optional[float] = field(default=None, metadata={"help": "Lower epsilon (default eps)."})
    clip_range_ratio_high: Optional[float] = field(default=None, metadata={"help": "Upper epsilon (default eps)."})
    dual_clip: Optional[float] = field(
        default=None, metadata={"help": "Dual-clip constant c > 1 for negative advantages (off when None)."}
    )
    clip_range_score: float = field(
        default=50.0, metadata={"help": "Clip bound of the scalar reward (and of the k3 KL loss)."}
    )
    clip_range_value: float = field(default=5.0, metadata={"help": "Radius of the value clip."})
    ptx_coeff: float = field(default=0.0, metadata={"help": "Weight of the supervised ptx loss (needs ptx_datasets)."})
    gamma: float = field(default=1.0, metadata={"help": "Discount of GAE / returns."})
    lam: float = field(default=0.95, metadata={"help": "GAE lambda."})
    normalize_reward: bool = field(
        default=False, metadata={"help": "Normalise scores with running mean/std gathered over all ranks."}
    )
    normalize_advantage: bool = field(
        default=False, metadata={"help": "Whiten advantages over all valid tokens of all ranks (per step)."}
    )
    loss_agg_mode: str = field(
        default="token-mean", metadata={"help": f"Loss aggregation: {', '.join(LOSS_AGG_MODES)}."}
    )
    reward_granularity: str = field(
        default="sequence",
        metadata={"help": "sequence: one end-of-response score per row | token: dense per-token rewards (a "
                          "token-wise reward model's score at each response token, or a reward function returning "
                          "(N, R) values) used directly in the advantage; KL shaping stays per token."},
    )

    # ---- PPO-Lagrangian (Safe RLHF, arXiv 2310.12773): on when a cost model (or cost_fn) is given
    threshold: float = field(
        default=0.0, metadata={"help": "d of the constraint: mean episode cost <= threshold (costs > 0 are unsafe)."}
    )
    lambda_init: float = field(default=1.0, metadata={"help": "Initial Lagrange multiplier λ (> 0)."})
    lambda_lr: float = field(default=0.1, metadata={"help": "Step size of the gradient ascent on log λ (>= 0)."})
    lambda_max: Optional[float] = field(default=None, metadata={"help": "Cap of λ (None: no cap)."})
    lambda_update_delay_steps: int = field(
        default=0, metadata={"help": "Steps before λ starts to move (the episode-cost window fills meanwhile)."}
    )
    episode_cost_window_size: int = field(
        default=128, metadata={"help": "Episodes (rows, all ranks) whose mean cost drives the λ update."}
    )

    # ---- rollout
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature (also used for log-probs)."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling mass (1 = off)."})
    top_k: int = field(default=0, metadata={"help": "Top-k sampling (0 = off)."})
    repetition_penalty: float = field(default=1.0, metadata={"help": "CTRL repetition penalty (1 = off)."})
    frequency_penalty: float = field(
        default=0.0, metadata={"help": "Logit -= count * this for every token already in the row, in [-2, 2] (0 = off)."}
    )
    presence_penalty: float = field(
        default=0.0, metadata={"help": "Logit -= this for every token already in the row, in [-2, 2] (0 = off)."}
    )
    num_return_sequences: int = field(default=1, metadata={"help": "Responses sampled per prompt (group size)."})
    max_dec_len: int = field(default=512, metadata={"help": "Most new tokens per response."})
    min_dec_len: int = field(default=1, metadata={"help": "EOS is not allowed before this many new tokens."})
    sampler: str = field(default="default", metadata={"help": "Registered per-step sampler name."})
    per_device_prompt_batch_size: int = field(default=16, metadata={"help": "Prompts per device per step."})
    per_device_rollout_batch_size: int = field(
        default=-1, metadata={"help": "Prompts per generation call (-1 = all prompts of the step at once)."}
    )
    rollout_logprob_batch_size: Optional[int] = field(
        default=None,
        metadata={"help": "Rows per forward pass while making experience (default per_device_train_batch_size)."},
    )

    # ---- optimisation
    num_train_epochs: float = field(default=1.0, metadata={"help": "Passes over the prompt dataset."})
    max_steps: int = field(default=-1, metadata={"help": "Steps (rollout batches) to run; > 0 overrides epochs."})
    per_device_train_batch_size: int = field(default=16, metadata={"help": "Rows per update micro-batch."})
    per_device_eval_batch_size: int = field(default=16, metadata={"help": "Prompts per evaluation batch."})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "Micro-batches per optimizer step."})
    learning_rate: float = field(default=1e-5, metadata={"help": "Actor peak learning rate."})
    min_learning_rate: Optional[float] = field(default=None, metadata={"help": "Floor of the decaying schedules."})
    weight_decay: float = field(default=0.0, metadata={"help": "Actor AdamW weight decay."})
    lr_scheduler_type: str = field(default="linear", metadata={"help": f"One of {', '.join(LR_SCHEDULERS)}."})
    warmup_ratio: float = field(default=0.0, metadata={"help": "Warmup as a fraction of the optimizer steps."})
    warmup_steps: int = field(default=0, metadata={"help": "Warmup optimizer steps (overrides warmup_ratio)."})
    decay_steps: Optional[int] = field(default=None, metadata={"help": "Decay length (default: all steps)."})
    adam_beta1: float = field(default=0.9, metadata={"help": "AdamW beta1 (actor and critic)."})
    adam_beta2: float = field(default=0.999, metadata={"help": "AdamW beta2 (actor and critic)."})
    adam_epsilon: float = field(default=1e-8, metadata={"help": "AdamW epsilon."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Global-norm gradient clip (0 = off)."})
    recompute: bool = field(default=False, metadata={"help": "Activation recomputation for the actor."})
    critic_learning_rate: Optional[float] = field(default=None, metadata={"help": "Critic lr (default actor's)."})
    critic_min_learning_rate: Optional[float] = field(default=None, metadata={"help": "Critic lr floor."})
    critic_weight_decay: Optional[float] = field(default=None, metadata={"help": "Critic weight decay."})
    critic_lr_scheduler_type: Optional[str] = field(default=None, metadata={"help": "Critic lr schedule."})
    critic_warmup_ratio: Optional[float] = field(default=None, metadata={"help": "Critic warmup ratio."})
    critic_warmup_steps: Optional[int] = field(default=None, metadata={"help": "Critic warmup steps."})
    critic_decay_steps: Optional[int] = field(default=None, metadata={"help": "Critic decay length."})
    critic_recompute: Optional[bool] = field(default=None, metadata={"help": "Recompute for the critic."})

    # ---- logging, evaluation, checkpoints
    logging_steps: int = field(default=1, metadata={"help": "Log metrics every this many steps."})
    logging_dir: Optional[str] = field(default=None, metadata={"help": "VisualDL/TensorBoard dir (output_dir/runs)."})
    report_to: Optional[List[str]] = field(
        default=None,
        metadata={"help": "Metric sinks besides console + metrics.jsonl: visualdl, tensorboard, none (default visualdl)."},
    )
    disable_tqdm: bool = field(default=False, metadata={"help": "No progress bar (one log line per logging step)."})
    evaluation_strategy: str = field(default="no", metadata={"help": "no | steps | epoch."})
    eval_steps: int = field(default=100, metadata={"help": "Evaluate every this many steps."})
    eval_do_sample: bool = field(default=False, metadata={"help": "Sample eval responses (default greedy)."})
    save_strategy: str = field(default="steps", metadata={"help": "no | steps | epoch."})
    save_steps: int = field(default=500, metadata={"help": "Save a resumable checkpoint every this many steps."})
    save_total_limit: Optional[int] = field(default=None, metadata={"help": "Keep at most this many checkpoints."})
    resume_from_checkpoint: Optional[str] = field(
        default=None, metadata={"help": "Checkpoint dir to resume, or 'latest' for the newest in output_dir."}
    )
    dataloader_drop_last: bool = field(default=False, metadata={"help": "Drop the last incomplete prompt batch."})

    # ---- precision and parallelism
    bf16: bool = field(default=False, metadata={"help": "bfloat16 mixed precision (paddle.amp auto_cast around the "
                                                        "model forwards; needs a GPU, one process or data parallel)."})
    fp16: bool = field(default=False, metadata={"help": "float16 mixed precision with a dynamic GradScaler per "
                                                        "optimizer (needs a GPU, one process or data parallel)."})
    fp16_opt_level: str = field(default="O1", metadata={"help": "AMP level for bf16/fp16: O1 (fp32 weights, half "
                                                                "matmuls) | O2 (half weights, fp32 master weights)."})
    tensor_parallel_degree: int = field(
        default=1, metadata={"help": "Tensor parallel degree of every model (weights split on load, merged on save)."}
    )
    pipeline_parallel_degree: int = field(
        default=1, metadata={"help": "Pipeline parallel degree of the trainable models (actor, critic)."}
    )
    pipeline_parallel_config: str = field(default="", metadata={"help": "Pipeline options (for pp > 1)."})
    sharding_parallel_degree: int = field(
        default=1, metadata={"help": "Sharding degree of the trainable models' optimizer states / grads / params."}
    )
    sharding: str = field(
        default="", metadata={"help": "Sharding stage: stage1 (optimizer states), stage2 (+ gradients), stage3 "
                                      "(+ parameters); stage1 when only sharding_parallel_degree > 1 is given."}
    )
    eval_mode: Optional[str] = field(
        default=None, metadata={"help": "Generation layout of a pipeline-parallel actor: single (one full copy per "
                                        "rank) | tensor_parallel (split over the tensor-parallel group); None: "
                                        "tensor_parallel when pipeline_parallel_degree > 1."}
    )
    offload_level: str = field(
        default="", metadata={"help": "Offload to host memory, any of (space separated): freeze_model (reference "
                                      "and reward outside the experience phase), optimizer (optimizer states "
                                      "outside their model's update), train_model (actor / critic outside the "
                                      "phases that run them); see alignment/parallel/offload.py."}
    )
    use_fusemt: bool = field(
        default=True, metadata={"help": "Fused operators of csrc/ (alignment.ops): the 'fused' rollout sampler (when "
                                        "sampler is 'default') and fused log-probs in experience and updates; used "
                                        "only where the operator build succeeds (else the pure-Paddle path)."}
    )

    def __post_init__(self) -> None:
        _choice(self, "rl_algorithm", tuple(RL_ALGORITHMS))
        _choice(self, "kl_estimator", ("k1", "k2", "k3"))
        self._check_grpo_options()
        _choice(self, "loss_agg_mode", LOSS_AGG_MODES)
        _choice(self, "reward_granularity", ("sequence", "token"))
        self._check_lagrangian()
        _choice(self, "lr_scheduler_type", LR_SCHEDULERS)
        if self.critic_lr_scheduler_type is not None:
            _choice(self, "critic_lr_scheduler_type", LR_SCHEDULERS)
        _choice(self, "evaluation_strategy", STRATEGIES)
        _choice(self, "save_strategy", STRATEGIES)
        _choice(self, "fp16_opt_level", ("O1", "O2"))
        _positive(
            self, "update_iters", "temperature", "num_return_sequences", "max_dec_len", "per_device_prompt_batch_size",
            "per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps",
            "learning_rate", "logging_steps", "eval_steps", "save_steps", "repetition_penalty", "clip_range_ratio",
            "clip_range_score", "clip_range_value", "rollout_logprob_batch_size", "critic_learning_rate",
            "save_total_limit",
        )
        _positive(
            self, "kl_coeff", "kl_loss_coeff", "entropy_coeff", "ptx_coeff", "weight_decay", "warmup_ratio",
            "warmup_steps", "max_grad_norm", "min_dec_len", "top_k", "critic_weight_decay", "critic_warmup_ratio",
            "min_learning_rate", "critic_min_learning_rate", "gamma", "lam", "clip_range_ratio_low",
            "clip_range_ratio_high", "pg_loss_coeff", allow_zero=True,
        )
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.min_dec_len > self.max_dec_len:
            raise ValueError(f"min_dec_len ({self.min_dec_len}) must be <= max_dec_len ({self.max_dec_len})")
        if self.rl_algorithm in ("grpo", "dr_grpo", "rloo") and self.num_return_sequences < 2:
            raise ValueError(
                f"rl_algorithm='{self.rl_algorithm}' compares the samples of a prompt: num_return_sequences must be "
                f">= 2, got {self.num_return_sequences}"
            )
        if self.dual_clip is not None and self.dual_clip <= 1:
            raise ValueError(f"dual_clip must be > 1 (or None), got {self.dual_clip}")
        rows = self.per_device_prompt_batch_size * self.num_return_sequences
        if rows % self.per_device_train_batch_size:
            raise ValueError(
                f"per_device_prompt_batch_size * num_return_sequences = {self.per_device_prompt_batch_size} * "
                f"{self.num_return_sequences} = {rows} rows per step must be divisible by "
                f"per_device_train_batch_size ({self.per_device_train_batch_size})"
            )
        if (rows // self.per_device_train_batch_size) % self.gradient_accumulation_steps:
            raise ValueError(
                f"the {rows // self.per_device_train_batch_size} micro-batches of a step must be divisible by "
                f"gradient_accumulation_steps ({self.gradient_accumulation_steps})"
            )
        if self.per_device_rollout_batch_size in (0,) or self.per_device_rollout_batch_size < -1:
            raise ValueError(f"per_device_rollout_batch_size must be -1 or > 0, got {self.per_device_rollout_batch_size}")
        if self.report_to is None:
            self.report_to = ["visualdl"]
        elif isinstance(self.report_to, str):
            self.report_to = [self.report_to]
        self.report_to = [r for r in self.report_to if r not in ("none", "")] if "none" not in self.report_to else []
        for sink in self.report_to:
            if sink not in ("visualdl", "tensorboard"):
                raise ValueError(f"report_to entry '{sink}' is not valid; allowed values: visualdl, tensorboard, none")
        # algorithm-dependent defaults
        _, _, kl_in_reward = RL_ALGORITHMS[self.rl_algorithm]
        if self.kl_coeff is None:
            self.kl_coeff = 0.02 if kl_in_reward else 0.0
        if self.kl_loss_coeff is None:
            self.kl_loss_coeff = 0.0 if kl_in_reward else 0.001
        # layout and offload values: validated here, a bad one is one line
        if self.eval_mode in ("", "none", "None"):
            self.eval_mode = None
        if self.eval_mode is not None and self.eval_mode not in EVAL_MODES:
            raise ValueError(f"eval_mode='{self.eval_mode}' is not valid; allowed values: {', '.join(EVAL_MODES)}, "
                             "or None")
        from alignment.parallel.offload import parse_offload_level

        self.offload_level = " ".join(parse_offload_level(self.offload_level))
        if self.bf16 or self.fp16:
            from alignment.training.precision import check_precision

            check_precision(self)  # a CPU-only Paddle: one line (amp inactive, no bf16/fp16 kernels)
        from alignment.parallel import ParallelStrategy

        layout = ParallelStrategy.from_args(self)  # checks the degrees and the sharding stage
        self.tensor_parallel_degree = layout.tensor_parallel_degree
        self.pipeline_parallel_degree = layout.pipeline_parallel_degree
        self.sharding_parallel_degree = layout.sharding_parallel_degree
        self.sharding = layout.sharding
        if (self.bf16 or self.fp16) and layout.hybrid:
            raise ValueError(
                f"--{'bf16' if self.bf16 else 'fp16'} true in the PPO stage runs in one process or data parallel "
                "(alignment.training.precision.MixedPrecision; pipeline stages, tensor-parallel and sharded optimizers "
                "have no mixed-precision path here); set tensor_parallel_degree, pipeline_parallel_degree and "
                "sharding_parallel_degree to 1, or drop the flag")

    def _check_lagrangian(self) -> None:
        if self.lambda_init <= 0:
            raise ValueError(f"lambda_init must be > 0 (λ = exp(log λ)), got {self.lambda_init}")
        _positive(self, "lambda_lr", "lambda_update_delay_steps", allow_zero=True)
        _positive(self, "episode_cost_window_size")
        if self.lambda_max is not None and self.lambda_max < self.lambda_init:
            raise ValueError(f"lambda_max ({self.lambda_max}) must be >= lambda_init ({self.lambda_init}) or None")
        if self.reward_granularity == "token" and self.advantage_estimator not in ("gae", "reinforce_plus_plus"):
            raise ValueError(f"reward_granularity='token' needs an estimator that reads per-token rewards; "
                             f"rl_algorithm='{self.rl_algorithm}' reads one score per row (allowed: ppo, "
                             "reinforce_plus_plus)")
        if self.reward_granularity == "token" and self.dynamic_sampling:
            raise ValueError("reward_granularity='token' is not combined with dynamic_sampling yet; set one of them "
                             "off")

    def _check_grpo_options(self) -> None:
        """Policy loss, aggregation presets, aliases and the DAPO / TIS / reward options."""
        from alignment.algorithms import available

        _choice(self, "kl_loss_estimator", ("k1", "k2", "k3"))
        _choice(self, "policy_loss", tuple(available("policy")))
        _choice(self, "importance_sampling_level", IS_LEVELS)
        _choice(self, "scale_rewards", SCALE_REWARDS)
        if self.importance_sampling_level == "sequence":
            if self.policy_loss not in ("ppo", "gspo"):
                raise ValueError(f"importance_sampling_level='sequence' is the gspo policy loss; it cannot be combined "
                                 f"with policy_loss='{self.policy_loss}' (allowed: ppo, gspo)")
            self.policy_loss = "gspo"
        if self.loss_type is not None:
            _choice(self, "loss_type", tuple(LOSS_TYPES))
            mode = LOSS_TYPES[self.loss_type][0]
            if self.loss_agg_mode not in ("token-mean", mode):
                raise ValueError(f"loss_type='{self.loss_type}' sets loss_agg_mode='{mode}'; it contradicts "
                                 f"loss_agg_mode='{self.loss_agg_mode}' (give one of them)")
            self.loss_agg_mode = mode
        if self.epsilon is not None:
            _positive(self, "epsilon")
            self.clip_range_ratio = self.epsilon
        if self.epsilon_high is not None:
            _positive(self, "epsilon_high", allow_zero=True)
            if self.clip_range_ratio_high is not None and self.clip_range_ratio_high != self.epsilon_high:
                raise ValueError(f"epsilon_high={self.epsilon_high} and clip_range_ratio_high="
                                 f"{self.clip_range_ratio_high} disagree (they are aliases; give one)")
            self.clip_range_ratio_high = self.epsilon_high
        eps_high = self.clip_range_ratio if self.clip_range_ratio_high is None else self.clip_range_ratio_high
        if self.delta is not None and not self.delta > 1.0 + eps_high:
            raise ValueError(f"delta must be > 1 + clip_range_ratio_high = {1.0 + eps_high} (or None), got {self.delta}")
        if (self.delta is not None or self.dual_clip is not None) and self.policy_loss in ("cispo", "sapo"):
            raise ValueError(f"delta / dual_clip are not defined for policy_loss='{self.policy_loss}'; leave them None")
        if not 0 < self.top_entropy_quantile <= 1:
            raise ValueError(f"top_entropy_quantile must be in (0, 1], got {self.top_entropy_quantile}")
        _positive(self, "max_gen_batches", "sapo_tau_pos", "sapo_tau_neg", "tis_cap", "reward_server_timeout",
                  "reward_target_length", "reward_repetition_ngram")
        _positive(self, "overlong_buffer_len", "overlong_penalty_factor", "reward_server_retries", allow_zero=True)
        if self.overlong_buffer_len > self.max_dec_len:
            raise ValueError(f"overlong_buffer_len ({self.overlong_buffer_len}) must be <= max_dec_len "
                             f"({self.max_dec_len})")
        if self.reward_repetition_max_penalty > 0:
            raise ValueError(f"reward_repetition_max_penalty must be <= 0, got {self.reward_repetition_max_penalty}")
        if self.tis_cap is not None and self.pipeline_parallel_degree > 1:
            raise ValueError("tis_cap is not supported with pipeline_parallel_degree > 1 yet (the pipeline's loss "
                             "stage does not receive the rollout log-probs); leave tis_cap None")
        if self.dynamic_sampling and self.num_return_sequences < 2:
            raise ValueError("dynamic_sampling compares the samples of a prompt: num_return_sequences must be >= 2")
        if isinstance(self.reward_funcs, str):
            self.reward_funcs = [self.reward_funcs]
        if isinstance(self.reward_weights, (int, float)):
            self.reward_weights = [float(self.reward_weights)]
        from alignment.training.reward_funcs import check_reward_func_names

        check_reward_func_names(self.reward_funcs or [])

    # ---- derived settings
    @property
    def loss_normaliser(self) -> str:
        """local | max_dec_len | global: the denominator of the aggregation (``LOSS_TYPES``)."""
        return LOSS_TYPES[self.loss_type][1] if self.loss_type is not None else "local"

    @property
    def advantage_estimator(self) -> str:
        return RL_ALGORITHMS[self.rl_algorithm][0]

    @property
    def use_critic(self) -> bool:
        return RL_ALGORITHMS[self.rl_algorithm][1]

    @property
    def rollout_rows(self) -> int:
        """Rows (prompt x sample) per device per step."""
        return self.per_device_prompt_batch_size * self.num_return_sequences

    @property
    def optimizer_steps_per_step(self) -> int:
        return self.update_iters * self.rollout_rows // (self.per_device_train_batch_size * self.gradient_accumulation_steps)

    @property
    def experience_batch_size(self) -> int:
        return self.rollout_logprob_batch_size or self.per_device_train_batch_size

    def critic_value(self, name: str):
        """``critic_<name>`` when set, else the actor's ``<name>`` (min_learning_rate and decay_steps included)."""
        value = getattr(self, f"critic_{name}")
        return getattr(self, name) if value is None else value


EVAL_MODES = ("single", "tensor_parallel")


def check_consistency(model_args: ModelArgument, data_args: DataArgument, args: PPOArguments, *, has_reward_fn=False,
                      has_cost_fn=False):
    """Cross-dataclass checks that need all three (called by the trainer)."""
    if model_args.actor_model_name_or_path is None:
        raise ValueError("actor_model_name_or_path is required (the SFT checkpoint of the actor)")
    if model_args.reward_model_name_or_path is None and not has_reward_fn and not args.reward_funcs:
        raise ValueError("reward_model_name_or_path is required unless reward_funcs (or a reward function) is given")
    if args.reward_weights is not None:
        n = len(args.reward_funcs or []) + (model_args.reward_model_name_or_path is not None) + bool(has_reward_fn)
        if len(args.reward_weights) != n:
            raise ValueError(f"reward_weights has {len(args.reward_weights)} entries for {n} rewards (one per "
                             "reward_funcs entry, then the reward model / reward function when set)")
    if args.use_critic and model_args.reward_critic_model_name_or_path is None and model_args.reward_model_name_or_path is None:
        raise ValueError(
            "rl_algorithm='ppo' trains a critic: set reward_critic_model_name_or_path (or reward_model_name_or_path)"
        )
    if model_args.cost_critic_model_name_or_path is not None and model_args.cost_model_name_or_path is None \
            and not has_cost_fn:
        raise ValueError("cost_critic_model_name_or_path needs cost_model_name_or_path (PPO-Lagrangian)")
    if args.do_train and not data_args.train_datasets:
        raise ValueError("train_datasets is required for training (e.g. PKU-SafeRLHF/train)")
    if args.do_eval and not data_args.eval_datasets:
        raise ValueError("do_eval needs eval_datasets")
    if args.ptx_coeff > 0 and not data_args.ptx_datasets:
        raise ValueError(f"ptx_coeff={args.ptx_coeff} needs ptx_datasets")
    if args.max_dec_len >= data_args.max_length:
        raise ValueError(f"max_dec_len ({args.max_dec_len}) must be < max_length ({data_args.max_length})")


def field_names() -> List[str]:
    return [f.name for cls in (ModelArgument, DataArgument, PPOArguments) for f in fields(cls)]
