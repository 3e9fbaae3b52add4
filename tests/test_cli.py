"""The ``xpnet`` command, called through ``main([...])`` (and once as ``python -m xpnet``)."""
import gzip
import os
import struct
import subprocess
import sys

import numpy as np
import pytest

import xpnet
from xpnet import cli
from xpnet import layers as xlayers
from xpnet.layers import Dense
from xpnet.layers.base import Layer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class FlatFeatures(Layer):
    """(C, H, W) -> (C*H*W,): a test-only stand-in so these tests need no other layer."""

    def compute_output_shape(self, input_shape):
        n = 1
        for d in input_shape:
            n *= d
        return (n,)

    def forward(self, x, training=False):
        return x.reshape(x.shape[0], -1)

    def backward(self, grad):
        return grad.reshape((grad.shape[0],) + self.input_shape)


@pytest.fixture
def image_model(tmp_path, monkeypatch):
    """A saved (1, 28, 28) -> 10 model whose first logit is 5 x the mean of the top image rows."""
    monkeypatch.setitem(xlayers.LAYERS, "FlatFeatures", FlatFeatures)
    model = xpnet.Sequential([FlatFeatures(), Dense(10)], input_shape=(1, 28, 28), seed=1)
    W = np.zeros((784, 10), dtype="float32")
    W[:392, 0] = 5.0 / 392  # top half bright -> class 0
    W[392:, 1] = 5.0 / 392  # bottom half bright -> class 1
    model.layers[1].params["W"][...] = W
    path = tmp_path / "m.npz"
    model.save(path)
    return model, str(path)


def write_idx_images(path, images):
    header = struct.pack(">IIII", 0x00000803, *images.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + images.astype(np.uint8).tobytes())


def test_info_lists_versions_and_backends(capsys):
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert f"xpnet {xpnet.__version__}" in out
    assert f"NumPy {np.__version__}" in out
    assert "backends: numpy, strict" in out
    assert "GPU:" in out
    assert "CPU threads: " in out and "NumPy's BLAS: " in out   # the pool and what it did to BLAS
    from xpnet.backends import compiled
    assert ("compiled CPU kernels (2x2 max pooling, spectral products, ReLU, Dropout, random words): "
            f"{compiled.describe()}\n") in out
    threadpoolctl = pytest.importorskip("threadpoolctl")  # each BLAS NumPy uses and the kernels it chose
    # not scipy's own OpenBLAS (scipy.libs), which numba's compiler loads with scipy.linalg once a
    # compiled kernel has run in this process (backends/compiled.py): NumPy never calls it
    blas = [lib for lib in threadpoolctl.threadpool_info() if lib["user_api"] == "blas"
            and not any(part.startswith("scipy") for part in lib["filepath"].split(os.sep)[:-1])]
    assert blas, "threadpoolctl finds no BLAS under NumPy: the line below would go unchecked"
    for lib in blas:
        kernels = f", {lib['architecture']} kernels" if lib.get("architecture") else ""
        assert f"{lib['internal_api']} {lib['version']} ({lib['threading_layer']}{kernels})" in out, out


def test_python_dash_m_xpnet_info():
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, "-m", "xpnet", "info"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"xpnet {xpnet.__version__}\n")
    assert "Python " in proc.stdout and "NumPy " in proc.stdout


@pytest.mark.parametrize("argv", [
    [], ["frobnicate"], ["train", "--epochs", "0"], ["train", "--batch-size", "-3"],
    ["train", "--epochs", "two"], ["train", "--dataset", "imagenet"], ["train", "--device", "tpu"],
    ["train", "--seed", "-1"], ["evaluate"], ["predict", "m.npz"], ["summary"],
])
def test_bad_arguments_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "usage:" in err and "error:" in err


def test_user_errors_are_one_line_not_a_traceback(tmp_path, capsys):
    assert cli.main(["evaluate", str(tmp_path / "missing.npz")]) == 2
    err = capsys.readouterr().err
    assert "xpnet evaluate: error: no such model file" in err and "Traceback" not in err
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    assert cli.main(["summary", str(bad)]) == 2
    assert "not an xpnet model file" in capsys.readouterr().err


