"""Training: loss falls, exact resume, checkpoints, data parallelism, NaN handling."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from backpacklm.data.prepare import prepare_corpus
from tests.helpers import run_cli, write_corpus

SMALL = ["--n-embd", "48", "--n-layer", "2", "--n-head", "2", "--num-senses", "4", "--n-positions", "64"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    prepare_corpus([str(write_corpus(root / "corpus.txt"))], root / "char", tokenizer="char")
    return root / "char"


def train_args(data_dir, out, *extra):
    return ["train", "--data", data_dir, "--out", out, *SMALL, "--block-size", "32", "--batch-size", "8",
            "--warmup-steps", "5", "--lr", "3e-3", "--eval-interval", "10", "--eval-batches", "4", "--no-progress",
            *extra]


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    latest = json.loads((run_dir / "latest.json").read_text())["checkpoint"]
    return load_file(run_dir / latest / "model.safetensors")


@pytest.mark.parametrize("arch", ["backpack", "transformer"])
def test_loss_falls_below_unigram(tmp_path, data_dir, capsys, arch):
    # --log-interval 1: the first record is step 1, the untrained model's loss. At the default interval it was step
    # 10's, after ten updates: 2.57-2.65 for the Transformer on training seeds 0-3 and 1337, a hair above the bar
    code, out, err = run_cli(capsys, *train_args(data_dir, tmp_path / "run", "--max-steps", "120", "--arch", arch,
                                                 "--log-interval", "1"))
    assert code == 0, err
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert records[0]["step"] == 1 and records[0]["train_loss"] > 2.5  # near ln(vocab) at the start
    assert summary["val_loss"] < summary["unigram_val_loss"] - 0.5, summary
    assert summary["val_loss"] < records[0]["train_loss"] - 1.0
    assert (tmp_path / "run" / "loss_curve.png").stat().st_size > 1000
    assert all("tokens_per_s" in r for r in records if r["step"] % 10 == 0)


def test_resume_is_bitwise_exact(tmp_path, data_dir, capsys):
    assert run_cli(capsys, *train_args(data_dir, tmp_path / "straight", "--max-steps", "20"))[0] == 0
    assert run_cli(capsys, *train_args(data_dir, tmp_path / "split", "--max-steps", "20", "--stop-after", "10"))[0] == 0
    assert json.loads((tmp_path / "split" / "latest.json").read_text())["step"] == 10
    assert run_cli(capsys, *train_args(data_dir, tmp_path / "split", "--resume"))[0] == 0
    straight, resumed = weights(tmp_path / "straight"), weights(tmp_path / "split")
    assert straight.keys() == resumed.keys()
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    steps = [json.loads(line)["step"] for line in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == 20
    # an existing run is never overwritten by accident
    code, _, err = run_cli(capsys, *train_args(data_dir, tmp_path / "split", "--max-steps", "20"))
    assert code == 2 and "already holds a run" in err and len(err.strip().splitlines()) == 1


def test_sigterm_checkpoints_exits_143_and_resumes_exactly(tmp_path, data_dir, capsys):
    """A scheduler's SIGTERM: the step in flight finishes, a checkpoint is written, the exit status says so (128 + 15),
    and --resume continues to the same weights as a run that was never stopped."""
    import signal
    import time

    args = [str(a) for a in train_args(data_dir, tmp_path / "stopped", "--max-steps", "100000", "--log-interval", "1")]
    proc = subprocess.Popen([sys.executable, "-m", "backpacklm", *args], env={**os.environ, "OMP_NUM_THREADS": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics, deadline = tmp_path / "stopped" / "metrics.jsonl", time.time() + 120
    while not (metrics.is_file() and len(metrics.read_text().splitlines()) >= 3) and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    summary = json.loads((tmp_path / "stopped" / "summary.json").read_text())
    step = summary["step"]
    assert summary["stopped_by"] == "SIGTERM" and 3 <= step < 100000
    assert f"stopped by SIGTERM at step {step} of 100000; continue with --resume" in out
    assert json.loads((tmp_path / "stopped" / "latest.json").read_text())["step"] == step
    resume = train_args(data_dir, tmp_path / "stopped", "--resume", "--stop-after", str(step + 3))
    assert run_cli(capsys, *resume)[0] == 0
    straight = train_args(data_dir, tmp_path / "straight", "--max-steps", "100000", "--stop-after", str(step + 3))
    assert run_cli(capsys, *straight)[0] == 0
    resumed, never_stopped = weights(tmp_path / "stopped"), weights(tmp_path / "straight")
    assert all(torch.equal(resumed[k], never_stopped[k]) for k in never_stopped)


def test_resume_errors(tmp_path, data_dir, capsys):
    code, _, err = run_cli(capsys, *train_args(data_dir, tmp_path / "nothing", "--resume"))
    assert code == 2 and "no checkpoint to resume" in err
    assert run_cli(capsys, *train_args(data_dir, tmp_path / "run", "--max-steps", "4", "--eval-interval", "2"))[0] == 0
    code, _, err = run_cli(capsys, *train_args(data_dir, tmp_path / "run", "--resume", "--num-senses", "8"))
    assert code == 2 and "config differs" in err


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, data_dir, capsys):
    run = tmp_path / "run"
    args = train_args(data_dir, run, "--max-steps", "30", "--lr", "1e30", "--warmup-steps", "0", "--grad-clip", "0",
                      "--checkpoint-interval", "1")
    code, _, err = run_cli(capsys, *args)
    assert code == 2 and "loss became" in err and "last good checkpoint" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    kept = weights(run)
    assert all(torch.isfinite(t).all() for t in kept.values())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_ddp_matches_single_process(tmp_path, data_dir, capsys):
    """2 processes x 4 sequences (gloo, CPU) see the same global batches as 1 process x 8: same weights."""
    args = [str(a) for a in train_args(data_dir, tmp_path / "ddp", "--max-steps", "8", "--eval-interval", "4")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
         "--master_port", str(free_port()), "-m", "backpacklm", *args],
        env=env, capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    single = train_args(data_dir, tmp_path / "single", "--max-steps", "8", "--eval-interval", "4")
    assert run_cli(capsys, *single)[0] == 0
    ddp, one = weights(tmp_path / "ddp"), weights(tmp_path / "single")
    for name in one:
        torch.testing.assert_close(ddp[name], one[name], atol=2e-5, rtol=1e-4)
    moved = weights(tmp_path / "ddp")["sense_weights.c_attn.weight"].std()
    assert moved > 0.02  # training changed the weights from their N(0, 0.02) init


def torchrun(*args) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(free_port()), "-m", "backpacklm", *map(str, args)]
    return subprocess.run(command, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=240)


def test_two_process_resume_with_dropout_is_bitwise_exact(tmp_path, data_dir, capsys):
    """Each rank's dropout stream is saved and restored: 2 processes, dropout 0.1, stopped at step 4 and resumed, end
    on the weights of an unbroken run. Resuming with another process count says the streams restart."""
    common = ["--max-steps", "8", "--eval-interval", "4", "--dropout", "0.1"]
    for out, extra in (("straight", []), ("split", ["--stop-after", "4"]), ("split", ["--resume"])):
        proc = torchrun(*train_args(data_dir, tmp_path / out, *common, *extra))
        assert proc.returncode == 0, proc.stderr[-3000:]
    straight, resumed = weights(tmp_path / "straight"), weights(tmp_path / "split")
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)

    assert run_cli(capsys, *train_args(data_dir, tmp_path / "one", *common, "--stop-after", "4"))[0] == 0
    proc = torchrun(*train_args(data_dir, tmp_path / "one", *common, "--resume"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "trained with 1 process(es), this run has 2: dropout streams restart" in proc.stdout
