"""GPT model (imported as perfkit.model)."""

from .accounting import count_parameters, flops_per_token, padded_vocab_size, parameter_count
from .gpt import GPT
from .loss import IGNORE_INDEX, LMLoss, cross_entropy_loss

__all__ = ["GPT", "IGNORE_INDEX", "LMLoss", "cross_entropy_loss", "flops_per_token", "count_parameters", "parameter_count",
           "padded_vocab_size"]
