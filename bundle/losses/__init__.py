from bundle.losses.classification import ClassificationLoss

__all__ = ["ClassificationLoss"]
