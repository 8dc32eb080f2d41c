"""Scoring frozen backbones: features with an on-disk cache (features.py), the weighted k-NN (knn.py), the
low-label linear probe (probe.py), attention masks against object masks (attention_masks.py), embedding health
(embedding_health.py), one row per model with its baselines (rows.py) and the command line (cli.py,
`python -m dinotwins.evaluate`)."""
