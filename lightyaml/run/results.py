"""What a run leaves besides its metrics: result.yaml and a closing log line, test.yaml,
predictions.csv, and the curves plotted from metrics.csv. Lightning-free.

A run's own curves.png is drawn in-process before the run exits, with Pillow (tens of
milliseconds), and written whole (under a temporary name, then renamed): the folder is final
when the command exits, and nothing the run started outlives it."""
from __future__ import annotations

import csv
import dataclasses
import io
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional

from lightyaml.config.checking import check_spec
from lightyaml.config.loading import Config, dump_yaml, parse_yaml
from lightyaml.errors import ConfigError, display_path
from lightyaml.registry import DATASETS, LOSSES, METRICS
from lightyaml.run.experiment_dir import ExperimentDir, atomic_write
from lightyaml.run.metrics_files import split_metric_key
from lightyaml.run.run_state import epoch_of, metric_curve

Curves = dict[str, dict[str, list[tuple[int, float]]]]   # {metric: {stage: [(epoch, value), ...]}}


def finish_run(exp: ExperimentDir, final: Mapping[str, float], monitor: Optional[str], best: Optional[float],
               best_checkpoint: Optional[Path]) -> None:
    """At the end of a run (global rank 0 only, as both entry points call it): result.yaml, the
    run's own curves.png, a closing log line. All written before it returns. `final` keeps the
    epoch-level metrics only (not the counters, nor `..._step` values), so that result.yaml has the
    same keys from either entry point."""
    final = {k: v for k, v in final.items() if split_metric_key(k) is not None}
    exp.write_result(final, monitor, best, best_checkpoint.name if best_checkpoint else None)
    write_own_curves(exp)
    line = done_line(exp, monitor, best, best_checkpoint)
    exp.log(line)
    print(line, flush=True)


def done_line(exp: ExperimentDir, monitor: Optional[str], best: Optional[float],
              best_checkpoint: Optional[Path]) -> str:
    """The line that ends a finished run, on the console and in log.txt, the same in both entry points:
    `done: best val/acc 0.9815 at epoch 12 -> save/digits (ckpt/epoch=11-step=480.ckpt, curves.png, result.yaml)`."""
    files = [f'{best_checkpoint.parent.name}/{best_checkpoint.name}'] if best_checkpoint else []
    files += [name for name in ('curves.png', 'result.yaml') if (exp.path / name).is_file()]
    what = ''
    if monitor and best is not None:
        epoch = epoch_of(metric_curve(exp.path / 'metrics.csv', monitor), best)
        what = f": best {monitor} {best:.4f}{f' at epoch {epoch}' if epoch else ''}"
    return f"done{what} -> {display_path(exp.path)} ({', '.join(files)})"


def write_own_curves(exp: ExperimentDir) -> None:
    """<exp>/curves.png from its metrics.csv, whole or not at all (a temporary file, then a rename).
    A picture is not worth a finished run: a failure is one line in log.txt and the run goes on."""
    try:
        curves = read_curves(exp.path)
        if curves:   # a run that logged nothing has no curves to draw
            atomic_write(exp.path / 'curves.png', render_curves([(exp.path.name, curves)]))
    except Exception as e:   # (any failure to draw: the run itself is done and kept)
        exp.log(f'curves.png not drawn: {type(e).__name__}: {e}')


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
    if isinstance(spec, str) and not Path(data).is_dir():   # a path, not a spec: say what is not there
        there = 'is a file, not a folder' if Path(data).exists() else 'no such folder'
        raise ConfigError(f'--data {data}: {there} ({display_path(Path(data).resolve())}); expected a folder of '
                          f"images or a dataset spec such as '{{name: digits, args: {{split: test}}}}'")
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
    if loader is None and not hasattr(data, 'specs'):   # a data module of the user's own
        raise ConfigError(f'{flag}: {type(data).__name__}.{stage}_dataloader() returned None; '
                          f'make it return the {stage} loader')
    if loader is None:
        raise ConfigError(f"{flag}: the experiment's data module has no {stage} split (data_module.args.{stage} "
                          f"is not set); add one as an override: data_module.args.{stage}='{{name: ..., args: ...}}'"
                          if stage == 'test' else f'{flag}: no data to predict on; give --data')
    if len(loader) == 0:
        raise ConfigError(f'{flag}: the {stage} data is empty')
    return loader


