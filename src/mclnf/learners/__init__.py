"""Every strategy behind one interface (:class:`~mclnf.learners.base.Learner`), and the one registry of CLI names.

* continual learners of one model — :mod:`~mclnf.learners.continual` (OL, CL, ER, EWC, MER);
* the modular learner, from a random or a meta-learned initialization — :mod:`~mclnf.learners.modular`;
* online classification learners — :mod:`~mclnf.learners.projection` (GEM, A-GEM),
  :mod:`~mclnf.learners.lamaml` (La-MAML), :mod:`~mclnf.learners.emcl` (EMCL, written once);
* meta-learning methods = an inner loop + a meta-gradient rule — :mod:`~mclnf.learners.meta`.

The tables below map the names ``mclnf continual --learner``, ``mclnf cl-bench --method`` and
``mclnf meta-train --method/--meta-grad`` accept to classes; no other code dispatches on those strings.
"""

from __future__ import annotations

from mclnf.learners.base import Learner, LearnerOptions
from mclnf.learners.continual import EWC, MER, FineTune, Offline, Replay
from mclnf.learners.emcl import EMCL
from mclnf.learners.lamaml import LaMAML
from mclnf.learners.meta import META_GRADIENTS, META_METHODS, MetaMethod, MetaOptions, meta_method
from mclnf.learners.modular import Modular
from mclnf.learners.projection import AGEM, GEM

CONTINUAL_LEARNERS: dict[str, type[Learner]] = {"ol": Offline, "cl": FineTune, "er": Replay, "ewc": EWC, "mer": MER, "modular": Modular}
ONLINE_LEARNERS: dict[str, type[Learner]] = {"sgd": FineTune, "er": Replay, "ewc": EWC, "gem": GEM, "agem": AGEM, "mer": MER, "lamaml": LaMAML, "emcl": EMCL}


__all__ = [
    "CONTINUAL_LEARNERS", "META_GRADIENTS", "META_METHODS", "ONLINE_LEARNERS", "Learner", "LearnerOptions", "MetaMethod", "MetaOptions", "meta_method",
]  # fmt: skip
