"""Training: the loop (trainer.py) that runs any registered objective on any data source, and what it relies on:
verified checkpoints, the run log, the collapse monitor, graceful stops on signals, torchrun setup, the autocast
choice, and train.py's command line (cli.py). The schedules it shares with the objectives are dinotwins/schedules.py."""