# Where --predict takes its data from when a data module has no predict_dataloader(): the split the
# default data module predicts on without --data (its test split, else the first validation set).
PREDICT_FALLBACKS = ('test', 'val')


def served_stage(data: Any, stage: str, cfg: Mapping, flag: str, defines: Optional[Any] = None) -> str:
    """Which of a data module's loaders serves `stage` ('test' or 'predict'): its own
    `<stage>_dataloader()`; for 'predict' without one, its test_dataloader(), else its
    val_dataloader(), said in a printed line; else one ConfigError line naming the missing method
    and what to do. `defines(name)` tells whether the module defines a method (Lightning's
    base class has them all, raising: train_pl.py passes its `is_overridden`)."""
    def has(name: str) -> bool:
        return defines(name) if defines is not None else callable(getattr(data, name, None))
    module = f"data module {cfg['data_module']['name']!r} ({type(data).__name__})"
    if has(f'{stage}_dataloader'):
        return stage
    if stage == 'test':
        raise ConfigError(f'{flag}: {module} has no test_dataloader(); add one to {type(data).__name__} '
                          f'that returns the test loader')
    for fallback in PREDICT_FALLBACKS:
        if has(f'{fallback}_dataloader'):
            print(f'{flag}: {module} has no predict_dataloader(); predicting on its {fallback}_dataloader() '
                  f'(add a predict_dataloader() to choose the data)')
            return fallback
    raise ConfigError(f'{flag}: {module} has no predict_dataloader(), nor a test_dataloader() or '
                      f'val_dataloader() to predict on instead; add a predict_dataloader() to {type(data).__name__}')


def predict_loader(data: Any, cfg: Mapping, data_flag: Optional[str], flag: str) -> tuple[Any, Any]:
    """The loader --predict runs on for a data module that is not a LightningDataModule, and the
    dataset behind it when its files name the rows: the default data module's --data (a spec or a
    folder), else its test split; any other data module's own loader (see `served_stage`), with
    --data refused in one line."""
    if hasattr(data, 'specs'):   # the default data module
        data.specs['predict'] = predict_spec(data_flag, cfg)
        return split_loader(data, 'predict', flag), data.dataset('predict')
    refuse_data_flag(data, cfg, data_flag)
    return split_loader(data, served_stage(data, 'predict', cfg, flag), flag), None


def refuse_data_flag(data: Any, cfg: Mapping, data_flag: Optional[str]) -> None:
    """--data is for the default data module's dataset specs; another data module gives its own data."""
    if data_flag is not None:
        raise ConfigError(f"--data: data module {cfg['data_module']['name']!r} ({type(data).__name__}) gives its "
                          f"own data (its predict_dataloader()); leave out --data")


# ------------------------------------------------------------------------------------ predictions.csv

# torch.nn's classification losses, by the names a config may give them.
CLASSIFYING_LOSSES = ('CrossEntropyLoss', 'NLLLoss')


def run_classifies(cfg: Mapping, classes: Optional[Sequence[str]]) -> bool:
    """Whether a run is known to classify, so that predictions.csv gives classes and probabilities:
    `predict.classify` when the config sets it; else a classes.yaml (`classes`), a classification
    loss (a loss class with `classifies = True`, as `ce`, or torch's CrossEntropyLoss/NLLLoss) or a
    torchmetrics classification metric that is not multilabel (Accuracy, F1Score, AUROC, ...)
    anywhere in `train_wrapper.args`."""
    explicit = (cfg.get('predict') or {}).get('classify')
    if explicit is not None:
        return bool(explicit)
    return bool(classes) or any(_classifying(spec) for spec in _specs_in((cfg.get('train_wrapper') or {}).get('args')))


def _specs_in(node: Any) -> Any:
    """Every `{name: ..., ...}` mapping below `node`, depth first."""
    if isinstance(node, Mapping):
        if isinstance(node.get('name'), str):
            yield node
        for value in node.values():
            yield from _specs_in(value)
    elif isinstance(node, list):
        for value in node:
            yield from _specs_in(value)


