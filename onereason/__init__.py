"""onereason: fine-tune open LLMs into reasoning generative recommenders.

See docs/ARCHITECTURE.md for the data flow and the contracts between stages.
"""

__version__ = "0.1.0"
