"""Bad inputs across every entry point: each prints one line naming the file / line / field or the option, exits 2,
and shows no traceback unless --debug asks for it. All cases run in this process (``run_cli(main, argv)``)."""

from __future__ import annotations

import gzip
import json
import os
import pickle
from pathlib import Path

import pytest

from .conftest import STAGES, base_argv, run_entry


def _argfile(tmp_path: Path, text: str, name: str = "args.json") -> str:
    path = tmp_path / name
    path.write_bytes(text.encode("utf-8") if isinstance(text, str) else text)
    return str(path)


def _check(code, last, output, expect_code, *needles):
    assert "Traceback" not in output, output[-3000:]
    assert code == expect_code, (code, last, output[-2000:])
    assert last.startswith("error: "), last
    for needle in needles:
        assert needle in last, (needle, last)


# ------------------------------------------------------------------------------------- flags, every stage
FLAG_CASES = [
    ("unknown_flag", ["--learning_rat", "1e-3"], ("command line", "learning_rat", "did you mean")),
    ("bad_float", ["--learning_rate", "fast"], ("option --learning_rate", "invalid float value")),
    ("bad_int", ["--max_steps", "many"], ("option --max_steps", "invalid int value")),
    ("batch_zero", ["--per_device_train_batch_size", "0"], ("per_device_train_batch_size",)),
    ("accumulation_zero", ["--gradient_accumulation_steps", "0"], ("gradient_accumulation_steps",)),
    ("nonfinite_limit", ["--max_nonfinite_steps", "-1"], ("max_nonfinite_steps must be >= 0",)),
    ("not_json", ["config.yaml"], ("must be a .json argument file",)),
]


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("case", FLAG_CASES, ids=[c[0] for c in FLAG_CASES])
def test_bad_flags(stage, case, tiny_model_dir, data, tmp_path, capsys):
    name, extra, needles = case
    argv = base_argv(stage, tiny_model_dir, data, tmp_path / "out", tmp_path)
    argv = extra if name == "not_json" else argv + extra
    _check(*run_entry(stage, argv, capsys), 2, *needles)


# --------------------------------------------------------------------------------- argument files
FILE_CASES = [
    ("invalid_json", '{\n  "max_steps": 2,\n  "seed": \n}\n', (":4: invalid JSON",)),
    ("duplicate_key", '{\n  "max_steps": 2,\n  "seed": 1,\n  "max_steps": 3\n}\n',
     (":4: field 'max_steps': given twice (first on line 2)",)),
    ("unknown_key", '{\n  "max_step": 2\n}\n', (":2: unknown argument 'max_step'", "max_steps")),
    ("not_object", '[1, 2]\n', ("must hold a JSON object",)),
    ("bad_type_in_file", '{\n  "seed": 1,\n  "learning_rate": "fast"\n}\n',
     (":3: field 'learning_rate': invalid float value",)),
    ("not_utf8", b'{"seed": "\xff\xfe"}', ("not UTF-8",)),
]


@pytest.mark.parametrize("stage", ["sft", "rm", "dpo", "ppo"])
@pytest.mark.parametrize("case", FILE_CASES, ids=[c[0] for c in FILE_CASES])
def test_bad_argument_files(stage, case, tmp_path, capsys):
    name, text, needles = case
    path = _argfile(tmp_path, text)
    _check(*run_entry(stage, [path], capsys), 2, path, *needles)


def test_missing_argument_file(tmp_path, capsys):
    _check(*run_entry("rm", [str(tmp_path / "nope.json")], capsys), 2, "nope.json: no such argument file")


