"""embedforge: turn an open decoder LLM into a text-embedding model (Wang et al. 2024) on Ray.

Pure maths (prompts, pooling, loss) lives in small modules with no Ray import; Ray appears only in
the stage packages (generate, train, evaluate, serving) and the thin drivers under ``jobs/``.
"""

__version__ = "0.1.0"
