"""Create the models of a PPO run through the parallel strategy.

    actor      AutoModelForCausalLM from actor_model_name_or_path          trainable (wrapped)
    reference  the same checkpoint again                                    frozen
    reward     ScoreModel(score_type="reward") from reward_model_name_or_path  frozen, own tokenizer allowed
    critic     ScoreModel(score_type="critic") from reward_critic_model_name_or_path (default: the reward
               model; an LM checkpoint gets a new score head)             trainable (wrapped), PPO only

PPO-Lagrangian (``cost_model_name_or_path`` set) adds two more, built like the reward model and the critic:
    cost       ScoreModel(score_type="cost") from cost_model_name_or_path      frozen, own tokenizer allowed
    cost critic ScoreModel(score_type="critic") from cost_critic_model_name_or_path (default: the cost
               model)                                                       trainable (wrapped), critic-based only

On resume, ``checkpoint.load`` overwrites the actor and critic weights with the checkpoint's ``policy``/``value``;
the reference always comes from the SFT checkpoint.

With ``pipeline_parallel_degree > 1`` the actor and critic are pipeline models (``alignment.models.pipeline``)
whose last stage computes the actor / critic loss (bound by the updater), and each gets a generation copy
(``alignment.parallel.reshard.GenerationCopy``, layout ``eval_mode``) for rollout and experience scoring;
the frozen reference and reward models are pipeline stages too (``alignment.models.pipeline.FrozenPipeline``:
forward-only, log-probs and end scores reduced on the last stage and broadcast over the pipeline group).
"""

from __future__ import annotations

from typing import Optional

from alignment.parallel import ParallelStrategy

from .config import DataArgument, ModelArgument, PPOArguments
from .trainer import PPOModels

__all__ = ["load_causal_lm", "load_score_model", "build_models", "placement"]


def load_causal_lm(path: str, *, recompute: bool = False, recompute_granularity: str = "full",
                   use_flash_attention: bool = False, tokenizer=None):
    """A float32 causal LM; embeddings follow ``tokenizer`` when it added a pad token."""
    from alignment.models.loading import load_causal_lm as _load

    return _load(path, dtype="float32", use_flash_attention=use_flash_attention, recompute=recompute,
                 tokenizer=tokenizer, config_overrides={"recompute_granularity": recompute_granularity})


def load_score_model(path: str, *, score_type: str, recompute: bool = False, use_flash_attention: bool = False,
                     recompute_granularity: str = "full", vocab_size: Optional[int] = None,
                     allow_new_head: bool = False, head_seed: Optional[int] = None):
    """A ScoreModel without output normalisation. With ``allow_new_head`` (the critic) a causal-LM checkpoint
    gets a new score head; a reward model without a head is an error (ScoreHeadMissingError)."""
    from alignment.models.score_model import ScoreModel, has_score_head

    model = ScoreModel.from_pretrained(
        path, init_score_head=allow_new_head and not has_score_head(path), head_seed=head_seed,
        score_type=score_type, do_normalize=False,
        dtype="float32", use_flash_attention=use_flash_attention, recompute=recompute,
        config_overrides={"recompute_granularity": recompute_granularity},
    )
    if vocab_size is not None and int(model.config.vocab_size) < vocab_size:  # not the rows: V / tp under TP
        model.resize_token_embeddings(vocab_size)
    return model


