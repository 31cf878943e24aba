"""`csv`: your own records and labels, listed in a CSV, as pre-tokenized ECG sentences. Importing this package registers the builder."""

from tfds_ptbxl.csv_labels import csv_labels_dataset_builder  # noqa: F401  (registers `csv` with TFDS)
