"""Class maps: float32 map ops (`ops`), hook context managers (`hooks`) and the localizers, one
interface for in-forward, CAM and Grad-CAM-family maps (`localizers`, `gradient_family`) and
perturbation maps (`perturbation`); importing the modules registers their localizers."""
from acol.cams import gradient_family  # registers its localizers
from acol.cams.localizers import (LOCALIZERS, Localizer, applicable_localizers, build_localizer, default_localizer,
                                  default_localizer_name)
from acol.cams.perturbation import RISE, AblationCAM, ScoreCAM  # importing registers them

__all__ = ["LOCALIZERS", "RISE", "AblationCAM", "Localizer", "ScoreCAM", "applicable_localizers", "build_localizer",
           "default_localizer", "default_localizer_name", "gradient_family"]