def _classifying(spec: Mapping) -> bool:
    """A spec of a classification loss or of a single-label torchmetrics classification metric."""
    name, args = spec['name'], spec.get('args') if isinstance(spec.get('args'), Mapping) else {}
    if name in CLASSIFYING_LOSSES or (name in LOSSES.names(fallback=False)
                                      and getattr(LOSSES.get(name), 'classifies', False)):
        return True
    if name in METRICS.names() and args.get('task') != 'multilabel' and not name.startswith('Multilabel'):
        return METRICS.get(name).__module__.startswith('torchmetrics.classification')
    return False


def prediction_columns(outputs: Sequence[Any], flag: str) -> dict[str, Any]:
    """predict_step's outputs, batch by batch (a list per loader when there are several), as
    {column prefix: N x D tensor}: a tensor is `out`, a dict's values their keys, a tuple's items
    `out0`, `out1`, ...; anything else is one ConfigError line."""
    import torch  # torch: outputs are tensors
    batches = [b for item in outputs for b in (item if isinstance(item, list) else [item])]
    def fields(batch: Any) -> dict[str, Any]:
        if isinstance(batch, torch.Tensor):
            return {'out': batch}
        if isinstance(batch, Mapping):
            return {str(k): v for k, v in batch.items()}
        if isinstance(batch, (tuple, list)):
            return {f'out{i}': v for i, v in enumerate(batch)}
        return {'': batch}
    columns: dict[str, list[Any]] = {}
    for batch in batches:
        for key, value in fields(batch).items():
            if not isinstance(value, torch.Tensor):
                raise ConfigError(f'{flag}: predict_step returned {type(value).__name__}'
                                  f"{f' at {key!r}' if key else ''}; predictions.csv is written from tensors "
                                  f'(or a dict or tuple of tensors), one row per sample')
            columns.setdefault(key, []).append(value.detach().cpu().reshape(len(value), -1) if value.dim()
                                               else value.detach().cpu().reshape(1, 1))
    if not columns:
        raise ConfigError(f'{flag}: predict_step returned no outputs (the data gave no batches)')
    joined = {key: torch.cat(parts) for key, parts in columns.items()}
    if len({len(v) for v in joined.values()}) > 1:
        raise ConfigError(f'{flag}: predict_step returned outputs of different lengths ('
                          + ', '.join(f'{k}: {len(v)}' for k, v in joined.items()) + '); one row per sample needs '
                          'one value or row of values per sample in each')
    return joined


def write_predictions(path: Path, outputs: Mapping[str, Any], dataset: Any, classes: Optional[Sequence[str]] = None,
                      classify: bool = False) -> Path:
    """predictions.csv from `prediction_columns`: one row per sample (its file for an image
    folder). A run that classifies (`run_classifies`) with one N x C output (C > 1) gets the
    predicted class, its name (from the experiment's classes.yaml) and its softmax probability;
    any other output is written value by value, `<prefix>_<j>` for value j of the flattened
    sample (`out_0`, `out_1`, ... for a single tensor)."""
    rows = next(iter(outputs.values()))
    files = getattr(dataset, 'files', None)
    with open(path, 'w', newline='') as f:
        writer = csv.writer(f)
        if classify and list(outputs) == ['out'] and rows.shape[1] > 1:
            probabilities = rows.float().softmax(1)
            named = classes is not None and len(classes) == rows.shape[1]
            writer.writerow(['index', *(['file'] if files else []), 'pred', *(['class'] if named else []), 'prob'])
            for i, (p, c) in enumerate(zip(*probabilities.max(1))):
                writer.writerow([i, *([files[i]] if files else []), int(c), *([classes[int(c)]] if named else []),
                                 f'{float(p):.6f}'])
        else:
            writer.writerow(['index', *(['file'] if files else []),
                             *[f'{key}_{j}' for key, value in outputs.items() for j in range(value.shape[1])]])
            values = [(value.float() if value.is_floating_point() else value).tolist() for value in outputs.values()]
            for i in range(len(rows)):
                writer.writerow([i, *([files[i]] if files else []), *(v for value in values for v in value[i])])
    print(f'wrote {len(rows)} predictions to {display_path(path)}')
    return path


