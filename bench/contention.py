"""Two runs at once (`python bench/run.py --only contention`): each copy's time per step beside
the other, against the least it can take (the same variant alone on one thread).

A CPU sweep, two users or a test suite beside a run all put two trainings on one machine. Per
workload and variant, each round runs one copy alone, one copy alone with one thread, then two
copies started together; each copy's median step is taken over the steps it made while the
other was also training (wall-clock step times of both), so start-up differences do not count as
sharing. The runs are longer than the step table's (CONTENTION_EPOCHS) so that the two trainings
overlap for seconds. `floor` is a script that sets nothing (torch's defaults). train.py and
train_pl.py fix their thread count before training and never change it (lightyaml/run/threads.py:
a run's numbers must not depend on what else runs), so two copies use the same count as one alone.

Two copies of work that keeps every core busy alone cannot each finish faster than one copy on
one core: "1 thread alone" is that bound, measured in the same round, and the target is each copy
within BOUND of it.
"""
from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Optional

VARIANTS = ('floor', 'train.py', 'train_pl.py')
CONTENTION_EPOCHS = {'mlp': 100, 'conv': 4}
BOUND = 1.15   # the target: each of two copies at most 1.15x its time alone on one thread
COLUMNS = ('workload', 'variant', 'alone ms/step', '1 thread alone', 'two at once ms/step (each copy)',
           'x alone (each copy)', 'x 1 thread alone (each copy)', 'steps side by side')


def overlapping_median(steps: list[float], other: list[float]) -> tuple[float, int]:
    """Median interval between consecutive steps (wall times) that both lie while `other` trains."""
    start, end = max(steps[0], other[0]), min(steps[-1], other[-1])
    inside = [t for t in steps if start <= t <= end]
    intervals = [b - a for a, b in zip(inside, inside[1:])]
    return (statistics.median(intervals), len(intervals)) if intervals else (float('nan'), 0)


def measure(rounds: int, specs: dict, run: Callable[[str, str, dict, str, Optional[int]], dict],
            log: Callable[[str], None]) -> dict[tuple[str, str], list[dict]]:
    """`run(variant, workload name, workload, tag, threads)` -> run_once's record (with 'wall_steps')."""
    results: dict[tuple[str, str], list[dict]] = {}
    for r in range(rounds):
        for name, spec in specs.items():
            for variant in VARIANTS:
                tag = f"contention-{name}-{variant.replace('.', '_')}-{r}"
                alone = run(variant, name, spec, f'{tag}-alone', None)
                one_thread = run(variant, name, spec, f'{tag}-alone-1-thread', 1)
                with ThreadPoolExecutor(max_workers=2) as pool:
                    pair = list(pool.map(lambda i: run(variant, name, spec, f'{tag}-copy{i}', None), (0, 1)))  # noqa: B023 (used at once)
                side = [overlapping_median(pair[i]['wall_steps'], pair[1 - i]['wall_steps']) for i in (0, 1)]
                overlap = min(n for _, n in side)   # both copies, or neither: one copy's figure compares nothing
                record = {'alone': alone['median'], 'one_thread': one_thread['median'],
                          'pair': [m if overlap else float('nan') for m, _ in side], 'overlap': overlap}
                results.setdefault((name, variant), []).append(record)
                log(f"round {r + 1}/{rounds} two at once {name:4} {variant:11} alone {alone['median'] * 1e3:.2f} "
                    f"ms/step (1 thread {one_thread['median'] * 1e3:.2f}), beside another "
                    f"{' and '.join(f'{m * 1e3:.2f}' for m in record['pair'])}")
    return results


def report(results: dict[tuple[str, str], list[dict]], rounds: int, judged: bool = True) -> str:
    """The table (medians over rounds) and the targets (the worse copy of each round; not for a
    --tiny run, which only checks that everything runs). A figure of copies that never trained at
    the same time is `-`."""
    lines = [f'Two runs at once: {rounds} rounds.', '', '| ' + ' | '.join(COLUMNS) + ' |',
             '| --- | --- |' + ' ---: |' * (len(COLUMNS) - 2)]
    for (name, variant), runs in results.items():
        alone, one_thread = (statistics.median(r[key] for r in runs) for key in ('alone', 'one_thread'))
        pair = [statistics.median(r['pair'][i] for r in runs) for i in (0, 1)]
        ratios = [statistics.median(r['pair'][i] / r['alone'] for r in runs) for i in (0, 1)]
        bounds = [statistics.median(r['pair'][i] / r['one_thread'] for r in runs) for i in (0, 1)]
        lines.append(f"| {name} | {variant} | {alone * 1e3:.2f} | {one_thread * 1e3:.2f} | {shown(pair, 1e3)} | "
                     f"{shown(ratios)} | {shown(bounds)} | {min(r['overlap'] for r in runs)} |")
    if not judged:
        return '\n'.join([*lines, '', 'Two-at-once targets: not judged (--tiny only checks that every run works)'])
    lines += ['', 'Two-at-once targets (the slower copy against one thread alone, median over rounds):']
    for (name, variant), runs in results.items():
        if variant == 'floor':
            continue
        worst = bound(runs)
        lines.append(f"- {variant} beside itself, {name}: {worst:.2f}x one thread alone (<= {BOUND}) "
                     f"{'met' if worst <= BOUND else 'NOT met'}")
    return '\n'.join(lines)


def shown(figures: list[float], scale: float = 1.0) -> str:
    """'1.23, 1.25'; `-` for a figure that could not be measured (NaN: the copies never overlapped)."""
    return ', '.join('-' if math.isnan(x) else f'{x * scale:.2f}' for x in figures)


def bound(runs: list[dict]) -> float:
    """Median over rounds of the slower copy's step / one thread alone (1.0: nothing lost to sharing)."""
    return statistics.median(max(r['pair']) / r['one_thread'] for r in runs)
