"""Building and finishing a run, the same for every Trainer-based stage (SFT, reward model, DPO, KTO, GKD).

    tokenizer, model, ref_model = load_models(model_args, training_args, reference=None, need_reference=True)
    train_ds, eval_ds = build_datasets(PreferenceDataset, data_args, tokenizer, training_args.seed)
    ...                                            # the stage builds its trainer
    finish(trainer, model_args, training_args)     # run_trainer + the merged LoRA model when asked

``run_trainer`` trains / evaluates as ``do_train`` / ``do_eval`` ask and saves; ``save_merged_lora`` writes
the LoRA-merged full model next to the adapter files.
"""

from __future__ import annotations

from typing import Any, Optional, Tuple

from alignment.training.arguments import DataArguments, ModelArguments

__all__ = ["build_datasets", "load_models", "output_dir_problem", "prepare_output_dir", "run_trainer", "save_model",
           "save_merged_lora", "finish"]


def build_datasets(dataset_cls, data_args: DataArguments, tokenizer, seed: int) -> Tuple[Any, Optional[Any]]:
    """(train, eval or None) tokenized datasets of ``dataset_cls`` (SupervisedDataset, PreferenceDataset)."""
    kwargs = data_args.dataset_kwargs(seed)
    train = dataset_cls(data_args.train_datasets, tokenizer, **kwargs)
    if data_args.eval_datasets:
        return train, dataset_cls(data_args.eval_datasets, tokenizer, **kwargs)
    if data_args.eval_split_ratio > 0:
        return train.split_train_test(data_args.eval_split_ratio, seed=seed)
    return train, None


def load_models(model_args: ModelArguments, training_args, *, reference: Optional[str], need_reference: bool):
    """(tokenizer, policy, reference or None) through ``alignment.models.loading``.

    The reference is ``reference`` when given, else a frozen copy of the start model; with LoRA and no
    explicit reference none is loaded (the trainer disables the adapters instead), except under pipeline
    parallelism. With
    ``pipeline_parallel_degree > 1`` the policy is a pipeline model whose criterion the trainer binds
    (``model.alignment_criterion.fn``), and the reference is pipeline stages too (``load_frozen_lm``).
    """
    import paddle

    with paddle.utils.unique_name.guard():  # parameter names (optimizer-state keys) the same in a resumed run
        return _load_models(model_args, training_args, reference=reference, need_reference=need_reference)


def _load_models(model_args: ModelArguments, training_args, *, reference: Optional[str], need_reference: bool):
    from alignment.models.loading import load_causal_lm, load_tokenizer, resolve_dtype, wrap_lora

    dtype = resolve_dtype(training_args)
    tokenizer = load_tokenizer(model_args.tokenizer_name_or_path or model_args.model_name_or_path,
                               padding_side="right")
    common = dict(dtype=dtype, use_flash_attention=model_args.use_flash_attention, tokenizer=tokenizer)
    pipeline = training_args.pipeline_parallel_degree > 1
    if pipeline:
        from alignment.models.pipeline import PipeCriterion, load_causal_lm_pipe

        def unbound(*_):
            raise RuntimeError("the pipeline criterion was not bound to a trainer's loss")

        model = load_causal_lm_pipe(model_args.model_name_or_path, criterion=PipeCriterion(unbound), dtype=dtype,
                                    use_flash_attention=model_args.use_flash_attention,
                                    recompute=training_args.recompute)
    else:
        model = load_causal_lm(model_args.model_name_or_path, recompute=training_args.recompute, **common)
    ref_model = None
    # a LoRA policy is its own reference (adapters off), except as pipeline stages, which only train_batch runs
    if need_reference and (reference or not model_args.lora or pipeline):
        ref_model = load_frozen_lm(reference or model_args.model_name_or_path, model_args, training_args,
                                   tokenizer=tokenizer)
    if model_args.lora:
        model = wrap_lora(model, model_args, dtype=dtype, base_model_name_or_path=model_args.model_name_or_path,
                          seed=training_args.seed)
    return tokenizer, model, ref_model


def _previous_run(out: str, with_metrics: bool = True) -> list:
    import os

    from alignment.training import checkpoints

    if not os.path.isdir(out):
        return []
    metrics = with_metrics and os.path.isfile(os.path.join(out, "metrics.jsonl"))
    return sorted(n for n in os.listdir(out) if n.startswith(f"{checkpoints.PREFIX}-")) + (
        ["metrics.jsonl"] if metrics else [])


