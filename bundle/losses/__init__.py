from bundle.losses.classification import ClassificationLoss
from bundle.losses.distillation import KDLoss, MaskPrior, VIDLoss
from bundle.losses.medtex import MedTexLoss

__all__ = ["ClassificationLoss", "KDLoss", "MaskPrior", "MedTexLoss", "VIDLoss"]
