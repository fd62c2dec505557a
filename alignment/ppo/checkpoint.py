"""Saving and resuming a PPO run, and writing the final ``policy`` / ``value`` models.

A resumable checkpoint ``output_dir/checkpoint-<step>/`` holds
    policy/                  actor (PaddleNLP ``save_pretrained`` + tokenizer)
    value/                   critic (``ScoreModel.save_pretrained`` + tokenizer), PPO only
    actor_optimizer.pdopt    AdamW moments + LR schedule, keyed by structural parameter names
    critic_optimizer.pdopt   the same for the critic
    rng_state.pkl            paddle / numpy / python RNG states of every rank
    trainer_state.json       step, prompt and ptx positions, reward-normaliser statistics, world size
Everything is written under a temporary name and renamed into place by the main process.
The final models go to ``output_dir/policy`` and ``output_dir/value``: ``AutoModelForCausalLM.from_pretrained``
and ``ScoreModel.from_pretrained`` load them.
"""

from __future__ import annotations

import glob
import os
import pickle
import random
import re
import shutil
from typing import Dict, Optional

import numpy as np
import paddle

from alignment.utils.io import atomic_dir, atomic_write_json

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


def _save_model(model, tokenizer, path: str) -> None:
    _plain(model).save_pretrained(path)
    if tokenizer is not None:
        tokenizer.save_pretrained(path)


def save(trainer, path: str) -> None:
    """Write a resumable checkpoint of ``trainer`` at ``path`` (collective: call on every rank)."""
    s = trainer.strategy
    rng = s.all_gather_object(
        {"paddle": paddle.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    )
    if s.is_main_process:
        with atomic_dir(path) as tmp:
            _save_model(trainer.m.actor, trainer.m.actor_tokenizer, os.path.join(tmp, "policy"))
            paddle.save(optimizer_state(trainer.actor_optimizer, trainer.m.actor), os.path.join(tmp, "actor_optimizer.pdopt"))
            if trainer.m.critic is not None:
                _save_model(trainer.m.critic, trainer.m.actor_tokenizer, os.path.join(tmp, "value"))
                paddle.save(
                    optimizer_state(trainer.critic_optimizer, trainer.m.critic), os.path.join(tmp, "critic_optimizer.pdopt")
                )
            with open(os.path.join(tmp, "rng_state.pkl"), "wb") as f:
                pickle.dump(rng, f)
            atomic_write_json(
                os.path.join(tmp, STATE_FILE),
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
                },
            )
    s.barrier()


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
    _load_weights(trainer.m.actor, os.path.join(path, "policy"))
    set_optimizer_state(trainer.actor_optimizer, trainer.m.actor, paddle.load(os.path.join(path, "actor_optimizer.pdopt")))
    if trainer.m.critic is not None:
        _load_weights(trainer.m.critic, os.path.join(path, "value"))
        set_optimizer_state(
            trainer.critic_optimizer, trainer.m.critic, paddle.load(os.path.join(path, "critic_optimizer.pdopt"))
        )
    trainer.global_step = int(state["global_step"])
    trainer.prompts.set_state_dict(state["prompts"])
    if trainer.ptx is not None:
        trainer.ptx.set_state_dict(state.get("ptx"))
    if trainer.reward_normalizer is not None and state.get("reward_normalizer"):
        trainer.reward_normalizer.set_state_dict(state["reward_normalizer"])
    with open(os.path.join(path, "rng_state.pkl"), "rb") as f:
        rng = pickle.load(f)
    if len(rng) == s.world_size:
        mine = rng[s.rank]
        paddle.set_rng_state(mine["paddle"])
        np.random.set_state(mine["numpy"])
        random.setstate(mine["python"])
    else:  # a different world size cannot continue the same random streams
        paddle.seed(trainer.args.seed + s.rank + 1000003 * trainer.global_step)


def _load_weights(model: paddle.nn.Layer, directory: str) -> None:
    files = sorted(glob.glob(os.path.join(directory, "*.pdparams")))
    if files:
        state = {}
        for file in files:
            state.update(paddle.load(file))
    else:
        safetensors = sorted(glob.glob(os.path.join(directory, "*.safetensors")))
        if not safetensors:
            raise FileNotFoundError(f"{directory}: no model_state.pdparams or *.safetensors to resume from")
        from safetensors.numpy import load_file

        state = {}
        for file in safetensors:
            state.update({k: paddle.to_tensor(v) for k, v in load_file(file).items()})
    missing, unexpected = _plain(model).set_state_dict(state)
    if missing:
        raise ValueError(f"{directory}: checkpoint lacks parameters {missing[:5]}{'...' if len(missing) > 5 else ''}")


def save_final(trainer, output_dir: str) -> None:
    """``output_dir/policy`` (and ``output_dir/value`` when a critic was trained), written atomically."""
    if trainer.strategy.is_main_process:
        with atomic_dir(os.path.join(output_dir, "policy")) as tmp:
            _save_model(trainer.m.actor, trainer.m.actor_tokenizer, str(tmp))
        if trainer.m.critic is not None:
            with atomic_dir(os.path.join(output_dir, "value")) as tmp:
                _save_model(trainer.m.critic, trainer.m.actor_tokenizer, str(tmp))
    trainer.strategy.barrier()


def _step_of(path: str) -> int:
    m = re.search(r"checkpoint-(\d+)$", path.rstrip("/"))
    return int(m.group(1)) if m else -1


def resolve(output_dir: str, spec: str) -> str:
    """``spec`` as a checkpoint directory; 'latest'/'true' picks the newest ``checkpoint-N`` in output_dir."""
    if spec.lower() in ("latest", "true", "auto"):
        found = [p for p in glob.glob(os.path.join(output_dir, "checkpoint-*")) if os.path.isfile(os.path.join(p, STATE_FILE))]
        if not found:
            raise FileNotFoundError(f"resume_from_checkpoint='{spec}': no checkpoint-N in {output_dir}")
        return max(found, key=_step_of)
    if not os.path.isfile(os.path.join(spec, STATE_FILE)):
        raise FileNotFoundError(f"resume_from_checkpoint='{spec}': not a PPO checkpoint (no {STATE_FILE})")
    return spec


def rotate(output_dir: str, limit: Optional[int], strategy) -> None:
    """Delete the oldest ``checkpoint-N`` directories beyond ``limit`` (main process only)."""
    if not limit or not strategy.is_main_process:
        return
    found = sorted(glob.glob(os.path.join(output_dir, "checkpoint-*")), key=_step_of)
    for old in found[:-limit]:
        shutil.rmtree(old, ignore_errors=True)
