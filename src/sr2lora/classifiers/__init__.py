"""Classifiers over the final feature, registered by kind. Importing this package registers all of them."""

from . import ca, ncm, ridge  # noqa: F401  (registration)
from .base import Classifier, classifier_kinds, create_classifier, register_classifier, resolve_kind

__all__ = ["Classifier", "classifier_kinds", "create_classifier", "register_classifier", "resolve_kind"]
