"""What a run leaves besides its metrics: result.yaml and a closing log line, test.yaml,
predictions.csv, and the curves plotted from metrics.csv. Lightning-free.

A run's own curves.png is drawn by a detached process started as the run ends (importing
matplotlib and drawing take about 1.2 s, which the run no longer waits for): it appears a
moment after the command exits, written whole (under a temporary name, then renamed), into the
run's folder even if that folder is moved meanwhile. `wait_for_plots()` waits for it."""
from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional

from lightyaml.config.checking import check_spec
from lightyaml.config.loading import Config, dump_yaml, parse_yaml
from lightyaml.errors import PROJECT_ROOT, ConfigError, display_path
from lightyaml.registry import DATASETS
from lightyaml.run.experiment_dir import ExperimentDir, atomic_write
from lightyaml.run.metrics_files import split_metric_key

_plotters: list[subprocess.Popen] = []   # this process's background curves.png drawers


def finish_run(exp: ExperimentDir, final: Mapping[str, float], monitor: Optional[str], best: Optional[float],
               best_checkpoint: Optional[Path]) -> None:
    """At the end of a run (rank 0): result.yaml, the run's own curves.png, a closing log line."""
    exp.write_result(final, monitor, best, best_checkpoint.name if best_checkpoint else None)
    if read_curves(exp.path):   # a run that logged nothing has no curves to draw
        draw_curves_in_background(exp.path)
    if monitor and best is not None:
        exp.log(f'done: best {monitor} {best:.4f} ({best_checkpoint.name if best_checkpoint else "-"})')
    else:
        exp.log('done')


def record_test(exp: ExperimentDir, ckpt: Path, metrics: Mapping[str, float], ema: bool = False) -> None:
    """Print test metrics and keep them: test.yaml (per checkpoint, `<name> (ema)` for its averaged
    weights) and a line in log.txt."""
    values = {k: float(v) for k, v in sorted(metrics.items())}
    name = f'{ckpt.name} (ema)' if ema else ckpt.name
    which = f'{ckpt.name}, EMA weights' if ema else ckpt.name
    line = f'test ({which}): ' + '  '.join(f'{k} {v:.4f}' for k, v in values.items())
    print(line)
    exp.log(line)
    path = exp.path / 'test.yaml'
    tests = (parse_yaml(path.read_text(), str(path)) or {}) if path.is_file() else {}
    tests[name] = values
    atomic_write(path, dump_yaml(tests))


def predict_spec(data: Optional[str], cfg: Mapping) -> dict:
    """The dataset to predict on: a YAML spec, a folder of images (sized like the training images),
    or by default the config's test split."""
    args = cfg['data_module'].get('args') or {}
    val = args.get('val')
    if isinstance(val, Mapping) and 'name' not in val:   # several named validation sets: the first
        val = next(iter(val.values()), None)
    evaluation = args.get('test') or val
    if data is None:
        return evaluation
    if Path(data).is_dir():
        # Read like the evaluation images: their channels and size, then their transforms
        # (Normalize, ...) where they are applied image by image.
        reference = evaluation or args['train']
        reference_args = dict(reference.get('args') or {})
        transforms = reference_args.pop('transforms', None)
        sample = DATASETS.make({**reference, 'args': reference_args})[0]['image']
        return {'name': 'image_folder', 'args': {'root': str(Path(data).resolve()), 'channels': sample.shape[0],
                                                 'size': list(sample.shape[1:]), 'transforms': transforms}}
    spec = parse_yaml(data, '--data')
    if not isinstance(spec, Mapping) or 'name' not in spec:
        raise ConfigError(f'--data {data!r}: expected a folder of images or a dataset spec such as '
                          f"'{{name: digits, args: {{split: test}}}}'")
    problems: list[str] = []
    check_spec(DATASETS, spec, 'data', Config({}, {'': '--data'}), problems)
    if problems:
        raise ConfigError(*problems)
    return dict(spec)


def split_loader(data: Any, stage: str, flag: str) -> Any:
    """The loader of split `stage` ('test' or 'predict') for --test/--predict. A split the data
    module does not have, or a dataset that cannot be built or is empty, is one ConfigError line."""
    spec = getattr(data, 'specs', {}).get(stage, True)
    try:
        loader = getattr(data, f'{stage}_dataloader')() if spec else None
    except ConfigError:
        raise
    except Exception as e:
        raise ConfigError(f'{flag}: building the {stage} data failed: {type(e).__name__}: '
                          f'{str(e).strip().splitlines()[0] if str(e).strip() else ""}') from e
    if loader is None:
        raise ConfigError(f"{flag}: the experiment's data module has no {stage} split (data_module.args.{stage} "
                          f"is not set); add one as an override: data_module.args.{stage}='{{name: ..., args: ...}}'"
                          if stage == 'test' else f'{flag}: no data to predict on; give --data')
    if len(loader) == 0:
        raise ConfigError(f'{flag}: the {stage} data is empty')
    return loader


def write_predictions(path: Path, outputs: Any, dataset: Any, classes: Optional[Sequence[str]] = None) -> Path:
    """predictions.csv: one row per sample (its file for an image folder); for class scores the
    predicted class, its name (from the experiment's classes.yaml) and its probability, else the
    output values."""
    rows = outputs.float().flatten(1) if outputs.dim() > 1 else outputs.float().unsqueeze(1)
    files = getattr(dataset, 'files', None)
    with open(path, 'w', newline='') as f:
        writer = csv.writer(f)
        if outputs.dim() == 2 and outputs.shape[1] > 1:
            probabilities = rows.softmax(1)
            named = classes is not None and len(classes) == outputs.shape[1]
            writer.writerow(['index', *(['file'] if files else []), 'pred', *(['class'] if named else []), 'prob'])
            for i, (p, c) in enumerate(zip(*probabilities.max(1))):
                writer.writerow([i, *([files[i]] if files else []), int(c), *([classes[int(c)]] if named else []),
                                 f'{float(p):.6f}'])
        else:
            writer.writerow(['index', *(['file'] if files else []), *[f'out_{j}' for j in range(rows.shape[1])]])
            for i, row in enumerate(rows.tolist()):
                writer.writerow([i, *([files[i]] if files else []), *row])
    print(f'wrote {len(rows)} predictions to {display_path(path)}')
    return path