def test_gpu_out_of_memory_gets_a_clear_message(monkeypatch, capsys):
    class OutOfMemoryError(MemoryError):  # the class name is what main() recognises
        pass

    def boom(args):
        raise OutOfMemoryError("Out of memory allocating 1,073,741,824 bytes")

    monkeypatch.setattr(cli, "cmd_info", boom)
    assert cli.main(["info"]) == 1
    err = capsys.readouterr().err
    assert "ran out of memory" in err and "--batch-size" in err
    cublas = type("CUBLASError", (RuntimeError,), {"__module__": "cupy_backends.cuda.libs.cublas"})
    monkeypatch.setattr(cli, "cmd_info", lambda args: (_ for _ in ()).throw(
        cublas("CUBLAS_STATUS_ALLOC_FAILED")))
    assert cli.main(["info"]) == 1
    assert "--batch-size" in capsys.readouterr().err
    monkeypatch.setattr(cli, "cmd_info", lambda args: 1 / 0)
    with pytest.raises(ZeroDivisionError):  # real bugs are not hidden
        cli.main(["info"])


def test_summary_of_a_model_file(image_model, capsys):
    model, path = image_model
    assert cli.main(["summary", path]) == 0
    out = capsys.readouterr().out
    assert "Total params: 7,850" in out and "flat_features (FlatFeatures)" in out
    assert "mixed precision" not in out   # the file records none


