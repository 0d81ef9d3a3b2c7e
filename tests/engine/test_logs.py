"""Training output in a log file: no progress-bar redraws, one line per epoch (and every log_every steps of long
epochs); --progress forces the bars back."""

from __future__ import annotations

from helpers import run_cli

SETS = ["--set", "epochs=2", "--set", "report=false", "--set", "T=1"]


def test_log_file_gets_lines_not_bar_redraws(tmp_path):
    p = run_cli("train", "--out", tmp_path / "run", "--set", "log_every=10", *SETS, check=True)
    out = p.stdout + p.stderr
    assert "it/s" not in out  # no tqdm bar (text mode turns its carriage returns into newlines)
    lines = [ln for ln in out.splitlines() if ln.strip()]
    epoch_lines = [ln for ln in lines if ln.startswith("epoch ") and "test loss" in ln]
    step_lines = [ln for ln in lines if ln.startswith("epoch ") and " step " in ln]
    assert len(epoch_lines) == 2
    # 1437 digits / batch 32 = 44 steps per epoch: a line at steps 10, 20, 30, 40 of each epoch
    assert len(step_lines) == 8 and step_lines[0].startswith("epoch 1/2 step 10/44")
    assert len(lines) <= 14


def test_progress_flag_forces_bars(tmp_path):
    p = run_cli("train", "--out", tmp_path / "run", "--progress", "--set", "max_steps=3", *SETS, check=True)
    assert "it/s]" in p.stderr
