"""Bad input to `xpnet train` and run_training / resume_training: one line naming what was wrong
and what was expected, found before any training, and nothing in the run folder changed."""
import json
import os
import re
import shutil

import pytest

from xpnet import cli, runner
from xpnet.backends import cpu_threads
from xpnet.errors import BatchSizeError, ConfigError, NoGPUError

SMALL = ["--model", "quick-mlp", "--device", "cpu", "--epochs", "1", "--train-images", "300",
         "--test-images", "100", "--quiet"]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished one-epoch run folder (config.json, last.npz, result.json, ...)."""
    out = tmp_path_factory.mktemp("runs")
    return runner.run_training("quick-mlp", device="cpu", out_dir=out, verbose=0, epochs=1,
                               train_images=300, test_images=100)["run_dir"]


@pytest.fixture
def interrupted(finished_run, tmp_path):
    """A copy of the run as a run interrupted after its last epoch: no result.json."""
    folder = tmp_path / "interrupted"
    shutil.copytree(finished_run, folder)
    (folder / "result.json").unlink()
    return folder


def train(argv, capsys):
    """`xpnet train ARGV`: (exit status, stderr). What it printed on stdout is checked here: nothing
    when it was refused; after a run, one line with the test error and the run folder, whose
    result.json holds the same numbers (the folder given to --resume, or a new one under --out)."""
    code = cli.main(["train"] + argv)
    out, err = capsys.readouterr()
    if code != 0:
        assert out == "", out
        return code, err
    match = re.fullmatch(r"test error (\d+\.\d\d)% \((\d+) mistakes of 100\), run folder: (.+)\n", out)
    assert match, out
    folder = match.group(3)
    with open(os.path.join(folder, "result.json")) as f:
        result = json.load(f)
    assert (match.group(1), int(match.group(2))) == (f"{result['test_error_percent']:.2f}",
                                                    result["mistakes"]), (out, result)
    assert result["test_samples"] == 100 and result["run_dir"] == folder
    if "--resume" in argv:
        assert folder == argv[argv.index("--resume") + 1] and result["resumed"]
    else:
        assert os.path.dirname(folder) == argv[argv.index("--out") + 1] and not result["resumed"]
    return code, err


def test_a_file_as_the_output_folder_is_refused_before_training(tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    for out in (tmp_path / "afile", tmp_path / "afile" / "sub"):
        code, err = train(SMALL + ["--out", str(out)], capsys)
        assert code == 2 and "Traceback" not in err
        assert f"{out} cannot be used as a folder: {tmp_path / 'afile'} is a file, where a folder is needed" in err
    assert (tmp_path / "afile").read_text() == "x"
    # a missing folder is made, as mkdir -p would
    code, _ = train(SMALL + ["--out", str(tmp_path / "new" / "runs")], capsys)
    assert code == 0 and len(list((tmp_path / "new" / "runs").iterdir())) == 1


def test_check_folder_says_what_folder_problem_says(tmp_path, monkeypatch):
    """runner.check_folder had its own copy of serialization.folder_problem's test, in other
    words; it now words folder_problem's answer, a file in the way or no permission."""
    from xpnet import runner, serialization
    runner.check_folder(None, "--out")
    runner.check_folder(tmp_path / "new" / "runs", "--out")   # made later, as mkdir -p would
    monkeypatch.setattr(serialization.os, "access", lambda path, mode: path != str(tmp_path))
    with pytest.raises(ConfigError) as caught:
        runner.check_folder(tmp_path / "new", "the output folder (out_dir)")
    assert str(caught.value) == (f"the output folder (out_dir) {tmp_path / 'new'} cannot be used as a "
                                 f"folder: no permission to write into {tmp_path}")


def test_a_file_as_the_tensorboard_folder_is_refused_before_the_run_folder(tmp_path, capsys):
    pytest.importorskip("tensorboardX")
    (tmp_path / "afile").write_text("x")
    code, err = train(SMALL + ["--out", str(tmp_path / "runs"), "--tensorboard",
                               str(tmp_path / "afile")], capsys)
    assert code == 2 and (f"the TensorBoard folder {tmp_path / 'afile'} cannot be used as a folder: "
                          f"{tmp_path / 'afile'} is a file, where a folder is needed") in err
    assert not (tmp_path / "runs").exists()   # refused before training, not after it


