"""Data: wsolevaluation-format metadata, datasets, transforms and the synthetic benchmark."""
