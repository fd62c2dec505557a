"""The Hugging Face / TRL side of the ``--compare`` benchmarks, run by a Python that has torch and transformers
(trl for the ``dpo_trl`` mode; optional elsewhere). Not a project dependency: the benchmarks call it in a
subprocess with ``--torch-python`` (a scratch virtualenv, e.g. one with the machine's CPU torch wheel,
transformers and trl).

    <torch-python> bench/_torch_peer.py rollout SPEC.json OUT.json   # HF generate (bench/rollout.py)
    <torch-python> bench/_torch_peer.py dpo_trl SPEC.json OUT.json   # trl.DPOTrainer's own steps (dpo_step.py)
    <torch-python> bench/_torch_peer.py dpo SPEC.json OUT.json       # the hand-written torch DPO step
    <torch-python> bench/_torch_peer.py ppo SPEC.json OUT.json       # a torch PPO iteration (ppo_step.py)

SPEC.json names an ``.npz`` of the Paddle model's weights (PaddleNLP names and layouts) and its Llama config,
the inputs, the thread count and the repeats (``ppo``: one ``.npz`` per model, actor / reference / critic /
reward). The weights are mapped onto ``transformers.LlamaForCausalLM`` (``llama.*`` -> ``model.*``, Linear
weights transposed) and, for a ``ScoreModel``, onto ``LlamaForSequenceClassification`` (``score_head`` ->
``score``), so both sides run the same models on the same data. Timings are wall clock with
``torch.set_num_threads`` as given; peak memory is the growth of the process RSS over its value before the
timed call (sampled every 2 ms), like the Paddle side.

TRL 1.16 has no PPO trainer (``trl.PPOTrainer`` and ``trl.experimental.ppo`` are gone; its online trainers are
the critic-free GRPO / RLOO), so ``ppo`` times a hand-written PPO iteration and says so in its ``system`` label.
"""

from __future__ import annotations

import importlib
import json
import os
import resource
import statistics
import sys
import tempfile
import threading
import time

import numpy as np


class PeakRSS:
    """Peak resident-set growth (MiB) during a ``with`` block, sampled from /proc/self/statm."""

    def __init__(self, interval: float = 0.002):
        self.interval, self.peak, self._stop = interval, 0.0, threading.Event()

    @staticmethod
    def rss() -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss() - self.base)
            time.sleep(self.interval)

    def __enter__(self):
        self.base = self.rss()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss() - self.base)


def _llama_config(spec, **extra):
    from transformers import LlamaConfig

    c = spec["config"]
    return LlamaConfig(vocab_size=c["vocab_size"], hidden_size=c["hidden_size"],
                       intermediate_size=c["intermediate_size"], num_hidden_layers=c["num_hidden_layers"],
                       num_attention_heads=c["num_attention_heads"], num_key_value_heads=c["num_key_value_heads"],
                       max_position_embeddings=c["max_position_embeddings"], rms_norm_eps=c["rms_norm_eps"],
                       rope_theta=c.get("rope_theta", 10000.0), tie_word_embeddings=False, attention_bias=False,
                       bos_token_id=1, eos_token_id=c["eos_token_id"], pad_token_id=c["pad_token_id"], **extra)


def _load_paddle_weights(model, path):
    """Load a Paddle state dict (``.npz``, PaddleNLP names) into an HF Llama model: ``llama.*`` -> ``model.*``,
    ``score_head.weight`` -> ``score.weight``, Linear weights transposed; a ScoreModel's normaliser is skipped."""
    import torch

    weights = np.load(path)
    state = {}
    for name in weights.files:
        if name.startswith("normalizer."):
            continue
        w = weights[name]
        hf = "model." + name[len("llama."):] if name.startswith("llama.") else name
        hf = "score.weight" if hf == "score_head.weight" else hf
        if hf.endswith("proj.weight") or hf in ("lm_head.weight", "score.weight"):
            w = w.T  # Paddle Linear: (in, out); torch: (out, in)
        state[hf] = torch.from_numpy(np.ascontiguousarray(w))
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [m for m in missing if "rotary" not in m]
    if missing or unexpected:
        raise RuntimeError(f"weight mapping: missing {missing[:4]}, unexpected {unexpected[:4]}")
    return model.float()


