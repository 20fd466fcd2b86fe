"""Plain `nn.Module` models. Add one: a new file here with `@register('name')` on the class.

The model contract (what the `base` wrapper, train.py, the losses and the test suite rely on):

- `forward(batch)` takes the batch dict as the data module serves it (`{'image': (N, C, H, W),
  'label': (N,)}` for the image datasets, `{'features': (N, 10), 'target': (N, 1)}` for
  diabetes, ...) and returns the prediction: a tensor whose first dimension is the batch, e.g.
  logits (N, classes), values (N, outputs), per-pixel logits (N, classes, H, W). Read inputs
  under a key you can configure (`input_key`/`image_key`), never the target. `batch_input(batch,
  key)` reads it, and takes a plain tensor as the input too, so the model can also be the `net`
  of a LightningModule from elsewhere that calls `self.net(x)`.
- The loss gets `(prediction, batch)` and returns `{'loss': ..., other terms}`; metrics get
  `(prediction, batch[target_key])` (`target_key` of the wrapper, `label` by default).
- Constructor arguments are what the config's `args` give; type hints are checked against it.
  Give every argument a default, or a class attribute `example_args = {...}` that builds one.
- Example batch: a model that is not a ten-class classifier of 8x8 grey digits declares the
  input it takes with a method `example_batch(self, n) -> dict` (a batch of `n` samples).
  tests/test_models.py builds every registered model (with `example_args`), runs it on its
  example batch (the digits batch when it has none), and checks that the prediction has one row
  per sample, is finite, and that every trainable parameter gets a gradient. So a regression or
  segmentation model passes with no edit of the tests.
- Lazy modules (`nn.LazyLinear`) are fine: both entry points run the first batch through the
  model before counting parameters, building the optimizer or wrapping it for DDP.

Training wrappers (LightningModules) live in `models/wrappers/`, which train.py never imports.
Any torchvision classification model is available as `torchvision.<name>` (torchvision_models.py).
"""
from typing import Any

from utils import MODELS

register, make = MODELS.register, MODELS.make


def batch_input(batch: Any, key: str) -> Any:
    """`batch[key]`, or `batch` itself where it is a tensor (a module from elsewhere's `self.net(x)`)."""
    return batch[key] if hasattr(batch, 'keys') else batch
