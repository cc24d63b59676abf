"""Class maps: float32 map ops (`ops`), hook context managers (`hooks`) and the localizers, one
interface for in-forward, CAM and Grad-CAM-family maps (`localizers`, `gradient_family`)."""
from acol.cams import gradient_family  # registers its localizers
from acol.cams.localizers import (LOCALIZERS, Localizer, applicable_localizers, build_localizer, default_localizer,
                                  default_localizer_name)

__all__ = ["LOCALIZERS", "gradient_family", "Localizer", "applicable_localizers", "build_localizer", "default_localizer",
           "default_localizer_name"]
