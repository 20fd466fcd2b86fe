"""The one Registry: registering, building from specs, and its error messages."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import ROOT
from lightyaml.config.checking import check_spec
from lightyaml.config.loading import Config
from utils import MODELS, ConfigError, Registry


def test_make_builds_and_runtime_args_override_without_mutating_the_spec() -> None:
    spec = {'name': 'mlp', 'args': {'in_dim': 64, 'hidden': [8], 'out_dim': 10}}
    snapshot = repr(spec)
    model = MODELS.make(spec, args={'out_dim': 3})
    assert model({'image': torch.zeros(2, 1, 8, 8)}).shape == (2, 3)
    assert repr(spec) == snapshot


def test_registering_a_name_twice_names_both_definitions() -> None:
    registry = Registry('widget')

    @registry.register('w')
    class First:
        pass

    with pytest.raises(ValueError) as error:
        @registry.register('w')
        class Second:
            pass
    message = str(error.value)
    assert message.startswith("widget 'w' is registered twice: ")
    assert 'test_registry.py' in message and 'First' in message and 'Second' in message


def test_unknown_name_lists_close_matches_and_everything_registered() -> None:
    with pytest.raises(ConfigError) as error:
        MODELS.get('mlpp')
    # The model zoos are counted, not listed: torchvision's 80 names, and timm's 1,371 where installed.
    zoos = [f'{zoo}.* ({count} models, see --list)' for zoo in ('torchvision', 'timm')
            if (count := sum(n.startswith(f'{zoo}.') for n in MODELS.names()))]
    assert zoos[0] == 'torchvision.* (80 models, see --list)'
    assert str(error.value) == (f"unknown model 'mlpp' (did you mean 'mlp'?); registered: "
                                f"{', '.join(MODELS.names(fallback=False) + zoos)}")


def test_spec_check_reports_file_and_key_path() -> None:
    cfg = Config({}, {'': 'configs/x.yaml'})
    problems: list[str] = []
    check_spec(MODELS, {'name': 'mlp', 'args': {'hiden': [8], 'in_dim': 'big', 'size': 3}},
               'train_wrapper.args.model_spec', cfg, problems)
    assert problems == [
        "configs/x.yaml: train_wrapper.args.model_spec.args.hiden: model 'mlp' does not take 'hiden' "
        "(did you mean 'hidden'?)",
        "configs/x.yaml: train_wrapper.args.model_spec.args.in_dim: expected int, got str 'big'",
        "configs/x.yaml: train_wrapper.args.model_spec.args.size: model 'mlp' does not take 'size'; "
        'it takes: in_dim, hidden, out_dim, dropout, input_key',
    ]


def test_a_new_file_in_models_is_registered_with_no_other_edit(tmp_path: Path) -> None:
    # A copy of the project, so the real models/ folder is never touched.
    copy = tmp_path / 'project'
    shutil.copytree(ROOT, copy, ignore=shutil.ignore_patterns('save', 'load', '.git', '__pycache__', 'tests'))
    (copy / 'models' / 'tiny.py').write_text(
        'from torch import nn\nfrom models import register\n\n\n'
        "@register('tiny')\nclass Tiny(nn.Linear):\n    pass\n")
    listed = subprocess.run([sys.executable, 'train_pl.py', '--list', 'models'], cwd=copy,
                            capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr
    # The project's own names, sorted, then the model zoos' (torchvision's, then timm's where installed).
    names = sorted(MODELS.names(fallback=False) + ['tiny']) + MODELS.fallback.names()
    assert listed.stdout.strip() == f"models: {', '.join(names)}"
