"""Saving and resuming a PPO run, and writing the final ``policy`` / ``value`` models.

A resumable checkpoint ``output_dir/checkpoint-<step>/`` holds
    policy/                  actor (PaddleNLP ``save_pretrained`` + tokenizer)
    value/                   critic (``ScoreModel.save_pretrained`` + tokenizer), PPO only
    cost_value/              cost critic, PPO-Lagrangian with a critic (+ cost_critic_optimizer.safetensors)
    actor_optimizer.safetensors   AdamW moments + LR schedule, keyed by structural parameter names
    critic_optimizer.safetensors  the same for the critic
    rng_state.safetensors         paddle / numpy / python RNG states of every rank
    trainer_state.json            step, prompt and ptx positions, reward-normaliser statistics, world size,
                                  the Lagrange multiplier (log λ, episode-cost window, its step count)
    checkpoint_complete.json      the completion marker (alignment/training/checkpoints.py)
Nothing is a pickle (alignment/utils/safe_io.py); a checkpoint of an older version (.pdopt, rng_state.pkl)
loads only with ``--allow_pickle true``. Everything is written into a staging directory that the main process
publishes (fsync, marker, rename) after every rank wrote its part.
The final models go to ``output_dir/policy`` and ``output_dir/value``: ``AutoModelForCausalLM.from_pretrained``
and ``ScoreModel.from_pretrained`` load them.
"""

from __future__ import annotations

import os
import random
from typing import Dict, Optional

import numpy as np
import paddle

from alignment.training import checkpoints
from alignment.utils.io import atomic_dir, atomic_write_json
from alignment.utils.safe_io import check_not_pickle, load_tree, save_tree

__all__ = ["save", "load", "save_final", "resolve", "rotate", "STATE_FILE"]

STATE_FILE = "trainer_state.json"


def _structural_keys(model: paddle.nn.Layer) -> Dict[str, str]:
    """param.name (changes with creation order) -> structural name (stable across processes)."""
    return {p.name: n for n, p in model.named_parameters()}


def _rekey(state: dict, mapping: Dict[str, str]) -> dict:
    """Rename optimizer-state keys that start with a parameter name via ``mapping`` (longest match first)."""
    names = sorted(mapping, key=len, reverse=True)
    out = {}
    for key, value in state.items():
        if isinstance(value, dict) and key == "master_weights":
            value = _rekey(value, mapping)
        new = key
        for name in names:
            if key == name or key.startswith(name + "_"):
                new = mapping[name] + key[len(name):]
                break
        out[new] = value
    return out


def optimizer_state(optimizer: paddle.optimizer.Optimizer, model: paddle.nn.Layer) -> dict:
    return _rekey(optimizer.state_dict(), {k: "@" + v for k, v in _structural_keys(_plain(model)).items()})


def set_optimizer_state(optimizer: paddle.optimizer.Optimizer, model: paddle.nn.Layer, state: dict) -> None:
    mapping = {"@" + v: k for k, v in _structural_keys(_plain(model)).items()}
    optimizer.set_state_dict(_rekey(state, mapping))


def _plain(model):
    from alignment.parallel import unwrap_model

    return unwrap_model(model)


def _full_states(trainer):
    """(actor, critic or None) single-process state dicts on the main process (collective; None elsewhere)."""
    from alignment.parallel.checkpoint import full_state_dict

    from alignment.models.loading import is_lora_model, merge_lora_state_dict

    def state(model):  # a LoRA model: the base weights with the adapters merged in
        merged = merge_lora_state_dict(_plain(model)) if is_lora_model(model) else None
        return full_state_dict(model, trainer.strategy, state_dict=merged)

    actor = state(trainer.m.actor)
    critic = state(trainer.m.critic) if trainer.m.critic is not None else None
    cost_critic = state(trainer.m.cost_critic) if getattr(trainer.m, "cost_critic", None) is not None else None
    return actor, critic, cost_critic


def _save_model(model, tokenizer, path: str, state, merged: bool = True) -> None:
    """A single-process checkpoint of ``model`` from its full ``state`` (the critic as a score model).

    A LoRA model also gets its adapter files (lora_config.json, lora_model_state.pdparams: the adapters and a
    critic's score head, what a resume reloads); ``merged=False`` leaves out the merged weights (the config and,
    for the critic, value_head.safetensors stay, so ``alignment.tools.export`` can merge them later)."""
    from alignment.models.loading import is_lora_model, save_causal_lm
    from alignment.models.pipeline import single_architecture
    from alignment.models.score_model import save_score_checkpoint, save_score_head

    inner = _plain(model)
    lora = inner if is_lora_model(inner) else None
    if lora is not None:
        inner = lora.model
        os.makedirs(path, exist_ok=True)
        from alignment.utils.safe_io import safe_paddle_io

        with safe_paddle_io():
            lora.save_pretrained(path)
    if hasattr(inner, "score_config"):
        save_score_checkpoint(inner, path, state) if merged else save_score_head(inner, path)
    elif merged:
        save_causal_lm(path, state, inner.config, single_architecture(inner))
    else:
        import json

        atomic_write_json(os.path.join(path, "config.json"), json.loads(inner.config.to_json_string()))
    if tokenizer is not None:
        tokenizer.save_pretrained(path)


