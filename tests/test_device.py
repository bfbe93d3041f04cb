"""Device and precision: bf16 only where native, and the GPUs a training job claims."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from steelflow import device, gpus
from steelflow.config import load
from steelflow.device import pick_device, pick_precision
from steelflow.errors import SteelflowError
from steelflow.gpus import GpuError, claimed_gpus, gpu_pool, lock_gpus, unlock
from steelflow.tasks import UNetTask
from steelflow.train import Step, loss_scaler
from tests.conftest import TEST_CONFIG

CUDA = torch.device("cuda")


@pytest.mark.parametrize(
    ("capability", "dtype"),
    [
        ((6, 0), torch.float16),  # P100: bf16 only emulated, slowly
        ((7, 5), torch.float16),  # T4
        ((8, 0), torch.bfloat16),  # A100
        ((8, 6), torch.bfloat16),  # RTX 30xx, A10
        ((9, 0), torch.bfloat16),  # H100
    ],
)
def test_auto_precision_is_bf16_only_on_gpus_that_have_it_natively(monkeypatch, capability, dtype):
    asked = []
    monkeypatch.setattr(
        torch.cuda, "get_device_capability", lambda d=None: asked.append(d) or capability
    )
    assert pick_precision("auto", CUDA) == dtype
    assert asked == [CUDA]  # the device that trains, not whichever is current


@pytest.mark.parametrize(("native", "dtype"), [(True, torch.bfloat16), (False, None)])
def test_auto_precision_on_a_cpu_is_bf16_where_native_else_fp32(monkeypatch, native, dtype):
    monkeypatch.setattr(device, "cpu_has_bf16", lambda: native)
    assert pick_precision("auto", torch.device("cpu")) == dtype


def test_a_named_precision_is_taken_as_it_is():
    assert pick_precision("fp16", CUDA) == torch.float16
    assert pick_precision("bf16", CUDA) == torch.bfloat16
    assert pick_precision("fp32", CUDA) is None


def train_steps(on: torch.device, dtype: torch.dtype | None, steps: int = 1) -> tuple[list, bool]:
    """``steps`` training Steps of the tiny config's U-Net on a random batch: their
    losses, and whether every weight that has a gradient changed."""
    torch.manual_seed(0)
    task = UNetTask(load(TEST_CONFIG), 0)
    fmt = torch.channels_last
    net = task.model().to(on, memory_format=fmt)
    before = {k: v.detach().clone() for k, v in net.named_parameters()}
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    step = Step(net, task, optimizer, schedule, loss_scaler(on, dtype), on, dtype, fmt)
    x = torch.randint(0, 256, (2, 1, 64, 128), dtype=torch.uint8)
    masks = (torch.rand(2, 4, 64, 128) > 0.9).float()
    losses = [step(x, masks, masks.amax(dim=(2, 3))) for _ in range(steps)]
    changed = all(
        not torch.equal(before[k], v) for k, v in net.named_parameters() if v.grad is not None
    )
    return losses, changed


@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
def test_a_step_on_a_cpu_changes_the_weights(dtype):
    losses, changed = train_steps(torch.device("cpu"), dtype)
    assert torch.isfinite(torch.tensor(losses)).all() and changed


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; this machine has none")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_steps_on_a_gpu_in_mixed_precision_changes_the_weights(dtype):
    """fp16 through the GradScaler, bf16 without (emulated on a GPU older than 8.0). The
    scaler skips a step whose gradients overflow and halves its scale, so fp16 gets a few
    steps to find its scale; bf16 needs one."""
    losses, changed = train_steps(CUDA, dtype, 1 if dtype == torch.bfloat16 else 8)
    assert torch.isfinite(torch.tensor(losses)).all() and changed


# The GPUs of a training job: a pool of ids, a lock file each.


@pytest.fixture
def locks(tmp_path, monkeypatch) -> Path:
    """This test's own lock folder, as the jobs of one machine share it; CUDA not yet
    started, as in a fresh `steelflow train` (a GPU test may have started it here)."""
    runtime = tmp_path / "run"
    runtime.mkdir()
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    return gpus.gpu_lock_folder()


def test_the_pool_is_cuda_visible_devices_else_what_nvidia_smi_lists(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2, 3")
    assert gpu_pool() == ["2", "3"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # every GPU hidden
    assert gpu_pool() == []
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi: no GPU
    assert gpu_pool() == []
    smi = tmp_path / "nvidia-smi"
    smi.write_text(
        "#!/bin/sh\necho 'GPU 0: Tesla T4 (UUID: GPU-a)'\n"
        "echo '  MIG 1g.5gb Device 0: (UUID: MIG-b)'\necho 'GPU 1: Tesla T4 (UUID: GPU-c)'\n"
    )
    smi.chmod(0o755)
    assert gpu_pool() == ["0", "1"]


def test_gpus_this_torch_cannot_use_are_named_with_what_their_driver_runs(
    tmp_path, monkeypatch, caplog
):
    """nvidia-smi lists GPUs that CUDA does not find, as under a driver older than the
    CUDA torch is built for: train.device cuda says so in one line, auto warns and runs
    on the CPU (nvidia-smi stands in for a driver this machine lacks)."""
    smi = tmp_path / "nvidia-smi"
    smi.write_text(
        '#!/bin/sh\nif [ "$1" = -L ]; then\n'
        "echo 'GPU 0: NVIDIA A100 (UUID: GPU-a)'\necho 'GPU 1: NVIDIA A100 (UUID: GPU-b)'\n"
        "else echo '| NVIDIA-SMI 535.183.01  Driver Version: 535.183.01  CUDA Version: 12.2 |'\n"
        "fi\n"
    )
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    driver = r"nvidia-smi lists 2 GPU\(s\), which torch \S+, built for CUDA 13.0, cannot use: "
    with pytest.raises(SteelflowError, match=driver + "their driver runs CUDA 12.2 at most"):
        pick_device("cuda")
    caplog.set_level("WARNING")
    assert pick_device("auto") == torch.device("cpu")
    assert "their driver runs CUDA 12.2 at most; install a torch built for that CUDA" in caplog.text
    monkeypatch.setattr(torch.version, "cuda", None)
    with pytest.raises(SteelflowError, match="built without CUDA, cannot use"):
        pick_device("cuda")
    monkeypatch.setenv("PATH", str(tmp_path / "none"))  # no driver: as before
    with pytest.raises(SteelflowError, match="finds no CUDA GPU here; expected auto or cpu"):
        pick_device("cuda")


def test_jobs_side_by_side_get_gpus_of_their_own(locks):
    first, first_fds = lock_gpus(["0", "1", "2"], 1, locks)
    second, second_fds = lock_gpus(["0", "1", "2"], 2, locks)
    assert first == ["0"] and second == ["1", "2"]
    unlock(first_fds)
    again, again_fds = lock_gpus(["0", "1", "2"], 1, locks)
    assert again == ["0"]  # freed, taken again
    unlock(again_fds + second_fds)
    with pytest.raises(GpuError, match="train.nproc_per_node: 4 processes need 4 GPUs"):
        lock_gpus(["0", "1", "2"], 4, locks)


def test_a_job_waits_for_a_free_gpu(locks, monkeypatch, caplog):
    held, fds = lock_gpus(["0"], 1, locks)
    tries = []

    def free_it(seconds):  # the other job ends while this one waits
        tries.append(seconds)
        unlock(fds)

    monkeypatch.setattr(gpus.time, "sleep", free_it)
    caplog.set_level("INFO")
    taken, taken_fds = lock_gpus(["0"], 1, locks)
    unlock(taken_fds)
    assert taken == ["0"] and len(tries) == 1
    assert "waiting for 1 free GPU(s) of 0" in caplog.text


def training(device_name: str, processes: int = 1) -> dict:
    return {"train": {"device": device_name, "nproc_per_node": processes}}


def test_a_training_job_names_its_gpus_in_cuda_visible_devices(locks, monkeypatch, caplog):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2")
    caplog.set_level("INFO")
    _, other_job = lock_gpus(["0", "1", "2"], 1, locks)  # holds 0
    with claimed_gpus(training("auto", 2)) as mine:
        assert mine == ["1", "2"] and os.environ["CUDA_VISIBLE_DEVICES"] == "1,2"
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "0,1,2"  # as before, the locks released
    assert "CUDA_VISIBLE_DEVICES=1,2: this job's GPU(s) of 0,1,2" in caplog.text
    unlock(other_job)
    with claimed_gpus(training("cuda")) as again:
        assert again == ["0"]


def test_no_gpu_is_claimed_on_a_cpu_nor_in_torchruns_processes(locks, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    for name in ("cpu", "mps"):
        with claimed_gpus(training(name)) as claimed:
            assert claimed == [] and os.environ["CUDA_VISIBLE_DEVICES"] == "0"
    monkeypatch.setenv("RANK", "1")  # started by torchrun, whose launcher claimed
    with claimed_gpus(training("cuda")) as claimed:
        assert claimed == []
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.delenv("RANK")
    with claimed_gpus(training("auto")) as claimed:  # no GPU: auto trains on the CPU
        assert claimed == []


def test_no_gpu_is_claimed_once_cuda_has_started(locks, monkeypatch, caplog):
    """CUDA reads CUDA_VISIBLE_DEVICES when it starts: a claim after it would not hold."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    with claimed_gpus(training("cuda")) as claimed:
        assert claimed == [] and os.environ["CUDA_VISIBLE_DEVICES"] == "0,1"
    assert "no GPUs claimed for this job (CUDA had started)" in caplog.text


