"""What a run leaves besides its metrics: result.yaml and a closing log line, test.yaml,
predictions.csv, and the curves plotted from metrics.csv. Lightning-free."""
from __future__ import annotations

import csv
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional

from callbacks.experiment_dir import ExperimentDir, atomic_write
from callbacks.metrics_files import split_metric_key
from configs.checking import check_spec
from configs.loading import Config, dump_yaml, parse_yaml
from utils import DATASETS, ConfigError, display_path


def finish_run(exp: ExperimentDir, final: Mapping[str, float], monitor: Optional[str], best: Optional[float],
               best_checkpoint: Optional[Path]) -> None:
    """At the end of a run (rank 0): result.yaml, the run's own curves.png, a closing log line."""
    exp.write_result(final, monitor, best, best_checkpoint.name if best_checkpoint else None)
    if read_curves(exp.path):   # a run that logged nothing has no curves to draw
        plot_metrics([exp.path])
    if monitor and best is not None:
        exp.log(f'done: best {monitor} {best:.4f} ({best_checkpoint.name if best_checkpoint else "-"})')
    else:
        exp.log('done')


def record_test(exp: ExperimentDir, ckpt: Path, metrics: Mapping[str, float], ema: bool = False) -> None:
    """Print test metrics and keep them: test.yaml (per checkpoint, `<name> (ema)` for its averaged
    weights) and a line in log.txt."""
    values = {k: float(v) for k, v in sorted(metrics.items())}
    name = f'{ckpt.name} (ema)' if ema else ckpt.name
    line = f"test ({f'{ckpt.name}, EMA weights' if ema else ckpt.name}): " + '  '.join(f'{k} {v:.4f}' for k, v in values.items())
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
    curves: dict[str, dict[str, dict[int, float]]] = {}
    if not (Path(exp) / 'metrics.csv').is_file():   # nothing was logged
        return {}
    with open(Path(exp) / 'metrics.csv', newline='') as f:
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
    import matplotlib
    matplotlib.use('Agg')   # files only, no display
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator
    for exp in experiments:
        if not (Path(exp) / 'metrics.csv').is_file() and not (Path(exp) / 'config.yaml').is_file():
            raise ConfigError(f'--plot {exp}: no metrics.csv there; is it an experiment folder?')
    curves = {Path(exp): read_curves(exp) for exp in experiments}
    metrics = sorted({m for c in curves.values() for m in c}, key=lambda m: (m != 'loss', m))
    fig, axes = plt.subplots(1, max(len(metrics), 1), figsize=(4.5 * max(len(metrics), 1), 3.4), squeeze=False)
    styles = {'train': dict(linestyle='--'), 'val': dict(linestyle='-'), 'test': dict(marker='o', linestyle='')}
    for ax, metric in zip(axes[0], metrics):
        for colour, (exp, exp_curves) in enumerate(curves.items()):
            for stage, points in exp_curves.get(metric, {}).items():
                epochs, values = zip(*points)
                ax.plot([e + 1 for e in epochs], values, color=f'C{colour}', label=f'{exp.name} {stage}',
                        **styles.get(stage, {}))
        ax.set_title(metric)
        ax.set_xlabel('epoch')
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize='small')
    fig.tight_layout()
    path = Path(out) if out else Path(experiments[0]) / 'curves.png'
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
