"""The README's measured numbers, rendered from the committed files that hold the measurements.

    python tools/readme_numbers.py           # rewrite the generated blocks of README.md
    python tools/readme_numbers.py --check   # exit 1 (and show the difference) if README.md differs

Sources (all committed): docs/runs/measurements.json names them and says when and where each
was measured: the quick run's result.json, the default model's speed run's result.json, the test
suite's last count, and the benchmark JSON files of benchmarks/results/. README.md holds each
generated block between ``<!-- generated:NAME -->`` and ``<!-- /generated:NAME -->``;
tests/test_readme_numbers.py fails when a block and its sources disagree, so the numbers cannot
drift from the measurements (re-measure, update the files, then run this script).
"""
import difflib
import json
import os
import re
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MEASUREMENTS = os.path.join("docs", "runs", "measurements.json")
MODEL_NAMES = {"big": "seed 001 32-64-96-128 CNN", "medium": "seed 001 16-32-48-64 CNN",
               "lenet5": "LeNet-5"}


def _json(root, path):
    with open(os.path.join(root, path)) as f:
        return json.load(f)


def _ms(seconds):
    ms = 1000.0 * seconds
    return f"{ms:.1f} ms" if ms < 100 else f"{ms:.0f} ms"


def _minutes(seconds):
    minutes = round(seconds / 60)
    return "1 minute" if minutes == 1 else f"{minutes} minutes"


def _hours(seconds):
    hours = seconds / 3600
    return f"{hours:.0f} hours" if hours >= 10 else f"{hours:.1f} hours"


def _recipe(name):
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)
    from xpnet import models
    return models.get(name).recipe


def speed_block(root, m):
    spec = m["default_speed"]
    result = _json(root, os.path.join(spec["run"], "result.json"))
    config = _json(root, os.path.join(spec["run"], "config.json"))
    recipe = _recipe(config["model"])  # the run may override epochs; the recipe's own count matters
    images = config["train_images"]
    seconds = result["seconds_per_epoch"]
    rate = images / seconds
    epoch = 60000 / rate
    bench = _json(root, spec["benchmark"])
    big = _cell(bench, "big", spec.get("batch_size", 128))
    best = big.get("batch_size", 128) / _medians(big)[0]
    return textwrap.fill(f"The default model on a CPU is slow. Trained with its recipe (batch {recipe['batch_size']}, "
            f"augmentation of every batch) on {images:,} images, it ran at {rate:.0f} images/s on "
            f"{spec['machine']}, on {spec['date']} (`{spec['run']}/`): one 60,000-image epoch would take "
            f"about {_minutes(epoch)} there and the recipe's up to {recipe['epochs']} epochs about "
            f"{_hours(epoch * recipe['epochs'])}. On an idle {bench['machine']['cores']}-core machine the "
            f"training step alone reached {best:.0f} images/s (batch {big.get('batch_size', 128)}, no "
            f"augmentation, {bench['date'][:10]}, `{spec['benchmark']}`): at least "
            f"{_minutes(60000 / best)} per epoch and {_hours(60000 / best * recipe['epochs'])} for "
            "the recipe. Every run prints its own measured estimate after 45 steps; `--time-limit "
            "MINUTES` ends a run in time (with its checkpoint and test result). It is the model the "
            "whole project exists to move onto a GPU.", 100, break_on_hyphens=False)


def _cell(data, model, batch=128):
    """The result of ``model`` at ``batch`` in a benchmarks/run.py JSON (older files hold one batch
    size for all models in settings; newer ones every model at several, each with its own)."""
    return next(r for r in data["results"]
                if r["model"] == model and r.get("batch_size", data["settings"]["batch_size"]) == batch)


def _medians(r):
    """(xpnet s, torch s, ratio) of a benchmark cell: the medians over its rounds where it has
    several (``--rounds``), else its one round's."""
    rounds = r.get("rounds")
    if not rounds or len(rounds) < 2:
        return r["xpnet"]["median_s"], r["torch"]["median_s"], r["ratio"]
    mid = sorted(rounds, key=lambda q: q["xpnet_s"])[len(rounds) // 2]["xpnet_s"]
    tid = sorted(rounds, key=lambda q: q["torch_s"])[len(rounds) // 2]["torch_s"]
    return mid, tid, r["ratio_median"]


def numbers_block(root, m):
    tests, quick = m["tests"], m["quick"]
    result = _json(root, os.path.join(quick["run"], "result.json"))
    config = _json(root, os.path.join(quick["run"], "config.json"))
    lines = [
        f"- Tests ({tests['date']}, {tests['machine']}): `make test` ran {tests['passed']:,} tests "
        f"({tests['skipped']} skipped; numpy and strict backends, PyTorch parity, gradient checks, "
        f"fuzzing, crash/resume) in {tests['seconds'] / 60:.0f} minutes; `make test-slow` runs the "
        f"{tests['deselected']} longer ones.",
        f"- `make train ARGS=\"--quick\"` ({quick['date']}, {quick['machine']}, `{quick['run']}/`): "
        f"{result['test_error_percent']:.2f} % test error ({result['mistakes']} mistakes) after "
        f"{result['epochs_run']} epochs of a 784-128-10 MLP on {config['train_images']:,} images, "
        f"{result['seconds_fit']:.0f} s of training, {result['seconds_total']:.0f} s in all.",
    ]
    lines = [textwrap.fill(line, 100, subsequent_indent="  ", break_on_hyphens=False) for line in lines]
    bench = m["benchmarks"]
    files = {path: _json(root, path) for path in {row["file"] for row in bench["rows"]}}
    first = files[bench["rows"][0]["file"]]
    lines += [
        textwrap.fill(f"- One training step at batch {bench['rows'][0].get('batch_size', 128)} against PyTorch "
                      f"in the same process ({first['date'][:10]}, {bench['machine']}; "
                      "`docs/benchmarks.md`):", 100, subsequent_indent="  ", break_on_hyphens=False),
        "",
        "  | model | threads | xpnet | PyTorch | ratio |",
        "  |---|---|---:|---:|---:|",
    ]
    for row in bench["rows"]:
        data = files[row["file"]]
        r = _cell(data, row["model"], row.get("batch_size", 128))
        xs, ts, ratio = _medians(r)
        lines.append(f"  | {MODEL_NAMES[r['model']]} | {data['settings']['threads']} | "
                     f"{_ms(xs)} | {_ms(ts)} | {ratio:.2f} |")
    return "\n".join(lines)


BLOCKS = {"speed": speed_block, "numbers": numbers_block}


def render(root=ROOT):
    m = _json(root, MEASUREMENTS)
    return {name: make(root, m) for name, make in BLOCKS.items()}


def apply(text, blocks):
    for name, body in blocks.items():
        pattern = re.compile(rf"(<!-- generated:{name} -->\n).*?(\n<!-- /generated:{name} -->)", re.S)
        if not pattern.search(text):
            raise SystemExit(f"README.md has no <!-- generated:{name} --> ... <!-- /generated:{name} --> block")
        text = pattern.sub(lambda mt: mt.group(1) + body + mt.group(2), text)
    return text


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    path = os.path.join(ROOT, "README.md")
    with open(path) as f:
        old = f.read()
    new = apply(old, render())
    if "--check" in argv:
        if new != old:
            sys.stdout.writelines(difflib.unified_diff(old.splitlines(True), new.splitlines(True),
                                                       "README.md", "README.md (from the measurements)"))
            return 1
        return 0
    if new != old:
        with open(path + ".tmp", "w") as f:
            f.write(new)
        os.replace(path + ".tmp", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
