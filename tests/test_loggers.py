"""Experiment trackers in the `loggers` section, with the real libraries: a real MLflow server,
MLflow's file store, W&B offline; one run across a resume; a failing tracker costs one warning.
Also what a LightningModule gets as `self.logger.experiment` (tb/'s writer) and `log_samples`."""
from __future__ import annotations

import csv
import glob
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import DIGITS, QUIET, ROOT, RUNNERS, run_pl, run_py, server_that_hangs_up
from lightyaml.config.loading import parse_yaml

EPOCHS2 = 'trainer_params.max_epochs=2'


@pytest.fixture(autouse=True)
def offline_trackers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No tracker reaches the internet or the home folder; a dead server fails at once."""
    for var in ('WANDB_API_KEY', 'WANDB_MODE', 'WANDB_PROJECT', 'MLFLOW_TRACKING_URI', 'MLFLOW_EXPERIMENT_NAME',
                'LIGHTYAML_GROUP'):
        monkeypatch.delenv(var, raising=False)
    for var in ('WANDB_CONFIG_DIR', 'WANDB_CACHE_DIR', 'WANDB_DATA_DIR'):
        monkeypatch.setenv(var, str(tmp_path / 'wandb-home'))
    monkeypatch.setenv('WANDB_SILENT', 'true')
    monkeypatch.setenv('MLFLOW_HTTP_REQUEST_MAX_RETRIES', '0')
    monkeypatch.setenv('MLFLOW_HTTP_REQUEST_TIMEOUT', '10')


def csv_rows(exp: Path) -> list[dict]:
    with open(exp / 'metrics.csv') as f:
        return list(csv.DictReader(f))


def val_acc(exp: Path) -> list[float]:
    """val/acc per epoch, from the folder's own metrics.csv."""
    return [float(r['val/acc']) for r in csv_rows(exp) if r['val/acc']]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen]]:
    """A real `mlflow server` on 127.0.0.1 with a SQLite store in tmp_path; always stopped."""
    pytest.importorskip('mlflow')
    port = free_port()
    store = tmp_path / 'mlflow-server'
    store.mkdir()
    log = open(store / 'server.log', 'w')
    server = subprocess.Popen(
        [sys.executable, '-m', 'mlflow', 'server', '--backend-store-uri', f'sqlite:///{store / "db.sqlite"}',
         '--artifacts-destination', str(store / 'artifacts'), '--host', '127.0.0.1', '--port', str(port),
         '--workers', '1'], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f'http://127.0.0.1:{port}'
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                urllib.request.urlopen(f'{url}/health', timeout=2)
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f'mlflow server did not start: {(store / "server.log").read_text()[-2000:]}')
                time.sleep(0.5)
        yield url, server
    finally:
        stop_server(server)
        log.close()


def stop_server(server: subprocess.Popen) -> None:
    """Stop the server and the workers it started (its own process group)."""
    if server.poll() is None:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
    try:
        os.killpg(server.pid, signal.SIGKILL)   # workers left behind
    except ProcessLookupError:
        pass


def mlflow_run(tracking_uri: str) -> Any:
    """The only run of the tracking store, read back with MlflowClient."""
    from mlflow.tracking import MlflowClient
    client = MlflowClient(tracking_uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == 1, [r.info.run_name for r in runs]
    return client, runs[0]


def history(client: Any, run: Any, key: str) -> list[float]:
    return [m.value for m in sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)]