def read_curves(exp: Path) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """{metric: {stage: [(epoch, value), ...]}} from an experiment's metrics.csv (stage and metric
    from `split_metric_key`, so `train/loss` and `train_loss` are both train's loss; a value
    logged several times in an epoch, or an epoch logged again after a resume, keeps its last)."""
    if not (Path(exp) / 'metrics.csv').is_file():   # nothing was logged
        return {}
    with open(Path(exp) / 'metrics.csv', newline='') as f:
        return _curves_from_csv(f)


def _curves_from_csv(f: Any) -> dict[str, dict[str, list[tuple[int, float]]]]:
    curves: dict[str, dict[str, dict[int, float]]] = {}
    for row in csv.DictReader(f):
        for key, value in row.items():
            split = split_metric_key(key)
            if value and split and row.get('epoch'):
                stage, metric = split
                curves.setdefault(metric, {}).setdefault(stage, {})[int(row['epoch'])] = float(value)
    return {m: {st: sorted(v.items()) for st, v in stages.items()} for m, stages in curves.items()}


def plot_metrics(experiments: Sequence[Path], out: Optional[str | os.PathLike] = None) -> Path:
    """A PNG with one panel per metric (loss first): train dashed, val solid, test a dot;
    experiments overlaid in colours. Written to `out`, or <first experiment>/curves.png."""
    for exp in experiments:
        if not (Path(exp) / 'metrics.csv').is_file() and not (Path(exp) / 'config.yaml').is_file():
            raise ConfigError(f'--plot {exp}: no metrics.csv there; is it an experiment folder?')
    path = Path(out) if out else Path(experiments[0]) / 'curves.png'
    path.write_bytes(render_curves([(Path(exp).name, read_curves(exp)) for exp in experiments]))
    return path


def render_curves(curves: Sequence[tuple[str, dict[str, dict[str, list[tuple[int, float]]]]]]) -> bytes:
    """The PNG of `plot_metrics` for [(experiment name, its read_curves()), ...]."""
    import matplotlib  # matplotlib: only when a picture is drawn
    matplotlib.use('Agg')   # files only, no display
    import matplotlib.pyplot as plt  # matplotlib: only when a picture is drawn
    from matplotlib.ticker import MaxNLocator  # matplotlib: only when a picture is drawn
    metrics = sorted({m for _, c in curves for m in c}, key=lambda m: (m != 'loss', m))
    fig, axes = plt.subplots(1, max(len(metrics), 1), figsize=(4.5 * max(len(metrics), 1), 3.4), squeeze=False)
    styles = {'train': dict(linestyle='--'), 'val': dict(linestyle='-'), 'test': dict(marker='o', linestyle='')}
    for ax, metric in zip(axes[0], metrics):
        for colour, (name, exp_curves) in enumerate(curves):
            for stage, points in exp_curves.get(metric, {}).items():
                epochs, values = zip(*points)
                ax.plot([e + 1 for e in epochs], values, color=f'C{colour}', label=f'{name} {stage}',
                        **styles.get(stage, {}))
        ax.set_title(metric)
        ax.set_xlabel('epoch')
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize='small')
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, dpi=100, format='png')
    plt.close(fig)
    return png.getvalue()


def draw_curves_in_background(exp: Path) -> subprocess.Popen:
    """Start a detached process that draws <exp>/curves.png, as `plot_metrics([exp])` does. It
    works through an open handle on the folder, so the picture goes to this run even if the
    folder is moved (--overwrite) before it is done."""
    folder = os.open(exp, os.O_RDONLY | getattr(os, 'O_DIRECTORY', 0))
    try:
        code = (f'import sys; sys.path.insert(0, {str(PROJECT_ROOT)!r}); '
                f'from lightyaml.run.results import _draw_curves; _draw_curves({folder}, {Path(exp).name!r})')
        plotter = subprocess.Popen([sys.executable, '-c', code], pass_fds=(folder,), start_new_session=True,
                                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    finally:
        os.close(folder)
    _plotters.append(plotter)
    return plotter


def _draw_curves(folder: int, name: str) -> None:
    """In the background process: metrics.csv -> curves.png in the folder open as `folder`. Its
    output goes nowhere (the run may be over), so a failure is noted in log.txt."""
    try:
        _write_curves(folder, name)
    except Exception as e:   # (any failure of a picture must not go unnoticed)
        with os.fdopen(os.open('log.txt', os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644, dir_fd=folder), 'a') as f:
            f.write(f'curves.png not drawn: {type(e).__name__}: {e}\n')


def _write_curves(folder: int, name: str) -> None:
    with os.fdopen(os.open('metrics.csv', os.O_RDONLY, dir_fd=folder), newline='') as f:
        png = render_curves([(name, _curves_from_csv(f))])
    tmp = f'curves.png.{os.getpid()}.tmp'
    with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644, dir_fd=folder), 'wb') as f:
        f.write(png)
    os.replace(tmp, 'curves.png', src_dir_fd=folder, dst_dir_fd=folder)


def wait_for_plots(timeout: float = 120) -> None:
    """Wait until the curves.png drawings this process started are written (tests, scripts that
    read curves.png right after a run in the same process)."""
    while _plotters:
        _plotters.pop().wait(timeout)
