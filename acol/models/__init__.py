"""Backbones (`backbones`) and the shared WSOL architectures (`wsol`); the methods that build models
from them live in `acol.methods` (`acol.methods.build_model`)."""
