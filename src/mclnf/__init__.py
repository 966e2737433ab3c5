"""mclnf: learn neural fields fast and continually.

The Python API (``docs/api.md``)::

    import mclnf
    field = mclnf.fit("camera", steps=2000)   # any option of `mclnf fit`, by name
    field.evaluate(); field.render("camera.png"); field.save("camera.safetensors"); field.train(steps=1000)
    field = mclnf.load("runs/camera")        # a fit run folder or a field file

:func:`fit`, :func:`load` and :class:`Field` (from :mod:`mclnf.api`), the registries of learners and
meta-learning methods by their CLI names (:data:`CONTINUAL_LEARNERS`, :data:`ONLINE_LEARNERS`,
:data:`META_METHODS`, :data:`META_GRADIENTS`, from :mod:`mclnf.learners`) and the commands' configs
(:class:`FitConfig`, ...) are imported on first use, so ``import mclnf`` itself does not import torch.
"""

from mclnf.errors import DivergedError, MclnfError

__version__ = "0.1.0"

API = ("fit", "load", "Field")
LEARNERS = ("CONTINUAL_LEARNERS", "ONLINE_LEARNERS", "META_METHODS", "META_GRADIENTS")
CONFIGS = ("FitConfig", "ContinualConfig", "MetaTrainConfig", "MetaTestConfig", "BenchConfig")
__all__ = [*API, *LEARNERS, *CONFIGS, "DivergedError", "MclnfError", "__version__"]


def __getattr__(name: str):
    """The API's names, imported on first use (the submodules, as ``mclnf.learners``, import as usual)."""
    if name in API:
        from mclnf import api as module
    elif name in LEARNERS:
        from mclnf import learners as module
    elif name in CONFIGS:
        from mclnf import config as module
    else:
        raise AttributeError(f"module 'mclnf' has no attribute {name!r}")
    value = globals()[name] = getattr(module, name)
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