@pytest.mark.slow
def test_mlflow_server_gets_config_and_curves_and_one_run_across_resume_and_survives_its_death(
        mlflow_server: tuple[str, subprocess.Popen], save_root: Path, monkeypatch: pytest.MonkeyPatch,
        capfd: pytest.CaptureFixture) -> None:
    import pytorch_lightning as pl

    from utils import CALLBACKS
    url, server = mlflow_server
    logger = f'loggers=[{{name: MLFlowLogger, args: {{tracking_uri: "{url}"}}}}]'
    assert run_pl(save_root, '--config', DIGITS, '--name', 'tracked', EPOCHS2, logger) == 0
    exp = save_root / 'tracked'
    client, run = mlflow_run(url)
    # The run is named after the experiment, in the default experiment; the merged config is its params.
    assert run.info.run_name == 'tracked' and run.info.status == 'FINISHED'
    assert client.get_experiment(run.info.experiment_id).name == 'lightyaml'
    params = run.data.params
    assert params['seed'] == '0' and params['trainer_params/max_epochs'] == '2'
    assert params['train_wrapper/args/optim_spec/args/lr'] == '0.003'
    assert params['train_wrapper/args/model_spec/name'] == 'mlp'
    # One point per epoch, the same values as the folder's metrics.csv.
    assert history(client, run, 'val/acc') == pytest.approx(val_acc(exp)) and len(val_acc(exp)) == 2
    assert parse_yaml((exp / 'trackers.yaml').read_text(), 'trackers.yaml')['loggers.0'] == {
        'name': 'MLFlowLogger', 'group': None, 'run_id': run.info.run_id}

    # --resume continues the same tracker run: one line of 3 points, not two runs.
    assert run_pl(save_root, '--resume', str(exp), 'trainer_params.max_epochs=3') == 0
    client, resumed = mlflow_run(url)
    assert resumed.info.run_id == run.info.run_id and resumed.info.status == 'FINISHED'
    assert history(client, resumed, 'val/acc') == pytest.approx(val_acc(exp)) and len(val_acc(exp)) == 3
    assert resumed.data.params == params   # logged once

    # The server goes away after epoch 4 of 5: one warning, training goes on, the folder's logs complete.
    class StopServer(pl.Callback):   # registered for this test only
        def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            if trainer.current_epoch == 4:
                stop_server(server)
    monkeypatch.setitem(CALLBACKS._classes, 'stop_server', StopServer)
    capfd.readouterr()
    assert run_pl(save_root, '--resume', str(exp), 'trainer_params.max_epochs=5',
                  'callbacks=[{name: stop_server}]') == 0
    err = capfd.readouterr().err
    warnings = [line for line in err.splitlines() if line.startswith('warning: logger')]
    assert (len(warnings) == 1
            and warnings[0].startswith('warning: logger loggers.0 (MLFlowLogger) failed (')), err[-3000:]
    assert 'training goes on' in warnings[0]
    assert len(val_acc(exp)) == 5 and [int(r['epoch']) for r in csv_rows(exp) if r['val/acc']] == [0, 1, 2, 3, 4]
    log = (exp / 'log.txt').read_text().splitlines()
    assert log.count(warnings[0]) == 1 and log[-2].startswith('epoch 5/5') and log[-1].startswith('done: best val/acc')


def test_train_py_logs_to_mlflow_file_store_inside_the_folder_by_default_and_resume_continues_the_run(
        save_root: Path) -> None:
    pytest.importorskip('mlflow')   # (train_pl.py's MLFlowLogger: the server test)
    run = run_py
    assert run(save_root, '--config', DIGITS, '--name', 'local', EPOCHS2, 'loggers=[{name: MLFlowLogger}]') == 0
    exp = save_root / 'local'
    store = f'file:{exp / "mlruns"}'
    client, first = mlflow_run(store)
    assert first.info.run_name == 'local' and first.data.params['data_module/args/batch_size'] == '32'
    assert history(client, first, 'val/acc') == pytest.approx(val_acc(exp))
    assert run(save_root, '--resume', str(exp), 'trainer_params.max_epochs=3') == 0
    client, resumed = mlflow_run(store)
    assert resumed.info.run_id == first.info.run_id and resumed.info.status == 'FINISHED'
    assert history(client, resumed, 'val/acc') == pytest.approx(val_acc(exp)) and len(val_acc(exp)) == 3


def wandb_records(run_dir: Path) -> list[Any]:
    """The records of an offline W&B run file (run-<id>.wandb: W&B's LevelDB-style log of protobufs)."""
    from wandb.proto import wandb_internal_pb2
    data = next(run_dir.glob('run-*.wandb')).read_bytes()
    assert data[:4] == b':W&B' and struct.unpack('<H', data[4:6])[0] == 0xBEE1
    records, pos, pending, block = [], 7, b'', 32768
    while pos + 7 <= len(data):
        if block - pos % block < 7:   # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack('<IHB', data[pos:pos + 7])
        if pos + 7 + length > len(data):   # still being written
            break
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):   # a full record, or the last piece of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b''
    return records