def build_model(spec, weights=None):
    """``LlamaForCausalLM`` on the Paddle weights (``spec["weights"]``, or the given ``.npz``)."""
    from transformers import LlamaForCausalLM

    return _load_paddle_weights(LlamaForCausalLM(_llama_config(spec)), weights or spec["weights"])


def build_score_model(spec, weights):
    """``LlamaForSequenceClassification`` (one label) on a Paddle ``ScoreModel``'s weights: the backbone as
    ``model``, the bias-free score head as ``score``."""
    from transformers import LlamaForSequenceClassification

    return _load_paddle_weights(LlamaForSequenceClassification(_llama_config(spec, num_labels=1)), weights)


def rollout(spec):
    import torch

    torch.set_num_threads(spec["threads"])
    model = build_model(spec).eval()
    ids = torch.tensor(spec["input_ids"])
    mask = torch.tensor(spec["attention_mask"])
    eos, pad = spec["config"]["eos_token_id"], spec["config"]["pad_token_id"]

    def run(do_sample):
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=spec["new_tokens"],
                                 min_new_tokens=0, do_sample=do_sample, top_p=spec["top_p"] if do_sample else None,
                                 top_k=0 if do_sample else None, temperature=1.0 if do_sample else None,
                                 eos_token_id=eos, pad_token_id=pad)
        return out[:, ids.shape[1]:].numpy()

    greedy = run(False)
    run(True)  # warm-up
    times, tokens, peaks = [], [], []
    for _ in range(spec["repeats"]):
        with PeakRSS() as mem:
            start = time.perf_counter()
            out = run(True)
            times.append(time.perf_counter() - start)
        tokens.append(int(_real_tokens(out, eos, pad)))
        peaks.append(mem.peak)
    return dict(times=times, tokens=tokens, peak_rss_growth_mib=max(peaks), greedy=greedy.tolist(),
                torch=torch.__version__)


def _real_tokens(out, eos, pad):
    total = 0
    for row in out:
        hit = np.flatnonzero(row == eos)
        total += (hit[0] + 1) if len(hit) else int((row != pad).sum())
    return total


def dpo(spec):
    """The hand-written torch DPO step (the bare step, no trainer): chosen + rejected concatenated in one
    policy forward and one no-grad reference forward on the full (2B, L, V) logits, per-token log-probs with
    TRL's ``selective_log_softmax`` (a plain log_softmax gather where trl is missing), sigmoid loss, backward,
    AdamW. (TRL 1.16's DPOTrainer itself scores through its chunked ``add_fused_lm_head``: see ``dpo_trl``.)"""
    import torch
    import torch.nn.functional as F

    try:
        from trl.trainer.utils import selective_log_softmax
        source = "trl.trainer.utils.selective_log_softmax"
    except Exception:  # noqa: BLE001
        def selective_log_softmax(logits, index):
            return torch.gather(logits.log_softmax(-1), -1, index.unsqueeze(-1)).squeeze(-1)
        source = "log_softmax + gather (trl not importable)"

    torch.set_num_threads(spec["threads"])
    policy = build_model(spec).train()
    reference = build_model(spec).eval()
    for p in reference.parameters():
        p.requires_grad_(False)
    for m in (policy, reference):  # dropout off, like the Paddle side (PaddleNLP Llama has none)
        m.config.attention_dropout = 0.0
    opt = torch.optim.AdamW(policy.parameters(), lr=spec.get("lr", 1e-6))
    ids, mask, labels = (torch.tensor(spec[k]) for k in ("input_ids", "attention_mask", "labels"))
    n = ids.shape[0] // 2

    def seq_logps(model):
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
        targets = labels[:, 1:].clone()
        valid = targets != -100
        targets[~valid] = 0
        return (selective_log_softmax(logits, targets) * valid).sum(-1)

    def step():
        with torch.no_grad():
            ref = seq_logps(reference)
        pol = seq_logps(policy)
        margin = (pol[:n] - ref[:n]) - (pol[n:] - ref[n:])
        loss = -F.logsigmoid(spec.get("beta", 0.1) * margin).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss)

    for _ in range(spec["warmup"]):
        step()
    times, peaks = [], []
    for _ in range(spec["steps"]):
        with PeakRSS() as mem:
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
        peaks.append(mem.peak)
    return dict(seconds_per_step=statistics.median(times), times=times, peak_rss_growth_mib=max(peaks),
                max_rss_mib=_max_rss_mib(), logps_function=source, torch=torch.__version__)


