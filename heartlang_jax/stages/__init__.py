"""One module per training stage: `vqhbr` (the ECG vocabulary), `pretrain`, `finetune`."""
