"""timm's models by name, as torchvision's are (issue 25, point 7): `timm.<name>` trains in both
entry points, takes pretrained weights from a local file named in the config (nothing downloads),
reloads for --test, is listed by `--list models`, and its mistakes are one line naming the key.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import DIGITS, ROOT, RUNNERS, run_pl

timm = pytest.importorskip('timm')

# timm's smallest ResNet (its own test architecture, 0.4M parameters) on the 8x8 grey digits.
MODEL = 'train_wrapper.args.model_spec={name: timm.test_resnet, args: {num_classes: 10, in_chans: 1, input_size: 32}}'
FAST = ['trainer_params.max_epochs=1', 'data_module.args.batch_size=64']


def last(exp: Path) -> dict:
    return torch.load(exp / 'ckpt' / 'last.ckpt', map_location='cpu', weights_only=True)


@pytest.mark.parametrize('entry', RUNNERS)
def test_a_timm_model_trains_by_name_and_reloads_for_test(entry: str, save_root: Path) -> None:
    run = RUNNERS[entry]
    assert run(save_root, '--config', DIGITS, '--name', 'timm', MODEL, *FAST, 'trainer_params.max_epochs=4') == 0
    exp = save_root / 'timm'
    log = (exp / 'log.txt').read_text().splitlines()
    accuracy = float([line for line in log if line.startswith('epoch 4/4')][0].split('val: acc ')[1].split()[0])
    assert accuracy >= 0.85
    assert last(exp)['state_dict']['model.net.conv1.0.weight'].shape[1] == 1   # in_chans: 1
    assert run(save_root, '--test', str(exp)) == 0
    assert (exp / 'test.yaml').is_file()


def test_pretrained_weights_come_from_a_local_file(save_root: Path, tmp_path: Path) -> None:
    # A file of ImageNet-shaped weights (3 channels, 1000 classes), as downloaded from a model page.
    from safetensors.torch import save_file
    model = timm.create_model('test_resnet')
    theirs, parameters = model.state_dict(), dict(model.named_parameters())
    save_file(theirs, tmp_path / 'test_resnet.safetensors')
    weights = f'train_wrapper.args.model_spec.args.weights_file={tmp_path}/test_resnet.safetensors'
    assert run_pl(save_root, '--config', DIGITS, '--name', 'pre', MODEL, weights, *FAST,
                  'train_wrapper.args.optim_spec.args.lr=0') == 0   # lr 0: the loaded weights as they are
    ours = {k.removeprefix('model.net.'): v for k, v in last(save_root / 'pre')['state_dict'].items()}
    body = [k for k in parameters if not k.startswith(('conv1.0.', 'fc.'))]   # (batch norm statistics move)
    assert len(body) > 20 and all(torch.equal(ours[k], theirs[k]) for k in body)
    # timm's own adaptation: the grey stem sums the RGB kernels; a 10-class head starts fresh.
    assert torch.allclose(ours['conv1.0.weight'][:, 0], theirs['conv1.0.weight'].sum(1))
    assert ours['fc.weight'].shape == (10, theirs['fc.weight'].shape[1])


BAD = {
    'pretrained downloads': ('train_wrapper.args.model_spec.args.pretrained=true',
                             "ValueError: pretrained: true would download; give the weights as a "
                             "local file: weights_file: PATH"),
    'a missing weights file': ('train_wrapper.args.model_spec.args.weights_file=load/none.safetensors',
                               'FileNotFoundError: weights_file load/none.safetensors: no such file'),
    'an unknown name': ('train_wrapper.args.model_spec.name=timm.test_resnett',
                        "train_wrapper.args.model_spec.name: unknown model 'timm.test_resnett' (did you mean "
                        "'timm.test_resnet'"),
}


@pytest.mark.parametrize('case', BAD)
def test_a_timm_mistake_is_one_line_naming_the_key(case: str, save_root: Path, capsys: pytest.CaptureFixture) -> None:
    override, problem = BAD[case]
    for run in RUNNERS.values():
        assert run(save_root, '--config', DIGITS, MODEL, override, *FAST) == 2
        err = capsys.readouterr().err
        assert err.count('\n') == 1 and problem in err and 'train_wrapper.args.model_spec' in err, err
    assert not save_root.exists()


def test_list_models_shows_timm_s_names() -> None:
    done = subprocess.run([sys.executable, 'train_pl.py', '--list', 'models'], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    names = done.stdout.split(': ', 1)[1].strip().split(', ')
    timm_names = [n for n in names if n.startswith('timm.')]
    assert 'timm.test_resnet' in timm_names and 'timm.resnet18' in timm_names
    assert len(timm_names) == len(timm.list_models())
    assert 'torchvision.resnet18' in names and 'mlp' in names
