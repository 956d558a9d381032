"""Inference engines: the contract (``api``) and the llama.cpp adapter (``llamacpp``)."""
