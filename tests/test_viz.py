"""Plots are written headless as PNG files of the documented pixel size."""
import numpy as np
import pytest

from xpnet import viz
from xpnet.errors import ConfigError, ShapeError

mpimg = pytest.importorskip("matplotlib.image")


def read_png(path, kind):
    """Read a written plot back; check it is a PNG of SIZES[kind] x DPI pixels, not blank."""
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    img = mpimg.imread(path)
    w, h = viz.SIZES[kind]
    assert img.shape[:2] == (round(h * viz.DPI), round(w * viz.DPI))
    assert img[..., :3].std() > 0.01  # something was drawn
    return img


@pytest.fixture
def drawn(monkeypatch):
    """The figures the plot functions save, in order (to read back what each one drew)."""
    figures, save = [], viz._save

    def keep(fig, path):
        figures.append(fig)
        return save(fig, path)
    monkeypatch.setattr(viz, "_save", keep)
    return figures


def test_history_plots_each_series_in_its_panel_by_epoch(tmp_path, drawn):
    """Loss and accuracy in their own panels, training and validation labelled as such, epochs
    numbered from 1, a missing value (None) a gap at its own epoch, not a shift of the ones after."""
    logs = {"loss": [1.0, 0.5, 0.3], "val_loss": [1.1, None, 0.6], "accuracy": [0.5, 0.8, 0.9]}
    viz.plot_history(logs, tmp_path / "curves.png")
    (fig,) = drawn
    panels = {ax.get_title(): ax for ax in fig.axes}
    assert sorted(panels) == ["Accuracy", "Loss"]
    expected = {"Loss": {"training": [1.0, 0.5, 0.3], "validation": [1.1, np.nan, 0.6]},
                "Accuracy": {"training": [0.5, 0.8, 0.9]}}
    for title, series in expected.items():
        ax = panels[title]
        assert ax.get_xlabel() == "epoch"
        lines = {line.get_label(): line for line in ax.lines}
        assert sorted(lines) == sorted(series), (title, sorted(lines))
        assert [t.get_text() for t in ax.get_legend().get_texts()] == list(series)
        for label, values in series.items():
            np.testing.assert_array_equal(lines[label].get_xdata(), [1, 2, 3], err_msg=(title, label))
            np.testing.assert_array_equal(lines[label].get_ydata(), values, err_msg=(title, label))


def test_history_from_dict_and_history_object(tmp_path):
    from xpnet.callbacks import History
    logs = {"loss": [1.0, 0.5, 0.3], "val_loss": [1.1, 0.7, None], "accuracy": [0.5, 0.8, 0.9]}
    out = viz.plot_history(logs, tmp_path / "a" / "curves.png")
    assert out == str(tmp_path / "a" / "curves.png")
    read_png(out, "history")
    h = History()
    for e, v in enumerate(logs["loss"]):
        h.on_epoch_end(e, {"loss": v, "accuracy": 0.5 + e / 10})
    read_png(viz.plot_history(h, tmp_path / "h.png"), "history")
    with pytest.raises(ConfigError, match="History"):
        viz.plot_history({}, tmp_path / "x.png")


def test_confusion_matrix(tmp_path):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 10, 200)
    pred = np.where(rng.random(200) < 0.8, y, rng.integers(0, 10, 200))
    img = read_png(viz.plot_confusion_matrix(y, pred, tmp_path / "c.png",
                                             class_names=[f"c{i}" for i in range(10)]), "confusion")
    one_hot = np.eye(10)[pred]  # rows are accepted too
    other = read_png(viz.plot_confusion_matrix(y, one_hot, tmp_path / "c2.png",
                                               class_names=[f"c{i}" for i in range(10)]), "confusion")
    np.testing.assert_array_equal(img, other)
    # the predictions are drawn: without its 47 mistakes the picture is another
    perfect = read_png(viz.plot_confusion_matrix(y, y, tmp_path / "c3.png",
                                                 class_names=[f"c{i}" for i in range(10)]), "confusion")
    assert not np.array_equal(img, perfect)
    with pytest.raises(ShapeError, match="200 labels but y_pred has 3"):
        viz.plot_confusion_matrix(y, pred[:3], tmp_path / "bad.png")
    with pytest.raises(ShapeError, match="integer class ids"):
        viz.plot_confusion_matrix(y.astype(float), pred, tmp_path / "bad.png")


