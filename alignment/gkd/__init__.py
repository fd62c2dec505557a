"""GKD stage (on-policy distillation with the generalised JSD): ``run_gkd.py``, ``trainer.GKDTrainer``,
``config.GKDArguments``."""
