"""GLUE data: TFDS builder, WordPiece tokenizer and grain input pipeline."""

from beex_jax.data.glue_builder import TASKS, BeexGlue, prepare, read_split
from beex_jax.data.pipeline import GlueInput, create_input, eval_split_names
from beex_jax.data.tokenizer import build_tokenizer, encode, text_fields

__all__ = [
    "TASKS",
    "BeexGlue",
    "GlueInput",
    "build_tokenizer",
    "create_input",
    "encode",
    "eval_split_names",
    "prepare",
    "read_split",
    "text_fields",
]
