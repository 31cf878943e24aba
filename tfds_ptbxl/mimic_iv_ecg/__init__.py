"""`mimic_iv_ecg`: MIMIC-IV-ECG as pre-tokenized ECG sentences. Importing this package registers the builder."""

from tfds_ptbxl.mimic_iv_ecg import mimic_iv_ecg_dataset_builder  # noqa: F401  (registers `mimic_iv_ecg`)
