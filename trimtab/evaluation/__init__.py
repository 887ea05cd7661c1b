"""Evaluation: metrics, label scoring, generation-based classification, baselines and reports.

``trimtab eval`` is :func:`trimtab.evaluation.comparison.run_eval`; one model on one file is
:mod:`trimtab.evaluation.evaluate`.
"""

from trimtab.evaluation.comparison import EvalOptions, run_eval

__all__ = ["EvalOptions", "run_eval"]
