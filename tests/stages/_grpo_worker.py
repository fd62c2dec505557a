"""Helpers of the GRPO checks that must also exist in launched processes: a deterministic sampler that ends rows at
content-dependent lengths (``eos_by_content``), and reward functions of crafted values.

    python tests/stages/_grpo_worker.py <run_ppo arguments>     # run_ppo.main with the sampler registered
"""

from __future__ import annotations

import sys

import paddle

from alignment.rollout.sampling import register_sampler

EOS_ID = 2  # the tiny tokenizer's </s>
CRAFTED = [1.0, 3.0, 0.0, 2.0, -1.0, -1.0, 4.0, 0.5]  # 2 groups of 4 rewards


def eos_by_content(logits, generated, *, generated_mask=None, **kw):
    """Deterministic: even rows take the best token, odd rows the second best (the two samples of a group differ),
    and a row whose real tokens so far sum to 0 mod 7 emits EOS instead, so the lengths vary by row. A row's
    tokens depend on its own content and the parity of its row only: one process and data-parallel ranks (whole
    groups of an even size per rank) generate the same rows."""
    top = paddle.topk(logits.astype("float32"), 2, axis=-1)[1]  # (B, 2)
    parity = (paddle.arange(logits.shape[0], dtype="int64") % 2).unsqueeze(-1)
    ids = paddle.take_along_axis(top, parity, axis=-1).squeeze(-1)
    mask = paddle.ones_like(generated) if generated_mask is None else generated_mask
    total = (generated * mask).sum(axis=-1)
    return paddle.where(total % 7 == 0, paddle.full_like(ids, EOS_ID), ids)


if __name__ != "__main__":  # registered once, by the importable module (the script imports it, below)
    register_sampler("eos_by_content")(eos_by_content)


def crafted_reward(prompts, completions, **columns):
    """The CRAFTED values, row by row (8 rows: 2 prompts x 4 samples)."""
    return [CRAFTED[i % len(CRAFTED)] for i in range(len(completions))]


def pattern_reward(prompts, completions, **columns):
    """Sample j of a prompt scores the j-th entry of its record's comma-separated ``pattern`` (groups contiguous)."""
    return [float(p.split(",")[i % len(p.split(","))]) for i, p in enumerate(columns["pattern"])]


def kind_reward(prompts, completions, **columns):
    """1.0 for every sample of a 'same' prompt (a constant group); sample j of a 'vary' prompt scores j % 2."""
    return [1.0 if kind == "same" else float(i % 2) for i, kind in enumerate(columns["kind"])]


if __name__ == "__main__":
    import tests.stages._grpo_worker  # noqa: F401  the sampler, under the name the reward_funcs entries import
    from alignment.parallel import ParallelStrategy
    from alignment.ppo.run_ppo import main
    from alignment.utils.cli import run_cli

    run_cli(main, sys.argv[1:])
    ParallelStrategy.current().shutdown()
