"""--diff A B: the config keys that differ between two experiments (or an experiment and a YAML
file), each value with where it came from, then their metrics side by side; exit status 0 when
the configs are the same, 1 when they differ, as `diff` does. --compare A B [C ...]: their curves
in one picture (lightyaml/run/results.py draws it, as --plot does) and their final and best values
in a CSV beside it. Lightning-free and torch-free; nothing is written into any experiment folder.
"""
from __future__ import annotations

import csv
import dataclasses
import io
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Optional

import yaml

from lightyaml.config.loading import DECIDED_AT_START, Config, dump_yaml, load_config, parse_yaml
from lightyaml.errors import PROJECT_ROOT, ConfigError, display_path
from lightyaml.launch.recorded import CommandReader
from lightyaml.run.experiment_dir import atomic_write, is_experiment_folder
from lightyaml.run.results import read_curves, render_curves
from lightyaml.run.run_state import RunState, final_metrics, read_run

ABSENT = '(absent)'   # a key one side does not have


@dataclasses.dataclass
class Side:
    """One side of --diff: an experiment (its config.yaml and state) or a YAML config file."""
    label: str
    values: dict                           # the config after a YAML round trip (1e-3 and 0.001 are one value)
    where: Callable[[str, Any], str]       # (key, value) -> the file or override that set it
    run: Optional[RunState] = None         # None for a YAML file


def experiment_path(target: str, flag: str, save_root: Path, files_too: bool = False) -> Path:
    """The experiment folder `target` names (a path, or a name under the save root); with
    `files_too`, a YAML file too. Anything else is one ConfigError line."""
    path = Path(target)
    if not path.exists() and (save_root / target).exists():
        path = save_root / target
    if path.is_dir():
        if not (path / 'config.yaml').is_file():
            raise ConfigError(f'{flag} {target}: no config.yaml there; is it an experiment folder?')
        return path
    if files_too and path.is_file():
        return path
    raise ConfigError(f"{flag} {target}: no such experiment folder{' or YAML file' if files_too else ''} "
                      f'(nor {display_path(save_root / target)})')


def diff_runs(a: str, b: str, save_root: Path) -> int:
    """Print where the configs of `a` and `b` differ, then their metrics; 1 if they differ, else 0."""
    left, right = (side(target, save_root) for target in (a, b))
    # A seed or thread count a YAML file leaves unset matches whatever a run decided (as --auto-resume has it).
    decided = left.run is None or right.run is None
    keys = differing(left.values, right.values, decided)
    lines = [f'--- {left.label}', f'+++ {right.label}'] if keys else [f'same config: {left.label} and {right.label}']
    for key, old, new in keys:
        shown = [(mark, flow(value), s.where(key, value) if value is not ABSENT else '')
                 for mark, value, s in (('-', old, left), ('+', new, right))]
        width = max(len(text) for _, text, _ in shown)
        lines += [f'{key}:', *(f"{mark} {text.ljust(width)}{f'  # {origin}' if origin else ''}"
                               for mark, text, origin in shown)]
    if keys:
        lines.append(f"{len(keys)} key{'s differ' if len(keys) > 1 else ' differs'}")
    print('\n'.join([*lines, '', *metrics_side_by_side([left, right])]))
    return 1 if keys else 0


def side(target: str, save_root: Path) -> Side:
    """An experiment folder or a YAML file, read for --diff."""
    path = experiment_path(target, '--diff', save_root, files_too=True)
    if path.is_file():
        cfg = load_config(path)
        return Side(display_path(path), normalized(cfg), lambda key, value: cfg.where(key))
    run = read_run(path)
    values = normalized(load_config(path / 'config.yaml'))
    replay = replayed(run, CommandReader())
    return Side(display_path(path), values, lambda key, value: origin(key, value, replay, run.path), run)


def normalized(cfg: Mapping) -> dict:
    """The config as YAML would read it back."""
    return parse_yaml(dump_yaml(dict(cfg)), 'config') or {}


def replayed(run: RunState, reader: CommandReader) -> Optional[tuple[Config, dict]]:
    """The run's config loaded again as its commands loaded it, to learn where each value came
    from: its --config file as copied into src/ (else as it is now), with the overrides of its first
    command and those of each --resume. None when that cannot be done."""
    parsed = reader.parsed(run)
    first = parsed[0] if parsed else None
    if first is None or not first.config:
        return None
    overrides = [*first.overrides, *(o for args in parsed[1:] if args is not None and args.resume
                                     for o in args.overrides)]
    given = Path(first.config)
    try:
        relative = given.relative_to(PROJECT_ROOT) if given.is_absolute() else given
    except ValueError:
        relative = None
    candidates = [run.path / 'src' / relative, PROJECT_ROOT / relative] if relative is not None else [given]
    for path in candidates:
        try:
            cfg = load_config(path, overrides)
        except ConfigError:
            continue
        return cfg, normalized(cfg)
    return None


def origin(key: str, value: Any, replay: Optional[tuple[Config, dict]], exp: Path) -> str:
    """Where an experiment's value of `key` came from: the file or override that sets it when its
    commands, replayed, give that value; else what config.yaml alone can say."""
    if replay is not None and value_at(replay[1], key) == value:
        return replay[0].where(key).removeprefix(f"{display_path((exp / 'src').resolve())}/")
    if key in DECIDED_AT_START:
        return 'decided when the run started'
    return 'config.yaml (its commands, replayed, do not give this value)'


def value_at(tree: Any, key: str) -> Any:
    """The value at a dotted key path (list items by index), or ABSENT."""
    node = tree
    for part in key.split('.'):
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return ABSENT
    return node