def _max_rss_mib() -> float:
    """This process's peak RSS (VmHWM: ``ru_maxrss`` would carry the Paddle parent's peak over the exec)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _local_tokenizer(config):
    """A tokenizer object for TRL's pad / EOS ids, built here (no download): a word-level vocabulary of the
    special tokens only, at the model's ids. The data reach the trainer as token ids, never as text."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    specials = {"<unk>": 0, "<s>": 1, "</s>": config["eos_token_id"], "<pad>": config["pad_token_id"]}
    if len(set(specials.values())) != len(specials):
        raise ValueError(f"special token ids collide: {specials}")
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(WordLevel(vocab=specials, unk_token="<unk>")),
                                  unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    assert tok.pad_token_id == config["pad_token_id"] and tok.eos_token_id == config["eos_token_id"]
    return tok


def dpo_trl(spec):
    """TRL's own ``DPOTrainer.train()`` on the same weights and token ids, its optimizer steps timed.

    ``spec["pairs"]``: one batch of ``{"prompt_ids", "chosen_ids", "rejected_ids"}`` (the completions without
    the prompt). TRL 1.16 has no pre-tokenised entry point: ``DPOTrainer._prepare_dataset`` always runs
    ``extract_prompt`` / ``add_eos`` / the tokenizer on text columns, and its output is exactly those three id
    columns, which the default ``DataCollatorForPreference`` pads (right, to the longest row) into chosen rows
    then rejected rows with a completion mask. So the trainer is subclassed to take the dataset as already
    prepared (``_prepare_dataset`` returns it unchanged) -- no EOS is appended, no id changes -- and everything
    else is TRL's: collator, fused chunked LM head (``add_fused_lm_head``), ``_compute_loss`` with the reference
    forward inside the step (``precompute_ref_log_probs=False``), its metrics, HF ``Trainer``'s loop, the
    grad-norm computation, AdamW and the LR scheduler. The dataset is the one batch; ``max_steps`` = warm-up
    + timed steps, so every step sees all its pairs (in a shuffled order). A ``TrainerCallback`` times
    ``on_step_begin`` -> ``on_step_end`` (forward, backward, optimizer; the batch was collated before) and reads
    the real (unpadded) tokens of the step from ``state.num_input_tokens_seen`` (``non_padding``)."""
    import torch
    import transformers
    import trl
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer

    class PreTokenizedDPOTrainer(DPOTrainer):
        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            return dataset  # already prompt_ids / chosen_ids / rejected_ids (what TRL's own preparation yields)

    warmup, steps = spec["warmup"], spec["steps"]

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times, self.tokens, self.peaks, self._mem = [], [], [], None

        def on_step_begin(self, args, state, control, **kwargs):
            self._timed = state.global_step >= warmup
            self._tokens0 = state.num_input_tokens_seen
            if self._timed:
                self._mem = PeakRSS().__enter__()
            self._start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            elapsed = time.perf_counter() - self._start
            if self._timed:
                self._mem.__exit__(None, None, None)
                self.times.append(elapsed)
                self.tokens.append(int(state.num_input_tokens_seen - self._tokens0))
                self.peaks.append(self._mem.peak)

    torch.set_num_threads(spec["threads"])
    policy, reference = build_model(spec), build_model(spec)
    tokenizer = _local_tokenizer(spec["config"])
    columns = ("prompt_ids", "chosen_ids", "rejected_ids")
    dataset = Dataset.from_list([{k: list(map(int, pair[k])) for k in columns} for pair in spec["pairs"]])
    timer = StepTimer()
    with tempfile.TemporaryDirectory(prefix="trl_dpo_") as out:
        config = DPOConfig(
            output_dir=out, loss_type=["sigmoid"], beta=spec.get("beta", 0.1),
            learning_rate=spec.get("lr", 1e-6),
            per_device_train_batch_size=len(spec["pairs"]), gradient_accumulation_steps=1,
            max_steps=warmup + steps, lr_scheduler_type="constant", warmup_steps=0, optim="adamw_torch",
            weight_decay=spec.get("weight_decay", 0.01), max_grad_norm=0.0,  # no clipping, like our step
            max_length=None, truncation_mode="keep_start",  # nothing is cut
            precompute_ref_log_probs=False, gradient_checkpointing=False, bf16=False, fp16=False, use_cpu=True,
            eval_strategy="no", save_strategy="no", logging_strategy="no", report_to="none", disable_tqdm=True,
            dataloader_num_workers=0, include_num_input_tokens_seen="non_padding", seed=0,
        )
        trainer = PreTokenizedDPOTrainer(model=policy, ref_model=reference, args=config, train_dataset=dataset,
                                         processing_class=tokenizer, callbacks=[timer])
        torch.set_num_threads(spec["threads"])
        trainer.train()
    if len(timer.times) != steps:
        raise RuntimeError(f"timed {len(timer.times)} optimizer steps, expected {steps}")
    def name(value):  # enum -> its value
        return str(getattr(value, "value", value))

    used = dict(loss_type="sigmoid", beta=config.beta, learning_rate=config.learning_rate,
                per_device_train_batch_size=config.per_device_train_batch_size, optim=name(config.optim),
                weight_decay=config.weight_decay, max_grad_norm=config.max_grad_norm,
                gradient_checkpointing=bool(config.gradient_checkpointing),
                precompute_ref_log_probs=config.precompute_ref_log_probs, max_length=config.max_length,
                lr_scheduler_type=name(config.lr_scheduler_type), bf16=config.bf16,
                dtype=str(next(policy.parameters()).dtype))
    return dict(seconds_per_step=statistics.median(timer.times), times=timer.times,
                tokens_per_step=statistics.median(timer.tokens), tokens=timer.tokens,
                peak_rss_growth_mib=max(timer.peaks), max_rss_mib=_max_rss_mib(), threads=torch.get_num_threads(),
                system="trl.DPOTrainer", torch=torch.__version__, trl=trl.__version__,
                transformers=transformers.__version__, config=used)


