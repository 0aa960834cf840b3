"""MONAI Label app serving the MED-TEX bundle: one classification model, ``medtex``, with a saliency mask.

Started by start.py (which applies the pydicom workaround first); docs/SERVING.md, "MONAI Label".
``--conf bundle_path`` names the bundle folder (default: the repository this app lives in); the infer task's own
``--conf`` keys are listed in lib/infers/medtex.py. The studies folder is a local datastore of images, DICOM files
(``.dcm``) included; POSTed files are read the same way, by the bundle's reader.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from monailabel.config import settings
from monailabel.datastore.local import LocalDatastore
from monailabel.interfaces.app import MONAILabelApp

logger = logging.getLogger(__name__)

APP_DIR = Path(__file__).resolve().parent
DEFAULT_BUNDLE = APP_DIR.parents[1]
MODEL_NAME = "medtex"
# monailabel's default datastore extensions lack DICOM files with a suffix and the other image formats the bundle reads
EXTRA_EXTENSIONS = ["*.dcm", "*.jpeg", "*.tiff"]


class MedTexApp(MONAILabelApp):
    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]) -> None:
        self.bundle_root = Path(conf.get("bundle_path") or DEFAULT_BUNDLE).resolve()
        if not (self.bundle_root / "configs" / "inference.yaml").is_file():
            raise FileNotFoundError(f"--conf bundle_path {self.bundle_root}: no configs/inference.yaml")
        # the bundle's configs import the package `bundle` (bundle.networks, bundle.data ...): the bundle root on the
        # import path, whatever the working directory
        if str(self.bundle_root) not in sys.path:
            sys.path.insert(0, str(self.bundle_root))
        if str(APP_DIR) not in sys.path:
            sys.path.insert(0, str(APP_DIR))
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="MED-TEX",
            description="Explainable classification (MED-TEX explainer + student): class scores and saliency mask",
            version="1",
        )

    def init_datastore(self) -> Any:
        if self.studies.startswith(("http://", "https://")):
            return super().init_datastore()
        extensions = list(dict.fromkeys([*settings.MONAI_LABEL_DATASTORE_FILE_EXT, *EXTRA_EXTENSIONS]))
        return LocalDatastore(
            self.studies,
            extensions=extensions,
            auto_reload=settings.MONAI_LABEL_DATASTORE_AUTO_RELOAD,
            read_only=settings.MONAI_LABEL_DATASTORE_READ_ONLY,
        )

    def init_infers(self) -> dict[str, Any]:
        from lib.infers.medtex import MedTexInfer

        return {MODEL_NAME: MedTexInfer(self.bundle_root, self.conf)}

    def init_strategies(self) -> dict[str, Any]:
        return {}  # nothing is trained here: no active-learning strategy to offer
