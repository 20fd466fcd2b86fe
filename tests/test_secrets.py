"""Secrets are never written (issue 24, point 6) and no value injects a command into a generated
SLURM script (point 7). A password in a tracker URL (from the config or MLFLOW_TRACKING_URI), in a
`--storage` URL, or the value of a key named like a secret is `***` in every file a run or a search
writes and on the console; a rerun or `--resume` of such a folder asks for the secret again. Both
entry points wherever a run is involved."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Optional

import pytest

from conftest import DIGITS, QUIET, ROOT, RUNNERS, registering, server_that_hangs_up, snapshot
from lightyaml.config.secrets import mask_command, mask_secrets, mask_url
from lightyaml.errors import ConfigError
from lightyaml.launch.slurm import array_script, check_script_values

EPOCHS1 = 'trainer_params.max_epochs=1'


def free_port() -> int:
    """A port nothing listens on (a tracker or database there refuses at once)."""
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def fresh_secret(kind: str) -> str:
    """A value made at run time: the test's own text (copied into every run's src/) never holds it."""
    return f'{kind}-{uuid.uuid4().hex}'


def files_holding(folder: Path, *secrets: str) -> list[str]:
    """The files below `folder` whose bytes hold one of `secrets`."""
    return [name for name, data in snapshot(folder).items() if any(s.encode() in data for s in secrets)]


def error_lines(err: str) -> list[str]:
    """The `error:` lines a refused command printed; nothing else on stderr, no traceback."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert all(line.startswith('error: ') for line in lines) and 'Traceback' not in err, err[-2000:]
    return lines


# ------------------------------------------------------------------------------ the masking itself

def test_masking_examples() -> None:
    assert mask_url('postgresql://alice:s3cr@t@db.example.org:5432/study') == \
        'postgresql://alice:***@db.example.org:5432/study'
    assert mask_url('http://mlflow.example.org:5000') == 'http://mlflow.example.org:5000'   # nothing to hide
    config = {'loggers': [{'name': 'MLFlowLogger', 'args': {'tracking_uri': 'https://bob:pw@mlflow.local'}}],
              'data': {'hf_token': 'hf_123', 'apiKey': 42, 'tokenizer': 'bert', 'max_tokens': 512, 'password': None}}
    assert mask_secrets(config) == {
        'loggers': [{'name': 'MLFlowLogger', 'args': {'tracking_uri': 'https://bob:***@mlflow.local'}}],
        'data': {'hf_token': '***', 'apiKey': '***', 'tokenizer': 'bert', 'max_tokens': 512, 'password': None}}
    assert config['data']['hf_token'] == 'hf_123'   # a masked copy: the run still has the real value
    assert mask_command(['python', 'train.py', '--storage', 'postgresql://u:pw@h/db', 'data.args.api_key=k',
                         'loggers=[{name: WandbLogger, args: {secret: s, project: p}}]']) == [
        'python', 'train.py', '--storage', 'postgresql://u:***@h/db', 'data.args.api_key=***',
        'loggers=[{name: WandbLogger, args: {secret: ***, project: p}}]']


# -------------------------------------------------------------------- a run writes no secret at all

