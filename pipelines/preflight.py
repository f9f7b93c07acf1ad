"""What a label run checks before it plans, locks or starts Ray (issue 32): the GloVe file (the
cheap check, first), then every enabled teacher's weights (`teachers.weights`). A missing one
fails the run within seconds, one line each, instead of minutes later inside a Ray worker."""

from __future__ import annotations

import logging

from distill.config import Config
from distill.errors import TeacherError
from distill.labels.glove import check_glove
from teachers.weights import missing_teacher_weights

__all__ = ["check_sources"]

logger = logging.getLogger(__name__)


def check_sources(config: Config) -> None:
    """Raise `ConfigError` (GloVe) or `TeacherError` (weights; one line per missing teacher)
    unless everything the enabled teachers and the label math need can be had here."""
    check_glove(config.labels.glove)
    problems = missing_teacher_weights(config.teachers.roles())
    if problems:
        raise TeacherError("\nerror: ".join(problems))  # one "error:" line each
    logger.debug("GloVe and the weights of every enabled teacher are available")
