"""Continual learning of fields: learners behind one interface, replay, EWC, and the ``mclnf continual`` runner."""

from mclnf.continual.learners import LEARNERS, Learner, LearnerOptions, build_learner

__all__ = ["LEARNERS", "Learner", "LearnerOptions", "build_learner"]
