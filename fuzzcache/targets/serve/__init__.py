"""Servers as targets: engines as they are deployed, driven over HTTP.

``driver`` (the async HTTP client every server shares), ``managed`` (a server fuzzcache starts
and stops), one module per server dialect (``vllm``: vLLM's OpenAI-compatible server) and
``target`` (the contract over a server: managed or attached).
"""
