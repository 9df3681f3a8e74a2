"""perfkit: a compact, throughput-first kit for pretraining GPT-style language models."""

__version__ = "0.1.0"
