"""Evaluation: constrained generation, ranking metrics, thinking vs non-thinking reports."""
