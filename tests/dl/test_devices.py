import pytest
import torch

from napari_dlvision.core.errors import UserInputError
from napari_dlvision.dl import devices
from napari_dlvision.dl.devices import describe, halve, is_out_of_memory, pick_device, retry_on_oom


def test_auto_prefers_an_accelerator_and_cpu_always_works():
    dev = pick_device("auto")
    if torch.cuda.is_available():
        assert dev.type == "cuda"
    elif devices.mps_available():
        assert dev.type == "mps"
    else:
        assert dev == torch.device("cpu")
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device(None) == pick_device("auto")
    assert "CPU" in describe("cpu")
    assert devices.available()[-1] == "cpu"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_missing_cuda_is_a_clear_user_error():
    with pytest.raises(UserInputError, match="'cuda' was requested"):
        pick_device("cuda")
    with pytest.raises(UserInputError, match="'cuda' was requested"):
        pick_device("cuda:1")


@pytest.mark.skipif(devices.mps_available(), reason="this machine has MPS")
def test_missing_mps_is_a_clear_user_error():
    with pytest.raises(UserInputError, match="mps"):
        pick_device("mps")


def test_unknown_device_name():
    with pytest.raises(UserInputError, match="unknown device"):
        pick_device("tpu")


def test_out_of_memory_is_recognised():
    assert is_out_of_memory(torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"))
    assert is_out_of_memory(RuntimeError("CUDA error: out of memory"))
    assert is_out_of_memory(RuntimeError("[enforce fail at alloc_cpu.cpp] DefaultCPUAllocator: can't allocate memory"))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))
    assert not is_out_of_memory(ValueError("out of memory"))


def test_retry_halves_the_size_after_out_of_memory():
    calls, messages = [], []

    def step(batch):  # fails like a GPU that holds at most 3 samples
        calls.append(batch)
        if batch > 3:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return batch * 10

    result, size = retry_on_oom(step, 16, report=messages.append)
    assert (result, size) == (20, 2)
    assert calls == [16, 8, 4, 2]
    assert len(messages) == 3 and "retrying with batch size 8 (was 16)" in messages[0]


def test_retry_on_tuples_and_giving_up():
    assert halve((64, 128, 128)) == (64, 64, 128)
    assert halve((1, 1)) is None and halve(1) is None

    def never(_):
        raise RuntimeError("CUDA out of memory")

    with pytest.raises(UserInputError, match="out of memory even with batch size 1"):
        retry_on_oom(never, 4)

    def broken(_):
        raise RuntimeError("something else")

    with pytest.raises(RuntimeError, match="something else"):
        retry_on_oom(broken, 4)
