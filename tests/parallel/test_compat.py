"""compat: installs its fill-ins on CPU builds only, once, and leaves a CUDA build untouched."""

import paddle
import pytest

from alignment.parallel import compat


def test_cpu_build_installs_every_fill_in_once():
    if paddle.is_compiled_with_cuda():
        pytest.skip("CUDA build: nothing to fill in")
    names = compat.apply()
    assert names == ["gloo_calc_stream", "mp_ops", "broadcast_input_data", "parallel_env_device_id",
                     "group_stores", "group_sharded"]
    assert compat.apply() == names and compat.applied() == names  # idempotent
    from paddle.base import core
    from paddle.distributed import collective

    assert core.ProcessGroupGloo.all_reduce_on_calc_stream.__name__ == "all_reduce_on_calc_stream"
    assert collective._new_process_group_impl.__name__ == "new_process_group_impl"


def test_inert_on_cuda_builds(monkeypatch):
    monkeypatch.setattr(compat, "_APPLIED", [])
    monkeypatch.setattr(paddle, "is_compiled_with_cuda", lambda: True)
    called = []
    monkeypatch.setattr(compat, "_PATCHES", {"probe": lambda: called.append(1)})
    assert compat.needed() is False
    assert compat.apply() == [] and called == []


def test_unsupported_versions_are_left_alone(monkeypatch):
    monkeypatch.setattr(compat, "_APPLIED", [])
    monkeypatch.setattr(paddle, "__version__", "9.1.0")
    monkeypatch.setattr(compat, "_PATCHES", {"probe": lambda: pytest.fail("patched an unknown version")})
    assert compat.needed() is False and compat.apply() == []


def test_training_argv_disables_partial_send_recv_for_pipelines(monkeypatch):
    monkeypatch.setattr(compat, "_APPLIED", ["gloo_calc_stream"])
    argv = ["--pipeline_parallel_degree", "2", "--pipeline_parallel_config", "enable_timer", "--seed", "1"]
    assert compat.training_argv(argv) == ["--pipeline_parallel_degree", "2", "--seed", "1",
                                          "--pipeline_parallel_config", "enable_timer disable_partial_send_recv"]
    assert compat.training_argv(["--pipeline_parallel_degree", "1"]) == ["--pipeline_parallel_degree", "1"]
    monkeypatch.setattr(compat, "_APPLIED", [])
    assert compat.training_argv(argv) == argv  # CUDA builds send partial tensors as usual
