"""Skip-gram word vectors as the latent token embedding: the cheapest pretraining stage.

`--mode=pretrain --config.objective=word_vectors` (`beex_jax.pretrain.pretrain` collects the
corpus and the vocabulary, then hands over to `train_word_vectors`): every text of the corpus
(GLUE train text, `data.text_files`, `data.tfds_text`) is tokenized with the run's WordPiece
vocabulary and written as one line of token ids; gensim's Word2Vec (skip-gram with negative
sampling, `config.word_vectors`) learns a `model.hidden_dim` vector per token from that file;
`latent_embedding` turns the vectors into the latent weights of the binarized embedding. The
workdir gets config.json, vocab.txt, summary.json and a checkpoint that holds only the token
embedding: `--config.init_from` of a GLUE run or of an MLM stage loads it, and the rest of that
model starts fresh.

From vectors to latent binarized weights (`latent_embedding`):
  1. centre: subtract the mean vector of the tokens that have one, so that sign(W) does not put
     every token on the same side of a shared offset;
  2. scale each row to the standard deviation of the fresh embedding init (`EMBEDDING_STDDEV`,
     0.02): every row's alpha = mean|W| is then that of a fresh start, and the latent values sit
     deep inside [-1, 1], where the surrogate gradient of sign is alive;
  3. clip to [-1, 1], the latent weight bound (a no-op at this scale, kept as the guarantee).
Tokens without a vector (never in the corpus, and the special tokens) keep a fresh init row. The
binarized forward pass sees alpha * sign(W): the signs of the centred vectors.

Word2Vec runs with `word_vectors.workers` threads; with more than one its result depends on
thread timing (gensim's own caveat), so two runs with one seed agree in quality, not bitwise.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import tokenizers
from etils import epath

from beex_jax import binarize as bz
from beex_jax import checkpointing, config_fields, layers, sharding
from beex_jax.data import corpus
from beex_jax.data import tokenizer as tokenizer_lib

SUMMARY_FILE = "summary.json"
# The latent embedding's place in the model's parameters (GLUE model and MLM body alike).
EMBEDDING_PATH = ("embed", "token", bz.BINARY_EMBEDDING)
# Tokens whose nearest neighbours the summary lists (those the vocabulary has).
PROBE_TOKENS = ("good", "bad", "movie", "man", "two")


def latent_embedding(
    vectors: np.ndarray, found: np.ndarray, fresh: np.ndarray, stddev: float
) -> np.ndarray:
    """Latent embedding [V, d]: rows with a vector (`found`) centred, scaled to `stddev` per row
    and clipped to [-1, 1]; the other rows taken from `fresh`."""
    vectors = np.asarray(vectors, np.float64)
    found = np.asarray(found, bool)
    if vectors.shape != fresh.shape or found.shape != vectors.shape[:1]:
        raise ValueError(
            f"vectors {vectors.shape}, found {found.shape} and fresh {fresh.shape} disagree."
        )
    if not found.any():
        raise ValueError("No vocabulary token has a word vector: the corpus shares no token.")
    centred = vectors - vectors[found].mean(axis=0)
    spread = centred.std(axis=1, keepdims=True)
    scaled = centred * (stddev / np.where(spread > 0, spread, 1.0))
    table = np.where(found[:, None], np.clip(scaled, -1.0, 1.0), fresh)
    return table.astype(np.float32)


def write_token_lines(
    tokenizer: tokenizers.Tokenizer, texts: Sequence[str], path: str, chunk: int = 4096
) -> int:
    """Writes the token ids of each text as one line of `path`; returns the number of tokens."""
    count = 0
    with open(path, "w", encoding="ascii") as f:
        for start in range(0, len(texts), chunk):
            batch = list(texts[start : start + chunk])
            for encoding in tokenizer.encode_batch(batch, add_special_tokens=False):
                if encoding.ids:
                    f.write(" ".join(map(str, encoding.ids)) + "\n")
                    count += len(encoding.ids)
    return count


def train_vectors(token_file: str, dim: int, options: ml_collections.ConfigDict, seed: int) -> Any:
    """gensim Word2Vec (skip-gram, negative sampling) over a file of token-id lines: its `wv`."""
    from gensim.models import Word2Vec  # Imported when used: only this stage needs it.

    workers = int(options.workers) or os.cpu_count() or 1
    model = Word2Vec(
        corpus_file=token_file,
        vector_size=dim,
        sg=1,
        window=int(options.window),
        negative=int(options.negative),
        min_count=int(options.min_count),
        sample=float(options.subsample),
        alpha=float(options.learning_rate),
        epochs=int(options.epochs),
        workers=workers,
        seed=seed,
    )
    return model.wv


def vocabulary_vectors(keyed_vectors: Any, vocab_size: int) -> tuple[np.ndarray, np.ndarray]:
    """([vocab_size, d] vectors by token id, [vocab_size] whether the token has one)."""
    vectors = np.zeros((vocab_size, keyed_vectors.vector_size), np.float32)
    found = np.zeros(vocab_size, bool)
    for key, index in keyed_vectors.key_to_index.items():
        token_id = int(key)
        if 0 <= token_id < vocab_size:
            vectors[token_id] = keyed_vectors.vectors[index]
            found[token_id] = True
    return vectors, found


def nearest_tokens(
    table: np.ndarray, tokenizer: tokenizers.Tokenizer, words: Sequence[str], k: int = 5
) -> dict[str, list[str]]:
    """The `k` tokens whose rows are most cosine-similar to each word's (a quick quality look)."""
    unit = table / np.maximum(np.linalg.norm(table, axis=1, keepdims=True), 1e-12)
    out = {}
    for word in words:
        token_id = tokenizer.token_to_id(word)
        if token_id is None:
            continue
        order = np.argsort(-(unit @ unit[token_id]))
        out[word] = [tokenizer.id_to_token(int(i)) for i in order if i != token_id][:k]
    return out