def test_the_claim_outlives_exec_into_torchrun(locks, monkeypatch, tmp_path):
    """relaunch execs torchrun: the new program keeps the locks and the variable."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    ready, release = tmp_path / "ready", tmp_path / "release"
    launcher = textwrap.dedent(
        f"""
        import os, sys
        from steelflow.gpus import claimed_gpus
        with claimed_gpus({{"train": {{"device": "cuda", "nproc_per_node": 1}}}}):
            child = "import os, pathlib, time\\n" \\
                "seen = pathlib.Path({str(ready)!r} + '.tmp')\\n" \\
                "seen.write_text(os.environ['CUDA_VISIBLE_DEVICES'])\\n" \\
                "seen.rename({str(ready)!r})  # whole, never read half-written\\n" \\
                "while not pathlib.Path({str(release)!r}).exists(): time.sleep(0.05)"
            os.execv(sys.executable, [sys.executable, "-c", child])
        """
    )
    process = subprocess.Popen([sys.executable, "-c", launcher], cwd=Path(__file__).parents[1])
    try:
        while not ready.exists():
            assert process.poll() is None, "the launcher died"
            time.sleep(0.05)
        assert ready.read_text() == "0"
        other, fds = lock_gpus(["0", "1"], 1, locks)
        unlock(fds)
        assert other == ["1"]  # 0 still held, after exec
    finally:
        release.touch()
        process.wait(timeout=60)
    freed, fds = lock_gpus(["0"], 1, locks)
    unlock(fds)
    assert freed == ["0"]  # when the program ended


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_a_device_that_is_not_there_is_one_line_before_any_work(tmp_path, capsys):
    """train.device=cuda without a GPU: training stops before reading any data."""
    from steelflow.cli import main
    from tests.conftest import TEST_CONFIG

    outputs = [x for n in ("out", "history", "curves") for x in (f"--{n}", str(tmp_path / n))]
    data = ["--raw", str(tmp_path / "none"), "--masks", str(tmp_path / "none")]
    args = ["train", "unet", "--config", str(TEST_CONFIG), "--set", "train.device=cuda"]
    assert main([*args, *data, *outputs]) == 1
    err = capsys.readouterr().err.strip()
    assert (
        err.startswith("steelflow train: error: train.device: cuda, but torch") and "\n" not in err
    )
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_a_gpu_this_torch_has_no_kernels_for_is_one_line_naming_it(monkeypatch, tmp_path, capsys):
    """Kaggle's P100 under its image's cu128 torch: CUDA says the GPU is there, and the
    first operation fails. Stood in for by a CUDA that says so here, where the first
    operation fails for want of a driver."""
    from steelflow.cli import main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: "Tesla P100-PCIE-16GB")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: (6, 0))
    monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: ["sm_75", "sm_80", "sm_90"])
    outputs = [x for n in ("out", "history", "curves") for x in (f"--{n}", str(tmp_path / n))]
    data = ["--raw", str(tmp_path / "none"), "--masks", str(tmp_path / "none")]
    args = ["train", "unet", "--config", str(TEST_CONFIG), "--set", "train.device=auto"]
    assert main([*args, *data, *outputs]) == 1
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(
        "steelflow train: error: train.device: Tesla P100-PCIE-16GB (compute capability 6.0) "
        f"cannot run torch {torch.__version__}, built for sm_75 sm_80 sm_90 ("
    )
    assert line.endswith(
        "(on Kaggle a T4 or L4, not the P100), or train.device: cpu (submit.py --device cpu)"
    )
    assert list(tmp_path.iterdir()) == []