def read_curves(exp: Path) -> Curves:
    """{metric: {stage: [(epoch, value), ...]}} from an experiment's metrics.csv (stage and metric
    from `split_metric_key`, so `train/loss` and `train_loss` are both train's loss; a value
    logged several times in an epoch, or an epoch logged again after a resume, keeps its last)."""
    if not (Path(exp) / 'metrics.csv').is_file():   # nothing was logged
        return {}
    with open(Path(exp) / 'metrics.csv', newline='') as f:
        return _curves_from_csv(f)


def _curves_from_csv(f: Any) -> Curves:
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


def render_curves(curves: Sequence[tuple[str, Curves]]) -> bytes:
    """The PNG of `plot_metrics` for [(experiment name, its read_curves()), ...]: one panel per metric
    (loss first), x the epoch from 1, train dashed, val solid, test a dot, experiments in colours, a
    legend of `<experiment> <stage>`. Pillow, not matplotlib: it imports in ~50 ms instead of ~1 s, so
    a run draws its own curves before it exits."""
    from PIL import Image, ImageDraw, ImageFont  # Pillow: only when a picture is drawn
    metrics = sorted({m for _, c in curves for m in c}, key=lambda m: (m != 'loss', m))
    width, height = _PANEL
    image = Image.new('RGB', (width * max(len(metrics), 1), height), 'white')
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=11 * _SCALE)
    for i, metric in enumerate(metrics):
        lines = [_Line(f'{name} {stage}', _COLOURS[c % len(_COLOURS)], stage,
                       [(e + 1, v) for e, v in points if math.isfinite(v)])   # a NaN or inf has no place on the axis
                 for c, (name, exp_curves) in enumerate(curves) for stage, points in exp_curves.get(metric, {}).items()]
        _draw_panel(draw, font, i * width, metric, lines)
    # Drawn at twice the size and shrunk: smooth lines and letters without an antialiasing renderer.
    image = image.resize((image.width // _SCALE, image.height // _SCALE), Image.Resampling.LANCZOS)
    png = io.BytesIO()
    image.save(png, format='png')
    return png.getvalue()


_SCALE = 2   # drawing scale (see render_curves)
_PANEL = (450 * _SCALE, 340 * _SCALE)   # one metric's panel, as matplotlib's 4.5 x 3.4 in at 100 dpi were
_MARGIN = (64 * _SCALE, 24 * _SCALE, 12 * _SCALE, 40 * _SCALE)   # left, top, right, bottom: ticks, title, label
_COLOURS = ('#1f77b4', '#ff7f0e', '#2ca02c', '#d62728', '#9467bd', '#8c564b', '#e377c2', '#7f7f7f', '#bcbd22',
            '#17becf')   # matplotlib's C0...C9, so pictures look as they used to


@dataclasses.dataclass
class _Line:
    label: str
    colour: str
    stage: str
    points: list[tuple[int, float]]   # (epoch from 1, value)


def _draw_panel(draw: Any, font: Any, x: int, title: str, lines: list[_Line]) -> None:
    """One metric's panel, its left edge at `x`: title, grid and ticks, the curves, the legend."""
    box = (x + _MARGIN[0], _MARGIN[1], x + _PANEL[0] - _MARGIN[2], _PANEL[1] - _MARGIN[3])
    epochs = [e for line in lines for e, _ in line.points] or [1]
    values = [v for line in lines for _, v in line.points] or [0.0]
    x_range = (min(epochs), max(max(epochs), min(epochs) + 1))
    y_range = _padded(min(values), max(values))

    def at(epoch: float, value: float) -> tuple[float, float]:
        return (box[0] + (epoch - x_range[0]) / (x_range[1] - x_range[0]) * (box[2] - box[0]),
                box[3] - (value - y_range[0]) / (y_range[1] - y_range[0]) * (box[3] - box[1]))

    grey, tick = '#e6e6e6', 4 * _SCALE
    for epoch, text in _ticks(*x_range, most=8, integer=True):
        px = at(epoch, y_range[0])[0]
        draw.line([(px, box[1]), (px, box[3] + tick)], fill=grey)
        draw.text((px, box[3] + tick + 2 * _SCALE), text, fill='black', font=font, anchor='mt')
    for value, text in _ticks(*y_range, most=6):
        py = at(x_range[0], value)[1]
        draw.line([(box[0] - tick, py), (box[2], py)], fill=grey)
        draw.text((box[0] - tick - 2 * _SCALE, py), text, fill='black', font=font, anchor='rm')
    draw.rectangle(box, outline='black', width=_SCALE)
    draw.text(((box[0] + box[2]) / 2, box[1] - 6 * _SCALE), title, fill='black', font=font, anchor='mb')
    draw.text(((box[0] + box[2]) / 2, _PANEL[1] - 4 * _SCALE), 'epoch', fill='black', font=font, anchor='mb')
    for line in lines:
        _draw_line(draw, [at(*p) for p in line.points], line)
    if lines:
        _draw_legend(draw, font, box, lines, [at(*p) for line in lines for p in line.points])


def _draw_line(draw: Any, points: list[tuple[float, float]], line: _Line) -> None:
    """One curve in its stage's style: train dashed, val (and any other stage) solid, test dots."""
    width, radius = 2 * _SCALE, 3 * _SCALE
    if line.stage == 'test' or len(points) == 1:   # a single point would be an invisible line
        for px, py in points:
            draw.ellipse([px - radius, py - radius, px + radius, py + radius], fill=line.colour)
    elif line.stage == 'train':
        dash, gap = 6 * _SCALE, 4 * _SCALE
        for (xa, ya), (xb, yb) in zip(points, points[1:]):
            length = math.hypot(xb - xa, yb - ya) or 1.0
            for start in range(0, int(length), dash + gap):
                end = min(start + dash, length)
                draw.line([(xa + (xb - xa) * start / length, ya + (yb - ya) * start / length),
                           (xa + (xb - xa) * end / length, ya + (yb - ya) * end / length)],
                          fill=line.colour, width=width)
    else:
        draw.line(points, fill=line.colour, width=width, joint='curve')


def _draw_legend(draw: Any, font: Any, box: tuple[int, ...], lines: list[_Line],
                 points: list[tuple[float, float]]) -> None:
    """`<experiment> <stage>` with a sample of each curve, in the corner of `box` that covers fewest points."""
    row, sample, pad = 14 * _SCALE, 22 * _SCALE, 5 * _SCALE
    width = sample + 3 * pad + max(int(draw.textlength(line.label, font=font)) for line in lines)
    height = row * len(lines) + pad
    corners = [(x, y) for y in (box[1] + pad, box[3] - pad - height) for x in (box[2] - pad - width, box[0] + pad)]
    left, top = min(corners, key=lambda c: sum(c[0] <= px <= c[0] + width and c[1] <= py <= c[1] + height
                                               for px, py in points))
    draw.rectangle([left, top, left + width, top + height], fill='white', outline='#cccccc')
    for i, line in enumerate(lines):
        y = top + pad + row * i + row // 2 - _SCALE
        _draw_line(draw, [(left + pad, y), (left + pad + sample, y)] if line.stage != 'test'
                   else [(left + pad + sample / 2, y)], line)
        draw.text((left + 2 * pad + sample, y), line.label, fill='black', font=font, anchor='lm')


def _padded(low: float, high: float) -> tuple[float, float]:
    """The y range: the values and 5% more each way (a flat curve gets room around its value)."""
    pad = (high - low) * 0.05 or max(abs(high) * 0.05, 0.01)
    return low - pad, high + pad


def _ticks(low: float, high: float, most: int, integer: bool = False) -> list[tuple[float, str]]:
    """Round values from `low` to `high`, 1, 2 or 5 times a power of ten apart, at most about `most`
    of them, each with its label."""
    raw = (high - low) / most
    power = 10 ** math.floor(math.log10(raw))
    step = next(s * power for s in (1, 2, 5, 10) if s * power >= raw)
    step = max(step, 1) if integer else step
    decimals = max(0, -math.floor(math.log10(step) + 1e-9))
    first = math.ceil(low / step - 1e-9) * step
    count = int((high - first) / step + 1e-9) + 1
    return [(first + i * step, f'{first + i * step:.{decimals}f}') for i in range(count)]
