"""llama.cpp as a target (``llamacpp:<arch>``), through llama-cpp-python's low-level API."""