def _trl_ppo_status():
    """None when the installed trl has a PPO trainer, else why not (the ``ppo`` mode's label says it)."""
    try:
        import trl
    except Exception as exc:  # noqa: BLE001
        return f"trl not importable ({type(exc).__name__})"
    if hasattr(trl, "PPOTrainer"):
        return None
    try:
        importlib.import_module("trl.experimental.ppo")
        return None
    except ImportError:
        pass
    return f"trl {trl.__version__} has no trl.PPOTrainer nor trl.experimental.ppo"


def ppo(spec):
    """One PPO iteration in torch per prompt batch, the phases of ``alignment.ppo.PPOTrainer.step``:

    1. generation: HF ``generate`` of ``n`` samples per prompt (``do_sample``, top-p, temperature, exactly
       ``new_tokens`` new tokens when ``min_new_tokens`` says so), then the reward model's score at each
       row's last real token (our trainer scores in this phase too);
    2. experience: actor (old) and reference log-probs of the response tokens, critic values at positions
       P-1 .. P+R-2, in micro-batches of ``experience_batch_size`` rows, no grad;
    3. advantages: k1 KL-shaped per-token rewards (-kl_coeff * (old - ref), the clipped score added at the
       last response token), GAE (gamma, lam), returns = A + V;
    4. update: ``update_iters`` passes of the actor (PPO clipped surrogate, token mean) over micro-batches of
       ``train_batch`` rows, each an AdamW step after a global-norm clip, then the same for the critic
       (clipped value loss 0.5 max((V - R)^2, (V_clip - R)^2)).

    Hand-written because TRL 1.16 has no PPO trainer (``_trl_ppo_status``); TRL's utilities are used where they
    exist: the log-probs go through ``trl.trainer.utils.add_fused_lm_head`` (the chunked LM head TRL's GRPO and
    RLOO trainers use), else ``selective_log_softmax`` on the logits. Reward model and critic are
    ``LlamaForSequenceClassification`` (backbone ``model`` + bias-free ``score``), read per token."""
    import torch

    torch.set_num_threads(spec["threads"])
    torch.manual_seed(spec.get("seed", 0))
    status = _trl_ppo_status()
    w = spec["weights"]
    actor = build_model(spec, w["actor"])
    reference = build_model(spec, w["reference"]).eval().requires_grad_(False)
    critic = build_score_model(spec, w["critic"])
    reward_model = build_score_model(spec, w["reward"]).eval().requires_grad_(False)
    temperature = spec["temperature"]
    try:
        from trl.trainer.utils import add_fused_lm_head

        for m in (actor, reference):
            add_fused_lm_head(m, temperature=temperature)
        fused, source = True, "trl.trainer.utils.add_fused_lm_head (chunked LM head, as TRL's GRPO / RLOO)"
    except ImportError:
        fused = False
        try:
            from trl.trainer.utils import selective_log_softmax
            source = "logits + trl.trainer.utils.selective_log_softmax"
        except ImportError:
            def selective_log_softmax(logits, index):
                return torch.gather(logits.log_softmax(-1), -1, index.unsqueeze(-1)).squeeze(-1)
            source = "logits + log_softmax gather (trl not importable)"
    eos, pad = spec["config"]["eos_token_id"], spec["config"]["pad_token_id"]
    n, new_tokens, micro = spec["n"], spec["new_tokens"], spec["experience_batch_size"]
    train_batch, iters = spec["train_batch"], spec["update_iters"]
    betas = (spec["adam_beta1"], spec["adam_beta2"])
    actor_opt = torch.optim.AdamW(actor.parameters(), lr=spec["lr"], betas=betas, eps=spec["adam_epsilon"],
                                  weight_decay=spec["weight_decay"])
    critic_opt = torch.optim.AdamW(critic.parameters(), lr=spec["critic_lr"], betas=betas,
                                   eps=spec["adam_epsilon"], weight_decay=spec["critic_weight_decay"])

    def response_logps(model, seq, attn, pos, p, mask):
        width = mask.shape[1]
        if fused:
            labels = torch.full_like(seq, -100)
            labels[:, p:p + width] = seq[:, p:p + width].masked_fill(mask == 0, -100)
            out = model(input_ids=seq, attention_mask=attn, position_ids=pos, labels=labels, fused_lm_head=True)
            return out.log_probs[:, p - 1:p - 1 + width] * mask
        logits = model(input_ids=seq, attention_mask=attn, position_ids=pos).logits[:, p - 1:p - 1 + width]
        return selective_log_softmax(logits.float() / temperature, seq[:, p:p + width]) * mask

    def token_scores(model, seq, attn, pos):
        out = model.model(input_ids=seq, attention_mask=attn, position_ids=pos, use_cache=False)
        return model.score(out.last_hidden_state).squeeze(-1).float()

    def chunks(rows, size):
        return [slice(s, min(s + size, rows)) for s in range(0, rows, size)]

    def clip_and_step(model, opt):
        if spec["max_grad_norm"] > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), spec["max_grad_norm"])
        opt.step()
        opt.zero_grad(set_to_none=True)

    def iteration(batch):
        t0 = time.perf_counter()
        ids, amask = torch.tensor(batch["input_ids"]), torch.tensor(batch["attention_mask"])
        p = ids.shape[1]
        actor.eval()
        with torch.no_grad():
            seq = actor.generate(input_ids=ids, attention_mask=amask, do_sample=True, top_p=spec["top_p"],
                                 top_k=0, temperature=temperature, max_new_tokens=new_tokens,
                                 min_new_tokens=spec["min_new_tokens"], num_return_sequences=n,
                                 eos_token_id=eos, pad_token_id=pad)
            resp = seq[:, p:]
            is_eos = (resp == eos).long()
            mask = ((is_eos.cumsum(1) - is_eos) == 0).float()  # up to and including the first EOS
            attn = torch.cat([amask.repeat_interleave(n, 0), mask.long()], 1)
            pos = (attn.cumsum(-1) - 1).clamp(min=0)
            rows = seq.shape[0]
            end = (p + mask.sum(1).long() - 1).clamp(min=0)
            scores = torch.cat([token_scores(reward_model, seq[sl], attn[sl], pos[sl]).gather(1, end[sl, None])
                                for sl in chunks(rows, micro)])[:, 0]
        t1 = time.perf_counter()
        actor.eval()
        critic.eval()
        with torch.no_grad():
            old, ref, values = [], [], []
            for sl in chunks(rows, micro):
                args = (seq[sl], attn[sl], pos[sl], p, mask[sl])
                old.append(response_logps(actor, *args))
                values.append(token_scores(critic, seq[sl], attn[sl], pos[sl])[:, p - 1:p - 1 + mask.shape[1]]
                              * mask[sl])
            for sl in chunks(rows, micro):
                ref.append(response_logps(reference, seq[sl], attn[sl], pos[sl], p, mask[sl]))
            old, ref, values = torch.cat(old), torch.cat(ref), torch.cat(values)
        t2 = time.perf_counter()
        with torch.no_grad():
            rewards = -spec["kl_coeff"] * (old - ref) * mask
            last = (mask.sum(1).long() - 1).clamp(min=0)
            clipped = scores.clamp(-spec["clip_range_score"], spec["clip_range_score"]) * (mask.sum(1) > 0)
            rewards[torch.arange(rows), last] += clipped
            advantages = torch.zeros_like(rewards)
            running = torch.zeros(rows)
            width = rewards.shape[1]
            for t in reversed(range(width)):
                next_value = values[:, t + 1] if t + 1 < width else torch.zeros(rows)
                delta = rewards[:, t] + spec["gamma"] * next_value - values[:, t]
                running = delta + spec["gamma"] * spec["lam"] * running
                advantages[:, t] = running
            returns = (advantages + values) * mask
            advantages = advantages * mask
        t3 = time.perf_counter()
        actor.train()
        critic.train()
        eps, clip_v = spec["clip_range_ratio"], spec["clip_range_value"]
        for _ in range(iters):
            for sl in chunks(rows, train_batch):
                m = mask[sl]
                logps = response_logps(actor, seq[sl], attn[sl], pos[sl], p, m)
                ratio = torch.exp(logps - old[sl])
                a = advantages[sl]
                per_token = torch.maximum(-a * ratio, -a * ratio.clamp(1 - eps, 1 + eps))
                loss = (per_token * m).sum() / m.sum().clamp(min=1)
                loss.backward()
                clip_and_step(actor, actor_opt)
        for _ in range(iters):
            for sl in chunks(rows, train_batch):
                m = mask[sl]
                v = token_scores(critic, seq[sl], attn[sl], pos[sl])[:, p - 1:p - 1 + m.shape[1]] * m
                v_clip = values[sl] + (v - values[sl]).clamp(-clip_v, clip_v)
                per_token = 0.5 * torch.maximum((v - returns[sl]) ** 2, (v_clip - returns[sl]) ** 2)
                loss = (per_token * m).sum() / m.sum().clamp(min=1)
                loss.backward()
                clip_and_step(critic, critic_opt)
        t4 = time.perf_counter()
        return dict(generation=t1 - t0, experience=t2 - t1, advantages=t3 - t2, update=t4 - t3, step=t4 - t0,
                    rows=rows, response_tokens=float(mask.sum()))

    batches = spec["prompt_batches"]
    for i in range(spec["warmup"]):
        iteration(batches[i % len(batches)])
    records, peaks = [], []
    for i in range(spec["steps"]):
        with PeakRSS() as mem:
            records.append(iteration(batches[(spec["warmup"] + i) % len(batches)]))
        peaks.append(mem.peak)
    phases = ("generation", "experience", "advantages", "update")
    mean = {k: statistics.fmean(r[k] for r in records) for k in phases}
    step = statistics.fmean(r["step"] for r in records)
    rows = records[0]["rows"]
    system = ("torch PPO step (hand-written, TRL PPOTrainer unavailable: " + status + ")" if status else
              "torch PPO step (hand-written; this trl has a PPOTrainer, not wired into this benchmark)")
    import transformers

    try:
        import trl
        trl_version = trl.__version__
    except ImportError:
        trl_version = None
    return dict(system=system, trl_ppo_status=status, seconds_per_phase=mean, seconds_per_step=step,
                times=[r["step"] for r in records], rows=rows, samples_per_second=rows / step,
                generated_tokens_per_second=rows * new_tokens / mean["generation"],
                response_tokens=statistics.fmean(r["response_tokens"] for r in records),
                peak_rss_growth_mib=max(peaks), max_rss_mib=_max_rss_mib(), threads=torch.get_num_threads(),
                logps_function=source, torch=torch.__version__, transformers=transformers.__version__,
                trl=trl_version)


def main():
    mode, spec_path, out_path = sys.argv[1:4]
    with open(spec_path) as f:
        spec = json.load(f)
    # everything is local: no Hub look-ups, no telemetry, no experiment trackers
    for key, value in (("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "1"), ("HF_DATASETS_OFFLINE", "1"),
                       ("HF_HUB_DISABLE_TELEMETRY", "1"), ("WANDB_DISABLED", "true"),
                       ("TRL_EXPERIMENTAL_SILENCE", "1"), ("TQDM_DISABLE", "1")):
        os.environ.setdefault(key, value)
    result = {"rollout": rollout, "dpo": dpo, "dpo_trl": dpo_trl, "ppo": ppo}[mode](spec)
    with open(out_path, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
