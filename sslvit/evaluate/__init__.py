"""Evaluation of frozen encoders: features in and out, kNN, linear probe, retrieval, clusters."""

from sslvit.evaluate.classify import evaluate_encoder, evaluate_features, evaluate_pixels
from sslvit.evaluate.cluster import cluster_scores, kmeans
from sslvit.evaluate.embed import Embeddings, embed_images, load_embeddings, save_embeddings
from sslvit.evaluate.features import encoder_transform, extract_features, pixel_features
from sslvit.evaluate.knn import knn_accuracy, knn_classify, topk_accuracy
from sslvit.evaluate.linear import linear_probe
from sslvit.evaluate.report import format_table, save_result
from sslvit.evaluate.retrieval import retrieval_metrics, search

__all__ = [
    "Embeddings",
    "cluster_scores",
    "embed_images",
    "encoder_transform",
    "evaluate_encoder",
    "evaluate_features",
    "evaluate_pixels",
    "extract_features",
    "format_table",
    "knn_accuracy",
    "kmeans",
    "knn_classify",
    "linear_probe",
    "load_embeddings",
    "pixel_features",
    "retrieval_metrics",
    "save_embeddings",
    "save_result",
    "search",
    "topk_accuracy",
]
