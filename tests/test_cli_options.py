"""What a new user meets first on the command line: one-line argparse errors, negative values,
runs that would train nothing, contradictory options, --help saying which option belongs to which
method, progress output that depends on the terminal, and Ctrl-C printing the command that
continues the run."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import shlex
import signal
import struct
import subprocess
import sys
import termios
import threading
import time

import pytest

from proxcl.cli import main

DATA = "synthetic:400"


def proxcl(*args, **kw):
    return subprocess.run([sys.executable, "-m", "proxcl", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"}, **kw)


def run_main(capsys, *args):
    """The command in this process: (exit status, stdout, stderr)."""
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


# ---- argparse's errors are one line, like every other -------------------------------------------

@pytest.mark.parametrize("args, pattern", [
    (("train", "--l1"), r"proxcl train: error: argument --l1: expected one argument \(see proxcl train --help\)"),
    (("train", "--method", "sparse"), r"proxcl train: error: argument --method: invalid choice: 'sparse' "
                                      r"\(choose from .*proximal.*gmp.*\) \(see proxcl train --help\)"),
    (("train", "--epochs", "two"), r"proxcl train: error: argument --epochs: invalid int value: 'two' "
                                   r"\(see proxcl train --help\)"),
    (("nosuch",), r"proxcl: error: argument COMMAND: invalid choice: 'nosuch' \(choose from .*\) "
                  r"\(see proxcl --help\)"),
    (("bench", "kernels", "--repeat"), r"proxcl bench kernels: error: argument --repeat: expected one argument "
                                       r"\(see proxcl bench kernels --help\)"),
])
def test_argparse_errors_are_one_line(args, pattern):
    r = proxcl(*args)
    assert r.returncode == 2 and r.stdout == ""
    assert re.fullmatch(pattern + "\n", r.stderr), r.stderr


@pytest.mark.parametrize("args, line", [
    (("--l1", "-1e-4"), "l1 must be a finite number in [0, inf), got -0.0001"),
    (("--lr", "-0.5"), "the learning rate (--lr) must be a finite number in (0, inf), got -0.5"),
    (("--epochs", "-3"), "epochs must be a whole number >= 0, got -3"),
])
def test_negative_values_reach_their_own_check(capsys, args, line, tmp_path):
    code, out, err = run_main(capsys, "train", "--data", DATA, *args, "--out", tmp_path / "m.proxcl")
    assert (code, out, err) == (2, "", f"proxcl: error: {line}\n")
    assert not os.listdir(tmp_path)


# ---- runs that would train nothing, contradictions ----------------------------------------------

@pytest.mark.parametrize("args, line", [
    (("--epochs", 0), "--epochs must be at least 1: there would be no sparse phase (and nothing to debias)"),
    (("--epochs", 0, "--debias-epochs", 0), "--epochs must be at least 1: there would be no sparse phase "
                                           "(and nothing to debias)"),
    (("--method", "dense", "--epochs", 0), "--epochs must be at least 1: the model would not be trained"),
    (("--method", "gmp", "--epochs", 0), "--epochs must be at least 1: gmp prunes during those epochs"),
    (("--method", "magnitude", "--epochs", 0), "--epochs must be at least 1: magnitude pruning cuts a trained "
                                               "model"),
    (("--method", "dense", "--optimizer", "prox-adam"), "method dense trains dense with sgd or adam, not "
                                                        "'prox-adam'"),
    (("--method", "gmp", "--optimizer", "prox-sgd"), "method gmp trains dense with sgd or adam, not 'prox-sgd'"),
    (("--optimizer", "adam"), "method proximal needs a proximal optimizer (prox-sgd, prox-adam, rda), got 'adam'"),
    (("--method", "dense", "--target-density", 0.1), "--target-density applies only to --method proximal with "
                                                     "prox-sgd or prox-adam (rda: use --l1), magnitude or gmp; "
                                                     "this run is --method dense with sgd"),
    (("--optimizer", "rda", "--target-density", 0.01), "--target-density applies only to --method proximal with "
                                                       "prox-sgd or prox-adam (rda: use --l1), magnitude or "
                                                       "gmp; this run is --method proximal with rda"),
    (("--method", "dense", "--debias-epochs", 3), "--debias-epochs applies only to --method proximal, magnitude "
                                                  "or gmp; this run is --method dense with sgd"),
    (("--method", "gmp", "--l1", 1e-4), "--l1 applies only to --method proximal; this run is --method gmp "
                                        "with sgd"),
    (("--method", "magnitude", "--prune-end", 0.8), "--prune-end applies only to --method gmp; this run is "
                                                    "--method magnitude with sgd"),
    (("--method", "dense", "--prune-scope", "layer"), "--prune-scope applies only to --method magnitude or gmp; "
                                                      "this run is --method dense with sgd"),
    (("--optimizer", "rda", "--lr", 0.1), "--lr applies only to every optimizer but rda (whose steps are "
                                          "sqrt(t)/gamma); this run is --method proximal with rda"),
    (("--optimizer", "prox-adam", "--gamma", 2), "--gamma applies only to --optimizer rda; this run is "
                                                 "--method proximal with prox-adam"),
    (("--penalty", "l1", "--reweight-eps", 0.1), "--reweight-eps applies only to --method proximal with "
                                                 "--penalty reweighted; this run is --method proximal with prox-sgd"),
    (("--target-density", 0.05, "--l1-ramp", 2), "--l1-ramp applies only to --method proximal without "
                                                 "--target-density (lambda is adapted); this run is --method "
                                                 "proximal with prox-sgd"),
    (("--density-ramp", 0.5), "--density-ramp applies only to --method proximal with --target-density; this "
                              "run is --method proximal with prox-sgd"),
    (("--lr-hold", 0.5), "--lr-hold applies only to --lr-schedule hold-cosine; this run is --method proximal "
                         "with prox-sgd"),
    (("--method", "magnitude", "--switch-density", "start"), "--switch-density applies only to --method "
                                                             "proximal or gmp; this run is --method magnitude "
                                                             "with sgd"),
])
def test_impossible_and_contradictory_options_are_refused_up_front(capsys, args, line, tmp_path):
    code, out, err = run_main(capsys, "train", "--data", DATA, *args, "--out", tmp_path / "m.proxcl",
                              "--log", tmp_path / "run.jsonl")
    assert (code, out, err) == (2, "", f"proxcl: error: {line}\n")
    assert not os.listdir(tmp_path)        # refused before anything is written


def test_the_options_each_method_accepts_still_run(tmp_path):
    """The baselines with their own options and no proximal ones; the optimizer of a baseline
    defaults to sgd, of the proximal method to prox-sgd."""
    for i, args in enumerate([("--method", "dense", "--optimizer", "adam", "--lr", 1e-3),
                              ("--method", "gmp", "--target-density", 0.1, "--prune-end", 0.5, "--debias-epochs", 1),
                              ("--optimizer", "rda", "--gamma", 2, "--debias-epochs", 1)]):
        r = proxcl("train", "--data", DATA, "--epochs", 1, *args, "--out", tmp_path / f"m{i}.proxcl", "--quiet",
                   "--json")
        assert r.returncode == 0, (args, r.stderr)
        info = json.loads(proxcl("info", tmp_path / f"m{i}.proxcl", "--json").stdout)
        assert info["total"]["params"] == 266_610


def test_demo_with_no_epochs_is_refused_before_it_trains(capsys, tmp_path):
    out_dir = tmp_path / "demo"
    code, out, err = run_main(capsys, "demo", "--data", DATA, "--epochs", 0, "--debias-epochs", 0,
                              "--out-dir", out_dir)
    assert (code, out) == (2, "")
    assert err == "proxcl: error: --epochs must be at least 1: there would be no sparse phase (and nothing to " \
                  "debias)\n"
    assert not out_dir.exists()


def test_help_says_which_options_belong_to_which_method(capsys):
    from proxcl.training import OPTION_SCOPES
    code, out, _ = run_main(capsys, "train", "--help")
    assert code == 0
    text = " ".join(out.split())           # argparse wraps lines
    for group in ("proximal l1 (--method proximal only):",
                  "debiasing (proximal), retraining (magnitude), fine-tuning (gmp): not with --method dense:",
                  "pruning baselines (--method magnitude and gmp only):"):
        assert group in text, group
    for option, where in OPTION_SCOPES.items():
        help_of = text.split(f"  {option} ", 1)[1] if f"  {option} " in text else text.split(f" {option} ", 1)[1]
        assert f"[only {where}]" in help_of.split("  --", 1)[0], option
    assert "a missing folder is created" in text          # --out into a missing folder


# ---- progress output ----------------------------------------------------------------------------

TRAIN = ("train", "--model", "lenet300", "--data", DATA, "--epochs", 2, "--debias-epochs", 1, "--batch-size", 64)
EPOCH_LINE = re.compile(r"^ *(sparse|debias) +\d/\d  loss \d\.\d{4}  train \d\.\d{4}  test \d\.\d{4}  "
                        r"nonzero +\d+\.\d\d %  \d+\.\d s$")


def _epoch_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if EPOCH_LINE.match(line)]


def test_no_bars_when_stderr_is_not_a_terminal(tmp_path):
    r = proxcl(*TRAIN, "--out", tmp_path / "m.proxcl")
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""                                     # no bar, no blank lines
    assert len(_epoch_lines(r.stdout)) == 3                   # the per-epoch lines stay
    forced = proxcl(*TRAIN, "--out", tmp_path / "m.proxcl", "--progress")
    assert forced.returncode == 0 and "batch" in forced.stderr and "sparse 1/2" in forced.stderr
    quiet = proxcl(*TRAIN, "--out", tmp_path / "m.proxcl", "--quiet")
    assert quiet.returncode == 0 and quiet.stderr == "" and _epoch_lines(quiet.stdout) == []
    assert quiet.stdout.startswith("test accuracy ") and quiet.stdout.count("\n") == 1


def _stderr_on_a_terminal(args) -> tuple[int, str]:
    """Run the command with stderr on a pseudo-terminal: (exit status, what it wrote there)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))    # 24 x 100 characters
    chunks = []

    def read():
        while True:
            try:
                data = os.read(master, 4096)
            except OSError:              # the other side closed
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        proc = subprocess.run([sys.executable, "-m", "proxcl", *map(str, args)], stdout=subprocess.DEVNULL,
                              stderr=slave, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    finally:
        os.close(slave)
        reader.join(timeout=30)
        os.close(master)
    return proc.returncode, b"".join(chunks).decode(errors="replace")


def test_bars_on_a_terminal_unless_turned_off(tmp_path):
    code, err = _stderr_on_a_terminal([*TRAIN, "--out", tmp_path / "m.proxcl"])
    assert code == 0 and "sparse 1/2" in err and "\r" in err
    code, err = _stderr_on_a_terminal([*TRAIN, "--out", tmp_path / "m.proxcl", "--no-progress"])
    assert code == 0 and err == ""


def test_python_api_prints_nothing_unless_asked(capfd, dev):
    from proxcl.data import load_dataset
    from proxcl.training import TrainConfig, train
    ds = load_dataset(DATA)
    cfg = dict(model="lenet300", data=DATA, epochs=1, debias_epochs=1, batch_size=64)
    train(TrainConfig(**cfg), dataset=ds, device=dev)
    assert capfd.readouterr() == ("", "")
    train(TrainConfig(progress=True, verbose=True, **cfg), dataset=ds, device=dev)
    out, err = capfd.readouterr()
    assert len(_epoch_lines(out)) == 2 and "sparse 1/1" in err and "batch" in err


# ---- Ctrl-C -------------------------------------------------------------------------------------

def test_ctrl_c_prints_the_command_that_continues_the_run(tmp_path):
    """SIGINT after the first checkpoint: exit 130 and one line naming the exact command; that
    command finishes the run, each epoch once in the log."""
    out, ckpt, log = tmp_path / "m.proxcl", tmp_path / "m.proxcl.ckpt", tmp_path / "run.jsonl"
    args = ["train", "--data", "synthetic:3000", "--epochs", "8", "--debias-epochs", "1", "--batch-size", "16",
            "--l1", "2e-4", "--out", str(out), "--log", str(log), "--quiet"]
    proc = subprocess.Popen([sys.executable, "-m", "proxcl", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    t0 = time.monotonic()
    while not ckpt.exists() and proc.poll() is None and time.monotonic() - t0 < 120:
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, (stdout, stderr)
    assert stderr == f"proxcl: interrupted; continue with: {shlex.join(['proxcl', *args, '--resume', str(ckpt)])}\n"
    assert not out.exists()
    done = len(log.read_text().splitlines())
    assert 1 <= done < 9

    command = shlex.split(stderr.split("continue with: ", 1)[1])
    assert command[0] == "proxcl"
    again = subprocess.run([sys.executable, "-m", "proxcl", *command[1:]], capture_output=True, text=True,
                           cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(r["phase"], r["epoch"]) for r in records] == [("sparse", e) for e in range(1, 9)] + [("debias", 1)]
    assert out.exists()


def test_resume_command_replaces_a_given_resume():
    from proxcl.cli.train import resume_command
    assert resume_command(["train", "--resume", "old.ckpt", "--l1", "1e-3", "--res=x"], "new dir/m.ckpt") == \
        "proxcl train --l1 1e-3 --resume 'new dir/m.ckpt'"


def test_bench_large_refuses_repeat(capsys):
    """--large times by a budget: a --repeat given with it is refused, not ignored."""
    assert run_main(capsys, "bench", "kernels", "--large", "--repeat", "5") == \
        (2, "", "proxcl: error: --repeat does not apply with --large (its repetitions follow a time budget)\n")


def test_spec_errors_name_the_problem(capsys, tmp_path):
    """An unknown layer type is named as such; a model file given as --model is named for what it is."""
    from proxcl.spec import normalize_spec
    from proxcl.errors import InputError
    spec = {"input_shape": [4], "layers": [{"type": "linear", "out": 3}, {"type": "gelu"}]}
    with pytest.raises(InputError, match=r"^model spec: layer 1 has unknown type 'gelu'; use one of linear, "):
        normalize_spec(spec)
    with pytest.raises(InputError, match=r"^model spec: layer 1 needs a type"):
        normalize_spec({"input_shape": [4], "layers": [{"type": "linear", "out": 3}, {"out": 2}]})
    with pytest.raises(InputError, match=r"unknown type \['relu'\]"):
        normalize_spec({"input_shape": [4], "layers": [{"type": ["relu"]}]})
    blob = tmp_path / "m.proxcl"
    blob.write_bytes(b"\x20\x00\x00\x00\x00\x00\x00\x00{\"__metadata__\":{\"format\":\"proxcl\"}}\xff\xfe")
    code, out, err = run_main(capsys, "train", "--model", blob, "--data", DATA, "--out", tmp_path / "o.proxcl")
    assert (code, out) == (2, "")
    assert err == f"proxcl: error: model spec file {blob}: not a JSON spec: it looks like a proxcl model file\n"


def test_unrecognized_arguments_point_at_the_subcommands_help(capsys):
    assert run_main(capsys, "info", "m.proxcl", "extra")[2] == \
        "proxcl info: error: unrecognized arguments: extra (see proxcl info --help)\n"
    assert run_main(capsys, "bench", "kernels", "--foo") == \
        (2, "", "proxcl bench kernels: error: unrecognized arguments: --foo (see proxcl bench kernels --help)\n")


def test_quiet_goes_with_no_progress_not_with_progress(capsys, tmp_path):
    code, out, err = run_main(capsys, "train", "--data", "synthetic:50", "--epochs", 1, "--debias-epochs", 0,
                              "-q", "--no-progress", "--out", tmp_path / "m.proxcl")
    assert code == 0 and err == "" and out.startswith("test accuracy")
    assert run_main(capsys, "train", "--data", DATA, "-q", "--progress", "--out", tmp_path / "n.proxcl") == \
        (2, "", "proxcl: error: --quiet and --progress contradict each other: --quiet shows no progress bars\n")


def test_a_resume_with_other_settings_names_the_option(capsys, tmp_path):
    args = ["train", "--data", "synthetic:50", "--epochs", 1, "--debias-epochs", 1, "-q",
            "--out", tmp_path / "m.proxcl"]
    assert run_main(capsys, *args)[0] == 0
    ckpt = tmp_path / "m.proxcl.ckpt"
    code, out, err = run_main(capsys, *args[:-2], "--debias-epochs", 2, "--out", tmp_path / "m2.proxcl",
                              "--resume", ckpt)
    assert (code, out) == (2, "")
    assert err == f"proxcl: error: checkpoint {ckpt} was written with --debias-epochs 1, this run has " \
                  "--debias-epochs 2\n"


def test_info_measures_on_the_device_asked_for(capsys, tmp_path):
    """info --device: a device that is not there is an error (without --device, a note)."""
    assert run_main(capsys, "train", "--data", "synthetic:50", "--epochs", 1, "--debias-epochs", 0, "-q",
                    "--out", tmp_path / "m.proxcl")[0] == 0
    code, out, err = run_main(capsys, "info", tmp_path / "m.proxcl", "--device", "no-such-device")
    assert (code, out) == (2, "") and err.startswith("proxcl: error: device 'no-such-device': ")
    code, out, err = run_main(capsys, "info", tmp_path / "m.proxcl", "--device", "pocl")
    assert code == 0 and "inference    batch 256: " in out


def test_demo_with_bad_data_prints_only_the_error(capsys, tmp_path):
    assert run_main(capsys, "demo", "--data", "nope", "--out-dir", tmp_path / "d") == \
        (2, "", "proxcl: error: unknown data set 'nope': use fashion-mnist, mnist, fashion-mnist:DIR, mnist:DIR or "
                "synthetic[:N]\n")
