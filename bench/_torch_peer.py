"""The Hugging Face / TRL side of the ``--compare`` benchmarks, run by a Python that has torch and transformers
(trl optional). Not a project dependency: the benchmarks call it in a subprocess with ``--torch-python``
(a scratch virtualenv, e.g. one with the machine's CPU torch wheel, transformers and trl).

    <torch-python> bench/_torch_peer.py rollout SPEC.json OUT.json
    <torch-python> bench/_torch_peer.py dpo SPEC.json OUT.json

SPEC.json names an ``.npz`` of the Paddle model's weights (PaddleNLP names and layouts) and its Llama config,
the inputs, the thread count and the repeats. The weights are mapped onto ``transformers.LlamaForCausalLM``
(``llama.*`` -> ``model.*``, Linear weights transposed), so both sides run the same model on the same data.
Timings are wall clock with ``torch.set_num_threads`` as given; peak memory is the growth of the process RSS
over its value before the timed call (sampled every 2 ms), like the Paddle side.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
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


def build_model(spec):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    c = spec["config"]
    config = LlamaConfig(vocab_size=c["vocab_size"], hidden_size=c["hidden_size"],
                         intermediate_size=c["intermediate_size"], num_hidden_layers=c["num_hidden_layers"],
                         num_attention_heads=c["num_attention_heads"], num_key_value_heads=c["num_key_value_heads"],
                         max_position_embeddings=c["max_position_embeddings"], rms_norm_eps=c["rms_norm_eps"],
                         rope_theta=c.get("rope_theta", 10000.0), tie_word_embeddings=False, attention_bias=False,
                         bos_token_id=1, eos_token_id=c["eos_token_id"], pad_token_id=c["pad_token_id"])
    model = LlamaForCausalLM(config)
    weights = np.load(spec["weights"])
    state = {}
    for name in weights.files:
        w = weights[name]
        hf = "model." + name[len("llama."):] if name.startswith("llama.") else name
        if hf.endswith("proj.weight") or hf == "lm_head.weight":
            w = w.T  # Paddle Linear: (in, out); torch: (out, in)
        state[hf] = torch.from_numpy(np.ascontiguousarray(w))
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [m for m in missing if "rotary" not in m]
    if missing or unexpected:
        raise RuntimeError(f"weight mapping: missing {missing[:4]}, unexpected {unexpected[:4]}")
    return model.float()


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
    """One DPO step as TRL's DPOTrainer computes it: chosen + rejected concatenated in one policy forward and
    one no-grad reference forward, per-token log-probs with TRL's ``selective_log_softmax`` (a plain
    log_softmax gather where trl is missing), sigmoid loss, backward, AdamW."""
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
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-6)
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
        loss = -F.logsigmoid(0.1 * margin).mean()
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
                logps_function=source, torch=torch.__version__)


def main():
    mode, spec_path, out_path = sys.argv[1:4]
    with open(spec_path) as f:
        spec = json.load(f)
    result = {"rollout": rollout, "dpo": dpo}[mode](spec)
    with open(out_path, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
