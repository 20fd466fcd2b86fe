"""Exporting a trained model to ONNX, TorchScript or torch.export's `.pt2`, checked against PyTorch.

    python train_pl.py --export save/exp --format onnx [--ckpt best|last|PATH] [--ema|--no-ema] [--out PATH]

The model is traced on the first batch of the experiment's val split (else test), behind a small
adapter that takes the image tensor (models take the batch dict), with a dynamic batch size. The
file goes to `save/exp/export/model.<ext>`; it is read back with its own runtime (onnxruntime,
torch.jit.load, torch.export.load) and its outputs compared with the PyTorch model's on that batch
and on one of another size. A difference above 1e-4 removes the file and fails.

Lightning-free: both entry points call `export_experiment`. onnx, onnxruntime and onnxscript are
optional (requirements-optional.txt), imported only for `--format onnx`.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from lightyaml.config.checking import build
from lightyaml.config.loading import Config
from lightyaml.errors import ConfigError, ExportCheckError, display_path
from lightyaml.registry import DATA_MODULES
from lightyaml.run.experiment_dir import ExperimentDir

FORMATS = {'onnx': 'model.onnx', 'torchscript': 'model.torchscript.pt', 'pt2': 'model.pt2'}
TOLERANCE = 1e-4
Runner = Callable[[torch.Tensor], torch.Tensor]   # runs an exported file on an input tensor


class TensorInput(nn.Module):
    """`forward(x) = model({key: x})`: a model that takes the batch dict, behind the one tensor
    that exporters trace."""

    def __init__(self, model: nn.Module, key: str) -> None:
        super().__init__()
        self.model, self.key = model, key

    def forward(self, x: torch.Tensor) -> Any:
        return self.model({self.key: x})


def _onnx(module: nn.Module, example: torch.Tensor, path: Path) -> Runner:
    try:
        import onnx  # noqa: F401 - the exporter needs all three
        import onnxruntime  # optional: only for --export --format onnx
        import onnxscript  # noqa: F401
    except ImportError as e:
        raise ConfigError(f'--format onnx needs {e.name}, which is not installed: '
                          f'pip install -r requirements-optional.txt') from None
    # One file, unless the weights pass protobuf's 2 GB limit (then they go to model.onnx.data beside it).
    large = sum(p.numel() * p.element_size() for p in module.parameters()) > 1 << 30
    torch.onnx.export(module, (example,), str(path), input_names=['input'], output_names=['output'],
                      dynamic_shapes=({0: torch.export.Dim('batch')},), dynamo=True, external_data=large,
                      verbose=False)
    session = onnxruntime.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    return lambda x: torch.from_numpy(session.run(None, {'input': x.numpy()})[0])


def _torchscript(module: nn.Module, example: torch.Tensor, path: Path) -> Runner:
    with warnings.catch_warnings():   # torch.jit is deprecated in favour of torch.export (pt2); asked for by name
        warnings.simplefilter('ignore', FutureWarning)
        torch.jit.save(torch.jit.trace(module, example), str(path))
        return torch.jit.load(str(path))


def _pt2(module: nn.Module, example: torch.Tensor, path: Path) -> Runner:
    program = torch.export.export(module, (example,), dynamic_shapes=({0: torch.export.Dim('batch')},))
    torch.export.save(program, str(path))
    return torch.export.load(str(path)).module()


EXPORTERS: dict[str, Callable[[nn.Module, torch.Tensor, Path], Runner]] = {
    'onnx': _onnx, 'torchscript': _torchscript, 'pt2': _pt2}


@torch.no_grad()
def export_model(model: nn.Module, batch: Mapping[str, Any], fmt: str, path: Path) -> tuple[float, list[int]]:
    """Write `model` in format `fmt` to `path`, traced on `batch`; returns the largest absolute
    difference from the PyTorch model's outputs and the batch sizes compared."""
    key = getattr(model, 'input_key', 'image')
    if key not in batch:
        raise ConfigError(f"--export: the model reads batch[{key!r}], which the batch lacks (it has "
                          f"{', '.join(map(repr, batch))})")
    module = TensorInput(model.cpu().eval(), key).eval()
    example = batch[key].cpu()
    runner = EXPORTERS[fmt](module, example, path)
    inputs = [example] + ([example[:len(example) // 2]] if len(example) >= 4 else [])   # another batch size
    diff = max(float((runner(x) - module(x)).abs().max()) for x in inputs)
    return diff, [len(x) for x in inputs]


def export_experiment(exp: ExperimentDir, cfg: Config, model: nn.Module, weights: tuple[Path, bool], fmt: str,
                      out: Optional[str]) -> Path:
    """--export: `model` (loaded from `weights`: the checkpoint, and whether its EMA weights) traced
    on the first val (else test) batch, written to <exp>/export/ (or `out`), checked against
    PyTorch; the result is printed and logged."""
    ckpt, ema = weights
    data = build('the data module', 'data_module', cfg, lambda: DATA_MODULES.make(cfg['data_module']))
    loader = build('the data loaders', 'data_module', cfg, lambda: data.val_dataloader() or data.test_dataloader())
    if loader is None:
        raise ConfigError('--export: the config has neither a val nor a test split to trace a batch from')
    path = Path(out) if out else exp.path / 'export' / FORMATS[fmt]
    path.parent.mkdir(parents=True, exist_ok=True)
    diff, sizes = export_model(model, next(iter(loader)), fmt, path)
    weights = f'{ckpt.name}, EMA weights' if ema else ckpt.name
    if not diff <= TOLERANCE:
        for written in (path, path.with_name(path.name + '.data')):
            written.unlink(missing_ok=True)
        raise ExportCheckError(f'--export: the {fmt} model differs from PyTorch by up to {diff:.2e} (more than '
                               f'{TOLERANCE:g}); nothing written')
    line = (f"export ({weights}): {display_path(path)} ({fmt}): max abs diff {diff:.2e} from PyTorch on batches of "
            f"{' and '.join(map(str, sizes))} (tolerance {TOLERANCE:g})")
    print(line)
    exp.log(line)
    return path