def differing(old: Any, new: Any, decided: bool, prefix: str = '') -> list[tuple[str, Any, Any]]:
    """[(key path, old value, new value), ...] where two configs differ, mapping by mapping and,
    for lists of specs of one length (callbacks, loggers), item by item; a list of plain values is
    one value (`hidden: [16]` vs `[512]`). `decided`: seed and threads unset on one side match."""
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        found = []
        for key in [*old, *(k for k in new if k not in old)]:
            a, b = old.get(key, ABSENT), new.get(key, ABSENT)
            if decided and not prefix and key in DECIDED_AT_START and (a in (None, ABSENT) or b in (None, ABSENT)):
                continue
            found += differing(a, b, decided, f'{prefix}.{key}' if prefix else str(key))
        return found
    if (isinstance(old, list) and isinstance(new, list) and len(old) == len(new)
            and any(isinstance(item, Mapping) for item in old + new)):
        return [d for i, (a, b) in enumerate(zip(old, new)) for d in differing(a, b, decided, f'{prefix}.{i}')]
    return [] if old == new else [(prefix, old, new)]


def flow(value: Any) -> str:
    """A value as YAML on one line: `0.001`, `[64, 64]`, `{name: ce}`."""
    if value is ABSENT:
        return ABSENT
    return yaml.safe_dump([value], default_flow_style=True, sort_keys=False, width=float('inf')).strip()[1:-1]


def metrics_side_by_side(sides: Sequence[Side]) -> list[str]:
    """State, epochs, best monitored value and final metrics of each side, in columns."""
    runs = [s.run for s in sides]
    finals = [final_metrics(run) if run else {} for run in runs]
    rows = [['', *(s.label for s in sides)],
            ['state', *(run.state if run else 'a config file' for run in runs)],
            ['epochs', *(f'{run.epochs}/{run.planned}' if run and run.planned else str(run.epochs) if run else '-'
                         for run in runs)],
            ['best', *(best_text(run) if run else '-' for run in runs)]]
    for key in sorted({k for final in finals for k in final}):
        rows.append([f'final {key}', *(f'{f[key]:.4f}' if key in f else '-' for f in finals)])
    return table(rows)


def compare_runs(targets: Sequence[str], out: Optional[str], save_root: Path) -> int:
    """--compare: one PNG of the runs' curves (each metric a panel, train dashed, val solid), and
    a CSV beside it of each run's state, epochs, best monitored value and final metrics."""
    if len(targets) < 2:
        raise ConfigError(f'--compare {targets[0]}: give two experiments or more (--plot draws the curves of one)')
    paths = [experiment_path(t, '--compare', save_root) for t in targets]
    png = compare_output(out, save_root)
    runs = [read_run(p) for p in paths]
    labels = [r.name if [x.name for x in runs].count(r.name) == 1 else f'{r.path.parent.name}/{r.name}' for r in runs]
    rows = comparison_rows(runs, labels)
    text = io.StringIO()
    csv.writer(text, lineterminator='\n').writerows(rows)
    atomic_write(png, render_curves([(label, read_curves(run.path)) for label, run in zip(labels, runs)]))
    atomic_write(png.with_suffix('.csv'), text.getvalue())
    print('\n'.join([*table([[cell or '-' for cell in row] for row in rows]), '',
                     f'wrote {display_path(png)} and {display_path(png.with_suffix(".csv"))}']))
    return 0


def comparison_rows(runs: Sequence[RunState], labels: Sequence[str]) -> list[list[str]]:
    """The CSV of --compare: a header, then one row per run."""
    finals = [final_metrics(run) for run in runs]
    keys = sorted({k for final in finals for k in final})
    rows = [['experiment', 'state', 'epochs', 'monitor', 'best', 'best_epoch', *(f'final {k}' for k in keys)]]
    for label, run, final in zip(labels, runs, finals):
        best = '' if run.best is None else f'{run.best:.6g}'
        rows.append([label, run.state, str(run.epochs), run.monitor or '', best,
                     '' if run.best_epoch is None else str(run.best_epoch),
                     *('' if k not in final else f'{final[k]:.6g}' for k in keys)])
    return rows


def compare_output(out: Optional[str], save_root: Path) -> Path:
    """Where --compare writes its PNG (its CSV beside it): --out, else <save-root>/compare.png;
    never inside an experiment folder."""
    png = Path(out) if out else save_root / 'compare.png'
    shown = f'--compare --out {out}' if out else f'--compare: {display_path(png)}'
    if png.suffix.lower() != '.png':
        raise ConfigError(f'{shown}: the picture is a PNG; give a name ending in .png (e.g. {png.with_suffix(".png")})')
    if png.is_dir():
        raise ConfigError(f'{shown}: is a folder; give a file name')
    if not png.resolve().parent.is_dir():
        raise ConfigError(f'{shown}: the folder {display_path(png.resolve().parent)} does not exist')
    for folder in png.resolve().parents:
        if is_experiment_folder(folder):
            raise ConfigError(f'{shown}: inside the experiment {display_path(folder)}, and --compare writes into '
                              f'no experiment; write it somewhere else (e.g. --out compare.png)')
    return png


def best_text(run: RunState) -> str:
    """`val/acc 0.9815 (epoch 12)`; `val/acc -` while it has no value; `-` without a monitor."""
    if not run.monitor:
        return '-'
    if run.best is None:
        return f'{run.monitor} -'
    at = f' (epoch {run.best_epoch})' if run.best_epoch is not None else ''
    return f'{run.monitor} {run.best:.4f}{at}'


def table(rows: Iterable[Sequence[str]]) -> list[str]:
    """Rows as left-aligned columns two spaces apart."""
    rows = [list(r) for r in rows]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ['  '.join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