def wandb_offline_run(run_dir: Path) -> tuple[Any, dict, list[float]]:
    """(the run record, its config, its val/acc history) of one offline run folder."""
    import json
    deadline = time.monotonic() + 60
    records = wandb_records(run_dir)
    while not any(r.WhichOneof('record_type') == 'exit' for r in records):
        assert time.monotonic() < deadline, 'the W&B run file never got its exit record'
        time.sleep(0.5)   # W&B's service process may still be writing the file
        records = wandb_records(run_dir)
    run = next(r.run for r in records if r.WhichOneof('record_type') == 'run')
    config = {item.key: json.loads(item.value_json) for r in records if r.WhichOneof('record_type') == 'config'
              for item in r.config.update}
    acc = [float(item.value_json) for r in records if r.WhichOneof('record_type') == 'history'
           for item in r.history.item if (item.key or '/'.join(item.nested_key)) == 'val/acc']
    return run, config, acc


@pytest.mark.parametrize('script', ['train.py', 'train_pl.py'])
def test_wandb_is_offline_without_a_key_and_writes_inside_the_folder(script: str, save_root: Path) -> None:
    pytest.importorskip('wandb')
    run = RUNNERS[script]
    assert run(save_root, '--config', DIGITS, '--name', 'wb', EPOCHS2, 'loggers=[{name: WandbLogger}]') == 0
    exp = save_root / 'wb'
    run_id = parse_yaml((exp / 'trackers.yaml').read_text(), 'trackers.yaml')['loggers.0']['version']
    first, = (exp / 'wandb').glob(f'offline-run-*-{run_id}')
    record, config, acc = wandb_offline_run(first)
    assert (record.run_id, record.display_name, record.project) == (run_id, 'wb', 'lightyaml')
    assert (config['seed'] == 0
            and config['train_wrapper']['args']['optim_spec'] == {'name': 'Adam', 'args': {'lr': 0.003}})
    assert acc == pytest.approx(val_acc(exp))
    if script == 'train_pl.py':   # a resume logs to the same W&B run id (`wandb sync` joins the two folders)
        assert run(save_root, '--resume', str(exp), 'trainer_params.max_epochs=3') == 0
        # Started within the same second as the first, W&B names the folder `...-{run_id}-1`.
        second, = set((exp / 'wandb').glob(f'offline-run-*-{run_id}*')) - {first}
        assert wandb_offline_run(second)[2] == pytest.approx(val_acc(exp)[2:])