def save_embedding(workdir: str, table: np.ndarray) -> None:
    """A training checkpoint (step 0) whose parameters are only the token embedding."""
    params: dict[str, Any] = {}
    node = params
    for name in EMBEDDING_PATH[:-1]:
        node = node.setdefault(name, {})
    node[EMBEDDING_PATH[-1]] = table
    directory = checkpointing.absolute(workdir) / checkpointing.LATEST_DIR
    with ocp.CheckpointManager(
        directory, item_handlers={"state": ocp.StandardCheckpointHandler()}
    ) as manager:
        manager.save(0, args=ocp.args.Composite(state=ocp.args.StandardSave({"params": params})))
        manager.wait_until_finished()


def train_word_vectors(
    config: ml_collections.ConfigDict,
    workdir: str,
    units: Sequence[corpus.Unit],
    vocab_path: str,
    *,
    allow_config_change: bool = False,
) -> dict:
    """Learns the word vectors of the corpus `units` and writes the workdir; returns a summary.

    A workdir that already holds the finished stage is left as it is (its summary returned).
    """
    if config.init_from:
        raise config_fields.ConfigError(
            "config.objective=word_vectors starts from the corpus alone; unset config.init_from."
        )
    tokenizer = tokenizer_lib.tokenizer_from_vocab(vocab_path)
    config = config.copy_and_resolve_references()
    config.model.vocab_size = tokenizer.get_vocab_size()
    checkpointing.check_config_matches(config, workdir, allow_change=allow_config_change)
    checkpointing.write_config(config, workdir)
    summary_path = epath.Path(workdir) / SUMMARY_FILE
    if summary_path.exists() and (epath.Path(workdir) / checkpointing.LATEST_DIR / "0").exists():
        print(f"\n=== word vectors: {workdir} already holds them (summary.json) ===")
        return json.loads(summary_path.read_text())

    summary: dict[str, Any] = {}
    if jax.process_index() == 0:
        summary = _train_and_save(config, workdir, units, tokenizer)
        summary_path.write_text(json.dumps(summary, indent=2))
        print(
            f"\n=== word vectors: {summary['corpus_tokens']} tokens, "
            f"{summary['tokens_with_vector']} of {summary['vocab_size']} vocabulary tokens with "
            f"a vector, {summary['train_seconds']:.0f} s of Word2Vec; nearest to 'good': "
            f"{', '.join(summary['nearest'].get('good', []))} ==="
        )
    sharding.sync_processes("word_vectors")
    return summary or json.loads(summary_path.read_text())


def _train_and_save(
    config: ml_collections.ConfigDict,
    workdir: str,
    units: Sequence[corpus.Unit],
    tokenizer: tokenizers.Tokenizer,
) -> dict[str, Any]:
    options, dim = config.word_vectors, int(config.model.hidden_dim)
    vocab_size = tokenizer.get_vocab_size()
    started = time.time()
    with tempfile.TemporaryDirectory(dir=workdir, prefix="corpus-") as tmp:
        token_file = os.path.join(tmp, "token_ids.txt")
        num_tokens = write_token_lines(tokenizer, corpus.unit_texts(units), token_file)
        if num_tokens == 0:
            raise ValueError("The word-vector corpus holds no token: add text.")
        tokenized = time.time()
        keyed_vectors = train_vectors(token_file, dim, options, int(config.seed))
        trained = time.time()
    vectors, found = vocabulary_vectors(keyed_vectors, vocab_size)
    rng = jax.random.PRNGKey(int(config.seed))
    fresh = np.asarray(layers.embedding_init(rng, (vocab_size, dim)), np.float32)
    table = latent_embedding(vectors, found, fresh, layers.EMBEDDING_STDDEV)
    save_embedding(workdir, table)
    return {
        "objective": "word_vectors",
        "corpus_units": len(units),
        "corpus_tokens": num_tokens,
        "vocab_size": vocab_size,
        "tokens_with_vector": int(found.sum()),
        "dim": dim,
        "word2vec": {key: options[key] for key in sorted(options.keys())},
        "tokenize_seconds": tokenized - started,
        "train_seconds": trained - tokenized,
        "tokens_per_second": num_tokens * int(options.epochs) / max(trained - tokenized, 1e-9),
        "nearest": nearest_tokens(vectors, tokenizer, PROBE_TOKENS),
        "wall_minutes_this_run": (time.time() - started) / 60,
    }
