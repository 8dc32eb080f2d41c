"""`python -m dinotwins.bench`: the command line (cli.py); our training step timed against the matmul peak
(step.py), the official DINO step beside it (official.py), the step's matrix products timed alone (ceiling.py), the
CPU's flags (cpu.py) and the data pipeline's speed (data_pipeline.py). Searching a collection's index is timed by
the collection's own collection/bench.py."""