@pytest.fixture
def dead_trackers(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A tracker server that is not there fails at once; nothing reaches the home folder."""
    for var in ('WANDB_API_KEY', 'WANDB_MODE', 'MLFLOW_TRACKING_URI', 'MLFLOW_EXPERIMENT_NAME', 'LIGHTYAML_GROUP'):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv('MLFLOW_HTTP_REQUEST_MAX_RETRIES', '0')
    monkeypatch.setenv('MLFLOW_HTTP_REQUEST_TIMEOUT', '5')
    monkeypatch.setenv('MLFLOW_ALLOW_FILE_STORE', 'true')


@pytest.fixture
def failing_server() -> Iterator[int]:
    """The port of a tracker server that is up (the start-up check passes) but fails every request."""
    with server_that_hangs_up() as port:
        yield port


def digits_with_token() -> type:
    """The digits dataset behind a (fake) download token, as a dataset on a private hub takes one."""
    from datasets.digits import Digits

    class TokenDigits(Digits):
        def __init__(self, split: str = 'train', hf_token: Optional[str] = None) -> None:
            assert hf_token and hf_token != '***', 'the dataset gets the real token'
            super().__init__(split=split)
    return TokenDigits


@pytest.mark.parametrize('entry', RUNNERS)
def test_a_run_writes_its_secrets_nowhere_and_a_resume_asks_for_them_again(
        entry: str, save_root: Path, tmp_path: Path, dead_trackers: None, failing_server: int,
        monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture) -> None:
    pytest.importorskip('mlflow')
    from utils import DATASETS
    token, password, env_password = fresh_secret('token'), fresh_secret('pw'), fresh_secret('envpw')
    dead = f'127.0.0.1:{failing_server}'
    monkeypatch.setenv('MLFLOW_TRACKING_URI', f'http://carol:{env_password}@{dead}')   # loggers.2 takes it
    store = tmp_path / 'mlruns'   # loggers.0: a tracker that works and stores the config it is sent
    loggers = (f'loggers=[{{name: MLFlowLogger, args: {{tracking_uri: "file:{store}"}}}}, '
               f'{{name: MLFlowLogger, args: {{tracking_uri: "http://alice:{password}@{dead}"}}}}, '
               f'{{name: MLFlowLogger}}]')
    secret_overrides = [f'data_module.args.train={{name: token_digits, args: {{split: train, hf_token: {token}}}}}',
                        loggers]
    run = RUNNERS[entry]
    with registering((DATASETS, 'token_digits', digits_with_token())):
        assert run(save_root, '--config', DIGITS, '--name', 'private', EPOCHS1, *secret_overrides) == 0
        first = capfd.readouterr()
        exp = save_root / 'private'
        config = (exp / 'config.yaml').read_text()
        assert 'hf_token: \'***\'' in config and f'http://alice:***@{dead}' in config
        assert (exp / 'log.txt').read_text().splitlines()[0].startswith('command: python ')
        assert f'tracking_uri: "http://alice:***@{dead}"' in (exp / 'log.txt').read_text()
        warnings = [line for line in first.err.splitlines() if line.startswith('warning: logger')]
        assert len(warnings) == 2, first.err[-3000:]
        assert files_holding(exp, token, password, env_password) == []
        assert files_holding(store, token, password, env_password) == []
        assert token not in first.out + first.err and password not in first.out + first.err

        # Rerun or resume: config.yaml holds `***`, so the secrets are asked for again, nothing changed.
        before = snapshot(exp)
        assert run(save_root, '--resume', str(exp), 'trainer_params.max_epochs=2') == 2
        lines = error_lines(capfd.readouterr().err)
        assert [line.split(': ')[2] for line in lines] == ['data_module.args.train.args.hf_token',
                                                            'loggers.1.args.tracking_uri']
        assert lines[0] == (f'error: {exp}/config.yaml: data_module.args.train.args.hf_token: holds a masked secret '
                            f'(***: experiment folders never store secrets); give it again as an override '
                            f'of data_module.args.train.args.hf_token, or set it to null to let the library read '
                            f'it from the environment (e.g. MLFLOW_TRACKING_URI)')
        assert run(save_root, '--config', str(exp / 'config.yaml'), '--name', 'again') == 2
        assert len(error_lines(capfd.readouterr().err)) == 2 and not (save_root / 'again').exists()
        assert snapshot(exp) == before
        again = [f'data_module.args.train.args.hf_token={token}', f'loggers.1.args.tracking_uri=http://alice:{password}@{dead}']
        assert run(save_root, '--resume', str(exp), 'trainer_params.max_epochs=2', *again) == 0
    resumed = capfd.readouterr()
    assert 'resumed: python' in (exp / 'log.txt').read_text() and 'hf_token=***' in (exp / 'log.txt').read_text()
    assert files_holding(exp, token, password, env_password) == [] and files_holding(store, token, password) == []
    assert token not in resumed.out + resumed.err and password not in resumed.out + resumed.err


# ------------------------------------------------------------------------- searches and their storage

@pytest.mark.parametrize('entry', RUNNERS)
def test_a_refused_storage_is_one_line_with_the_password_masked_and_creates_nothing(
        entry: str, save_root: Path, capfd: pytest.CaptureFixture) -> None:
    pytest.importorskip('optuna')
    password = fresh_secret('pw')
    url = f'postgresql://searcher:{password}@127.0.0.1:{free_port()}/study'
    assert RUNNERS[entry](save_root, '--config', DIGITS, '--search', str(ROOT / 'configs' / 'digits-search.yaml'),
                          '--storage', url) == 2
    err = capfd.readouterr().err
    [line] = error_lines(err)
    assert line.startswith(f'error: --storage {url.replace(password, "***")}: cannot open it (OperationalError: ')
    assert 'Connection refused' in line and password not in err
    assert not save_root.exists()


def test_a_search_writes_no_secret_in_its_files(save_root: Path, tmp_path: Path, failing_server: int) -> None:
    """search.yaml, the study's database, each trial's folder and log: the tracker's password is `***`."""
    pytest.importorskip('optuna')
    pytest.importorskip('mlflow')
    password = fresh_secret('pw')
    search = tmp_path / 'search.yaml'
    search.write_text('n_trials: 1\nmetric: val/acc\ndirection: maximize\nsampler: {name: random, args: {seed: 0}}\n'
                      'params:\n  train_wrapper.args.optim_spec.args.lr: {float: [1e-3, 3e-3]}\n')
    tracker = f'loggers=[{{name: MLFlowLogger, args: {{tracking_uri: "http://dan:{password}@127.0.0.1:{failing_server}"}}}}]'
    env = {k: v for k, v in os.environ.items() if not k.startswith(('MLFLOW_', 'LIGHTYAML_'))}
    done = subprocess.run([sys.executable, str(ROOT / 'train.py'), '--config', DIGITS, '--name', 'private',
                           '--search', str(search), '--save-root', str(save_root), *QUIET, EPOCHS1, tracker],
                          capture_output=True, text=True, timeout=300,
                          env={**env, 'MLFLOW_HTTP_REQUEST_MAX_RETRIES': '0', 'MLFLOW_HTTP_REQUEST_TIMEOUT': '5'})
    assert done.returncode == 0, done.stderr[-2000:]
    folder = save_root / 'private-search'
    assert 'dan:***@127.0.0.1' in (folder / 'search.yaml').read_text()
    assert 'dan:***@127.0.0.1' in (folder / 'trial-000' / 'config.yaml').read_text()
    assert 'warning: logger loggers.0 (MLFlowLogger) failed' in (folder / 'logs' / 'trial-000.log').read_text()
    assert files_holding(folder, password) == [] and password not in done.stdout + done.stderr


def test_a_slurm_search_script_names_its_storage_without_the_password(save_root: Path,
                                                                      capfd: pytest.CaptureFixture) -> None:
    password = fresh_secret('pw')
    url = f'postgresql://searcher:{password}@db.example.org/study'
    assert RUNNERS['train.py'](save_root, '--config', DIGITS, '--search', str(ROOT / 'configs' / 'digits-search.yaml'),
                               '--storage', url, '--launcher', 'slurm') == 0
    out = capfd.readouterr().out
    script = (save_root / 'digits-search' / 'slurm.sh').read_text()
    summary = (save_root / 'digits-search' / 'summary.sh').read_text()
    assert '--storage postgresql://searcher@db.example.org/study' in script and password not in script + out
    assert '--storage postgresql://searcher@db.example.org/study --summarize' in summary and password not in summary
    assert 'PGPASSWORD' in out


# ------------------------------------------------------------------ point 7: no injection in slurm.sh

@pytest.mark.parametrize('entry', RUNNERS)
@pytest.mark.parametrize('flag, value, problem', [
    ('--sbatch', 'comment=x\ntouch PWNED', "error: --sbatch 'comment=x\\ntouch PWNED': holds a control character "
                                           "('\\n'); an #SBATCH line is one line of printable text"),
    ('--sweep', 'train_wrapper.args.target_key=a\ntouch PWNED,b',
     "error: --launcher slurm: the command value 'train_wrapper.args.target_key=a\\ntouch PWNED': holds a newline, "
     "which cannot go into the generated SLURM script; a value there is one line"),
])
def test_a_value_with_a_newline_is_refused_before_any_script_is_written(
        entry: str, flag: str, value: str, problem: str, save_root: Path, capfd: pytest.CaptureFixture) -> None:
    sweep = [] if flag == '--sweep' else ['--sweep', 'seed=0,1']
    assert RUNNERS[entry](save_root, '--config', DIGITS, *sweep, flag, value, '--launcher', 'slurm') == 2
    assert error_lines(capfd.readouterr().err) == [problem]
    assert not save_root.exists()


@pytest.mark.parametrize('bad', ['\n', '\r', '\0'])
def test_every_value_of_the_script_is_one_line(bad: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match='cannot go into the generated SLURM script'):
        check_script_values(tmp_path, [['train.py', f'x=a{bad}b']], [])
    with pytest.raises(ConfigError, match='holds a control character'):
        check_script_values(tmp_path, [['train.py']], [f'comment=a{bad}b'])


HOSTILE = "a'; touch PWNED #"


def test_a_quoted_hostile_value_reaches_the_child_intact(tmp_path: Path) -> None:
    """The generator's own quoting, run by bash: the child prints the argv it received."""
    code = 'import json, sys; print(json.dumps(sys.argv[1:]))'
    values = [HOSTILE, '$(touch PWNED)', '`touch PWNED`', 'two words', '"; touch PWNED; "']
    script = tmp_path / 'slurm.sh'
    script.write_text(array_script('hostile', tmp_path, [['-c', code, *values]], ['comment=a b $(touch PWNED)'], False))
    done = subprocess.run(['bash', str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                          env={**os.environ, 'SLURM_ARRAY_TASK_ID': '0'})
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == values
    assert not (tmp_path / 'PWNED').exists() and not (ROOT / 'PWNED').exists()


@pytest.mark.parametrize('entry', RUNNERS)
def test_a_sweep_script_run_by_bash_passes_a_hostile_value_on_as_one_argument(entry: str, save_root: Path,
                                                                               tmp_path: Path) -> None:
    """End to end: the entry point writes slurm.sh, bash runs its task 0 (no SLURM needed), the run
    refuses the key (no batch holds it) quoting the override exactly as given, and nothing ran."""
    assert not (ROOT / 'PWNED').exists()
    assert RUNNERS[entry](save_root, '--config', DIGITS, '--sweep', f'train_wrapper.args.target_key={HOSTILE}',
                          '--launcher', 'slurm') == 0
    folder = save_root / 'digits-sweep'
    done = subprocess.run(['bash', str(folder / 'slurm.sh')], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120, env={**os.environ, 'SLURM_ARRAY_TASK_ID': '0'})
    assert done.returncode == 2
    assert f'"train_wrapper.args.target_key={HOSTILE}"' in done.stderr, done.stderr[-2000:]
    # The summary job repeats the sweep's command line: the value reaches it intact too.
    summary = subprocess.run(['bash', str(folder / 'summary.sh')], cwd=tmp_path, capture_output=True, text=True,
                             timeout=120)
    assert summary.returncode == 0 and f'| {HOSTILE} | nan ± 0.0000 | 0/1 |' in summary.stdout, summary.stderr
    assert not (tmp_path / 'PWNED').exists() and not (ROOT / 'PWNED').exists()
    assert sorted(p.name for p in save_root.rglob('*')) == ['digits-sweep', 'slurm.sh', 'summary.csv',
                                                            'summary.md', 'summary.sh']
