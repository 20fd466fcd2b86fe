"""A search's summary, drawn from its study's trials: summary.csv, summary.md, history.png (the
value of every trial and the best so far) and importance.png (Optuna's parameter importances).
Lightning-free; matplotlib draws offline."""
from __future__ import annotations

import csv
import warnings
from pathlib import Path
from typing import Any

from lightyaml.launch.search_space import SearchSpec
from lightyaml.launch.sweep import short_keys


def write_report(study: Any, folder: Path, spec: SearchSpec) -> str:
    """Write the summary files and plots of every trial of `study`; returns the markdown."""
    trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    short = short_keys([p.key for p in spec.params])
    header = ['trial', 'state', spec.metric, *short.values(), 'folder', 'note']
    rows = [[t.number, t.state.name, '' if t.value is None else t.value,
             *(t.params.get(key, '') for key in short), t.user_attrs.get('folder', ''), t.user_attrs.get('note', '')]
            for t in trials]
    with open(folder / 'summary.csv', 'w', newline='') as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    best = _best(study)
    lines = [f'{len(trials)} trials of study {study.study_name!r} ({spec.direction} {spec.metric}); '
             f'best: {"none yet" if best is None else f"trial {best.number}, {best.value:.4f}"}', '',
             f"| {' | '.join(header)} |", f"|{' --- |' * len(header)}"]
    for trial in trials:
        value = '' if trial.value is None else f'{trial.value:.4f}'
        params = [_cell(trial.params.get(key, '')) for key in short]
        cells = [str(trial.number), trial.state.name, value, *params, str(trial.user_attrs.get('folder', '')),
                 str(trial.user_attrs.get('note', ''))]
        lines.append(f"| {' | '.join(c.replace('|', '/') for c in cells)} |")
    markdown = '\n'.join(lines) + '\n'
    (folder / 'summary.md').write_text(markdown)
    plot_history(trials, spec, folder / 'history.png')
    plot_importance(study, short, folder / 'importance.png')
    return markdown


def _cell(value: Any) -> str:
    """A parameter value for the markdown table: floats in their shortest form."""
    return f'{value:g}' if isinstance(value, float) else str(value)


def _best(study: Any) -> Any:
    try:
        return study.best_trial
    except ValueError:   # no completed trial
        return None


def plot_history(trials: list, spec: SearchSpec, path: Path) -> None:
    """Each trial's value (complete: dots; pruned: crosses at their last report) and the best so far."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    complete = [(t.number, t.value) for t in trials if t.state.name == 'COMPLETE']
    pruned = [(t.number, t.intermediate_values[max(t.intermediate_values)]) for t in trials
              if t.state.name == 'PRUNED' and t.intermediate_values]
    if complete:
        ax.plot(*zip(*complete), 'o', label='complete')
        better = max if spec.direction == 'maximize' else min
        best, running = [], None
        for number, value in complete:
            running = value if running is None else better(running, value)
            best.append((number, running))
        ax.step(*zip(*best), where='post', label='best so far')
    if pruned:
        ax.plot(*zip(*pruned), 'x', color='grey', label='pruned (last report)')
    ax.set(xlabel='trial', ylabel=spec.metric, title=f'{spec.direction} {spec.metric}')
    if complete or pruned:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_importance(study: Any, short: dict[str, str], path: Path) -> None:
    """Optuna's importance of each parameter (its default evaluator, over the completed trials),
    as bars; a note instead while fewer than three trials have completed."""
    import optuna  # optional: only for --search
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 0.8 + 0.5 * max(len(short), 2)))
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    importances = {}
    if len(complete) >= 3:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')   # optuna warns of small samples; the bars say what they say
            importances = optuna.importance.get_param_importances(study)
    if importances:
        names = list(importances)[::-1]
        ax.barh([short.get(n, n) for n in names], [importances[n] for n in names])
        ax.set(xlabel='importance (share of the variation in the metric)', title='parameter importance')
    else:
        ax.text(0.5, 0.5, f'importances need 3 completed trials ({len(complete)} so far)', ha='center', va='center')
        ax.set_axis_off()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _pyplot() -> Any:
    import matplotlib  # matplotlib: only when a picture is drawn
    matplotlib.use('Agg')   # files only, no display
    import matplotlib.pyplot as plt  # matplotlib: only when a picture is drawn
    return plt
