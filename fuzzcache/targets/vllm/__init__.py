"""vLLM as a target: ``vllm:<arch>`` (see ``target.py`` for the mapping onto vLLM's engine)."""
