"""Evaluation: metrics (built), label scoring, generation-based evaluation and reports (issue 4)."""
