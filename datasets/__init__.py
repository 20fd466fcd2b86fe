"""Datasets return dicts of tensors (e.g. `{'image': ..., 'label': ...}`); data modules build loaders.

Add a dataset: a new file here with `@register('name')` on a `torch.utils.data.Dataset`.
Add a data module: `@DATA_MODULES.register('name')` on a class with `train_dataloader()` etc.
(a `pytorch_lightning.LightningDataModule` works with train_pl.py).
"""
from utils import DATA_MODULES, DATASETS  # noqa: F401 (data module files register with DATA_MODULES)

register, make = DATASETS.register, DATASETS.make