def test_lightnings_loggers_by_name_alone_write_below_the_folder_and_a_resume_continues_them(
        save_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """TensorBoardLogger and CSVLogger need `save_dir`, which lightyaml gives: the experiment folder,
    so they write save/<name>/lightning_logs/version_N/ (issue 28). --resume appends to TensorBoard's
    version; CSVLogger would delete the metrics.csv of a version it reopens, so it gets a new one."""
    loggers = 'loggers=[{name: TensorBoardLogger}, {name: CSVLogger}]'
    one_second(monkeypatch)   # the resume's writer starts in the same second as the first one's
    assert run_pl(save_root, '--config', DIGITS, '--name', 'lg', EPOCHS2, loggers) == 0
    exp = save_root / 'lg'
    runs = parse_yaml((exp / 'trackers.yaml').read_text(), 'trackers.yaml')
    assert runs == {'loggers.0': {'name': 'TensorBoardLogger', 'group': None, 'version': 0},
                    'loggers.1': {'name': 'CSVLogger', 'group': None}}   # no version to reopen
    assert len(list((exp / 'lightning_logs' / 'version_0').glob('events.out.tfevents.*'))) == 1
    with open(exp / 'lightning_logs' / 'version_1' / 'metrics.csv') as f:
        rows = [row for row in csv.DictReader(f) if row.get('val/acc')]
    assert [float(row['val/acc']) for row in rows] == pytest.approx(val_acc(exp))
    assert run_pl(save_root, '--resume', str(exp), 'trainer_params.max_epochs=3') == 0
    assert sorted(p.name for p in (exp / 'lightning_logs').iterdir()) == ['version_0', 'version_1', 'version_2']
    assert len(list((exp / 'lightning_logs' / 'version_0').glob('events.out.tfevents.*'))) == 2
    for version, epochs in (('version_1', ['0', '1']), ('version_2', ['2'])):
        with open(exp / 'lightning_logs' / version / 'metrics.csv') as f:
            assert [row['epoch'] for row in csv.DictReader(f) if row.get('val/acc')] == epochs


def test_a_tracker_that_fails_costs_one_warning_and_nothing_else(save_root: Path, monkeypatch: pytest.MonkeyPatch,
                                                                  capfd: pytest.CaptureFixture) -> None:
    from pytorch_lightning.loggers import Logger

    from utils import LOGGERS
    calls = []

    class Flaky(Logger):   # a user's logger, registered for this test: its server dies on the 3rd call
        name, version = 'flaky', '0'

        def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
            calls.append('config')

        def log_metrics(self, metrics: Any, step: Any = None) -> None:
            calls.append('metrics')
            if len(calls) == 3:
                raise ConnectionError('tracker down')
    monkeypatch.setitem(LOGGERS._classes, 'flaky', Flaky)
    assert run_pl(save_root, '--config', DIGITS, '--name', 'flaky', 'trainer_params.max_epochs=3',
                  'loggers=[{name: flaky}]') == 0
    err = capfd.readouterr().err
    message = ('warning: logger loggers.0 (flaky) failed (ConnectionError: tracker down); it gets no more calls in '
               'this run, training goes on, ')
    assert [line for line in err.splitlines() if line.startswith('warning: logger')] == [
        next(line for line in err.splitlines() if line.startswith(message))]
    assert calls == ['config', 'metrics', 'metrics']   # nothing after the failure
    exp = save_root / 'flaky'
    assert len(val_acc(exp)) == 3
    log = (exp / 'log.txt').read_text()
    assert log.count('warning: logger loggers.0 (flaky) failed') == 1 and 'epoch 3/3' in log


def test_train_py_with_its_tracker_server_failing_trains_on(save_root: Path, capfd: pytest.CaptureFixture) -> None:
    pytest.importorskip('mlflow')
    with server_that_hangs_up() as port:   # there at start, then every request fails
        assert run_py(save_root, '--config', DIGITS, '--name', 'gone', EPOCHS2,
                      f'loggers=[{{name: MLFlowLogger, args: {{tracking_uri: "http://127.0.0.1:{port}"}}}}]') == 0
    warnings = [line for line in capfd.readouterr().err.splitlines() if line.startswith('warning: logger')]
    assert len(warnings) == 1 and warnings[0].startswith('warning: logger loggers.0 (MLFlowLogger) failed (')
    assert len(val_acc(save_root / 'gone')) == 2 and not (save_root / 'gone' / 'trackers.yaml').exists()


@pytest.mark.parametrize('entry', ['train.py', 'train_pl.py'])
@pytest.mark.parametrize('where', ['config', 'environment'])
def test_a_tracker_server_that_does_not_answer_is_one_line_and_creates_nothing(
        entry: str, where: str, save_root: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture) -> None:
    pytest.importorskip('mlflow')
    dead = f'http://dan:s3cret-pw@127.0.0.1:{free_port()}'
    masked = dead.replace('s3cret-pw', '***')
    if where == 'environment':
        monkeypatch.setenv('MLFLOW_TRACKING_URI', dead)
    args = f'{{tracking_uri: "{dead}"}}' if where == 'config' else '{}'
    run = run_py if entry == 'train.py' else run_pl
    assert run(save_root, '--config', DIGITS, EPOCHS2, f'loggers=[{{name: MLFlowLogger, args: {args}}}]') == 2
    err = capfd.readouterr().err
    key = (f"error: override 'loggers=[{{name: MLFlowLogger, args: {{tracking_uri: \"{masked}\"}}}}]': "
           f"loggers.0.args.tracking_uri: ") if where == 'config' else (
        'error: MLFLOW_TRACKING_URI (for loggers.0): ')
    assert err.startswith(f'{key}cannot reach {masked} (ConnectionRefusedError: '), err
    assert err.endswith('start the server, fix the URL or leave the tracker out\n') and err.count('\n') == 1, err
    assert 's3cret-pw' not in err and not save_root.exists()


@pytest.mark.parametrize('script, override, message', [
    ('train_pl.py', 'loggers=[{name: MLflowLogger}]', "loggers.0.name: unknown logger 'MLflowLogger' (did you mean "
                                                      "'MLFlowLogger' or 'CometLogger'?); registered: CSVLogger, "
                                                      'CometLogger, MLFlowLogger, TensorBoardLogger, WandbLogger'),
    ('train_pl.py', 'loggers=[{name: MLFlowLogger, args: {run_nam: x}}]',
     "loggers.0.args.run_nam: logger 'MLFlowLogger' does not take 'run_nam' (did you mean 'run_name' or 'run_id'?)"),
    ('train_pl.py', 'loggers={name: WandbLogger}', 'loggers: expected a list of logger specs, got dict'),
    ('train.py', 'loggers=[{name: CSVLogger}]', "loggers.0.name: train.py logs to MLFlowLogger and WandbLogger only, "
                                                "not 'CSVLogger'; use train_pl.py for other loggers"),
    ('train.py', 'loggers=[{name: WandbLogger, args: {offline: maybe}}]',
     "loggers.0.args.offline: expected bool, got str 'maybe'"),
])
def test_a_bad_loggers_section_is_one_line_and_creates_nothing(script: str, override: str, message: str,
                                                               save_root: Path, capfd: pytest.CaptureFixture) -> None:
    assert RUNNERS[script](save_root, '--config', DIGITS, override) == 2
    assert capfd.readouterr().err == f"error: override '{override}': {message}\n"
    assert not save_root.exists()


def test_tracker_defaults_live_in_the_folder_and_name_the_run_and_the_sweep(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from lightyaml.run.experiment_dir import ExperimentDir
    from lightyaml.run.trackers import MLFlowLogger, WandbLogger, init_parameters, tracker_args
    exp = ExperimentDir(tmp_path / 'lr-lr=0.1')
    monkeypatch.setenv('LIGHTYAML_GROUP', 'lr')
    assert tracker_args('MLFlowLogger', {}, init_parameters(MLFlowLogger), exp, {}) == {
        'tracking_uri': f'file:{exp.path.resolve() / "mlruns"}', 'experiment_name': 'lr', 'run_name': 'lr-lr=0.1',
        'save_dir': str(exp.path)}
    assert tracker_args('WandbLogger', {'project': 'mine'}, init_parameters(WandbLogger), exp, {'version': 'abc'}) == {
        'project': 'mine', 'name': 'lr-lr=0.1', 'group': 'lr', 'mode': 'offline', 'save_dir': str(exp.path),
        'version': 'abc'}
    monkeypatch.setenv('WANDB_API_KEY', 'x' * 40)
    monkeypatch.setenv('MLFLOW_TRACKING_URI', 'http://team-server:5000')
    assert 'mode' not in tracker_args('WandbLogger', {}, init_parameters(WandbLogger), exp, {})
    assert tracker_args('MLFlowLogger', {}, init_parameters(MLFlowLogger), exp, {})['tracking_uri'] == (
        'http://team-server:5000')


# ------------------------------------------------ self.logger.experiment and log_samples (issue 13)

def tensorboard_events(exp: Path) -> list[Any]:
    """Every event of tb/ (TFRecord files of tensorboardX's Event protobufs)."""
    from tensorboardX.proto.event_pb2 import Event
    events = []
    for path in sorted(glob.glob(str(exp / 'tb' / 'events.out.tfevents.*'))):
        data, pos = Path(path).read_bytes(), 0
        while pos < len(data):
            length = struct.unpack('<Q', data[pos:pos + 8])[0]
            event = Event()
            event.ParseFromString(data[pos + 12:pos + 12 + length])
            events.append(event)
            pos += 12 + length + 4
    return events


def summaries(exp: Path) -> dict[str, list[tuple[int, str]]]:
    """tag -> [(step, kind of value)], kind: simple_value, image, histo."""
    found: dict[str, list[tuple[int, str]]] = {}
    for event in tensorboard_events(exp):
        for value in event.summary.value:
            found.setdefault(value.tag, []).append((event.step, value.WhichOneof('value')))
    return found


def one_second(monkeypatch: pytest.MonkeyPatch) -> None:
    """tensorboardX's clock stopped: every SummaryWriter starts in the same second (its file name's)."""
    from types import SimpleNamespace

    from tensorboardX import event_file_writer
    monkeypatch.setattr(event_file_writer, 'time', SimpleNamespace(time=lambda: 1796680693.5, sleep=time.sleep))


@pytest.mark.parametrize('script', ['train.py', 'train_pl.py'])
def test_a_resume_in_the_same_second_keeps_the_events_of_the_first_session(
        script: str, save_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """tensorboardX names an event file by the second and the host and opens it with 'wb': without a
    suffix of its own, a writer started in the same second wiped the first session's tb/ events."""
    one_second(monkeypatch)
    run = RUNNERS[script]
    assert run(save_root, '--config', DIGITS, '--name', 'quick', EPOCHS2, *QUIET) == 0
    assert run(save_root, '--resume', str(save_root / 'quick'), 'trainer_params.max_epochs=3', *QUIET) == 0
    assert len(list((save_root / 'quick' / 'tb').glob('events.out.tfevents.1796680693.*'))) == 2
    values = [value.simple_value for event in tensorboard_events(save_root / 'quick') for value in event.summary.value
              if value.tag == 'val/acc']
    assert sorted(values) == pytest.approx(sorted(val_acc(save_root / 'quick')), abs=1e-6)


def test_a_lightning_module_writes_images_histograms_and_figures_to_tb(save_root: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from models.wrappers.base import BaseWrapper
    from utils import WRAPPERS

    class Illustrated(BaseWrapper):   # the usual Lightning calls, from a user's module
        def on_validation_epoch_end(self) -> None:
            super().on_validation_epoch_end()
            if self.trainer.sanity_checking:
                return
            import matplotlib.pyplot as plt
            writer = self.logger.experiment
            writer.add_image('user/first_weights', self.model.net[0].weight[:8, :64].reshape(1, 8, 64),
                             self.global_step)
            writer.add_histogram('user/weights', self.model.net[0].weight.detach(), self.global_step)
            fig = plt.figure()
            plt.plot(torch.arange(5).tolist())
            writer.add_figure('user/figure', fig, self.global_step)
    monkeypatch.setitem(WRAPPERS._classes, 'illustrated', Illustrated)
    assert run_pl(save_root, '--config', DIGITS, '--name', 'pictures', EPOCHS2, 'train_wrapper.name=illustrated',
                  'train_wrapper.args.log_samples=6') == 0
    exp = save_root / 'pictures'
    found = summaries(exp)
    assert found['val/samples'] == [(step, 'image') for step, _ in found['val/acc']] and len(found['val/acc']) == 2
    assert [kind for _, kind in found['user/first_weights'] + found['user/figure']] == ['image'] * 4
    assert [kind for _, kind in found['user/weights']] == ['histo'] * 2
    assert sorted(p.name for p in (exp / 'samples').iterdir()) == ['val_epoch_001.png', 'val_epoch_002.png']


def test_the_sample_grid_titles_each_image_predicted_over_true() -> None:
    import torch

    from lightyaml.run.sample_grid import prediction_figure
    images = torch.rand(5, 1, 8, 8)
    scores = torch.eye(10)[[3, 1, 4, 1, 5]]
    fig = prediction_figure(images, scores, torch.tensor([3, 1, 4, 7, 5]))
    titled = [(ax.get_title(), ax.title.get_color()) for ax in fig.axes if ax.get_title()]
    assert titled == [('3 / 3', 'green'), ('1 / 1', 'green'), ('4 / 4', 'green'), ('1 / 7', 'red'), ('5 / 5', 'green')]
    assert len(fig.axes) == 6   # a 3 x 2 grid, the last cell empty


def test_train_py_logs_the_sample_grid_too(save_root: Path) -> None:
    assert run_py(save_root, '--config', DIGITS, '--name', 'grid', EPOCHS2, 'train_wrapper.args.log_samples=16') == 0
    exp = save_root / 'grid'
    found = summaries(exp)
    assert found['val/samples'] == [(step, 'image') for step, _ in found['val/acc']] and len(found['val/acc']) == 2
    assert sorted(p.name for p in (exp / 'samples').iterdir()) == ['val_epoch_001.png', 'val_epoch_002.png']


@pytest.mark.slow
def test_under_ddp_only_rank_0_talks_to_the_tracker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip('mlflow')
    monkeypatch.setenv('MLFLOW_ALLOW_FILE_STORE', 'true')   # to read the store here
    env = {k: v for k, v in os.environ.items() if k not in ('RANK', 'LOCAL_RANK', 'WORLD_SIZE', 'LIGHTYAML_SEED')}
    done = subprocess.run([sys.executable, 'train_pl.py', '--config', DIGITS, '--name', 'ddp', '--save-root',
                           str(tmp_path), EPOCHS2, 'trainer_params.accelerator=cpu', 'trainer_params.devices=2',
                           'trainer_params.strategy=ddp', 'loggers=[{name: MLFlowLogger}]', *QUIET],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    exp = tmp_path / 'ddp'
    client, run = mlflow_run(f'file:{exp / "mlruns"}')   # one run: rank 1 built no tracker
    assert history(client, run, 'val/acc') == pytest.approx(val_acc(exp)) and len(val_acc(exp)) == 2
    assert list(parse_yaml((exp / 'trackers.yaml').read_text(), 'trackers.yaml')) == ['loggers.0']
