"""KTO stage (unpaired desirable / undesirable data): ``run_kto.py``, ``trainer.KTOTrainer``,
``config.KTOArguments``."""
