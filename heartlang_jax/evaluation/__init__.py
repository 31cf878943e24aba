"""Scoring: macro AUC and per-record bootstrap intervals, the results report, figures."""
