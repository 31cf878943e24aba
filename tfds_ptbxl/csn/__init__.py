"""`csn`: Chapman-Shaoxing-Ningbo as pre-tokenized ECG sentences. Importing this package registers the builder."""

from tfds_ptbxl.csn import csn_dataset_builder  # noqa: F401  (registers `csn` with TFDS)