def build_models(
    model_args: ModelArgument,
    data_args: DataArgument,
    args: PPOArguments,
    strategy: ParallelStrategy,
    *,
    with_reward_model: bool = True,
    with_cost_model: bool = True,
    with_cost_fn: bool = False,
) -> PPOModels:
    """Load tokenizers and the 3-4 models; trainable ones wrapped by ``strategy``."""
    from alignment.models.loading import load_tokenizer

    actor_path = model_args.actor_model_name_or_path
    actor_tok = load_tokenizer(actor_path, padding_side="left", model_max_length=data_args.max_length)
    lm_kwargs = dict(
        recompute_granularity=model_args.recompute_granularity,
        use_flash_attention=model_args.use_flash_attention,
        tokenizer=actor_tok,
    )
    pipeline = strategy.pipeline_parallel_degree > 1
    lora = bool(model_args.lora or model_args.critic_lora)
    if lora and strategy.hybrid:
        raise ValueError("lora / critic_lora in the PPO stage run in one process or data parallel; set "
                         "tensor_parallel_degree, pipeline_parallel_degree and sharding_parallel_degree to 1")
    if pipeline:
        actor = strategy.create_model(lambda: actor_pipe(actor_path, args, model_args), role="actor", trainable=True)
    else:
        actor = strategy.create_model(
            lambda: _with_lora(load_causal_lm(actor_path, recompute=args.recompute, **lm_kwargs), model_args,
                               args.seed, actor_path, model_args.lora),
            role="actor", trainable=True
        )
    need_reference = args.kl_coeff > 0 or args.kl_loss_coeff > 0
    reference = reward_model = reward_tok = None
    flash = model_args.use_flash_attention
    if need_reference and pipeline:  # stages of the pipeline group, like the actor's
        from alignment.models.pipeline import frozen_causal_lm_pipe

        reference = frozen_causal_lm_pipe(actor_path, strategy, dtype="float32", use_flash_attention=flash)
    elif need_reference and model_args.lora:  # the actor with its adapters off: no second copy of the weights
        from alignment.models.loading import AdaptersOff

        reference = AdaptersOff(strategy.unwrap(actor))
    elif need_reference:
        reference = strategy.create_model(lambda: load_causal_lm(actor_path, **lm_kwargs), role="reference",
                                          trainable=False)
    if with_reward_model:
        reward_model, reward_tok = _frozen_score_model(model_args.reward_model_name_or_path, "reward", strategy,
                                                       pipeline, flash)
    cost_model = cost_tok = None
    cost_path = model_args.cost_model_name_or_path
    if cost_path is not None and with_cost_model:
        cost_model, cost_tok = _frozen_score_model(cost_path, "cost", strategy, pipeline, flash)
    critic = cost_critic = None
    if args.use_critic:
        critic_path = model_args.reward_critic_model_name_or_path or model_args.reward_model_name_or_path
        critic = _critic(critic_path, "reward_critic_model_name_or_path", args, model_args, strategy, actor_tok,
                         pipeline)
        if cost_path is not None or with_cost_fn:  # PPO-Lagrangian: a cost critic next to the critic
            cost_critic = _critic(model_args.cost_critic_model_name_or_path or cost_path or critic_path,
                                  "cost_critic_model_name_or_path", args, model_args, strategy, actor_tok, pipeline,
                                  role="cost_critic")
    models = PPOModels(
        actor=actor, reference=reference, actor_tokenizer=actor_tok, critic=critic,
        reward_model=reward_model, reward_tokenizer=reward_tok, cost_model=cost_model, cost_tokenizer=cost_tok,
        cost_critic=cost_critic,
    )
    if pipeline:
        from alignment.models.pipeline import generation_copy

        mode = args.eval_mode or "tensor_parallel"
        models.actor_copy = generation_copy(actor, mode, score=False)
        models.critic_copy = generation_copy(critic, mode, score=True) if critic is not None else None
        models.cost_critic_copy = generation_copy(cost_critic, mode, score=True) if cost_critic is not None else None
    report = placement(models, strategy)
    if strategy.is_main_process and args.output_dir:
        import os

        from alignment.utils.io import atomic_write_json

        os.makedirs(args.output_dir, exist_ok=True)
        atomic_write_json(os.path.join(args.output_dir, "placement.json"), report)
    return models


def _frozen_score_model(path: str, score_type: str, strategy: ParallelStrategy, pipeline: bool, flash: bool):
    """(frozen reward or cost model, its tokenizer); pipeline stages under pipeline parallelism."""
    from alignment.models.loading import load_tokenizer

    tokenizer = load_tokenizer(path, padding_side="right", ensure_pad=False)
    if pipeline:
        from alignment.models.pipeline import frozen_score_model_pipe

        return frozen_score_model_pipe(path, strategy, dtype="float32", use_flash_attention=flash), tokenizer
    model = strategy.create_model(lambda: load_score_model(path, score_type=score_type, use_flash_attention=flash),
                                  role=score_type, trainable=False)
    return model, tokenizer


