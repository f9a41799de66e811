"""shimmy: a local LLM inference server over llama.cpp."""

__version__ = "0.1.0"
