"""Training: loss falls, exact resume, checkpoints, data parallelism, NaN handling."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from backpacklm.data.prepare import prepare_corpus
from backpacklm.train.loop import TokenWindows, TrainConfig, train
from tests.helpers import cli_error, run_cli, write_corpus

SMALL_OVERRIDES = dict(n_embd=48, n_layer=2, n_head=2, num_senses=4, n_positions=64)
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
    with open(tmp_path / "split" / "metrics.jsonl", "a") as metrics:  # a record torn by a kill mid-write
        metrics.write('{"step": 11, "lo')
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
    broken = tmp_path / "broken"  # a run manifest holding a list (the run side read it with a bare ["checkpoint"])
    broken.mkdir()
    (broken / "latest.json").write_text("[1]")
    line = cli_error(capsys, *train_args(data_dir, broken, "--resume"))
    assert "latest.json is not a valid run manifest" in line
    state = tmp_path / "run" / "step-0000004" / "training_state.json"
    for text in ("[1]", state.read_text()[:40]):  # not a training state; truncated
        state.write_text(text)
        line = cli_error(capsys, *train_args(data_dir, tmp_path / "run", "--resume"))
        assert "training state in" in line and "is corrupted" in line


def test_compile_without_a_cpp_compiler_is_a_one_line_error(tmp_path, data_dir, capsys, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no g++ to be found
    monkeypatch.delenv("CXX", raising=False)
    line = cli_error(capsys, *train_args(data_dir, tmp_path / "run", "--compile"))
    assert "--compile on CPU needs the C++ compiler torch's inductor uses (g++;" in line
    monkeypatch.setenv("CXX", "no-such-compiler")
    line = cli_error(capsys, *train_args(data_dir, tmp_path / "run", "--compile"))
    assert "(no-such-compiler;" in line
    assert not (tmp_path / "run" / "latest.json").exists()


def test_grad_norm_is_logged_before_clipping(tmp_path, data_dir, capsys):
    def records(name, clip):
        args = train_args(data_dir, tmp_path / name, "--max-steps", "3", "--log-interval", "1", "--grad-clip", clip)
        assert run_cli(capsys, *args)[0] == 0
        return [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]

    free, clipped = records("free", "0"), records("clipped", "1e-6")
    assert [r["step"] for r in free] == [1, 2, 3]
    assert all(r["grad_norm"] > 0.01 for r in free + clipped)
    assert free[0]["grad_norm"] == clipped[0]["grad_norm"]  # same weights at step 0; the norm before clipping
    assert free[1]["train_loss"] != clipped[1]["train_loss"]  # clipping to 1e-6 changed the first update


def test_accumulated_step_is_the_mean_over_all_its_targets(tmp_path, data_dir):
    """Micro-batches with different numbers of targets (labels masked by content, as padding does in instruction
    data): 4 x 2 sequences give one batch of 8's loss and gradient; the mean of per-micro-batch means did not."""
    class SparseTargets(TokenWindows):
        def train_batch(self, n, block_size, generator):
            batch = super().train_batch(n, block_size, generator)
            labels = batch["labels"].clone()  # rows opening with an odd id keep a third of their targets
            labels[(labels % 3 != 0) & (labels[:, :1] % 2 == 1)] = -100
            return {"input_ids": batch["input_ids"], "labels": labels}

    first = {}
    for accum in (1, 4):
        out = tmp_path / f"accum{accum}"
        cfg = TrainConfig(data=str(data_dir), out=str(out), model_overrides=SMALL_OVERRIDES, block_size=32,
                          batch_size=8, grad_accum=accum, max_steps=1, eval_batches=1, progress=False)
        train(cfg, SparseTargets(str(data_dir)))
        first[accum] = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert first[4]["train_loss"] == pytest.approx(first[1]["train_loss"], rel=1e-5)
    assert first[4]["grad_norm"] == pytest.approx(first[1]["grad_norm"], rel=1e-4)


def test_metrics_lines_are_strict_json_when_a_value_is_not_finite(tmp_path, data_dir):
    class NanValidation(TokenWindows):
        def val_loss(self, *args):
            return float("nan")

    cfg = TrainConfig(data=str(data_dir), out=str(tmp_path / "run"), model_overrides=SMALL_OVERRIDES, block_size=32,
                      batch_size=8, max_steps=2, eval_interval=1, eval_batches=1, progress=False)
    train(cfg, NanValidation(str(data_dir)))

    def reject(constant):
        raise ValueError(constant)

    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line, parse_constant=reject)["val_loss"] for line in lines] == [None, None]


def test_checkpoint_before_any_validation_is_strict_json_and_resumes(tmp_path, data_dir, capsys):
    """A checkpoint written before the first validation had best_val_loss Infinity (not JSON); now null."""
    run = tmp_path / "run"
    args = train_args(data_dir, run, "--max-steps", "4", "--checkpoint-interval", "1", "--eval-interval", "3")
    assert run_cli(capsys, *args, "--stop-after", "2")[0] == 0  # step 1: a checkpoint, no validation yet

    def reject(constant):
        raise ValueError(constant)

    state = json.loads((run / "step-0000001" / "training_state.json").read_text(), parse_constant=reject)
    assert state["best_val_loss"] is None
    assert run_cli(capsys, *args, "--resume")[0] == 0
    summary = json.loads((run / "summary.json").read_text(), parse_constant=reject)
    assert summary["step"] == 4 and 0 < summary["best_val_loss"] <= summary["val_loss"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_float16_without_cuda_is_a_one_line_error(tmp_path, data_dir, capsys):
    code, _, err = run_cli(capsys, *train_args(data_dir, tmp_path / "run", "--max-steps", "2", "--dtype", "float16"))
    assert code == 2 and "--dtype float16 needs a CUDA GPU" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "run").exists()


