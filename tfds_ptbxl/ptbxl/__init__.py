"""`ptbxl`: PTB-XL as pre-tokenized ECG sentences. Importing this package registers the builder."""

from tfds_ptbxl.ptbxl import ptbxl_dataset_builder  # noqa: F401  (registers `ptbxl` with TFDS)