def _shard_state(trainer) -> dict:
    """This rank's own slices of the trainable models and their optimizer states (exact same-layout resume)."""
    out = {"actor": _plain(trainer.m.actor).state_dict(),
           "actor_optimizer": optimizer_state(trainer.actor_optimizer, trainer.m.actor)}
    for role in _CRITICS:
        model = getattr(trainer.m, role, None)
        if model is not None:
            out[role] = _plain(model).state_dict()
            out[f"{role}_optimizer"] = optimizer_state(getattr(trainer, f"{role}_optimizer"), model)
    return out


_CRITICS = ("critic", "cost_critic")  # trainable score models: (checkpoint directory name, optimizer file)
_CRITIC_DIRS = {"critic": "value", "cost_critic": "cost_value"}


def save(trainer, path: str) -> None:
    """Write a resumable checkpoint of ``trainer`` at ``path`` (collective: call on every rank).

    Under tensor / pipeline / sharding layouts ``policy/`` and ``value/`` are the merged single-process
    models and ``shards/rank<R>.safetensors`` hold each rank's own weights and optimizer states, from which
    the same layout resumes.
    """
    s = trainer.strategy
    rng = s.all_gather_object(
        {"paddle": paddle.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    )
    output_dir, name = os.path.split(os.path.abspath(path))
    staging = checkpoints.begin(output_dir, trainer.global_step, s)
    if s.hybrid:
        if s.is_main_process:
            os.makedirs(os.path.join(staging, "shards"))
        s.barrier()
        save_tree(_shard_state(trainer), os.path.join(staging, "shards", f"rank{s.rank}.safetensors"))
    actor_state, *critic_states = _full_states(trainer)
    if s.is_main_process:
        _save_model(trainer.m.actor, trainer.m.actor_tokenizer, os.path.join(staging, "policy"), actor_state)
        for role, state in zip(_CRITICS, critic_states):
            model = getattr(trainer.m, role, None)
            if model is not None:
                _save_model(model, trainer.m.actor_tokenizer, os.path.join(staging, _CRITIC_DIRS[role]), state)
        if not s.hybrid:
            save_tree(optimizer_state(trainer.actor_optimizer, trainer.m.actor),
                      os.path.join(staging, "actor_optimizer.safetensors"))
            for role in _CRITICS:
                model = getattr(trainer.m, role, None)
                if model is not None:
                    save_tree(optimizer_state(getattr(trainer, f"{role}_optimizer"), model),
                              os.path.join(staging, f"{role}_optimizer.safetensors"))
        save_tree(rng, os.path.join(staging, "rng_state.safetensors"))
        atomic_write_json(
            os.path.join(staging, STATE_FILE),
            {
                "global_step": trainer.global_step,
                "total_steps": trainer.total_steps,
                "world_size": s.world_size,
                "prompts": trainer.prompts.state_dict(),
                "ptx": trainer.ptx.state_dict() if trainer.ptx is not None else None,
                "reward_normalizer": (
                    trainer.reward_normalizer.state_dict() if trainer.reward_normalizer is not None else None
                ),
                "rl_algorithm": trainer.args.rl_algorithm,
                "lagrange": trainer.lagrange.state_dict() if getattr(trainer, "lagrange", None) is not None else None,
                "layout": s.describe().split(": ", 1)[1],
            },
        )
    checkpoints.publish(staging, os.path.join(output_dir, name), s, meta={"stage": "ppo"})


def _load_state(path: str, legacy: str):
    """A state file of the checkpoint: ``path`` (safetensors), or its pickle predecessor with allow_pickle."""
    if os.path.isfile(path):
        return load_tree(path)
    check_not_pickle(legacy, "checkpoint file")
    if legacy.endswith(".pkl"):
        import pickle

        with open(legacy, "rb") as f:
            return pickle.load(f)
    return paddle.load(legacy)


def load(trainer, path: str) -> None:
    """Restore weights, optimizer and schedule states, positions, normaliser and RNG from ``path``."""
    import json

    with open(os.path.join(path, STATE_FILE), encoding="utf-8") as f:
        state = json.load(f)
    s = trainer.strategy
    if state.get("rl_algorithm", trainer.args.rl_algorithm) != trainer.args.rl_algorithm:
        raise ValueError(
            f"{path}: checkpoint of rl_algorithm '{state['rl_algorithm']}' cannot resume a '{trainer.args.rl_algorithm}' run"
        )
    if s.hybrid:
        layout = s.describe().split(": ", 1)[1]
        if state.get("layout") != layout or state.get("world_size") != s.world_size:
            raise ValueError(f"{path}: saved under layout '{state.get('layout')}' ({state.get('world_size')} ranks); "
                             f"this run is '{layout}' ({s.world_size} ranks). Resume under the saved layout, or "
                             "start a new run from the merged policy/ and value/ models")
        shard = _load_state(os.path.join(path, "shards", f"rank{s.rank}.safetensors"),
                            os.path.join(path, "shards", f"rank{s.rank}.pdparams"))
        _plain(trainer.m.actor).set_state_dict(shard["actor"])
        set_optimizer_state(trainer.actor_optimizer, trainer.m.actor, shard["actor_optimizer"])
        for role in _CRITICS:
            model = getattr(trainer.m, role, None)
            if model is not None:
                _plain(model).set_state_dict(shard[role])
                set_optimizer_state(getattr(trainer, f"{role}_optimizer"), model, shard[f"{role}_optimizer"])
    else:
        _load_weights(trainer.m.actor, os.path.join(path, "policy"))
        set_optimizer_state(trainer.actor_optimizer, trainer.m.actor,
                            _load_state(os.path.join(path, "actor_optimizer.safetensors"),
                                        os.path.join(path, "actor_optimizer.pdopt")))
        for role in _CRITICS:
            model = getattr(trainer.m, role, None)
            if model is None:
                continue
            _load_weights(model, os.path.join(path, _CRITIC_DIRS[role]))
            set_optimizer_state(
                getattr(trainer, f"{role}_optimizer"), model,
                _load_state(os.path.join(path, f"{role}_optimizer.safetensors"),
                            os.path.join(path, f"{role}_optimizer.pdopt")),
            )
    trainer.global_step = int(state["global_step"])
    trainer.prompts.set_state_dict(state["prompts"])
    if trainer.ptx is not None:
        trainer.ptx.set_state_dict(state.get("ptx"))
    if trainer.reward_normalizer is not None and state.get("reward_normalizer"):
        trainer.reward_normalizer.set_state_dict(state["reward_normalizer"])
    lagrange = getattr(trainer, "lagrange", None)
    if (lagrange is None) != (state.get("lagrange") is None):
        raise ValueError(f"{path}: a checkpoint {'with' if state.get('lagrange') else 'without'} a Lagrange multiplier "
                         f"cannot resume a run {'with' if lagrange is not None else 'without'} one (cost model / "
                         "cost_fn must match the saved run)")
    if lagrange is not None:
        lagrange.set_state_dict(state["lagrange"])
    rng = _load_state(os.path.join(path, "rng_state.safetensors"), os.path.join(path, "rng_state.pkl"))
    if len(rng) == s.world_size:
        mine = rng[s.rank]
        paddle.set_rng_state(mine["paddle"])
        np.random.set_state(mine["numpy"])
        random.setstate(mine["python"])
    else:  # a different world size cannot continue the same random streams
        paddle.seed(trainer.args.seed + s.rank + 1000003 * trainer.global_step)


def _load_weights(model: paddle.nn.Layer, directory: str) -> None:
    from alignment.models.loading import is_lora_model, read_weights

    if is_lora_model(model):  # the adapters (and a critic's head); the base weights are the start model's
        lora_file = os.path.join(directory, "lora_model_state.pdparams")
        check_not_pickle(lora_file, "LoRA weights")
        _plain(model).model.set_state_dict(load_tree(lora_file))
        return
    missing, unexpected = _plain(model).set_state_dict(read_weights(directory))
    if missing:
        raise ValueError(f"{directory}: checkpoint lacks parameters {missing[:5]}{'...' if len(missing) > 5 else ''}")


def save_final(trainer, output_dir: str) -> None:
    """``output_dir/policy`` (and ``output_dir/value`` when a critic was trained), written atomically as
    single-process models whatever the layout (collective: call on every rank)."""
    actor_state, *critic_states = _full_states(trainer)
    if trainer.strategy.is_main_process:
        with atomic_dir(os.path.join(output_dir, "policy")) as tmp:
            _save_model(trainer.m.actor, trainer.m.actor_tokenizer, str(tmp), actor_state, _merged(trainer.m.actor))
        for role, state in zip(_CRITICS, critic_states):
            model = getattr(trainer.m, role, None)
            if model is not None:
                with atomic_dir(os.path.join(output_dir, _CRITIC_DIRS[role])) as tmp:
                    _save_model(model, trainer.m.actor_tokenizer, str(tmp), state, _merged(model))
    trainer.strategy.barrier()


def _merged(model) -> bool:
    """Whether the final model is written merged (always, except a LoRA model with merge_lora_on_save false)."""
    return bool(getattr(_plain(model), "merge_on_save", True))


def resolve(output_dir: str, spec: str) -> str:
    """``spec`` as a complete checkpoint directory; 'latest'/'true'/'auto' picks the newest complete one."""
    path, error = checkpoints.resolve(output_dir, spec)
    if error:
        raise FileNotFoundError(error)
    if path is not None and not os.path.isfile(os.path.join(path, STATE_FILE)):
        raise FileNotFoundError(f"resume_from_checkpoint='{spec}': {path} is not a PPO checkpoint (no {STATE_FILE})")
    return path


def rotate(output_dir: str, limit: Optional[int], strategy) -> None:
    """Delete the oldest complete ``checkpoint-N`` beyond ``limit``, never the newest (main process only)."""
    if strategy.is_main_process:
        checkpoints.rotate(output_dir, limit)
