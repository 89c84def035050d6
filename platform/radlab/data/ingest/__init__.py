"""Dataset readers that turn credentialed downloads (MIMIC-CXR, CheXpert Plus, IU X-ray, or any
CSV/JSONL with a column mapping) into radlab manifests."""
