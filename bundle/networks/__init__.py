"""Networks: the explainer, the student, the deployable MED-TEX module and the frozen teacher."""

from bundle.networks.explainer import Explainer, default_scale
from bundle.networks.features import FeatureRecorder, feature_channels
from bundle.networks.medtex import ExplainingMedTex, MedTex
from bundle.networks.student import ResNetStudent, Student
from bundle.networks.teacher import FrozenTeacher, load_weights, weights_sha256

__all__ = [
    "Explainer",
    "default_scale",
    "ExplainingMedTex",
    "FeatureRecorder",
    "feature_channels",
    "FrozenTeacher",
    "MedTex",
    "ResNetStudent",
    "Student",
    "load_weights",
    "weights_sha256",
]
