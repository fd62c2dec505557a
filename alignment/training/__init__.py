"""What several stages share: log-probs, batch samplers, arguments, finishing a run; a stage never imports
another stage.

* ``arguments``: ``ModelArguments`` (causal LM + LoRA) and ``DataArguments`` (dataset specs, tokenization)
* ``sampler``: ``GlobalBatchSampler``, batches independent of the number of data-parallel ranks
* ``logps``: completion log-probabilities of a causal LM (one forward for chosen + rejected)
* ``runner``: building the datasets and models of a run, training / evaluating / saving it

The stage packages (``sft``, ``rm``, ``dpo``, ``kto``, ``gkd``, ``ppo``) import from here, never from
each other (tests/training/test_no_cross_stage_imports.py checks it).
"""
