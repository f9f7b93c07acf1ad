"""The CLI as a user runs it (in a subprocess, like a shell would)."""

import os
import shlex
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

from distill import __version__

CLI = [sys.executable, "-m", "distill.cli"]


def distill(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([*CLI, *args], capture_output=True, text=True)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def closed_port() -> int:
    """A port on 127.0.0.1 where nothing answers (checked: many Rays share this machine, and
    a gRPC server on [::] can hold a port that binding 127.0.0.1 alone reports as free)."""
    from tests.conftest import _free_port

    for _ in range(20):
        port = _free_port()
        with socket.socket() as sock:
            sock.settimeout(2)
            if sock.connect_ex(("127.0.0.1", port)) != 0:
                return port
    raise AssertionError("no closed port found")


def private_mounts_work() -> bool:
    """Whether `unshare -m` can mount here (root with CAP_SYS_ADMIN, as in CI containers)."""
    if shutil.which("unshare") is None or shutil.which("mount") is None:
        return False
    return subprocess.run(["unshare", "-m", "--propagation", "private", "mount", "-t", "tmpfs",
                           "tmpfs", "/mnt"], capture_output=True).returncode == 0


def in_private_mounts(mounts: list[str], args: list[str], after: str = "",
                      timeout: float = 600, env: dict | None = None
                      ) -> subprocess.CompletedProcess:
    """The CLI in a mount namespace of its own: `mounts` (mount(8) argument lists) hold only
    for it and vanish with it, so a test can never leave a mount behind. `after` (a shell
    command) runs in the same namespace once the CLI exited; the CLI's exit code is
    `returncode`."""
    script = " && ".join(f"mount {m}" for m in mounts)
    script += f" && {shlex.join([*CLI, *args])}; rc=$?; {after or 'true'}; exit $rc"
    return subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    """The CLI failed the way a user should see it: exit code 2 and exactly one line."""
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, (proc.returncode, proc.stderr)
    assert lines[0].startswith("error: ") and "Traceback" not in proc.stderr
    return lines[0]


def test_help_lists_the_commands_and_version():
    out = distill("--help").stdout
    for cmd in ("run", "config", "data"):
        assert cmd in out
    assert distill("--version").stdout.strip() == f"distill {__version__}"


def test_config_show_paper_prints_the_papers_settings():
    out = distill("config", "show", "--preset", "paper").stdout
    assert "# fingerprint:" in out
    doc = tomllib.loads(out)
    assert doc["train"]["loss_gains"]["tokens"] == 10.0 and doc["train"]["patience"] == 65
    assert doc["train"]["augment"]["pan_zoom"] == 0.45 and doc["student"]["pixelwise_width"] == 1500
    assert doc["teachers"]["depth"]["checkpoint"] == "depth-anything/Depth-Anything-V2-Large-hf"


def test_config_errors_exit_2_with_a_message():
    proc = distill("config", "show", "--set", "train.mixed_precision=fp8", check=False)
    assert proc.returncode == 2 and "allowed values" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_config_values_and_files_that_cannot_work_are_one_line_exit_2(tmp_path):
    """Issue 26: these were accepted (then killed by the kernel, or trained to nan) or were
    tracebacks. Each names the setting or the file; one CLI per case, side by side."""
    binary = tmp_path / "bin.toml"
    binary.write_bytes(bytes(range(128, 256)) * 4)
    deep = tmp_path / "deep.toml"
    deep.write_text("a = " + "[" * 5000 + "]" * 5000)
    cases = {
        "train.batch_size = 1000000000000 is out of range; allowed: an integer in 1..65536":
            ["--set", "train.batch_size=1000000000000"],
        "train.lr_start = nan is out of range": ["--set", "train.lr_start=nan"],
        "train.lr_start = -1.0 is out of range": ["--set", "train.lr_start=-1"],
        "train.seed = 100000000000000000000 is out of range; allowed: an integer in 0..2**63-1":
            ["--set", f"train.seed={10**20}"],
        "train.num_workers = -1 is out of range": ["--set", "train.num_workers=-1"],
        "train.heatmaps.step_epochs = 0 is out of range": ["--set", "train.heatmaps.step_epochs=0"],
        f"config file '{binary}' is not valid TOML: not UTF-8 text": ["--config", str(binary)],
        f"config file '{deep}' is not valid TOML for distill: its arrays or tables are nested "
        "too deeply": ["--config", str(deep)],
    }
    procs = {says: subprocess.Popen([*CLI, "config", "show", *args], stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)
             for says, args in cases.items()}
    for says, proc in procs.items():
        out, err = proc.communicate(timeout=120)
        line = one_error_line(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
        assert says in line, line


def test_make_demo_then_check_it(tmp_path):
    pytest.importorskip("skimage")
    root = tmp_path / "demo"
    assert "wrote 7 images" in distill("data", "make-demo", str(root)).stdout
    out = distill("data", "check", str(root), "--split", "val2017").stdout
    assert "images:   7" in out and "persons:  1 (1 with keypoints)" in out
    assert "captions: 14" in out and "problems: 0" in out


def test_data_check_reports_layout_errors(tmp_path):
    (tmp_path / "annotations").mkdir()
    proc = distill("data", "check", str(tmp_path), check=False)
    assert proc.returncode == 2 and "person_keypoints_val2017.json" in proc.stderr


def test_data_check_on_coco_mini(coco_mini):
    out = distill("data", "check", str(coco_mini), "--split", "val2017").stdout
    assert "images:   79" in out and "problems: 0" in out


def test_run_group_has_help():
    assert "label generation" in distill("run", "--help").stdout


def test_teachers_list_shows_every_backend_and_the_papers_choice():
    out = distill("teachers", "list").stdout
    for name in ("depth-anything-v2", "detectron2", "mask2former", "dptext-detr", "craft",
                 "visiongpt2", "vit-gpt2"):
        assert name in out
    assert "depth-anything/Depth-Anything-V2-Large-hf" in out


def test_teachers_list_tells_installed_but_broken_from_missing(tmp_path, monkeypatch):
    """A detectron2 whose model zoo cannot import (setuptools 81 dropped pkg_resources) is not
    "ready": the list says so and prints the cause with the pin that fixes it."""
    zoo = tmp_path / "detectron2"
    zoo.mkdir()
    (zoo / "__init__.py").write_text("")
    (zoo / "model_zoo.py").write_text("import pkg_resources_gone_for_this_test as pkg_resources\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    out = distill("teachers", "list").stdout
    assert "`detectron2` installed, fails to import" in out
    assert "detectron2: ModuleNotFoundError: No module named 'pkg_resources_gone_for_this_test'" \
        in out
    assert "needs `adet` (not installed)" in out


def test_generate_labels_help_shows_its_options_and_examples():
    out = distill("run", "generate-labels", "--help").stdout
    for opt in ("--shard-size", "--limit", "--image-ids", "--dry-run", "--new-run", "--address",
                "--out", "distill run generate-labels --preset demo"):
        assert opt in out
    assert "quarantined" in distill("run", "retry-failed", "--help").stdout


def test_dry_run_prints_the_plan_and_a_timed_estimate_and_writes_nothing(synthetic_coco,
                                                                         tmp_path):
    out = tmp_path / "run"
    proc = distill("run", "generate-labels", "--preset", "demo", "--set",
                   f"data.root={synthetic_coco}", "--set", "teachers.text.input_size=160",
                   "--shard-size", "2", "--out", str(out), "--dry-run", "--sample", "1")
    text = proc.stdout
    assert "images planned: 3 in 2 shard(s) of up to 2" in text
    assert "to do: 2 label (3 images)" in text
    for stage in ("decode", "depth", "panoptic", "text", "caption", "postprocess"):
        assert stage in text
    assert "output: about" in text
    assert not out.exists()


def test_bad_run_requests_fail_with_a_clear_message(synthetic_coco, tmp_path):
    common = ["run", "generate-labels", "--preset", "demo", "--set",
              f"data.root={synthetic_coco}", "--out", str(tmp_path / "run"), "--dry-run"]
    proc = distill(*common, "--image-ids", "1,77,78", check=False)
    assert proc.returncode == 2 and "[77, 78]" in proc.stderr and "not in val2017" in proc.stderr
    proc = distill(*common, "--image-ids", "one,two", check=False)
    assert proc.returncode == 2 and "--image-ids wants integers" in proc.stderr
    proc = distill("run", "retry-failed", str(tmp_path), check=False)
    assert proc.returncode == 2 and "not a generate-labels run folder" in proc.stderr


def test_image_ids_from_a_file_restrict_the_plan(synthetic_coco, tmp_path):
    ids = tmp_path / "ids.txt"
    ids.write_text("3\n1\n")
    text = distill("run", "generate-labels", "--preset", "demo", "--set",
                   f"data.root={synthetic_coco}", "--out", str(tmp_path / "run"), "--dry-run",
                   "--sample", "0", "--image-ids", f"@{ids}").stdout
    assert "images planned: 2 in 1 shard(s)" in text


def test_train_student_help_shows_local_and_ray_options():
    out = distill("run", "train-student", "--help").stdout
    for opt in ("--shards", "--val-shards", "--epochs", "--batch-size", "--out", "--resume",
                "--ray-workers", "--gpus-per-worker", "--address"):
        assert opt in out


@pytest.mark.slow
def test_show_a_run_folder_counts_rows_across_its_committed_shards(labelled_coco7, tmp_path):
    """`distill show RUN --row 0` draws the first shard's row 0, and `RUN/shards --row 5` the
    row that is sixth in run order, byte for byte as showing that shard's row does."""
    import pyarrow.parquet as pq

    from distill.runfolder import LabelRun

    _, run, _ = labelled_coco7
    shards = LabelRun(run).committed_shards()
    sizes = [pq.ParquetFile(s.path).metadata.num_rows for s in shards]
    assert len(shards) >= 2 and sum(sizes) > 5
    k, local = 0, 5  # row 5 of the run: which shard, which row of it
    while local >= sizes[k]:
        local, k = local - sizes[k], k + 1
    cases = {"run-0": (str(run), 0), "shard-0": (str(shards[0]), 0),
             "folder-5": (str(run / "shards"), 5), "shard-local": (str(shards[k]), local)}
    procs = {name: subprocess.Popen(  # one CLI per case, side by side (each starts Python)
        [sys.executable, "-m", "distill.cli", "show", spec, "--row", str(row), "--width", "160",
         "--out", str(tmp_path / f"{name}.png")], stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True) for name, (spec, row) in cases.items()}
    for name, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"{name}: {stderr}"
        assert f"wrote {tmp_path / f'{name}.png'}" in stdout
    png = {name: (tmp_path / f"{name}.png").read_bytes() for name in cases}
    assert png["run-0"] == png["shard-0"]
    assert png["folder-5"] == png["shard-local"]
    assert png["run-0"] != png["folder-5"]
    proc = distill("show", str(run), "--row", str(sum(sizes)), "--out",
                   str(tmp_path / "none.png"), check=False)
    assert proc.returncode != 0 and f"has {sum(sizes)} rows" in proc.stderr


def _label_into(coco: Path, out: Path | str) -> list[str]:
    return ["run", "generate-labels", "--preset", "demo", "--set", f"data.root={coco}",
            "--out", str(out), "--no-live"]


def test_out_naming_a_file_fails_with_one_line(synthetic_coco, tmp_path):
    file = tmp_path / "file.txt"
    file.write_text("mine")
    line = one_error_line(distill(*_label_into(synthetic_coco, file), check=False))
    assert line == f"error: --out {file} is a file, not a folder; choose a folder for the run"
    assert file.read_text() == "mine"


def test_out_under_a_file_fails_with_one_line(synthetic_coco, tmp_path):
    file = tmp_path / "file.txt"
    file.write_text("mine")
    line = one_error_line(distill(*_label_into(synthetic_coco, file / "run"), check=False))
    assert line == f"error: cannot write to {file / 'run'}: {file} is a file, not a folder"


def test_out_on_a_read_only_folder_fails_with_one_line(synthetic_coco, tmp_path):
    """A read-only bind mount where one can be made (root, as tests run in CI: chmod does not
    stop root from writing); else a chmod 0o555 folder (a normal user)."""
    folder = tmp_path / "ro"
    folder.mkdir()
    args = _label_into(synthetic_coco, folder / "run")
    if private_mounts_work():
        proc = in_private_mounts([f"--bind -o ro {folder} {folder}"], args, timeout=120)
        cause = "Read-only file system"
    elif os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            proc = distill(*args, check=False)
        finally:
            folder.chmod(0o755)
        cause = "Permission denied"
    else:
        pytest.skip("root can write into a chmod 0o555 folder and no read-only mount can be made")
    assert one_error_line(proc) == f"error: cannot write to {folder / 'run'}: {cause}"
    assert list(folder.iterdir()) == []


# Fast: the probe before `ray.init` (pipelines/cluster.py) refuses a closed port at once; only
# it asks "is a Ray head running there", so that question in the line shows Ray's own retries
# (20 attempts of up to 40 s) never started — said without timing the run.
PROBE_SAYS = "; is a Ray head running there (`ray start --head` prints its address)?"


def test_joining_a_closed_port_fails_fast_with_one_line(synthetic_coco, tmp_path):
    port = closed_port()
    proc = distill(*_label_into(synthetic_coco, tmp_path / "run"), "--address",
                   f"127.0.0.1:{port}", check=False)
    line = one_error_line(proc)  # Ray may name this machine's address for 127.0.0.1
    assert line.startswith("error: cannot join Ray at ") and f"127.0.0.1:{port}" in line
    assert line.endswith(f"Connection refused{PROBE_SAYS}"), line
    assert not (tmp_path / "run").exists()  # a first run that failed leaves nothing


def test_address_auto_with_a_dead_ray_address_fails_fast(synthetic_coco, tmp_path):
    """`--address auto` honours RAY_ADDRESS (first, as Ray does): a dead one fails at once,
    saying where the address came from."""
    port = closed_port()
    env = {**os.environ, "RAY_ADDRESS": f"127.0.0.1:{port}",
           "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    proc = subprocess.run([*CLI, *_label_into(synthetic_coco, tmp_path / "run"), "--address",
                           "auto"], capture_output=True, text=True, env=env)
    line = one_error_line(proc)
    assert line == (f"error: cannot join Ray at 127.0.0.1:{port} (--address auto: "
                    f"RAY_ADDRESS): Connection refused{PROBE_SAYS}"), line


def test_train_student_on_ray_that_does_not_answer_leaves_no_folder(tmp_path):
    """`--ray-workers 1 --address <closed port>`: one line, and no run folder (the folder is
    claimed as a student run only once Ray is joined)."""
    from distill.config import load_config
    from distill.labels.tokens import vocabulary_from_shards, write_vocabulary_file
    from distill.runfolder import shard_name
    from tests.test_viz import make_labelled_sample, write_shard

    shards = tmp_path / "shards"
    shards.mkdir()
    write_shard(shards / shard_name("val2017", 0), [make_labelled_sample(i) for i in (1, 2)])
    # The shards' own vocabulary, given with --vocab (a plain folder would warn that it is
    # rebuilt, a second line)
    cfg = load_config("demo")
    vocab, meta = vocabulary_from_shards(sorted(shards.glob("*.parquet")), cfg.labels.glove,
                                         cfg.labels.vocab_size)
    write_vocabulary_file(tmp_path / "vocab.parquet", vocab, vocab.dim, meta)
    out = tmp_path / "student"
    port = closed_port()
    proc = distill("run", "train-student", "--preset", "demo", "--shards", str(shards), "--out",
                   str(out), "--vocab", str(tmp_path / "vocab.parquet"), "--ray-workers", "1",
                   "--address", f"127.0.0.1:{port}", check=False)
    line = one_error_line(proc)
    assert line.startswith("error: cannot join Ray at ") and "Connection refused" in line
    assert not out.exists()


@pytest.mark.parametrize("where", ["data.root", "--out"])
def test_credentials_in_a_uri_are_refused_and_never_shown(synthetic_coco, tmp_path, where):
    """`s3://KEY:SECRET@bucket/…` (which pyarrow would take) puts the secret into every message
    naming the folder, the run's config and its manifest: refused in one line that shows
    neither part, also at -vv (where the traceback is logged too)."""
    uri = "s3://AKIACANARYKEY:Canary%2BSecret@bucket/data"
    out = tmp_path / "run"
    args = [*_label_into(synthetic_coco, out if where == "data.root" else uri)]
    if where == "data.root":
        args += ["--set", f"data.root={uri}"]
    proc = distill("-vv", *args, check=False)
    assert proc.returncode == 2, proc.stderr
    assert "CANARYKEY" not in proc.stdout + proc.stderr, proc.stderr
    assert "Canary" not in proc.stdout + proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "'s3://***@bucket/data' holds credentials" in errors[0], errors
    assert not out.exists() or not (out / "config.toml").exists()