def test_loss_curve_is_redrawn_at_each_validation(tmp_path, data_dir, capsys, monkeypatch):
    import backpacklm.plots

    drawn_at = []  # metrics records on disk at each drawing

    def loss_curve(metrics_path, png_path, baseline=None):
        drawn_at.append(len(Path(metrics_path).read_text().splitlines()))
        return plot(metrics_path, png_path, baseline)

    plot = backpacklm.plots.loss_curve
    monkeypatch.setattr(backpacklm.plots, "loss_curve", loss_curve)
    args = train_args(data_dir, tmp_path / "run", "--max-steps", "6", "--eval-interval", "2", "--log-interval", "1")
    assert run_cli(capsys, *args)[0] == 0
    assert drawn_at == [2, 4, 6]
    assert (tmp_path / "run" / "loss_curve.png").stat().st_size > 1000


def test_tokens_per_second_leaves_out_validation_time(tmp_path, data_dir):
    class SlowValidation(TokenWindows):
        def val_loss(self, *args):
            time.sleep(1.5)
            return 1.0

    cfg = TrainConfig(data=str(data_dir), out=str(tmp_path / "run"), model_overrides=SMALL_OVERRIDES, block_size=32,
                      batch_size=8, max_steps=4, eval_interval=2, log_interval=2, progress=False)
    train(cfg, SlowValidation(str(data_dir)))
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    window_seconds = [2 * 8 * 32 / r["tokens_per_s"] for r in records]  # 2 steps of 8 x 32 tokens per record
    assert [r["step"] for r in records] == [2, 4] and max(window_seconds) < 1.0, window_seconds


def test_min_lr_above_lr_is_a_one_line_error(tmp_path, data_dir, capsys):
    code, _, err = run_cli(capsys, *train_args(data_dir, tmp_path / "run", "--max-steps", "2", "--min-lr", "0.01"))
    assert code == 2 and "--min-lr 0.01 is above --lr 0.003" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "run").exists()


def test_warmup_as_long_as_the_run_is_reported(tmp_path, data_dir, capsys):
    code, out, err = run_cli(capsys, *train_args(data_dir, tmp_path / "run", "--max-steps", "4", "--log-interval", "1"))
    assert code == 0, err
    assert "note: warmup (5 steps) is not shorter than the run (4 steps): the lr only rises, to 0.0024 at" in out
    lrs = [json.loads(line)["lr"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert lrs == pytest.approx([6e-4, 1.2e-3, 1.8e-3, 2.4e-3])
    code, out, _ = run_cli(capsys, *train_args(data_dir, tmp_path / "run5", "--max-steps", "6", "--log-interval", "1"))
    assert code == 0 and "note: warmup" not in out


def test_resume_refuses_changed_schedule_or_sizes(tmp_path, data_dir, capsys):
    run = tmp_path / "run"
    assert run_cli(capsys, *train_args(data_dir, run, "--max-steps", "6", "--eval-interval", "3"))[0] == 0
    for extra, named in [(("--max-steps", "4"), "--max-steps 4 (run: 6)"), (("--max-steps", "9"), "--max-steps 9 (run: 6)"),
                         (("--batch-size", "4"), "--batch-size 4 (run: 8)"), (("--block-size", "16"), "--block-size 16 (run: 32)"),
                         (("--lr", "2e-3"), "--lr 0.002 (run: 0.003)"),
                         (("--grad-accum", "2"), "--grad-accum 2 (run: 1)"),
                         (("--lr", "1e-3"), "--lr 0.001 (run: 0.003)"),  # the parser's default, given: refused
                         (("--batch-size", "12"), "--batch-size 12 (run: 8)")]:
        code, _, err = run_cli(capsys, *train_args(data_dir, run, "--resume", *extra))
        assert code == 2 and named in err and len(err.strip().splitlines()) == 1, (extra, err)
    assert json.loads((run / "latest.json").read_text())["step"] == 6


def test_plain_resume_keeps_the_runs_own_settings(tmp_path, data_dir, capsys):
    """--resume with none of the run's options repeated continues with the run's batch size, lr, warmup and
    clipping (saved in the checkpoint), not the command-line defaults, and ends where the unbroken run ends."""
    settings = ("--max-steps", "6", "--eval-interval", "3", "--batch-size", "4", "--lr", "2e-3", "--warmup-steps", "2",
                "--grad-clip", "0.5", "--weight-decay", "0.05", "--decay", "linear")
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    assert run_cli(capsys, *train_args(data_dir, straight, *settings))[0] == 0
    assert run_cli(capsys, *train_args(data_dir, broken, *settings, "--stop-after", "3"))[0] == 0
    code, _, err = run_cli(capsys, "train", "--data", data_dir, "--out", broken, "--eval-interval", "3",
                           "--eval-batches", "4", "--no-progress", "--resume")
    assert code == 0, err
    a, b = weights(straight), weights(broken)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_refuses_a_stop_it_has_passed(tmp_path, data_dir, capsys):
    run = tmp_path / "run"
    assert run_cli(capsys, *train_args(data_dir, run, "--max-steps", "8", "--stop-after", "4"))[0] == 0
    code, _, err = run_cli(capsys, *train_args(data_dir, run, "--max-steps", "8", "--stop-after", "4", "--resume"))
    assert code == 2 and "--stop-after 4 is not beyond step-0000004" in err, err
    assert json.loads((run / "latest.json").read_text())["step"] == 4


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