# ------------------------------------------------------------------------------------ option values
VALUE_CASES = [
    ("sft", ["--template", "fancy"], ("template='fancy' is not valid", "allowed values")),
    ("sft", ["--truncation", "cut"], ("truncation='cut' is not valid",)),
    ("sft", ["--eval_split_ratio", "1.5"], ("eval_split_ratio must be in [0, 1)",)),
    ("sft", ["--max_length", "0"], ("max_length must be > 0",)),
    ("sft", ["--lora_rank", "0"], ("lora_rank must be > 0",)),
    ("rm", ["--loss_type", "pairwise"], ("loss_type='pairwise' is not valid",)),
    ("rm", ["--regularization", "-1"], ("regularization must be >= 0",)),
    ("dpo", ["--loss_type", "nonsense"], ("loss_type='nonsense'", "valid names")),
    ("dpo", ["--beta", "0"], ("beta must be > 0",)),
    ("dpo", ["--loss_type", "simpo", "--ref_model", "some/where"], ("ref_model=", "uses no reference model")),
    ("kto", ["--beta", "-1"], ("beta",)),
    ("ppo", ["--rl_algorithm", "magic"], ("rl_algorithm",)),
    ("ppo", ["--temperature", "0"], ("temperature",)),
]


@pytest.mark.parametrize("case", VALUE_CASES, ids=[f"{c[0]}-{c[1][0][2:]}-{c[1][1]}" for c in VALUE_CASES])
def test_bad_values(case, tiny_model_dir, data, tmp_path, capsys):
    stage, extra, needles = case
    argv = base_argv(stage, tiny_model_dir, data, tmp_path / "out", tmp_path) + extra
    _check(*run_entry(stage, argv, capsys), 2, *needles)