def output_dir_problem(args, own_metrics: bool = False) -> Optional[str]:
    """What is wrong with ``output_dir`` / ``resume_from_checkpoint`` of a training run, or None (no side
    effects; ``alignment.utils.cli.parse_args`` asks before any model is loaded). ``own_metrics``: the
    metrics.jsonl there was written by this process (an evaluation before training), not another run."""
    import os

    from alignment.training import checkpoints

    out = getattr(args, "output_dir", None)
    if not out:
        return None
    probe = os.path.abspath(out)
    while probe and not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if os.path.exists(probe) and not os.path.isdir(probe):
        return f"option --output_dir '{out}': '{probe}' is a file, not a directory; choose another output_dir"
    resume, error = checkpoints.resolve(out, getattr(args, "resume_from_checkpoint", None))
    if error:
        return f"option --{error}"
    previous = _previous_run(out, with_metrics=not own_metrics)
    if resume is None and previous and not getattr(args, "overwrite_output_dir", False):
        more = " ..." if len(previous) > 4 else ""
        return (f"option --output_dir '{out}' holds another run ({', '.join(previous[:4])}{more}); pass "
                "--resume_from_checkpoint latest to continue it, --overwrite_output_dir true to start afresh "
                "(removes them), or choose a new output_dir")
    return None


def prepare_output_dir(training_args, own_metrics: bool = False) -> Optional[str]:
    """Check ``output_dir`` before training; returns the checkpoint to resume from (or None).

    Removes what a killed save left behind, resolves ``resume_from_checkpoint`` (latest / true / auto: the
    newest complete checkpoint), refuses an output_dir holding another run's checkpoints or metrics unless
    ``overwrite_output_dir`` (which removes them) or a resume is asked for, and drops metric records past the
    resumed step. Collective under several processes (the main process touches the disk).
    """
    import os
    import shutil

    from alignment.parallel import ParallelStrategy
    from alignment.training import checkpoints

    out = training_args.output_dir
    strategy = ParallelStrategy.current()
    if strategy.is_main_process:
        checkpoints.clean_orphans(out)
    strategy.barrier()
    problem = output_dir_problem(training_args, own_metrics)
    if problem:
        raise ValueError(problem)
    resume, _ = checkpoints.resolve(out, training_args.resume_from_checkpoint)
    if resume is None and os.path.isdir(out):
        previous = _previous_run(out, with_metrics=not own_metrics)
        strategy.barrier()
        if previous and strategy.is_main_process:
            for name in previous:
                path = os.path.join(out, name)
                shutil.rmtree(path) if os.path.isdir(path) else os.unlink(path)
        strategy.barrier()
    if resume is not None:
        if strategy.is_main_process:
            from alignment.utils.trainer import trim_metrics

            trim_metrics(out, int(os.path.basename(resume.rstrip("/")).split("-")[-1]))
        strategy.barrier()
    return resume


def load_frozen_lm(path: str, model_args: ModelArguments, training_args, *, tokenizer=None, generates: bool = False,
                   role: str = "reference"):
    """A frozen causal LM (reference, teacher), split like the trained model where it only scores:

    with ``pipeline_parallel_degree > 1`` it is pipeline stages (``alignment.models.pipeline.FrozenPipeline``);
    otherwise an ordinary model over the tensor-parallel group, its parameters also sharded under
    ``sharding='stage3'``. A model that ``generates`` (GKD's seq_kd teacher) stays whole on every rank of
    those groups (generation lengths differ between ranks, and the shards' gathers are collectives).
    """
    from alignment.models.loading import load_causal_lm, resolve_dtype
    from alignment.parallel import ParallelStrategy

    from alignment.parallel.offload import OffloadScheduler

    dtype, strategy = resolve_dtype(training_args), ParallelStrategy.current()
    if not generates and training_args.pipeline_parallel_degree > 1:
        from alignment.models.pipeline import frozen_causal_lm_pipe

        model = frozen_causal_lm_pipe(path, strategy, dtype=dtype, use_flash_attention=model_args.use_flash_attention)
    else:
        model = load_causal_lm(path, frozen=True, dtype=dtype, use_flash_attention=model_args.use_flash_attention,
                               tokenizer=tokenizer)
        model = model if generates else strategy.shard_frozen(model)
    # offload_level freeze_model: in host memory between its forward passes (a generating teacher stays)
    if not generates:
        OffloadScheduler(getattr(model_args, "offload_level", "")).attach_frozen(model, role)
    return model


