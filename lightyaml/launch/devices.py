"""`--gpu`: which CUDA devices a run uses (or the CPU), and whether a count agrees with the processes srun or
torchrun started. Torch is imported only to count devices."""
from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Optional

from lightyaml.config.loading import Config
from lightyaml.errors import ConfigError


def parse_gpu_flag(gpu: str) -> list[int] | str:
    """'cpu', or the CUDA device indices of `--gpu 1,2`."""
    if gpu.strip().lower() == 'cpu':
        return 'cpu'
    ids = [part.strip() for part in gpu.split(',')]
    if not ids or not all(i.isdigit() for i in ids) or len(set(ids)) != len(ids):
        raise ConfigError(f"--gpu {gpu!r}: expected distinct CUDA device indices such as 0 or 1,2, or 'cpu'")
    return [int(i) for i in ids]


def select_cuda_devices(ids: Sequence[int], device_count: Optional[Callable[[], int]] = None) -> int:
    """Make exactly devices `ids` visible (CUDA_VISIBLE_DEVICES, inherited by DDP processes) and
    return how many there are; fails clearly when this machine has fewer."""
    os.environ['CUDA_VISIBLE_DEVICES'] = ','.join(str(i) for i in ids)
    if device_count is None:
        import torch  # torch: not needed by --list/--print-config
        device_count = torch.cuda.device_count
    visible = device_count()
    if visible == 0:
        raise ConfigError(f"--gpu {','.join(map(str, ids))}: no CUDA device is available on this machine; "
                          f"leave out --gpu or pass --gpu cpu to train on the CPU")
    if visible < len(ids):
        raise ConfigError(f"--gpu {','.join(map(str, ids))}: only {visible} of these CUDA devices exist here")
    return len(ids)


def check_gpu_asked(cfg: Config, gpu: Optional[str], cuda_available: Optional[Callable[[], bool]] = None) -> None:
    """A config that asks for a GPU (`trainer_params.accelerator` gpu or cuda, the data module's
    `device` cuda) on a machine without one: one line naming the key and the overrides that train on
    the CPU, before anything is created. `--gpu 0` is select_cuda_devices' to check; `--gpu cpu`
    answers the accelerator."""
    if gpu is not None and parse_gpu_flag(gpu) != 'cpu':
        return
    params, data = cfg.get('trainer_params') or {}, cfg.get('data_module') or {}
    data_args = (data.get('args') or {}) if isinstance(data, Mapping) else {}
    asked = []   # (key, value, the override that keeps it on the CPU)
    accelerator = params.get('accelerator') if isinstance(params, Mapping) else None
    if gpu is None and isinstance(accelerator, str) and accelerator.lower() in ('gpu', 'cuda'):
        asked.append(('trainer_params.accelerator', accelerator, '--gpu cpu'))
    device = data_args.get('device') if isinstance(data_args, Mapping) else None
    if isinstance(device, str) and device.lower().startswith('cuda'):
        asked.append(('data_module.args.device', device, 'data_module.args.device=null'))
    if not asked:
        return
    if cuda_available is None:
        import torch  # torch: only for a config that asks for a GPU
        cuda_available = torch.cuda.is_available
    if cuda_available():
        return
    key, value, _ = asked[0]
    problem = (f"{value!r} asks for a GPU, and this machine has none; to train on the CPU add "
               f"{' '.join(fix for _, _, fix in asked)}")
    raise ConfigError(cfg.error(key, problem))


def check_launched_processes(count: int, gpu: Optional[str], cfg: Config,
                             environ: Mapping[str, str] = os.environ) -> None:
    """Under srun or torchrun every process is one device, started by the launcher: a device count
    asked for (`--gpu 0,1`, `trainer_params.devices: 2`) must be its processes on this machine, as
    Lightning requires; leaving the count out takes the launcher's."""
    devices = (cfg.get('trainer_params') or {}).get('devices', 'auto')
    launched = environ.get('LOCAL_WORLD_SIZE', '')
    if ('WORLD_SIZE' not in environ or not launched.isdigit() or count == int(launched)
            or (gpu is None and devices == 'auto') or (gpu or '').strip().lower() == 'cpu'):
        return
    launcher = f'srun (--ntasks-per-node={launched})' if 'SLURM_STEP_ID' in environ else 'the launcher'
    problem = f'{count} devices, but {launcher} started {launched} processes on this machine, one per device'
    raise ConfigError(f'--gpu {gpu}: {problem}; give {launched} devices or leave --gpu out' if gpu else
                      cfg.error('trainer_params.devices', f'{problem}; set {launched} or leave it out'))