def test_resume_with_an_empty_name_is_refused_not_a_new_run(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, err = train(["--resume", ""] + SMALL, capsys)   # read as --resume: its options refused
    assert code == 2 and "--resume takes the run's settings" in err
    assert not (tmp_path / "runs").exists()
    with pytest.raises(ConfigError, match="the run folder to resume is an empty name"):
        runner.resume_training("", verbose=0)


def test_a_refused_resume_leaves_config_json_as_it_was(interrupted, capsys):
    before = (interrupted / "config.json").read_bytes()
    good = (interrupted / "last.npz").read_bytes()
    (interrupted / "last.npz").write_bytes(good[:1000])   # truncated checkpoint: refused by fit
    code, err = train(["--resume", str(interrupted), "--quiet"], capsys)
    assert code == 2 and "last.npz: not a readable .npz file" in err
    assert (interrupted / "config.json").read_bytes() == before
    # an accepted resume records its sitting (here with no epoch left to run)
    (interrupted / "last.npz").write_bytes(good)
    code, err = train(["--resume", str(interrupted), "--quiet"], capsys)
    assert code == 0, err
    resumed = json.loads((interrupted / "config.json").read_text())["resumed"]
    assert len(resumed) == 1 and resumed[0]["command"][-2:] == [str(interrupted), "--quiet"]


@pytest.mark.parametrize("change, message", [
    ({"seed": "x"}, "seed must be a whole number >= 0, got 'x'"),
    ({"seed": True}, "seed must be a whole number >= 0, got True"),
    ({"limits": "x"}, "limits must be an object with train_images and test_images, got 'x'"),
    ({"limits": {"train_images": -5}}, "limits.train_images must be a positive integer or null, got -5"),
    ({"data_dir": 5}, "data_dir must be a folder name or null, got 5"),
    ({"dtype": 3}, "dtype must be 'float32' or 'float64', got 3"),
    ({"model": 7}, "model must be a string, got 7"),
    ({"model": "nope"}, "unknown model 'nope'"),
    ({"dataset": "nope"}, "unknown dataset 'nope'"),
    ({"mixed_precision": "int8"}, "mixed_precision must be 'float16', 'bfloat16' or null, got 'int8'"),
    ({"recipe": "x"}, "recipe must be an object"),
    ({"recipe": {"validation_split": "x"}}, "recipe.validation_split must be a number in [0, 1), got 'x'"),
    ({"recipe": {"epochs": 0}}, "recipe.epochs must be a positive integer, got 0"),
    ({"recipe": {"batch_size": "64"}}, "recipe.batch_size must be a positive integer, got '64'"),
    ({"recipe": {"early_stopping": 15}}, "recipe.early_stopping must be a dict"),
])
def test_a_malformed_config_json_is_named_not_a_traceback(interrupted, capsys, change, message):
    path = interrupted / "config.json"
    config = json.loads(path.read_text())
    for key, value in change.items():
        if key == "recipe" and isinstance(value, dict):
            config["recipe"].update(value)
        else:
            config[key] = value
    path.write_text(json.dumps(config))
    before = path.read_bytes()
    code, err = train(["--resume", str(interrupted), "--quiet"], capsys)
    assert code == 2 and "Traceback" not in err and err.count("\n") == 1, err
    assert f"{path}: {message}" in err
    assert path.read_bytes() == before


@pytest.mark.parametrize("name, value, message", [
    ("XPNET_BLAS_THREADS", "abc", "XPNET_BLAS_THREADS must be a positive whole number or 'keep', got 'abc'"),
    ("XPNET_NUM_THREADS", "abc", "XPNET_NUM_THREADS must be a positive whole number, got 'abc'"),
    ("XPNET_NUM_THREADS", "0", "XPNET_NUM_THREADS must be a positive whole number, got '0'"),
    # str.isdigit() takes a superscript two, which int() refuses (a ValueError traceback)
    ("XPNET_NUM_THREADS", "\u00b2", "XPNET_NUM_THREADS must be a positive whole number, got '\u00b2'"),
    ("XPNET_BLAS_THREADS", "\u00b2", "XPNET_BLAS_THREADS must be a positive whole number or 'keep', got '\u00b2'"),
])
def test_a_bad_thread_variable_is_one_line(monkeypatch, name, value, message):
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        cpu_threads.blas_threads_wanted() if name == "XPNET_BLAS_THREADS" else cpu_threads.thread_count()


def test_omp_num_threads_lists_are_left_to_openmp(monkeypatch):
    monkeypatch.delenv("XPNET_NUM_THREADS", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert cpu_threads.thread_count() == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "4,2")   # OpenMP's nested form: not ours to refuse
    assert cpu_threads.thread_count() >= 1
    monkeypatch.setenv("OMP_NUM_THREADS", "\u00b2")   # not a number int() takes: left alone too
    assert cpu_threads.thread_count() >= 1


def test_a_bad_thread_variable_stops_the_cli_with_one_line(tmp_path):
    import os
    import subprocess
    import sys
    env = dict(os.environ, XPNET_NUM_THREADS="abc")
    proc = subprocess.run([sys.executable, "-m", "xpnet", "train"] + SMALL + ["--out", str(tmp_path)],
                          env=env, capture_output=True, text=True, timeout=120,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == ("xpnet train: error: XPNET_NUM_THREADS must be a positive whole "
                                   "number, got 'abc'")


@pytest.mark.parametrize("name, value, command, message", [
    ("XPNET_OPS", "bogus", ["models"], "xpnet models: error: XPNET_OPS must be 'reference' or 'fast' (or unset), got 'bogus'"),
    ("XPNET_SPLIT", "bogus", ["info"], "xpnet info: error: XPNET_SPLIT must be 'auto' or 'always', got 'bogus'"),
])
def test_a_bad_implementation_variable_is_one_line_from_every_command(name, value, command, message):
    """$XPNET_OPS was read when xpnet was imported and $XPNET_SPLIT when the NumPy backend's kernels
    were: both ended every command (even --help) in a traceback."""
    import os
    import subprocess
    import sys
    env = dict(os.environ, **{name: value})
    proc = subprocess.run([sys.executable, "-m", "xpnet"] + command, env=env, capture_output=True,
                          text=True, timeout=120, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert proc.returncode == 2 and proc.stderr.strip() == message, proc.stderr


def test_a_bad_xpnet_ops_reaches_the_python_api_as_a_config_error_when_a_layer_computes():
    import os
    import subprocess
    import sys
    code = ("import numpy as np, xpnet\n"
            "from xpnet.layers import Conv2D, Flatten, Dense\n"
            "m = xpnet.Sequential([Conv2D(2, 3), Flatten(), Dense(3)], input_shape=(1, 8, 8))\n"
            "try:\n"
            "    m.forward(m.backend.asarray(np.zeros((1, 1, 8, 8), np.float32)))\n"
            "except xpnet.errors.ConfigError as exc:\n"
            "    print('refused:', exc)\n")
    proc = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, XPNET_OPS="bogus"),
                          capture_output=True, text=True, timeout=120,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "refused: XPNET_OPS must be 'reference' or 'fast' (or unset), got 'bogus'"


@pytest.mark.parametrize("variable, rank_variable, size", [
    ("PMI_SIZE", "PMI_RANK", "2"), ("OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK", "4")])
def test_several_processes_from_mpirun_without_distributed_are_refused(tmp_path, capsys, monkeypatch,
                                                                      variable, rank_variable, size):
    """`mpirun -n 2 xpnet train` without --distributed would start two separate runs (with
    --resume, both writing into one folder): refused before any folder is made. Rank 0 says why;
    the others end with status 2 and no line of their own."""
    monkeypatch.setenv(variable, size)
    monkeypatch.setenv(rank_variable, "0")
    code, err = train(SMALL + ["--out", str(tmp_path / "runs")], capsys)
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert (f"error: this process is one of {size} started by an MPI launcher ({variable}={size}) but "
            "--distributed was not given" in err) and "add --distributed, or run one process" in err
    assert not (tmp_path / "runs").exists()
    monkeypatch.setenv(rank_variable, "1")
    with pytest.raises(SystemExit) as stop:
        train(SMALL + ["--out", str(tmp_path / "runs")], capsys)
    assert stop.value.code == 2 and capsys.readouterr() == ("", "")   # no line on either stream
    assert not (tmp_path / "runs").exists()
    assert cli.launcher_ranks({"PMI_SIZE": "1", "PMI_RANK": "0"}) is None   # one process: a plain run


def test_a_run_folder_being_trained_is_not_resumed_by_a_second_process(interrupted, capsys):
    """Two --resume of one folder at once would both write into it: the second one is refused while
    the first (here: a lock held by this test) trains there, and nothing in the folder changes."""
    pytest.importorskip("fcntl", reason="no flock here")
    before = (interrupted / "config.json").read_bytes()
    lock = runner.lock_run(str(interrupted))
    # a lock_run that takes no lock where flock exists (it returns None) would skip the check
    assert lock is not None, "lock_run took no lock on a local folder"
    try:
        code, err = train(["--resume", str(interrupted), "--quiet"], capsys)
    finally:
        runner.unlock_run(lock)
    assert code == 2 and err.count("\n") == 1, err
    assert f"error: {interrupted} is being trained by another process" in err
    assert (interrupted / "config.json").read_bytes() == before
    code, err = train(["--resume", str(interrupted), "--quiet"], capsys)   # released: it goes on
    assert code == 0, err


def test_an_output_folder_that_cannot_be_made_is_one_line(tmp_path, capsys):
    """os.makedirs failing (a name over 255 characters, /proc) was a traceback: now one line naming
    the folder and the reason, and nothing made."""
    long = tmp_path / ("a" * 300)
    code, err = train(SMALL + ["--out", str(long)], capsys)
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert f"error: cannot make the run folder {long}" in err and "File name too long" in err
    assert list(tmp_path.iterdir()) == []
    if os.path.isdir("/proc/self"):
        with pytest.raises(ConfigError, match="cannot make the run folder /proc/x/"):
            runner.run_folder("/proc/x", "m", "mnist")


def test_resume_refuses_out_instead_of_ignoring_it(interrupted, tmp_path, capsys):
    """--out with --resume was silently ignored (the run went on in RUN): refused like --epochs,
    and nothing changed; without --out the default stays runs/."""
    before = (interrupted / "config.json").read_bytes()
    code, err = train(["--resume", str(interrupted), "--out", str(tmp_path / "elsewhere"), "--quiet"],
                      capsys)
    assert code == 2 and err.count("\n") == 1, err
    assert f"--resume takes the run's settings from {interrupted}/config.json; drop --out" in err
    assert (interrupted / "config.json").read_bytes() == before
    assert not (tmp_path / "elsewhere").exists()
    assert cli.build_parser().parse_args(["train"]).out is None   # run_training gets "runs"


@pytest.mark.parametrize("name, value, message", [
    ("XPNET_PROGRESS_SECONDS", "abc", "XPNET_PROGRESS_SECONDS must be a number of seconds >= 0, got 'abc'"),
    ("XPNET_PROGRESS_SECONDS", "-1", "XPNET_PROGRESS_SECONDS must be a number of seconds >= 0, got '-1'"),
    ("XPNET_CONV_CHOICE", "bogus", "XPNET_CONV_CHOICE must be one of auto, estimate, measure, got 'bogus'"),
])
def test_a_bad_setting_is_refused_before_the_run_folder(tmp_path, capsys, monkeypatch, name, value,
                                                        message):
    """Refused only once fit began, these left a folder holding config.json alone (which cannot be
    resumed): now refused before it is made."""
    monkeypatch.setenv(name, value)
    model = ["--model", "seed002-cnn"] if name == "XPNET_CONV_CHOICE" else []   # a convolution
    code, err = train(SMALL + model + ["--out", str(tmp_path / "runs")], capsys)
    assert code == 2 and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "runs").exists()


class TwoRanks:
    """Rank 0 of a fake 2-rank job whose other rank holds the same values."""
    rank, size, kind = 0, 2, "fake"

    def __init__(self):
        from xpnet.backends import get_backend
        self.backend = get_backend("cpu")

    def allreduce(self, buf, op="sum"):
        buf[1::2] = buf[0::2]   # agree_sizes' slots: rank 1 holds what rank 0 holds
        return buf

    def broadcast(self, buf, root=0):
        return buf

    def broadcast_text(self, text, root=0):
        return text


@pytest.mark.parametrize("batch_size, images, message", [
    (1, 300, "must be at least 2, got 1"), (64, 257, "the last batch of each epoch would hold 1 of 257")])
def test_a_batch_the_ranks_cannot_share_is_refused_before_the_run_folder(tmp_path, batch_size,
                                                                        images, message):
    """mpirun -n 2 ... --distributed --batch-size 1 (or 257 images: a last batch of 1) was refused
    by fit, after the run folder was made."""
    with pytest.raises(ConfigError, match=message):
        runner.run_training("quick-mlp", device="cpu", out_dir=tmp_path / "runs", verbose=0, epochs=1,
                            batch_size=batch_size, train_images=images, test_images=100,
                            distributed=TwoRanks())
    assert not (tmp_path / "runs").exists()


def test_resuming_in_another_dtype_is_refused(interrupted, capsys):
    """"dtype": "float64" in a float32 run's config.json made --resume convert the checkpoint
    silently (another run from there on): refused, naming both dtypes, nothing changed."""
    path = interrupted / "config.json"
    config = json.loads(path.read_text())
    assert config["dtype"] == "float32"
    path.write_text(json.dumps(dict(config, dtype="float64")))
    before = path.read_bytes()
    code, err = train(["--resume", str(interrupted), "--quiet"], capsys)
    assert code == 2 and err.count("\n") == 1, err
    assert (f"last.npz: the checkpoint holds a float32 model but this model is float64; a run "
            "continues in the dtype it was trained in (float32)") in err
    assert path.read_bytes() == before


def test_resuming_a_gpu_run_without_a_gpu_says_to_give_device_cpu(interrupted, capsys, monkeypatch):
    """A run trained on the GPU, resumed where no GPU is visible: the line says so and how to go on
    on the CPU (it gave only CuPy's install hint), and nothing changes."""
    import sys
    import types

    from xpnet.backends import cupy_backend
    path = interrupted / "config.json"
    path.write_text(json.dumps(dict(json.loads(path.read_text()), device="cupy")))
    before = path.read_bytes()
    runtime = types.SimpleNamespace(getDeviceCount=lambda: 0)
    monkeypatch.setitem(sys.modules, "cupy", types.SimpleNamespace(cuda=types.SimpleNamespace(
        runtime=runtime)))
    monkeypatch.setattr(cupy_backend, "_probe", {})
    code, err = train(["--resume", str(interrupted), "--quiet"], capsys)
    assert code == 2 and err.count("\n") == 1, err
    assert f"error: {interrupted} was trained on the GPU (cupy), which cannot be used here: CuPy" in err
    assert err.rstrip().endswith("add --device cpu to continue it on the CPU") and "pip install" not in err
    assert path.read_bytes() == before
    with pytest.raises(NoGPUError, match="add device='cpu' to continue it on the CPU"):
        runner.resume_training(str(interrupted), verbose=0)


def test_a_last_batch_of_one_before_a_batchnorm_is_refused_before_the_run_folder(tmp_path):
    """seed001-tf ends Dense(10)-BatchNorm-Dense(10): 65 images in batches of 64 leave a last
    batch of one sample, which fit refuses before training, but only after the run folder (with
    just config.json, which cannot be resumed) was made."""
    with pytest.raises(ConfigError, match=r"the last batch of each epoch would hold 1 sample \(65 samples "
                                          r"in batches of 64\), and layer .* \(BatchNorm\)"):
        runner.run_training("seed001-tf", device="cpu", out_dir=tmp_path / "runs", verbose=0, epochs=1,
                            batch_size=64, train_images=65, test_images=100)
    assert not (tmp_path / "runs").exists()


def test_the_command_line_names_its_batch_size_option(tmp_path, capsys):
    """xpnet train --batch-size 64 on 65 images before a BatchNorm: the line named fit's way out
    ("or drop a sample") in API words; it now names --batch-size, and fit's words stay fit's."""
    code, err = train(["--model", "seed001-tf", "--device", "cpu", "--epochs", "1", "--batch-size",
                       "64", "--train-images", "65", "--test-images", "100", "--quiet", "--out",
                       str(tmp_path / "runs")], capsys)
    assert code == 2 and err.count("\n") == 1, err
    assert err.rstrip().endswith("needs more than one value per channel in training: choose a "
                                 "--batch-size that does not leave 1 sample over"), err
    assert "batch_size" not in err and "drop a sample" not in err
    with pytest.raises(BatchSizeError, match=r"choose a batch_size that does not leave 1 sample "
                                             r"over, or drop a sample$"):
        runner.run_training("seed001-tf", device="cpu", out_dir=tmp_path / "runs", verbose=0,
                            epochs=1, batch_size=64, train_images=65, test_images=100)


def test_a_resume_removes_temporary_files_a_killed_writer_left(interrupted, capsys):
    """A rank killed by another rank's MPI_Abort (or a SIGKILL) in the middle of a checkpoint's
    write left last.npz.<random>.tmp in the run folder for good; a resume, holding the folder's
    lock, removes such files and leaves everything else."""
    stale = [interrupted / "last.npz.k3j_x9a0.tmp", interrupted / "log.csv.abcdefgh.tmp"]
    for path in stale:
        path.write_bytes(b"half a write")
    mine = interrupted / "notes.tmp"   # not a name the atomic writer makes
    mine.write_text("keep me")
    code, err = train(["--resume", str(interrupted), "--quiet"], capsys)
    assert code == 0, err
    assert not any(path.exists() for path in stale) and mine.read_text() == "keep me"
