"""Evaluations on precomputed frozen features: linear probe, k-NN, low-shot, and result reports."""

from mimreg.eval.knn import knn_classify, knn_protocols
from mimreg.eval.linear import linear_probe
from mimreg.eval.lowshot import lowshot_logistic
from mimreg.eval.report import format_table, write_json

__all__ = ["format_table", "knn_classify", "knn_protocols", "linear_probe", "lowshot_logistic", "write_json"]
