"""mixjax: find the data mixture for fine-tuning a language model."""

__version__ = "0.1.0"
