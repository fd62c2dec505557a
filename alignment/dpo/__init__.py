"""Offline preference stage: DPO and its loss family (every ``preference`` loss of the registry), CPO,
SimPO and ORPO. ``run_dpo.py`` is the entry point, ``trainer.DPOTrainer`` the thin Trainer,
``config.DPOArguments`` the typed hyperparameters; the completion log-probs come from
``alignment.training.logps`` (shared with the KTO and GKD stages)."""
