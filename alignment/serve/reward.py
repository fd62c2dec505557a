"""Reward server: a trained reward model and/or named reward functions over HTTP (JSON in, scores out).

    python -m alignment.serve.reward --reward_funcs accuracy format --port 8731
    python -m alignment.serve.reward --reward_model_name_or_path checkpoints/rm --reward_funcs format

Endpoints (loopback, 127.0.0.1, unless --host says otherwise):

    GET  /health  -> {"status": "ok", "rewards": [names], "weights": [...]}
    POST /score   {"prompts": [...], "completions": [...], "columns": {"solution": [...], ...}}
                  -> {"scores": [weighted sum per completion], "components": {name: [...]}}

A reward model scores ``prompt + completion`` (the prompt as the trainer formats it) at its last token, in
batches of ``batch_size``. A malformed request is answered 400 with {"error": ...}; an exception while
scoring 500. The trainer's client is ``alignment.serve.client.RewardClient`` (``reward_funcs remote``).
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Dict, List, Optional, Sequence, Tuple

__all__ = ["ServeArguments", "RewardService", "RewardServer", "main"]


@dataclass
class ServeArguments:
    """What the reward server serves and where."""

    reward_funcs: Optional[List[str]] = field(
        default=None, metadata={"help": "Reward functions by name: accuracy, format, length, repetition or "
                                        "module.path:function."})
    reward_weights: Optional[List[float]] = field(
        default=None, metadata={"help": "One weight per reward function, then the reward model's; default 1."})
    reward_model_name_or_path: Optional[str] = field(default=None, metadata={"help": "Score-model checkpoint."})
    host: str = field(default="127.0.0.1", metadata={"help": "Address to bind (loopback by default)."})
    port: int = field(default=8731, metadata={"help": "TCP port (0 = any free port)."})
    batch_size: int = field(default=16, metadata={"help": "Rows per reward-model forward pass."})
    max_length: int = field(default=2048, metadata={"help": "Longest prompt + completion in reward-model tokens."})
    reward_format_pattern: Optional[str] = field(default=None, metadata={"help": "Regex of the 'format' reward."})
    reward_target_length: int = field(default=64, metadata={"help": "Target tokens of the 'length' reward."})
    reward_repetition_ngram: int = field(default=3, metadata={"help": "n of the 'repetition' reward."})
    reward_repetition_max_penalty: float = field(default=-1.0, metadata={"help": "Penalty of full repetition."})

    def __post_init__(self) -> None:
        if isinstance(self.reward_funcs, str):
            self.reward_funcs = [self.reward_funcs]
        if "remote" in (self.reward_funcs or []):
            raise ValueError("reward_funcs: 'remote' cannot be served (the server would call itself); allowed "
                             "values: accuracy, format, length, repetition, module.path:function")
        from alignment.training.reward_funcs import check_reward_func_names

        check_reward_func_names(self.reward_funcs or [])
        if not self.reward_funcs and not self.reward_model_name_or_path:
            raise ValueError("nothing to serve: give reward_funcs and/or reward_model_name_or_path")
        if not 0 <= self.port < 65536:
            raise ValueError(f"port must be in [0, 65535], got {self.port}")
        if self.batch_size < 1 or self.max_length < 2:
            raise ValueError(f"batch_size must be >= 1 and max_length >= 2; got {self.batch_size}, {self.max_length}")
        n = len(self.reward_funcs or []) + bool(self.reward_model_name_or_path)
        if self.reward_weights is not None and len(self.reward_weights) != n:
            raise ValueError(f"reward_weights has {len(self.reward_weights)} entries for {n} rewards")


class _ModelReward:
    """End score of a score model on prompt + completion texts."""

    def __init__(self, path: str, batch_size: int, max_length: int):
        from alignment.models.loading import load_tokenizer
        from alignment.models.score_model import ScoreModel

        self.tokenizer = load_tokenizer(path, padding_side="right", ensure_pad=False)
        self.model = ScoreModel.from_pretrained(path, score_type="reward", do_normalize=False, dtype="float32")
        self.model.eval()
        self.batch_size, self.max_length = batch_size, max_length
        pad = self.tokenizer.pad_token_id
        self.pad = pad if pad is not None else self.tokenizer.eos_token_id

    def __call__(self, prompts: Sequence[str], completions: Sequence[str], **_) -> List[float]:
        import paddle

        out: List[float] = []
        eos = self.tokenizer.eos_token_id
        for s in range(0, len(completions), self.batch_size):
            rows = []
            for p, c in zip(prompts[s:s + self.batch_size], completions[s:s + self.batch_size]):
                ids = list(self.tokenizer(p + c, add_special_tokens=True)["input_ids"]) + ([eos] if eos is not None else [])
                rows.append(ids[-self.max_length:])
            width = max(len(r) for r in rows)
            ids = paddle.to_tensor([r + [self.pad] * (width - len(r)) for r in rows], dtype="int64")
            mask = paddle.to_tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], dtype="int64")
            with paddle.no_grad():
                scores = self.model(ids, attention_mask=mask).scores.astype("float32")
            if scores.ndim == 3:
                scores = scores[..., 0]
            end = paddle.to_tensor([len(r) - 1 for r in rows], dtype="int64").unsqueeze(-1)
            out.extend(float(v) for v in paddle.take_along_axis(scores, end, axis=-1).reshape([-1]).numpy())
        return out


class RewardService:
    """Weighted named rewards (+ a reward model): ``score(body) -> reply`` (the HTTP-free part of the server)."""

    def __init__(self, args: ServeArguments):
        from alignment.training.reward_funcs import RewardTerm, reward_terms

        self.terms = reward_terms(args)
        if args.reward_model_name_or_path:
            weights = list(args.reward_weights or [])
            weight = weights[len(self.terms)] if len(weights) > len(self.terms) else 1.0
            model = _ModelReward(args.reward_model_name_or_path, args.batch_size, args.max_length)
            self.terms.append(RewardTerm("reward_model", model, weight))
        self.lock = threading.Lock()  # one scoring call at a time (the model is not re-entrant)

    def health(self) -> dict:
        return {"status": "ok", "rewards": [t.name for t in self.terms], "weights": [t.weight for t in self.terms]}

    def score(self, body) -> dict:
        if not isinstance(body, dict):
            raise ValueError("the request must be a JSON object with 'prompts' and 'completions'")
        completions = body.get("completions")
        prompts = body.get("prompts", [""] * len(completions or []))
        columns = body.get("columns") or {}
        if not isinstance(completions, list) or not all(isinstance(c, str) for c in completions):
            raise ValueError("'completions' must be a list of strings")
        if not isinstance(prompts, list) or len(prompts) != len(completions):
            raise ValueError(f"'prompts' must be a list of {len(completions)} strings (one per completion)")
        if not isinstance(columns, dict) or any(not isinstance(v, list) or len(v) != len(completions)
                                                for v in columns.values()):
            raise ValueError("'columns' must map names to lists with one value per completion")
        with self.lock:
            components = {t.name: t(prompts, completions, columns) for t in self.terms}
        total = [sum(t.weight * components[t.name][i] for t in self.terms) for i in range(len(completions))]
        return {"scores": total, "components": components}


def _handler(service: RewardService) -> type:
    class Handler(BaseHTTPRequestHandler):
        served = service

        def _reply(self, code: int, obj) -> None:
            data = json.dumps(obj).encode("utf-8")
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):  # noqa: N802
            if self.path.rstrip("/") == "/health":
                self._reply(200, service.health())
            else:
                self._reply(404, {"error": f"unknown path {self.path}; use GET /health or POST /score"})

        def do_POST(self):  # noqa: N802
            if self.path.rstrip("/") != "/score":
                self._reply(404, {"error": f"unknown path {self.path}; use POST /score"})
                return
            try:
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length).decode("utf-8"))
                reply = service.score(body)
            except (ValueError, UnicodeDecodeError) as e:
                self._reply(400, {"error": str(e)})
                return
            except Exception as e:  # noqa: BLE001  a scoring failure is the server's, reported, not fatal
                self._reply(500, {"error": f"{type(e).__name__}: {e}"})
                return
            self._reply(200, reply)

        def log_message(self, fmt, *args):  # quiet: one line per request would flood a training log
            return

    return Handler


class RewardServer:
    """``RewardServer(service, host, port).start()`` serves in a background thread; ``stop()`` ends it."""

    def __init__(self, service: RewardService, host: str = "127.0.0.1", port: int = 8731):
        self.httpd = ThreadingHTTPServer((host, port), _handler(service))
        self.thread: Optional[threading.Thread] = None

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "RewardServer":
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        if self.thread is not None:
            self.thread.join()

    def serve_forever(self) -> None:
        try:
            self.httpd.serve_forever()
        finally:
            self.httpd.server_close()


def main(argv: Optional[Sequence[str]] = None, *, block: bool = True):
    """Parse the arguments, load the rewards and serve (``block=False`` returns the started server)."""
    import argparse

    from alignment.utils.cli import ArgumentError

    parser = argparse.ArgumentParser(prog="python -m alignment.serve.reward", description=__doc__.split("\n")[0])
    for f in ServeArguments.__dataclass_fields__.values():
        kind = {"Optional[List[str]]": dict(nargs="+"), "Optional[List[float]]": dict(nargs="+", type=float),
                "int": dict(type=int), "float": dict(type=float)}.get(str(f.type), {})
        parser.add_argument(f"--{f.name}", default=f.default, help=f.metadata.get("help"), **kind)
    parser.error = lambda message: (_ for _ in ()).throw(ArgumentError(message))  # one line, no usage dump
    try:
        args = ServeArguments(**vars(parser.parse_args(list(argv) if argv is not None else None)))
    except ValueError as e:
        raise ArgumentError(str(e)) from None
    server = RewardServer(RewardService(args), args.host, args.port)
    print(f"reward server on {server.url} serving {', '.join(t.name for t in server_service(server).terms)}",
          flush=True)
    if not block:
        return server.start()
    server.serve_forever()
    return None


def server_service(server: RewardServer) -> RewardService:
    return server.httpd.RequestHandlerClass.served


if __name__ == "__main__":
    from alignment.utils.cli import run_cli

    run_cli(main)