# ------------------------------------------------------------------------------------------- data files
def _bad_data(tmp_path: Path, kind: str) -> Path:
    if kind == "missing":
        return tmp_path / "absent.jsonl"
    path = tmp_path / ("bad.jsonl.gz" if kind == "gzip" else "bad.jsonl")
    good = json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"})
    if kind == "malformed":
        path.write_text(f"{good}\n{good}\n{{not json\n")
    elif kind == "utf8":
        path.write_bytes(f"{good}\n".encode() + b'{"prompt": "\xff\xfe", "chosen": "a", "rejected": "b"}\n')
    elif kind == "gzip":
        blob = gzip.compress(((good + "\n") * 50).encode())
        path.write_bytes(blob[: len(blob) // 2])
    elif kind == "field":
        path.write_text(f"{good}\n" + json.dumps({"prompt": "p", "chosen": "a"}) + "\n")
    return path


DATA_CASES = [("missing", "no such file or folder"), ("malformed", "line 3"), ("utf8", "line 2"),
              ("gzip", "gzip"), ("field", "line 2")]


@pytest.mark.parametrize("stage", ["rm", "dpo"])
@pytest.mark.parametrize("case", DATA_CASES, ids=[c[0] for c in DATA_CASES])
def test_bad_data_files(stage, case, tiny_model_dir, data, tmp_path, capsys):
    kind, needle = case
    path = _bad_data(tmp_path, kind)
    argv = base_argv(stage, tiny_model_dir, data, tmp_path / "out", tmp_path) + ["--train_datasets", f"json:1.0:{path}"]
    _check(*run_entry(stage, argv, capsys), 2, str(path), needle)


def test_owner_name_data_path_is_no_such_file_not_a_hub_lookup(tiny_model_dir, data, tmp_path, capsys):
    argv = base_argv("sft", tiny_model_dir, data, tmp_path / "out") + ["--train_datasets", "json:1.0:tests/nosuch"]
    _check(*run_entry("sft", argv, capsys), 2, "no such file or folder: tests/nosuch", "hub:")


# ------------------------------------------------------------------------------------------- model dirs
def _crafted_pickle_dir(tiny_model_dir: Path, tmp_path: Path) -> Path:
    """A model directory whose weights file runs code when unpickled (it would create ``pwned``)."""
    import shutil

    target = tmp_path / "crafted"
    shutil.copytree(tiny_model_dir, target)
    (target / "model.safetensors").unlink()

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    with open(target / "model_state.pdparams", "wb") as f:
        pickle.dump({"x": Payload()}, f)
    return target


@pytest.mark.parametrize("stage", ["sft", "rm", "dpo", "ppo"])
def test_crafted_pickle_model_is_refused_naming_the_flag(stage, tiny_model_dir, data, tmp_path, capsys):
    crafted = _crafted_pickle_dir(tiny_model_dir, tmp_path)
    argv = base_argv(stage, crafted, data, tmp_path / "out", tmp_path)
    if stage == "ppo":
        argv += ["--reward_model_name_or_path", str(crafted)]
    _check(*run_entry(stage, argv, capsys), 2, "model_state.pdparams", "pickle", "--allow_pickle true")
    assert not (tmp_path / "pwned").exists()


MODEL_CASES = [
    ("absent", "./no/such/model", ("no such directory 'no/such/model'",)),
    ("tiny_not_built", "checkpoints/tiny-llama-notbuilt",
     ("no such directory 'checkpoints/tiny-llama-notbuilt'", "python -m alignment.tools.make_tiny_model --out")),
    ("no_config", "EMPTY", ("has no", "expected a model directory")),
]


@pytest.mark.parametrize("stage", ["sft", "rm", "kto", "ppo"])
@pytest.mark.parametrize("case", MODEL_CASES, ids=[c[0] for c in MODEL_CASES])
def test_bad_model_paths(stage, case, tiny_model_dir, data, tmp_path, capsys):
    name, path, needles = case
    if path == "EMPTY":
        (tmp_path / "empty").mkdir()
        path = str(tmp_path / "empty")
    argv = base_argv(stage, Path(path), data, tmp_path / "out", tiny_model_dir)
    _check(*run_entry(stage, argv, capsys), 2, *needles)


def test_rm_from_a_causal_lm_without_init_score_head(tiny_model_dir, data, tmp_path, capsys):
    argv = base_argv("rm", tiny_model_dir, data, tmp_path / "out") + ["--init_score_head", "false"]
    _check(*run_entry("rm", argv, capsys), 2, "init_score_head")


# ------------------------------------------------------------------------------------------- output dirs
@pytest.mark.parametrize("stage", ["sft", "rm", "dpo", "ppo"])
def test_output_dir_under_a_file(stage, tiny_model_dir, data, tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    argv = base_argv(stage, tiny_model_dir, data, tmp_path / "afile" / "out", tmp_path)
    _check(*run_entry(stage, argv, capsys), 2, "option --output_dir", "is a file")


@pytest.mark.parametrize("stage", ["sft", "rm", "kto", "gkd", "ppo"])
def test_output_dir_of_another_run(stage, tiny_model_dir, data, tmp_path, capsys):
    out = tmp_path / "out"
    (out / "checkpoint-2").mkdir(parents=True)
    (out / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n')
    argv = base_argv(stage, tiny_model_dir, data, out, tmp_path)
    _check(*run_entry(stage, argv, capsys), 2, "holds another run", "--overwrite_output_dir true",
           "--resume_from_checkpoint latest")


@pytest.mark.parametrize("stage", ["sft", "ppo"])
@pytest.mark.parametrize("resume,needle", [("latest", "no complete checkpoint"), ("/no/such/ckpt", "no such directory"),
                                           ("INCOMPLETE", "not a complete checkpoint")])
def test_bad_resume(stage, resume, needle, tiny_model_dir, data, tmp_path, capsys):
    if resume == "INCOMPLETE":
        (tmp_path / "out" / "checkpoint-1").mkdir(parents=True)
        resume = str(tmp_path / "out" / "checkpoint-1")
    argv = base_argv(stage, tiny_model_dir, data, tmp_path / "out", tmp_path) + ["--resume_from_checkpoint", resume]
    _check(*run_entry(stage, argv, capsys), 2, "resume_from_checkpoint", needle)


# --------------------------------------------------------------------------------------- help and debug
@pytest.mark.parametrize("stage", STAGES)
def test_help_lists_options_with_help_and_defaults(stage, capsys):
    code, _, output = run_entry(stage, ["--help"], capsys)
    assert code == 0
    assert "--learning_rate" in output and "default" in output
    assert "--allow_pickle (bool, default False)" in output and "--max_nonfinite_steps (int, default 3)" in output


def test_debug_shows_the_traceback(tiny_model_dir, data, tmp_path, capsys):
    argv = base_argv("rm", tiny_model_dir, data, tmp_path / "out") + ["--learning_rate", "fast", "--debug"]
    from alignment.utils.cli import ArgumentError

    with pytest.raises(ArgumentError, match="option --learning_rate"):
        run_entry("rm", argv, capsys)
