"""Batched, jitted prediction with per-example early exit (docs/method.md §3): API and file I/O.

  predictor = beex_jax.load("runs/sst2")          # a training workdir (best checkpoint) or an
  predictor.predict(["a gripping film", ...])     # export directory (`beex_jax.export`)
  predictor.predict([("premise", "hypothesis")])  # pairs, for pair tasks

Each prediction is a dict: `label` (class id) and `label_name` with `probabilities` (softmax of
the answering exit), or `score` for STS-B; `exit_index` (0-based exit that answered), `flops`
(FLOPs spent on the example at its real length, `beex_jax.flops`) and `truncated` (the text was
cut to max_length tokens).

Files: `predict(config, workdir, input_path=..., output_path=...)` is `--mode=predict` of
`python -m beex_jax.main`; formats and bad-line handling are in `beex_jax.predict_files`, which
takes the Predictor as an argument and imports nothing from here.

Texts are tokenized in chunks, sorted by length and batched; a batch is padded to one of a few
batch sizes (powers of 4 up to batch_size) and bucket lengths (`config.data.bucket_boundaries`),
so jit compiles a handful of programs.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Iterator, Sequence
from typing import Any

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tokenizers

from beex_jax import checkpointing, config_fields, data, early_exit, export, export_loader, flops
from beex_jax import exits as ex
from beex_jax.data import glue_builder, pipeline
from beex_jax.data import tokenizer as tokenizer_lib
from beex_jax.model import ModelConfig, Params, inference_params
from beex_jax.predict_files import BadInputError, predict_file

__all__ = ["MODES", "BadInputError", "Predictor", "load", "predict", "predict_file"]
MODES = ("early_exit", "full_depth")


@functools.partial(jax.jit, static_argnames=("model_config", "chunk_size"))
def last_exit_forward(
    params: Params,
    input_ids: jax.Array,
    segment_ids: jax.Array,
    mask: jax.Array,
    *,
    model_config: ModelConfig,
    chunk_size: int = 0,
    num_rows: jax.Array | None = None,
) -> dict[str, jax.Array]:
    """No early exit: every block on every example (in chunks of rows), the last exit answers."""
    logits = early_exit.full_depth_logits(
        params,
        input_ids,
        segment_ids,
        mask,
        model_config=model_config,
        chunk_size=chunk_size,
        num_rows=num_rows,
    )[-1]
    lengths = jnp.sum(mask, axis=-1).astype(jnp.int32)
    last = jnp.full(lengths.shape, model_config.num_layers - 1, jnp.int32)
    return {
        "logits": logits,
        "prediction": ex.prediction(logits),
        "exit_index": last,
        "last_block": last,
        "flops": flops.full_depth_flops(model_config, lengths),
    }


def batch_sizes(batch_size: int) -> tuple[int, ...]:
    """The padded batch sizes: powers of 4 below batch_size, then batch_size itself."""
    sizes = {batch_size}
    size = 1
    while size < batch_size:
        sizes.add(size)
        size *= 4
    return tuple(sorted(sizes))


class Predictor:
    """A model, its tokenizer and exit rule: jitted batched prediction of texts."""

    def __init__(
        self,
        params: Params,
        config: ml_collections.ConfigDict,
        tokenizer: tokenizers.Tokenizer,
        *,
        mode: str = "early_exit",
        batch_size: int | None = None,
        delta: float | None = None,
        source: str = "",
    ):
        if mode not in MODES:
            raise ValueError(f"Unknown mode {mode!r}; valid: {MODES}.")
        self.tokenizer, self.mode = tokenizer, mode
        self.source = source  # Where the model was loaded from.
        self.task = config.task
        # Binarized once here: the jitted forward passes read alpha * sign(W) as it is.
        latent_config = ModelConfig.from_config(config.model)
        params, self.model_config = inference_params(jax.device_put(params), latent_config)
        if self.model_config != latent_config:
            config = config.copy_and_resolve_references()
            with config.unlocked():
                config.model.packed_weights = True
        self.config, self.params = config, params
        exit_values = dict(config.exit.items())
        if delta is not None:
            exit_values["delta"] = float(delta)
        self.exit_config = ex.ExitConfig.from_config(exit_values)
        if tokenizer.get_vocab_size() != self.model_config.vocab_size:
            raise ValueError(
                f"The tokenizer has {tokenizer.get_vocab_size()} tokens but the "
                f"model's embedding {self.model_config.vocab_size} rows."
            )
        spec = glue_builder.task_spec(self.task)
        self.text_fields = data.text_fields(self.task)
        self.text_columns = tuple(column for _, column in spec.text_features)
        self.label_names = spec.label_classes
        self.max_length = self.model_config.max_length
        self.lengths = pipeline.padded_lengths(
            tuple(config.data.bucket_boundaries), self.max_length
        )
        self.batch_size = int(batch_size or config.eval_batch_size)
        self.batch_sizes = batch_sizes(self.batch_size)
        self._empty = data.encode(tokenizer, [""], max_length=self.max_length)

    @property
    def num_exits(self) -> int:
        """The number of exit heads, one per block."""
        return self.model_config.num_layers

    @property
    def is_pair(self) -> bool:
        """True when the model reads sentence pairs."""
        return len(self.text_fields) == 2

    def encode(self, texts: Sequence[Sequence[str]]) -> dict[str, np.ndarray]:
        """Tokenizes examples (tuples of 1 or 2 texts) padded to max_length; see `data.encode`."""
        texts_a = [t[0] for t in texts]
        texts_b = [t[1] for t in texts] if self.is_pair else None
        return data.encode(
            self.tokenizer, texts_a, texts_b, max_length=self.max_length, log_truncation=False
        )

    def run_batch(
        self,
        input_ids: np.ndarray,
        segment_ids: np.ndarray,
        mask: np.ndarray,
        num_rows: int | None = None,
    ) -> dict[str, np.ndarray]:
        """The jitted forward pass on one padded batch: early exit, or every block (full depth).

        Rows from `num_rows` on are padding: not computed, their outputs meaningless.
        """
        chex.assert_rank([input_ids, segment_ids, mask], 2)
        chex.assert_equal_shape([input_ids, segment_ids, mask])
        num_rows = None if num_rows is None else np.int32(num_rows)
        if self.mode == "early_exit":
            out, _ = early_exit.early_exit_forward(
                self.params,
                input_ids,
                segment_ids,
                mask,
                self.exit_config,
                model_config=self.model_config,
                num_rows=num_rows,
            )
        else:
            out = last_exit_forward(
                self.params,
                input_ids,
                segment_ids,
                mask,
                model_config=self.model_config,
                chunk_size=self.exit_config.chunk_size,
                num_rows=num_rows,
            )
        return jax.device_get(out)

    def batches(self, encoded: dict[str, np.ndarray]) -> Iterator[tuple[np.ndarray, dict]]:
        """(example indices, padded batch) in length order; padding rows are empty texts.

        A batch never mixes bucket lengths (a short example is not padded to a long one's bucket),
        and the padding rows of a partial batch are skipped by the forward pass (`num_rows`).
        """
        order = np.argsort(encoded["length"], kind="stable")
        buckets = np.array(
            [pipeline.bucket_length(int(n), self.lengths) for n in encoded["length"][order]]
        )
        for length in np.unique(buckets):
            same = order[buckets == length]
            for start in range(0, len(same), self.batch_size):
                rows = same[start : start + self.batch_size]
                size = next(s for s in self.batch_sizes if s >= len(rows))
                batch = {}
                for key in ("input_ids", "segment_ids", "mask"):
                    padding = np.repeat(self._empty[key], size - len(rows), axis=0)
                    batch[key] = np.concatenate([encoded[key][rows], padding])[:, :length]
                yield rows, batch

    def predict_encoded(self, encoded: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Per-example outputs (logits, prediction, exit_index, last_block, flops), input order."""
        num = len(encoded["length"])
        outputs: dict[str, np.ndarray] = {}
        for rows, batch in self.batches(encoded):
            for key, value in self.run_batch(**batch, num_rows=len(rows)).items():
                if key not in outputs:
                    outputs[key] = np.zeros((num, *value.shape[1:]), value.dtype)
                outputs[key][rows] = value[: len(rows)]
        return outputs

    def records(
        self, outputs: dict[str, np.ndarray], truncated: np.ndarray
    ) -> list[dict[str, Any]]:
        """One JSON-ready dict per example from `predict_encoded` outputs."""
        logits = outputs["logits"].astype(np.float64)
        out = []
        for i in range(len(logits)):
            if self.label_names is None:  # Regression (STS-B).
                record: dict[str, Any] = {"score": round(float(logits[i, 0]), 6)}
            else:
                p = np.exp(logits[i] - logits[i].max())
                label = int(outputs["prediction"][i])
                record = {
                    "label": label,
                    "label_name": self.label_names[label],
                    "probabilities": [round(float(v), 6) for v in p / p.sum()],
                }
            record.update(
                exit_index=int(outputs["exit_index"][i]),
                flops=int(outputs["flops"][i]),
                truncated=bool(truncated[i]),
            )
            out.append(record)
        return out

    def predict(self, texts: str | Sequence[str | Sequence[str]]) -> list[dict[str, Any]]:
        """Predictions for sentences (a str or a list of them) or pairs (2-tuples)."""
        if isinstance(texts, str) or (
            isinstance(texts, tuple)
            and self.is_pair
            and len(texts) == 2
            and all(isinstance(t, str) for t in texts)
        ):
            texts = [texts]
        examples = [(t,) if isinstance(t, str) else tuple(t) for t in texts]
        for example in examples:
            if len(example) != len(self.text_fields):
                kind = "sentence pairs" if self.is_pair else "single sentences"
                raise ValueError(f"This {self.task} model reads {kind}; got {example!r}.")
        if not examples:
            return []
        encoded = self.encode(examples)
        return self.records(self.predict_encoded(encoded), encoded["truncated"])


def load(
    path: str,
    *,
    mode: str = "early_exit",
    batch_size: int | None = None,
    delta: float | None = None,
    which: str = "best",
) -> Predictor:
    """A Predictor from a training workdir (its `which` checkpoint) or an export directory."""
    path = os.path.expanduser(path)
    if export_loader.is_export(path):
        params, config, tokenizer = export_loader.load_export(path)
    elif export_loader.looks_like_export(path):
        raise export_loader.damaged_export_error(path)
    elif os.path.isfile(os.path.join(path, checkpointing.CONFIG_FILE)):
        params, config = checkpointing.restore_params(path, which)
        # The workdir's own vocab.txt; workdirs from before it read data.tfds_dir's.
        tokenizer = tokenizer_lib.tokenizer_from_vocab(export.vocab_file_of(config, path))
    else:
        raise FileNotFoundError(
            f"{path} is neither a training workdir ({checkpointing.CONFIG_FILE} and checkpoints) "
            f"nor an export directory ({export.MANIFEST_FILE})."
        )
    return Predictor(
        params, config, tokenizer, mode=mode, batch_size=batch_size, delta=delta, source=path
    )


def predict(
    config: ml_collections.ConfigDict | None,
    workdir: str,
    *,
    input_path: str,
    output_path: str,
    input_format: str = "auto",
    skip_bad_lines: bool = False,
    batch_size: int | None = None,
    mode: str = "early_exit",
) -> dict[str, Any]:
    """`--mode=predict`: the model of `workdir` (a training workdir or an export) on a file.

    `config` (the command line's, may be None) must name the same task; its `exit` section then
    replaces the model's saved one, so `--config.exit.delta=0.2` changes the exit rule.
    """
    if config is not None:
        config_fields.check_ranges(config)  # Before loading: --config.exit.delta=nan, ...
    predictor = load(workdir, mode=mode, batch_size=batch_size)
    if config is not None:
        if config.get("task") != predictor.task:
            raise ValueError(
                f"--config is for task {config.get('task')!r} but {workdir} holds a "
                f"{predictor.task!r} model."
            )
        predictor.exit_config = ex.ExitConfig.from_config(config.exit)
    summary = predict_file(
        predictor, input_path, output_path, input_format=input_format, skip_bad_lines=skip_bad_lines
    )
    logging.info("Wrote %d predictions to %s: %s", summary["examples"], output_path, summary)
    return summary
