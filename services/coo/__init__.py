"""COO: run missions for teams of LLM agents and see everything they do."""

__version__ = "0.1.0"
