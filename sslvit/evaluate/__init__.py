"""Evaluation of frozen encoders: feature extraction, kNN, linear probe, result reports."""

from sslvit.evaluate.classify import evaluate_encoder, evaluate_features, evaluate_pixels
from sslvit.evaluate.features import extract_features, pixel_features
from sslvit.evaluate.knn import knn_accuracy, knn_classify, topk_accuracy
from sslvit.evaluate.linear import linear_probe
from sslvit.evaluate.report import format_table, save_result

__all__ = [
    "evaluate_encoder",
    "evaluate_features",
    "evaluate_pixels",
    "extract_features",
    "format_table",
    "knn_accuracy",
    "knn_classify",
    "linear_probe",
    "pixel_features",
    "save_result",
    "topk_accuracy",
]