def _critic(critic_path: str, flag: str, args: PPOArguments, model_args: ModelArgument, strategy: ParallelStrategy,
            actor_tok, pipeline: bool, role: str = "critic"):
    """A trainable critic (the reward critic, or the cost critic of PPO-Lagrangian) from ``critic_path``."""
    from alignment.models.loading import load_tokenizer

    critic_tok = load_tokenizer(critic_path, padding_side="left")
    if critic_tok.get_vocab() != actor_tok.get_vocab():
        raise ValueError(
            f"the critic ({critic_path}) must share the actor's tokenizer: its values are read per actor token. "
            f"Set {flag} to a checkpoint with the actor's vocabulary (e.g. the SFT model)"
        )
    return strategy.create_model(
        (lambda: critic_pipe(critic_path, args, model_args)) if pipeline else lambda: _with_lora(load_score_model(
            critic_path, score_type="critic", recompute=bool(args.critic_value("recompute")),
            recompute_granularity=model_args.critic_recompute_granularity,
            use_flash_attention=model_args.use_flash_attention, vocab_size=len(actor_tok), allow_new_head=True,
            head_seed=args.seed,  # the same new head under every layout
        ), model_args, args.seed, critic_path, model_args.critic_lora),
        role=role,
        trainable=True,
    )


def _with_lora(model, model_args: ModelArgument, seed: int, path: str, enabled: bool):
    """``model`` with LoRA adapters when ``enabled`` (a score model keeps its head trainable)."""
    if not enabled:
        return model
    from alignment.models.loading import wrap_lora, wrap_score_lora

    if hasattr(model, "score_head"):
        model = wrap_score_lora(model, model_args, base_model_name_or_path=path, seed=seed)
    else:
        model = wrap_lora(model, model_args, base_model_name_or_path=path, seed=seed)
    model.merge_on_save = bool(model_args.merge_lora_on_save)  # read by checkpoint.save_final
    return model


def placement(models: PPOModels, strategy: ParallelStrategy) -> dict:
    """Where each model lives and how many of its parameter elements this rank holds (written by
    ``build_models`` as ``output_dir/placement.json``, from the main process's view)."""
    from alignment.models.pipeline import is_pipeline_model

    out = {"layout": strategy.describe(), "models": {}}
    for role in ("actor", "critic", "reference", "reward_model", "cost_model", "cost_critic"):
        model = getattr(models, role)
        if model is None:
            continue
        shards = getattr(model, "_frozen_shards", None)
        params = list(model.parameters())
        local = sum(int(p.numel()) for p in params if shards is None or id(p) not in shards.shards)
        if shards is not None:
            local += sum(int(t.numel()) for t in shards.shards.values())
        if hasattr(model, "map_micro_batches") or is_pipeline_model(model):
            where = "pipeline stages"
        elif shards is not None:
            where = "stage3 shards"
        elif role in ("actor", "critic", "cost_critic") and strategy.sharding_parallel_degree > 1:
            where = f"sharding {strategy.sharding} (wrapped with its optimizer)"
        elif strategy.tensor_parallel_degree > 1:
            where = "tensor parallel"
        else:
            where = "whole on every rank"
        out["models"][role] = {"placement": where, "parameters_on_rank": local}
    return out


def _unbound(*_):
    raise RuntimeError("the pipeline criterion was not bound to the PPO updater")


def actor_pipe(path: str, args: PPOArguments, model_args: ModelArgument):
    """The actor as pipeline stages (its loss is bound later by ``PPOUpdater``)."""
    from alignment.models.pipeline import PipeCriterion, load_causal_lm_pipe

    return load_causal_lm_pipe(path, criterion=PipeCriterion(_unbound), dtype="float32",
                               use_flash_attention=model_args.use_flash_attention, recompute=args.recompute,
                               config_overrides={"recompute_granularity": model_args.recompute_granularity})


def critic_pipe(path: str, args: PPOArguments, model_args: ModelArgument):
    """The critic as pipeline stages with a score head; an LM checkpoint gets a new, seeded head."""
    from alignment.models.pipeline import PipeCriterion, load_score_model_pipe
    from alignment.models.score_model import ScoreConfig, has_score_head, normalizer_tensors, seed_score_head

    model = load_score_model_pipe(
        path, criterion=PipeCriterion(_unbound), dtype="float32", use_flash_attention=model_args.use_flash_attention,
        recompute=bool(args.critic_value("recompute")),
        config_overrides={"recompute_granularity": model_args.critic_recompute_granularity},
    )
    model.score_config = ScoreConfig(score_type="critic")
    model.frozen_state = normalizer_tensors(path, model.score_config)  # saved with the weights, never trained
    if not has_score_head(path):  # the same new head as ScoreModel.from_pretrained(head_seed=args.seed)
        for name, p in model.named_parameters():
            if name.endswith("score_head.weight"):
                seed_score_head(p, model.config, args.seed)
    return model
