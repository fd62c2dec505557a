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

__all__ = ["build_datasets", "load_models", "run_trainer", "save_model", "save_merged_lora", "finish"]


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
    explicit reference none is loaded (the trainer disables the adapters instead). With
    ``pipeline_parallel_degree > 1`` the policy is a pipeline model whose criterion the trainer binds
    (``model.alignment_criterion.fn``); the reference stays an ordinary (tensor-parallel) model, used once
    to precompute the reference log-probs and then released.
    """
    from alignment.models.loading import load_causal_lm, load_tokenizer, resolve_dtype, wrap_lora

    dtype = resolve_dtype(training_args)
    tokenizer = load_tokenizer(model_args.tokenizer_name_or_path or model_args.model_name_or_path,
                               padding_side="right")
    common = dict(dtype=dtype, use_flash_attention=model_args.use_flash_attention, tokenizer=tokenizer)
    if training_args.pipeline_parallel_degree > 1:
        if model_args.lora:
            raise ValueError("lora with pipeline_parallel_degree > 1 is not supported; use tensor parallelism "
                             "or sharding for LoRA runs")
        from alignment.models.pipeline import PipeCriterion, load_causal_lm_pipe

        def unbound(*_):
            raise RuntimeError("the pipeline criterion was not bound to a trainer's loss")

        model = load_causal_lm_pipe(model_args.model_name_or_path, criterion=PipeCriterion(unbound), dtype=dtype,
                                    use_flash_attention=model_args.use_flash_attention,
                                    recompute=training_args.recompute)
    else:
        model = load_causal_lm(model_args.model_name_or_path, recompute=training_args.recompute, **common)
    ref_model = None
    if need_reference and (reference or not model_args.lora):
        ref_model = load_causal_lm(reference or model_args.model_name_or_path, frozen=True, **common)
    if model_args.lora:
        model = wrap_lora(model, model_args, dtype=dtype,
                          base_model_name_or_path=model_args.model_name_or_path)
    return tokenizer, model, ref_model


def run_trainer(trainer, training_args) -> None:
    """Train / evaluate as ``do_train`` / ``do_eval`` ask (train when neither is set), then save."""
    do_train = training_args.do_train or not training_args.do_eval
    if do_train:
        result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
        save_model(trainer)
        trainer.log_metrics("train", result.metrics)
        trainer.save_state()
    if training_args.do_eval and trainer.eval_dataset is not None:
        trainer.log_metrics("eval", trainer.evaluate())


def save_model(trainer, output_dir: Optional[str] = None) -> None:
    """The trained model as one single-process checkpoint (merged over tensor / pipeline ranks) + tokenizer.

    Score-model trainers save through their own ``_save``; a pipeline-parallel causal LM is gathered with
    ``alignment.parallel.checkpoint.full_state_dict``; everything else is the Trainer's merged save.
    """
    from alignment.models.pipeline import is_pipeline_model

    output_dir = output_dir or trainer.args.output_dir
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
    if trainer.args.should_save:
        model.model.save_pretrained(output_dir, state_dict=state)


def finish(trainer, model_args: ModelArguments, training_args) -> None:
    """``run_trainer``, then the merged LoRA weights when ``merge_lora_on_save`` asks and a training ran."""
    run_trainer(trainer, training_args)
    trained = training_args.do_train or not training_args.do_eval
    if model_args.lora and model_args.merge_lora_on_save and trained:
        save_merged_lora(trainer, training_args.output_dir)