def test_summary_shows_the_mixed_precision_a_model_file_records(tmp_path, capsys):
    """The header's mixed_precision (which load_model compiles with) was not shown by summary."""
    import xpnet
    from xpnet.layers import Dense
    model = xpnet.Sequential([Dense(3)], input_shape=(4,), device="cpu")
    model.compile(optimizer="sgd", mixed_precision=xpnet.MixedPrecision("float16", initial_scale=1024))
    path = model.save(str(tmp_path / "mixed.npz"))
    assert cli.main(["summary", path]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == ("mixed precision: float16 (initial_scale=1024.0, growth_interval=2000, "
                         "growth_factor=2.0, backoff_factor=0.5)")
    assert lines[-2] == "Total params: 15"


def test_predict_png_gray_and_colour(image_model, tmp_path, capsys):
    import matplotlib.image as mpimg
    _, path = image_model
    top = np.zeros((28, 28))
    top[:14] = 1.0  # bright top half
    mpimg.imsave(tmp_path / "top.png", top, cmap="gray", vmin=0, vmax=1)
    assert cli.main(["predict", path, str(tmp_path / "top.png")]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{tmp_path / 'top.png'}: class 0 ")
    bottom = np.zeros((28, 28, 3))
    bottom[14:] = [1.0, 1.0, 1.0]  # white bottom half on black, RGB
    mpimg.imsave(tmp_path / "bottom.png", bottom)
    assert cli.main(["predict", path, str(tmp_path / "bottom.png"), "--top", "2"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"{tmp_path / 'bottom.png'}: class 1 ") and "top 2: 1: " in line
    assert line.count(", ") == 1
    assert cli.main(["predict", path, str(tmp_path / "bottom.png"), "--invert"]) == 0
    assert ": class 0 " in capsys.readouterr().out
    white = np.ones((28, 28))
    white[5:20, 12:15] = 0.0  # a dark stroke on white paper
    mpimg.imsave(tmp_path / "paper.png", white, cmap="gray", vmin=0, vmax=1)
    assert cli.main(["predict", path, str(tmp_path / "paper.png")]) == 0
    assert "try --invert" in capsys.readouterr().err


def test_predict_names_each_result_by_its_file(image_model, tmp_path, capsys):
    import matplotlib.image as mpimg
    _, path = image_model
    files = []
    for name, rows in (("a.png", slice(0, 14)), ("b.png", slice(14, 28))):
        img = np.zeros((28, 28))
        img[rows] = 1.0
        mpimg.imsave(tmp_path / name, img, cmap="gray", vmin=0, vmax=1)
        files.append(str(tmp_path / name))
    images = np.zeros((2, 28, 28), dtype=np.uint8)
    images[1, 14:] = 255
    write_idx_images(tmp_path / "two.gz", images)
    files.append(str(tmp_path / "two.gz"))
    assert cli.main(["predict", path] + files) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split(": class ")[0] for line in lines] == [
        files[0], files[1], f"{files[2]}[0]", f"{files[2]}[1]"]
    assert [line.split(": class ")[1].split()[0] for line in lines] == ["0", "1", "0", "1"]


@pytest.mark.parametrize("size", [(64, 64), (30, 100), (2, 2)])
def test_predict_refuses_other_sizes_without_preprocess(image_model, tmp_path, capsys, size):
    import matplotlib.image as mpimg
    _, path = image_model
    h, w = size
    mpimg.imsave(tmp_path / "odd.png", np.zeros((h, w)), cmap="gray", vmin=0, vmax=1)
    assert cli.main(["predict", path, str(tmp_path / "odd.png")]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""  # no silent resize, no result
    assert (f"odd.png: the images are {w}x{h}, but the model takes 28x28 images with 1 channel(s); "
            "pass --preprocess mnist") in captured.err


def test_predict_preprocess_mnist_centres_the_digit_and_says_so(image_model, tmp_path, capsys):
    import matplotlib.image as mpimg
    _, path = image_model
    img = np.zeros((100, 30))
    img[70:95, 5:25] = 1.0  # a blob low in a tall image: centred, it covers both halves
    mpimg.imsave(tmp_path / "low.png", img, cmap="gray", vmin=0, vmax=1)
    assert cli.main(["predict", path, str(tmp_path / "low.png"), "--preprocess", "mnist"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{tmp_path / 'low.png'} (MNIST-preprocessed from 30x100: bounding box "
                          "to 20x20, centred by mass): class ")
    mpimg.imsave(tmp_path / "blank.png", np.zeros((100, 30)), cmap="gray", vmin=0, vmax=1)
    assert cli.main(["predict", path, str(tmp_path / "blank.png"), "--preprocess", "mnist"]) == 2
    assert "blank.png: no digit found" in capsys.readouterr().err


def test_predict_idx_file_and_probabilities(image_model, tmp_path, capsys):
    model, path = image_model
    images = np.zeros((3, 28, 28), dtype=np.uint8)
    images[0, :14] = 255
    images[1, 14:] = 255
    write_idx_images(tmp_path / "imgs-idx3-ubyte.gz", images)
    assert cli.main(["predict", path, str(tmp_path / "imgs-idx3-ubyte.gz"), "--dataset", "mnist"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [l.split(": class ")[1].split()[0] for l in lines] == ["0", "1", "0"]  # the blank image: all logits 0 -> class 0
    logits = np.zeros(10)
    logits[0] = 5.0
    p0 = np.exp(5) / (np.exp(5) + 9)
    assert f"(p={p0:.4f})" in lines[0]
    assert "(p=0.1000)" in lines[2]
    probs = cli.predict_probs(model, images[:, None])
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)
    # the file's images stay uint8 (8x less than float64); each batch is scaled on its way in
    read, _ = cli.read_images(str(tmp_path / "imgs-idx3-ubyte.gz"), (1, 28, 28))
    assert read.dtype == np.uint8 and read.shape == (3, 1, 28, 28)
    np.testing.assert_allclose(cli.predict_probs(model, read), cli.predict_probs(model, read / 255.0),
                               rtol=1e-6)
    inverted, _ = cli.read_images(str(tmp_path / "imgs-idx3-ubyte.gz"), (1, 28, 28), invert=True)
    assert inverted.dtype == np.uint8 and np.array_equal(inverted, 255 - read)
    write_idx_images(tmp_path / "two-idx3-ubyte.gz", images[:2])   # no blank one: it has no digit
    centred, _ = cli.read_images(str(tmp_path / "two-idx3-ubyte.gz"), (1, 28, 28), preprocess="mnist")
    assert centred.dtype.kind == "f" and centred.shape == (2, 1, 28, 28) and centred.max() == 1.0


def test_predict_refuses_wrong_sizes_and_formats(image_model, tmp_path, capsys):
    _, path = image_model
    write_idx_images(tmp_path / "small.gz", np.zeros((2, 20, 20)))
    assert cli.main(["predict", path, str(tmp_path / "small.gz")]) == 2
    assert ("small.gz: the images are 20x20, but the model takes 28x28 images with 1 channel(s)"
            in capsys.readouterr().err)
    (tmp_path / "notes.txt").write_text("hello")
    assert cli.main(["predict", path, str(tmp_path / "notes.txt")]) == 2
    assert "not a PNG or IDX images file" in capsys.readouterr().err


def png_header(width, height):
    """The 8-byte PNG signature and an IHDR chunk (8-bit gray) claiming ``width`` x ``height``."""
    import zlib
    ihdr = b"IHDR" + struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + ihdr + struct.pack(">I", zlib.crc32(ihdr))


def test_predict_refuses_a_png_too_big_before_decoding_it(image_model, tmp_path, capsys, monkeypatch):
    import time
    import matplotlib.image as mpimg

    def decode(*args, **kwargs):
        raise AssertionError("the PNG was decoded")

    monkeypatch.setattr(mpimg, "imread", decode)  # a 100000x100000 decode would take gigabytes
    _, path = image_model
    (tmp_path / "bomb.png").write_bytes(png_header(100000, 100000) + b"\0\0\0\0IEND\xaeB`\x82")
    start = time.perf_counter()
    assert cli.main(["predict", path, str(tmp_path / "bomb.png"), "--preprocess", "mnist"]) == 2
    assert time.perf_counter() - start < 5
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == (
        f"xpnet predict: error: {tmp_path / 'bomb.png'}: the PNG is 100000x100000 (10,000,000,000 "
        f"pixels); xpnet predict reads at most {cli.MAX_PNG_PIXELS:,} pixels: resize it first\n")
    (tmp_path / "wide.png").write_bytes(png_header(cli.MAX_PNG_PIXELS + 1, 1))
    assert cli.main(["predict", path, str(tmp_path / "wide.png")]) == 2
    assert "wide.png: the PNG is 40000001x1 " in capsys.readouterr().err
    (tmp_path / "headless.png").write_bytes(png_header(28, 28)[:8] + b"\0\0\0\rIDAT" + bytes(13))
    assert cli.main(["predict", path, str(tmp_path / "headless.png")]) == 2
    assert "headless.png: cannot read this PNG: no IHDR header" in capsys.readouterr().err


def test_predict_refuses_a_png_of_the_wrong_size_before_decoding_it(image_model, tmp_path, capsys, monkeypatch):
    """Without --preprocess a PNG must have the model's size, which its header says: a 6000x6600
    photo was decoded first (3.5 GB, 9 s) to be refused after."""
    import matplotlib.image as mpimg

    def decode(*args, **kwargs):
        raise AssertionError("the PNG was decoded")

    _, path = image_model
    (tmp_path / "photo.png").write_bytes(png_header(6000, 6600) + b"\0\0\0\0IEND\xaeB`\x82")
    monkeypatch.setattr(mpimg, "imread", decode)
    assert cli.main(["predict", path, str(tmp_path / "photo.png")]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == (
        f"xpnet predict: error: {tmp_path / 'photo.png'}: the images are 6000x6600, but the model "
        "takes 28x28 images with 1 channel(s); pass --preprocess mnist to crop, scale and centre "
        "the digit the way MNIST was made, or resize it to 28x28 yourself\n")


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "I;16"])
@pytest.mark.parametrize("channels", [1, 3])
def test_a_png_is_converted_in_blocks_of_rows_with_the_whole_images_values(tmp_path, monkeypatch, mode, channels):
    """cli._read_png converts PNG_ROWS rows at a time (a 40-megapixel RGBA photo took 3.5 GB whole,
    1.1 GB now); the values are those of converting the decoded image whole."""
    from PIL import Image
    import matplotlib.image as mpimg
    r = np.random.default_rng(3)
    h, w = 23, 9
    if mode == "I;16":
        Image.fromarray(r.integers(0, 65536, (h, w)).astype(np.uint16)).save(tmp_path / "p.png")
    else:
        depth = {"L": (), "RGB": (3,), "RGBA": (4,)}[mode]
        Image.fromarray(r.integers(0, 256, (h, w) + depth).astype(np.uint8), mode).save(tmp_path / "p.png")
    img = np.asarray(mpimg.imread(tmp_path / "p.png"), dtype=np.float64)   # the whole-image reference
    if img.max() > 1.0:
        img = img / img.max()
    if img.ndim == 3:
        if img.shape[2] == 4:
            img = img[..., :3] * img[..., 3:] + (1 - img[..., 3:])
        img = img[..., :3]
    if channels == 1:
        want = (img @ np.array([0.299, 0.587, 0.114]) if img.ndim == 3 else img)[None]
    else:
        want = np.stack([img] * 3) if img.ndim == 2 else img.transpose(2, 0, 1)
    monkeypatch.setattr(cli, "PNG_ROWS", 5)   # five blocks, the last of 3 rows
    got = cli._read_png(str(tmp_path / "p.png"), channels)
    assert got.dtype == np.float64 and got.shape == (channels, h, w)
    np.testing.assert_array_equal(got, want)


def test_predict_refuses_a_top_over_the_number_of_classes(image_model, tmp_path, capsys):
    import matplotlib.image as mpimg
    _, path = image_model
    mpimg.imsave(tmp_path / "d.png", np.zeros((28, 28)), cmap="gray", vmin=0, vmax=1)
    assert cli.main(["predict", path, str(tmp_path / "d.png"), "--top", "11"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == (
        "xpnet predict: error: --top 11, but the model has 10 classes: give --top 10 or less\n")
    assert cli.main(["predict", path, str(tmp_path / "d.png"), "--top", "10"]) == 0
    assert " top 10: " in capsys.readouterr().out


def test_predict_says_which_path_is_a_folder(image_model, tmp_path, capsys):
    import shutil
    _, path = image_model
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(path, run / "model.npz")
    assert cli.main(["predict", path, str(run)]) == 2  # a folder for an image
    assert capsys.readouterr().err == (f"xpnet predict: error: {run} is a folder; expected a PNG or "
                                       "IDX images file\n")
    assert cli.main(["predict", str(run), path]) == 2  # a run folder for its model file
    assert capsys.readouterr().err == (f"xpnet predict: error: {run} is a folder, not a model file; "
                                       f"give its {run / 'model.npz'}\n")
    (tmp_path / "empty").mkdir()
    assert cli.main(["predict", str(tmp_path / "empty"), path]) == 2
    assert capsys.readouterr().err == (f"xpnet predict: error: {tmp_path / 'empty'} is a folder, not a "
                                       "model file; expected a .npz model file\n")
    assert cli.main(["predict", path, path]) == 2  # the model file for an image
    assert "m.npz: not a PNG or IDX images file" in capsys.readouterr().err


def test_evaluate_counts_mistakes_on_the_test_set(image_model, capsys):
    model, path = image_model
    assert cli.main(["evaluate", path, "--dataset", "mnist", "--data-dir", os.path.join(ROOT, "data")]) == 0
    out = capsys.readouterr().out
    (_, _), (x, y) = xpnet.datasets.load("mnist", data_dir=os.path.join(ROOT, "data"))
    expected = int((cli.predict_probs(model, x).argmax(axis=1) != y).sum())
    assert f"({expected} mistakes)" in out and "10000 images" in out
    assert 8000 < expected < 10000  # a two-class toy model gets most digits wrong


def test_info_reports_the_gpu_when_cupy_works(monkeypatch, capsys):
    import xpnet.backends as xb

    class FakeGpu:
        def memory_info(self):
            return {"gpu": "NVIDIA H100 80GB HBM3", "free_bytes": 80 * 2**30, "total_bytes": 85 * 2**30,
                    "cuda_runtime": 12060, "cupy": "14.0.1"}

    monkeypatch.setattr(xb, "available", lambda: ["numpy", "strict", "cupy"])
    monkeypatch.setattr(xb, "get_backend", lambda name: FakeGpu())
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert "backends: numpy, strict, cupy" in out
    assert ("GPU: NVIDIA H100 80GB HBM3, CUDA runtime 12.6, CuPy 14.0.1, memory 80.0 GiB free of "
            "85.0 GiB") in out


def test_evaluate_and_predict_take_the_dataset_from_the_run_folder(image_model, tmp_path, capsys):
    import json
    import shutil
    _, path = image_model
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(path, run / "model.npz")
    (run / "config.json").write_text(json.dumps({"dataset": "fashion-mnist"}))
    images = np.zeros((1, 28, 28), dtype=np.uint8)
    images[0, :14] = 255
    write_idx_images(tmp_path / "one.gz", images)
    assert cli.main(["predict", str(run / "model.npz"), str(tmp_path / "one.gz")]) == 0
    assert capsys.readouterr().out.startswith(f"{tmp_path / 'one.gz'}[0]: class T-shirt/top ")
    assert cli._run_dataset(str(run / "model.npz")) == "fashion-mnist"
    assert cli._run_dataset(path) is None


def test_closed_stdout_is_not_a_traceback():
    """`xpnet models | head -1`: the reader goes away early; no traceback."""
    proc = subprocess.Popen([sys.executable, "-m", "xpnet", "summary", "seed001-tf"], cwd=ROOT,
                            env=dict(os.environ, PYTHONPATH=ROOT), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) in (0, 1)
    assert "Traceback" not in err and "BrokenPipe" not in err


def test_gpu_without_cupy_is_a_clean_error(tmp_path, capsys):
    from xpnet.backends.cupy_backend import gpu_available
    if gpu_available():
        pytest.skip("a GPU works here")
    assert cli.main(["train", "--quick", "--device", "gpu", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("xpnet train: error:") and "pip install -e '.[cuda12]'" in err
    assert not os.listdir(tmp_path)


def _evaluate_err(capsys, argv):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    return err


def test_evaluate_refuses_a_model_that_does_not_fit_the_dataset_before_reading_it(tmp_path, capsys,
                                                                                 monkeypatch):
    """Several outputs (a broadcast ValueError before), another class count (a Dense(5) model on
    MNIST printed 'error 94.57%'), another image shape (cifar10 on an MNIST model went to download
    170 MB first): refused from the model and the dataset's metadata, no dataset file read."""
    from xpnet.graph import Input, Model
    from xpnet.layers import Flatten

    def no_load(*args, **kwargs):
        raise AssertionError("the dataset was loaded")
    monkeypatch.setattr(xpnet.datasets, "load", no_load)
    monkeypatch.setattr(xpnet.datasets, "find", no_load)
    inp = Input((1, 28, 28))
    h = Flatten()(inp)
    Model(inp, [Dense(10)(h), Dense(10)(h)], seed=1).save(tmp_path / "two.npz")
    xpnet.Sequential([Flatten(), Dense(5)], input_shape=(1, 28, 28)).save(tmp_path / "five.npz")
    xpnet.Sequential([Flatten()], input_shape=(1, 28, 28)).save(tmp_path / "flat.npz")
    xpnet.Sequential([Flatten(), Dense(10)], input_shape=(1, 28, 28)).save(tmp_path / "ten.npz")
    cases = [(["two.npz"], "the model has 2 outputs; evaluate needs one"),
             (["five.npz"], "the model gives 5 classes; mnist has 10"),
             (["five.npz", "--dataset", "cifar10"],
              "the cifar10 test images have shape (3, 32, 32) per image, but the model expects (1, 28, 28)"),
             (["flat.npz", "--dataset", "fashion-mnist"], "the model gives 784 classes; fashion-mnist has 10"),
             (["ten.npz", "--dataset", "cifar10"], "have shape (3, 32, 32) per image")]
    for argv, message in cases:
        err = _evaluate_err(capsys, ["evaluate", str(tmp_path / argv[0])] + argv[1:])
        assert err.startswith("xpnet evaluate: error: ") and message in err, err


def test_evaluate_reads_only_the_test_split(image_model, tmp_path, capsys):
    """With only the two t10k files in --data-dir evaluate works (it asked for the train files),
    and a truncated training file does not stop it."""
    import shutil
    model, path = image_model
    source = os.path.join(ROOT, "data", "mnist")
    data = tmp_path / "data"
    data.mkdir()
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        shutil.copy(os.path.join(source, name), data / name)
    assert cli.main(["evaluate", path, "--data-dir", str(data)]) == 0
    out = capsys.readouterr().out
    x, y = xpnet.datasets.load("mnist", data_dir=data, split="test")
    expected = int((cli.predict_probs(model, x).argmax(axis=1) != y).sum())
    assert f"({expected} mistakes)" in out and "10000 images" in out
    (data / "train-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b\x08\x00")   # truncated
    (data / "train-labels-idx1-ubyte.gz").write_bytes(b"")
    assert cli.main(["evaluate", path, "--data-dir", str(data)]) == 0
    assert f"({expected} mistakes)" in capsys.readouterr().out


def test_summary_of_folders_typos_and_model_files_with_a_dataset(image_model, tmp_path, capsys):
    """A run folder shows its model.npz (it was 'unknown model <folder>'), a folder without one
    says so, a missing MODEL.NPZ is a missing file (not a zoo name), a typo gets the close name,
    and --dataset with a model file is refused instead of silently ignored."""
    import shutil
    _, path = image_model
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(path, run / "model.npz")
    assert cli.main(["summary", str(run)]) == 0
    assert "flat_features (FlatFeatures)" in capsys.readouterr().out
    (tmp_path / "empty").mkdir()
    for argv, message in (
            ([str(tmp_path / "empty")], f"{tmp_path / 'empty'} is a folder with no model.npz in it"),
            ([str(tmp_path / "model.NPZ")], f"no such model file: {tmp_path / 'model.NPZ'}"),
            (["seed000-sgdx"], "unknown model 'seed000-sgdx'; did you mean seed000-sgd"),
            ([path, "--dataset", "cifar10"], "--dataset applies to zoo model names")):
        assert cli.main(["summary"] + argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("xpnet summary: error: ") and message in err and err.count("\n") == 1, err
    assert cli.main(["summary", "quick-mlp", "--dataset", "cifar10"]) == 0   # a zoo name takes it
    assert "(batch, 3, 32, 32)" in capsys.readouterr().out


def test_predict_refuses_a_dataset_whose_classes_the_model_does_not_give(tmp_path, capsys):
    """A 5-class model with --dataset mnist (10 classes) printed its classes as numbers without a
    word: the names asked for were dropped silently."""
    import matplotlib.image as mpimg
    from xpnet.layers import Flatten
    model = xpnet.Sequential([Flatten(), Dense(5)], input_shape=(1, 28, 28), seed=1)
    path = str(tmp_path / "five.npz")
    model.save(path)
    mpimg.imsave(tmp_path / "d.png", np.zeros((28, 28)), cmap="gray", vmin=0, vmax=1)
    assert cli.main(["predict", path, str(tmp_path / "d.png"), "--dataset", "mnist"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == (
        "xpnet predict: error: --dataset mnist has 10 classes, but the model gives 5: give the dataset "
        "the model was trained on, or drop --dataset (classes are then numbered)\n")
    assert cli.main(["predict", path, str(tmp_path / "d.png")]) == 0   # numbered without --dataset
    assert "class " in capsys.readouterr().out
