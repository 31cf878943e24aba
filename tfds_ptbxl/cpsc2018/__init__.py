"""`cpsc2018`: CPSC 2018 as pre-tokenized ECG sentences. Importing this package registers the builder."""

from tfds_ptbxl.cpsc2018 import cpsc2018_dataset_builder  # noqa: F401  (registers `cpsc2018` with TFDS)
