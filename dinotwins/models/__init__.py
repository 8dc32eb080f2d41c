"""The backbone and everything around trained weights: building the ViT (backbone.py), its config and input
normalization (config.py, torch-free), the preprocessing every reader shares (preprocess.py), exporting weights
(export.py), loading any model for use (load.py, `dinotwins.load_model`)."""
