"""Issue 32's first-run frictions, as a user meets them on the command line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

CLI = [sys.executable, "-m", "distill.cli"]


def distill(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, cwd=cwd, timeout=300)


def test_an_unquoted_glob_to_shards_is_explained(tmp_path):
    for name in ("a.parquet", "b.parquet", "c.parquet"):
        (tmp_path / name).write_bytes(b"")
    proc = distill("run", "evaluate", "--checkpoint", "x", "--shards",
                   *(str(tmp_path / n) for n in ("a.parquet", "b.parquet", "c.parquet")))
    assert proc.returncode == 2, proc.stderr
    line = proc.stderr.strip()
    assert "\n" not in line and "got 3 paths" in line and "quote it" in line, line


def test_generate_labels_takes_root_and_split(synthetic_coco, tmp_path):
    proc = distill("run", "generate-labels", "--preset", "demo", "--root", str(synthetic_coco),
                   "--split", "nosuch2017", "--out", str(tmp_path / "run"), "--dry-run")
    assert proc.returncode == 2, proc.stderr
    assert "'nosuch2017'" in proc.stderr and str(synthetic_coco) in proc.stderr


def test_data_check_says_why_it_reads_a_plain_folder(synthetic_coco):
    proc = distill("data", "check", str(synthetic_coco / "val2017"))
    assert proc.returncode == 0, proc.stderr
    assert "no annotations/ folder" in proc.stdout
    assert f"did you mean `distill data check {synthetic_coco}`" in proc.stdout


def test_config_show_names_the_stop_words_in_use_and_what_max_tokens_means():
    proc = distill("config", "show", "--preset", "demo")
    assert proc.returncode == 0, proc.stderr
    assert "the paper's list, in use: ( ) : a an and at for from" in proc.stdout
    assert "labels.max_tokens = 8: the student learns the first max_tokens" in proc.stdout


def test_generate_labels_help_describes_both_layouts_and_every_exit_code():
    text = " ".join(distill("run", "generate-labels", "--help").stdout.split())
    assert '("fused")' in text and '("pools")' in text
    assert "1 an unexpected failure" in text


def test_train_student_into_a_label_run_says_it_is_a_label_run(tmp_path):
    run = tmp_path / "labels"
    (run / "shards").mkdir(parents=True)
    (run / "manifest.json").write_text("{}")
    proc = distill("run", "train-student", "--preset", "demo", "--shards", str(run),
                   "--out", str(run))
    assert proc.returncode == 2, proc.stderr
    line = proc.stderr.strip()
    assert "\n" not in line and "is a distill label run folder (manifest.json)" in line, line
    assert "a student run goes into a folder of its own" in line and "did not make" not in line
    assert sorted(p.name for p in run.iterdir()) == ["manifest.json", "shards"]


def test_inspect_json_to_a_folder_is_one_line_before_any_work(tmp_path):
    (tmp_path / "reports").mkdir()
    proc = distill("inspect", str(tmp_path / "no-such-run"), "--json", str(tmp_path / "reports"))
    assert proc.returncode == 2, proc.stderr
    line = proc.stderr.strip()
    assert "\n" not in line and proc.stdout == "", (line, proc.stdout)
    assert f"--json {tmp_path / 'reports'} is a folder" in line
    assert str(tmp_path / "reports" / "inspect.json") in line


def test_training_says_every_epoch_with_validation_and_what_an_epoch_sees(labelled_coco7,
                                                                         tmp_path):
    _, run, _ = labelled_coco7
    proc = distill("run", "train-student", "--preset", "demo", "--shards", str(run),
                   "--val-shards", str(run), "--out", str(tmp_path / "student"), "--epochs", "2",
                   "--batch-size", "4", "--device", "cpu", "--set", "student.input_size=64",
                   "--set", "train.num_workers=0")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    epochs = [line for line in lines if line.startswith("epoch ")]
    assert [line.split(":")[0] for line in epochs] == ["epoch 0", "epoch 1"], proc.stdout
    assert all("val loss" in line for line in epochs)
    assert ("each epoch trains on 4 of the 7 images: full batches of 4 only, a different 3 left "
            "out each epoch (train.batch_size)") in lines
    assert not any("no --val-shards" in line for line in lines)


def test_without_validation_shards_best_is_said_to_follow_the_training_loss():
    from distill.student.epochlines import training_notes

    notes = training_notes(validated=False, images=8, per_epoch=8, batch_size=4)
    assert notes == ["no --val-shards: the best checkpoint (and early stopping) is judged on "
                     "the training loss"]
    assert training_notes(validated=True, images=8, per_epoch=8, batch_size=4) == []


def test_num_workers_is_renamed_ray_workers_and_still_accepted(tmp_path):
    proc = distill("run", "train-student", "--preset", "demo", "--shards", str(tmp_path / "no"),
                   "--out", str(tmp_path / "student"), "--num-workers", "1")
    assert proc.returncode == 2, proc.stderr
    first, second = proc.stderr.strip().splitlines()
    assert first == ("note: --num-workers is now --ray-workers (Ray Train workers); "
                     "train.num_workers is the DataLoader's")
    assert second.startswith(f"error: {tmp_path / 'no'} does not exist")
    assert "--ray-workers" in distill("run", "train-student", "--help").stdout
