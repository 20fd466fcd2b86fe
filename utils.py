"""What user code imports: `register`/`make` through the registries, `Spec`, and the errors a
user's input can cause. The engine itself lives in lightyaml/ and never imports this file.

    from utils import MODELS, Spec, ConfigError      # in a model, dataset, loss or callback file

Forks depend on these names: they stay here whatever moves inside lightyaml/.
"""
from lightyaml.built_specs import built, copy_specs, spec_of
from lightyaml.config.checking import check_dataset_spec, check_scheduler_spec, check_transform_spec
from lightyaml.config.listing import list_registered
from lightyaml.errors import (PROJECT_ROOT, ConfigError, DuplicateNameError, ExportCheckError, ModuleFileError,
                              NonFiniteLossError, NothingToDo, RunStoppedError, did_you_mean, display_path)
from lightyaml.process import (SHARE_CORES, global_rank_from_env, keep_freed_memory, pause_gc_for_start_up,
                               resume_gc, set_thread_defaults, skip_collections_at_exit)
from lightyaml.registry import (CALLBACKS, DATA_MODULES, DATASETS, LOGGERS, LOSSES, METRICS, MODELS, OPTIMIZERS,
                                REGISTRIES, SCHEDULERS, TRACKERS, TRANSFORMS, WRAPPERS, ClassNamespace, Registry,
                                Spec, SpecMarker, TorchvisionModels)

__all__ = [
    'CALLBACKS', 'DATASETS', 'DATA_MODULES', 'LOGGERS', 'LOSSES', 'METRICS', 'MODELS', 'OPTIMIZERS', 'PROJECT_ROOT',
    'REGISTRIES', 'SCHEDULERS', 'SHARE_CORES', 'TRACKERS', 'TRANSFORMS', 'WRAPPERS', 'ClassNamespace', 'ConfigError',
    'DuplicateNameError', 'ExportCheckError', 'ModuleFileError', 'NonFiniteLossError', 'NothingToDo', 'Registry',
    'RunStoppedError', 'Spec', 'SpecMarker', 'TorchvisionModels', 'built', 'check_dataset_spec',
    'check_scheduler_spec', 'check_transform_spec', 'copy_specs', 'did_you_mean', 'display_path',
    'global_rank_from_env', 'keep_freed_memory', 'list_registered', 'pause_gc_for_start_up', 'resume_gc',
    'set_thread_defaults', 'skip_collections_at_exit', 'spec_of',
]
