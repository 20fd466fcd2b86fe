"""The trial's side of a search. A search runs each trial as a process of its own, with
LIGHTYAML_TRIAL in its environment (the study's storage, name and trial); `validation_hook`
then reports the monitored metric to the study after every validation and says when the pruner
stops the trial. Lightning-free; optuna is imported only inside a trial.
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping
from typing import Any, Optional

from lightyaml.config.loading import dump_yaml
from lightyaml.run.experiment_dir import ExperimentDir, atomic_write

TRIAL_ENV = 'LIGHTYAML_TRIAL'
PRUNED_FILE = 'pruned.yaml'   # in a trial's folder: the pruner stopped it (read by the search)

# (epoch, epoch metrics) -> True to stop the run now; called on global rank 0 only.
ValidationHook = Callable[[int, Mapping[str, float]], bool]


def trial_environment(storage: str, study: str, trial_id: int, number: int, metric: str,
                      pruner: Mapping) -> dict[str, str]:
    """The environment variable that makes a run report to trial `number` of a study."""
    return {TRIAL_ENV: json.dumps({'storage': storage, 'study': study, 'trial_id': trial_id, 'number': number,
                                   'metric': metric, 'pruner': dict(pruner)})}


def validation_hook(exp: ExperimentDir) -> Optional[ValidationHook]:
    """In a search trial, the hook that reports to the study and asks its pruner; else None."""
    text = os.environ.get(TRIAL_ENV)
    if not text:
        return None
    spec = json.loads(text)
    trial: Any = None

    def on_validation(epoch: int, metrics: Mapping[str, float]) -> bool:
        nonlocal trial
        value = metrics.get(spec['metric'])
        if value is None or not math.isfinite(float(value)):
            return False
        if trial is None:   # connect at the first report: only rank 0 ever does
            import optuna  # optional: only for --search

            from lightyaml.launch.search_space import make_pruner, open_storage  # optuna: only inside a search trial
            study = optuna.load_study(study_name=spec['study'], storage=open_storage(spec['storage']),
                                      sampler=optuna.samplers.RandomSampler(), pruner=make_pruner(spec['pruner']))
            trial = optuna.trial.Trial(study, spec['trial_id'])
        trial.report(float(value), epoch)
        if not trial.should_prune():
            return False
        note = (f"pruned: trial {spec['number']} after epoch {epoch + 1}, {spec['metric']} {float(value):.4f} "
                f"({spec['pruner']['name']} pruner)")
        print(note, flush=True)
        exp.log(note)
        atomic_write(exp.path / PRUNED_FILE, dump_yaml({'trial': spec['number'], 'epoch': epoch,
                                                        'metric': spec['metric'], 'value': float(value),
                                                        'pruner': spec['pruner']}))
        return True
    return on_validation
