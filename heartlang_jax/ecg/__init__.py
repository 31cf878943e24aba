"""ECG signals: reading records, QRS detection and tokenizing a record into an ECG sentence."""
