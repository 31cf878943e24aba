"""`ptbxl`: PTB-XL as pre-tokenized ECG sentences."""
