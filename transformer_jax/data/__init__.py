"""Input: TFDS datasets (datasets.py), the SentencePiece vocabulary (tokenizer.py), the
Grain pipeline (pipeline.py) and the built-in synthetic corpus (synthetic.py)."""