def test_confusion_matrix_counts_true_rows_against_predicted_columns(tmp_path, drawn):
    """Row = true class, column = predicted class, each cell's count written in it, the class names
    on the axes and the number of samples and errors in the title."""
    y = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
    pred = np.array([0, 1, 1, 1, 1, 2, 0, 2, 2])
    viz.plot_confusion_matrix(y, pred, tmp_path / "c.png", class_names=["zero", "one", "two"])
    counts = [[1, 2, 0],   # true 0: once right, twice taken for 1
              [0, 2, 0],
              [1, 0, 3]]   # true 2: once taken for 0
    ax = drawn[0].axes[0]
    np.testing.assert_array_equal(ax.images[0].get_array(), counts)
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("predicted", "true")
    assert ax.get_title() == "9 samples, 3 errors"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["zero", "one", "two"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["zero", "one", "two"]
    cells = {(round(t.get_position()[1]), round(t.get_position()[0])): t.get_text() for t in ax.texts}
    assert cells == {(i, j): str(counts[i][j]) for i in range(3) for j in range(3)}


def test_misclassified_grid_gray_rgb_and_none(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (40, 1, 28, 28)).astype(np.uint8)
    y = rng.integers(0, 10, 40)
    pred = (y + (rng.random(40) < 0.5)) % 10
    read_png(viz.plot_misclassified(x, y, pred, tmp_path / "m.png", n=25), "grid")
    rgb = rng.random((6, 3, 32, 32))
    read_png(viz.plot_mistakes(rgb, y[:6], (y[:6] + 1) % 10, tmp_path / "rgb.png",
                               class_names=list("abcdefghij")), "grid")
    read_png(viz.plot_misclassified(x, y, y, tmp_path / "none.png"), "grid")
    with pytest.raises(ShapeError, match="must match"):
        viz.plot_misclassified(x[:5], y, pred, tmp_path / "bad.png")


def test_conv_filters_from_model_and_array(tmp_path):
    from xpnet import models
    model = models.get("seed001-m9").build()
    read_png(viz.plot_conv_filters(model, tmp_path / "f.png"), "grid")
    read_png(viz.plot_conv_filters(np.random.default_rng(2).normal(size=(16, 3, 5, 5)),
                                   tmp_path / "rgb.png"), "grid")
    with pytest.raises(ConfigError, match="no layer with a 4-D weight"):
        viz.plot_conv_filters(models.get("seed002-logreg-none").build(), tmp_path / "x.png")
    with pytest.raises(ShapeError, match="4-D"):
        viz.plot_conv_filters(np.ones((3, 3)), tmp_path / "x.png")


def test_class_weights_logreg_and_mlp_last_layer(tmp_path, backend):
    from xpnet import models
    logreg = models.get("seed002-logreg-l2").build(device=backend)
    read_png(viz.plot_class_weights(logreg, tmp_path / "w.png"), "weights")
    mlp = models.get("seed002-mlp-l1").build(device=backend)  # last layer: 784 hidden -> 10
    read_png(viz.plot_class_weights(mlp.layers[-1].params["W"], tmp_path / "w2.png"), "weights")
    with pytest.raises(ShapeError, match="do not form an image"):
        viz.plot_class_weights(np.ones((100, 10)), tmp_path / "x.png")


def test_a_plot_failing_while_drawn_leaves_the_earlier_file_whole(tmp_path, monkeypatch):
    """curves.png is redrawn after every run and resume: an error (or a kill) while the PNG is
    drawn must leave the earlier picture, not half a file, and no temporary file beside it."""
    from matplotlib.figure import Figure
    path = viz.plot_history({"loss": [1.0, 0.5]}, tmp_path / "curves.png")
    before = open(path, "rb").read()
    savefig = Figure.savefig

    def cut_short(self, fname, **kwargs):   # half the PNG, then the drawing fails
        import io
        buf = io.BytesIO()
        savefig(self, buf, **kwargs)
        data = buf.getvalue()
        if hasattr(fname, "write"):
            fname.write(data[:len(data) // 2])
        else:
            with open(fname, "wb") as f:
                f.write(data[:len(data) // 2])
        raise RuntimeError("drawing failed")
    monkeypatch.setattr(Figure, "savefig", cut_short)
    with pytest.raises(RuntimeError, match="drawing failed"):
        viz.plot_history({"loss": [1.0, 0.5, 0.25]}, path)
    assert open(path, "rb").read() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curves.png"]
