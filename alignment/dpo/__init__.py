"""Offline preference stage: DPO and its loss family (every ``preference`` loss of the registry), CPO,
SimPO and ORPO. ``run_dpo.py`` is the entry point, ``trainer.DPOTrainer`` the thin Trainer,
``config.DPOArguments`` the typed hyperparameters, ``logps`` the completion log-prob helpers that the KTO
and GKD stages share."""