def run_trainer(trainer, training_args) -> None:
    """Train / evaluate as ``do_train`` / ``do_eval`` ask (train when neither is set), then save."""
    do_train = training_args.do_train or not training_args.do_eval
    if do_train:
        resume = prepare_output_dir(training_args, own_metrics=bool(getattr(trainer, "metrics_history", None)))
        result = trainer.train(resume_from_checkpoint=resume)
        save_model(trainer)
        trainer.log_metrics("train", result.metrics)
        trainer.save_state()
    if training_args.do_eval and trainer.eval_dataset is not None:
        trainer.log_metrics("eval", trainer.evaluate())


def save_model(trainer, output_dir: Optional[str] = None) -> None:
    """The trained model as one single-process checkpoint (merged over tensor / pipeline ranks) + tokenizer.

    Written into a staging directory first; the main process then moves each file into ``output_dir``
    (config.json last, each an atomic rename), so a kill never leaves a truncated file there. Collective.
    """
    import os
    import shutil

    from alignment.parallel import ParallelStrategy
    from alignment.utils.safe_io import fsync_tree, share_tree

    output_dir = output_dir or trainer.args.output_dir
    strategy = ParallelStrategy.current()
    staging = os.path.join(output_dir, ".tmp-final-model")
    if strategy.is_main_process:
        shutil.rmtree(staging, ignore_errors=True)
        os.makedirs(staging)
    strategy.barrier()
    _save_model_files(trainer, staging)
    strategy.barrier()
    if strategy.is_main_process:
        share_tree(staging)  # the user's umask, not the temporary names' 0700 / 0600
        fsync_tree(staging)
        names = sorted(os.listdir(staging), key=lambda n: n == "config.json")
        for name in names:
            target = os.path.join(output_dir, name)
            if os.path.isdir(target) and not os.path.islink(target):
                shutil.rmtree(target)
            os.replace(os.path.join(staging, name), target)
        shutil.rmtree(staging, ignore_errors=True)
    strategy.barrier()


def _save_model_files(trainer, output_dir: str) -> None:
    """Score-model trainers save through their own ``_save``; a pipeline-parallel causal LM is gathered with
    ``alignment.parallel.checkpoint.full_state_dict``; everything else is the Trainer's merged save."""
    from alignment.models.pipeline import is_pipeline_model

    if getattr(trainer, "merges_on_save", False) or not is_pipeline_model(trainer.model):
        trainer.save_model(output_dir, merge_tensor_parallel=True)
        return
    from alignment.models.loading import save_causal_lm
    from alignment.parallel import unwrap_model
    from alignment.parallel.checkpoint import full_state_dict

    state = full_state_dict(trainer.model)
    if state is not None:
        from alignment.models.pipeline import single_architecture

        inner = unwrap_model(trainer.model)
        save_causal_lm(output_dir, state, inner.config, single_architecture(inner))
        if trainer.tokenizer is not None:
            trainer.tokenizer.save_pretrained(output_dir)


def save_merged_lora(trainer, output_dir: str) -> None:
    """Write the LoRA-merged full model into ``output_dir`` (main process only; loading it needs no peft)."""
    from alignment.models.loading import merge_lora_state_dict

    model = trainer.model
    state = merge_lora_state_dict(model)
    from alignment.parallel import is_pipeline_layer

    if is_pipeline_layer(model.model):  # every stage's merged tensors, gathered (a collective) on the main process
        from alignment.models.loading import save_causal_lm
        from alignment.models.pipeline import single_architecture
        from alignment.parallel.checkpoint import full_state_dict

        full = full_state_dict(model.model, state_dict=state)
        if full is not None:
            save_causal_lm(output_dir, full, model.model.config, single_architecture(model.model))
        return
    if trainer.args.should_save:
        from alignment.utils.safe_io import share_tree

        model.model.save_pretrained(output_dir, state_dict=state, safe_serialization=True)
        share_tree(output_dir)  # PaddleNLP's safetensors writer leaves 0600


def finish(trainer, model_args: ModelArguments, training_args) -> None:
    """``run_trainer``, then the merged LoRA weights when ``merge_lora_on_save`` asks and a training ran."""
    run_trainer(trainer, training_args)
    trained = training_args.do_train or not training_args.do_eval
    if model_args.lora and model_args.merge_lora_on_save and trained:
        save_merged_lora(trainer, training_args.output_dir)
