"""BEExformer on one GLUE task, trained from scratch.

Run (offline, from a local GLUE folder):

  python -m beex_jax.main --config configs/glue.py:task=sst2 --workdir runs/sst2 \
      --config.data.glue_dir=../shared/data/glue

Variants are `key=value` pairs after the colon, comma separated:
  task=sst2|cola|mrpc|rte|stsb|wnli|qnli|qqp|mnli   the GLUE task
  size=tiny|small|base                               model size (docs/method.md §2), default small
Any field can then be overridden, e.g. `--config.model.num_layers=4 --config.exit.delta=0.2`.

Measured on a 2-core CPU, trained from scratch with the small size and the default recipe, the
method's ten epochs (SST-2 three; dev GLUE score with early exit at delta=0.1, mean ± std over
seeds 0 and 1; experiments/results/reproduction.md, each run's command in its JSON):

  python -m beex_jax.main --config configs/glue.py:task=<task> --workdir runs/<task> \
      --config.data.glue_dir=../shared/data/glue [--config.model.binarize=False]

  task   score                    binarized         full precision
  cola   Matthews                  9.41 ± 0.02      10.36 ± 0.13
  mrpc   mean(F1, accuracy)       76.69 ± 0.61      74.67 ± 0.18  (binarized F1 82.19/81.93,
                                                                  accuracy 72.06/70.59)
  rte    accuracy                 54.33 ± 0.25      52.89 ± 0.25  (majority class: 52.71)
  stsb   mean(Pearson, Spearman)  20.22 ± 3.83      19.05 ± 0.54
  wnli   accuracy                 56.34 ± 0.00      55.64 ± 1.00  (majority class: 56.34)
  sst2   accuracy (3 epochs)      80.85 ± 0.00      80.62 ± 0.65
  qnli, qqp, mnli: not measured (their train files are not in ../shared/data/glue).

Early exit saves 51-67% of FLOPs (task means; binarized RTE seed 1 alone 35.5%); the binarized
model is 18-22x smaller; early and last exit (each at its best) differ by at most 0.71 points.
Binarized and full precision are within the dev sets' sampling error of each other. The best
binarized SST-2 result is 81.65% with the BERT vocabulary, one epoch (target.md).
None of the recipe options (loss.detach_routing, data.vocab_min_frequency, data.word_dropout,
loss.label_smoothing, model.embedding_dropout_rate) beat the default by two standard errors
(experiments/results/recipe_vs_baseline.md), so all are off.
"""

from __future__ import annotations

import ml_collections

# Tasks whose inputs are sentence pairs; the rest are single sentences.
PAIR_TASKS = ("mrpc", "rte", "stsb", "wnli", "qnli", "qqp", "mnli")
NUM_CLASSES = {
    "sst2": 2,
    "cola": 2,
    "mrpc": 2,
    "rte": 2,
    "stsb": 1,
    "wnli": 2,
    "qnli": 2,
    "qqp": 2,
    "mnli": 3,
}
SIZES = {
    # num_layers, hidden_dim, num_heads, slfn_dim, exit_dim
    "tiny": (3, 32, 2, 64, 16),
    "small": (6, 128, 4, 256, 64),
    "base": (6, 256, 4, 512, 64),
}


def parse_arg(arg: str) -> dict[str, str]:
    """Parses `k=v,k=v` config variant strings."""
    out: dict[str, str] = {}
    for item in filter(None, (arg or "").split(",")):
        if "=" not in item:
            raise ValueError(f"Config variant {item!r} is not of the form key=value.")
        key, value = item.split("=", 1)
        out[key.strip()] = value.strip()
    return out


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    """Returns the config for `task=...,size=...`."""
    args = parse_arg(arg)
    unknown = set(args) - {"task", "size"}
    if unknown:
        raise ValueError(f"Unknown config variant keys {sorted(unknown)}; valid: task, size.")
    task = args.get("task", "sst2")
    if task not in NUM_CLASSES:
        raise ValueError(f"Unknown GLUE task {task!r}; valid: {sorted(NUM_CLASSES)}.")
    size = args.get("size", "small")
    is_pair = task in PAIR_TASKS

    config = ml_collections.ConfigDict()
    config.task = task  # GLUE task name (TFDS's `glue/<task>` config name).
    config.seed = 0  # Seeds parameter init, dropout and data shuffling.

    config.data = ml_collections.ConfigDict()
    # Local GLUE folder (TASK/train.tsv, ...); None: TFDS downloads the original archives.
    config.data.glue_dir = ml_collections.FieldReference(None, field_type=str)
    # Folder already holding the original GLUE .zip archives (TFDS manual_dir).
    config.data.manual_dir = ml_collections.FieldReference(None, field_type=str)
    # Where the prepared array_record files and the learned vocabulary go.
    config.data.tfds_dir = "~/tensorflow_datasets"
    # WordPiece vocabulary file (e.g. BERT uncased); None learns one from the train split.
    config.data.vocab_file = ml_collections.FieldReference(None, field_type=str)
    config.data.vocab_size = 16000  # Largest size of the learned vocabulary.
    # A learned WordPiece merges only pairs seen at least this often in the train text (0 or 1:
    # no minimum), so a small corpus gets a smaller vocabulary of pieces it has actually seen.
    config.data.vocab_min_frequency = 0
    config.data.max_length = 128 if is_pair else 64  # Tokens per example, [CLS]/[SEP] included.
    config.data.bucket_boundaries = (16, 32, 64, 128)  # Batches are padded to the next of these.
    config.data.max_train_examples = -1  # Use only the first N train examples (-1: all).
    config.data.max_eval_examples = -1  # Use only the first N dev examples (-1: all).
    config.data.bucket_window = 64  # Train batches sorted by length together (less padding).
    config.data.prefetch = 4  # Batches grain prepares ahead in a background thread.
    config.data.word_dropout = 0.0  # Training tokens replaced by [UNK] with this probability.

    config.model = model_config(size, NUM_CLASSES[task], type_vocab_size=2 if is_pair else 1)
    config.model.max_length = config.data.get_ref("max_length")  # Learned positions.
    config.model.vocab_size = config.data.get_ref("vocab_size")  # Set from the tokenizer.

    config.exit = ml_collections.ConfigDict()
    config.exit.policy = "entropy_reduction"  # entropy_reduction | entropy_threshold | patience.
    config.exit.delta = 0.1  # Exit when the fractional entropy reduction falls below this.
    config.exit.min_exit_block = 2  # 1-based; nobody exits before this block.
    config.exit.answer_from = "current"  # current | previous block's logits at the exit.
    config.exit.entropy_threshold = 0.3  # DeeBERT baseline: exit when H_i < threshold.
    config.exit.patience = 2  # PABEE baseline: exit after this many agreeing exits.
    # Inference runs batches in chunks of rows; 0 chooses them from the batch, length and device
    # (CPU: about chunk_tokens tokens each, early exit at least min_chunks chunks per batch).
    config.exit.chunk_size = 0
    config.exit.chunk_tokens = 1024  # Tokens per chunk on CPU (activations stay in cache).
    config.exit.min_chunks = 8  # Early exit splits a batch at least this finely.
    # A block's active rows past its last full chunk run in chunks this many times smaller.
    config.exit.tail_split = 4

    config.loss = ml_collections.ConfigDict()
    config.loss.name = "soft_routing"  # soft_routing | mean | weighted.
    config.loss.tau = 0.1  # Temperature of the soft exit decision.
    config.loss.lam = 1.0  # Weight of the mean-over-exits term.
    config.loss.detach_routing = False  # Stop the gradient through the exit probabilities q.
    config.loss.label_smoothing = 0.0  # Mix one-hot targets with uniform (classification).

    config.optim = optim_config()

    # A workdir of pretraining (or training) to start from: its vocabulary, embedding and
    # blocks (beex_jax/init_from.py); None: from scratch.
    config.init_from = ml_collections.FieldReference(None, field_type=str)
    config.init_from_step = -1  # Checkpoint step of init_from to load (-1: its latest).
    config.init_from_exits = False  # Also load its exit heads (a fine-tuned source).

    config.batch_size = 32  # Global training batch.
    config.eval_batch_size = 128  # Global evaluation batch.
    config.num_epochs = 10  # Training epochs.
    config.num_train_steps = -1  # Stop after this many steps (-1: num_epochs).
    config.eval_every_steps = -1  # Evaluate on dev this often (-1: once per epoch).
    config.checkpoint_every_steps = 500  # Save a checkpoint this often, and at the end.
    config.keep_checkpoints = 2  # Most recent checkpoints kept (plus the best).
    config.log_every_steps = 50  # Training metrics cadence.

    add_runtime_fields(config)
    return config.lock()


def model_config(
    size: str, num_classes: int, type_vocab_size: int = 1
) -> ml_collections.ConfigDict:
    """The `model` section for a size (shared with configs/pretrain.py)."""
    if size not in SIZES:
        raise ValueError(f"Unknown size {size!r}; valid: {sorted(SIZES)}.")
    num_layers, hidden_dim, num_heads, slfn_dim, exit_dim = SIZES[size]
    model = ml_collections.ConfigDict()
    model.num_layers = num_layers  # Blocks, each followed by an exit head.
    model.hidden_dim = hidden_dim  # d.
    model.num_heads = num_heads  # Attention heads.
    model.slfn_dim = slfn_dim  # d_slfn, the SLFN inner width (FFN ablation uses 4d).
    model.exit_dim = exit_dim  # Hidden width of each exit head.
    model.dropout_rate = 0.1  # Dropout after embeddings, attention and SLFN.
    model.embedding_dropout_rate = 0.0  # Drops whole token vectors of the embedding.
    model.max_length = 128  # Learned positions (the caller ties it to data.max_length).
    model.vocab_size = 16000  # Set from the tokenizer.
    model.type_vocab_size = type_vocab_size  # Segment ids.
    model.num_classes = num_classes  # 1 means regression (STS-B).
    model.binarize = True  # False: the full-precision counterpart, same parameter tree.
    model.slfn = True  # False: plain binarized FFN (d -> 4d -> d, GELU) ablation.
    model.norm = "post"  # post: LayerNorm after each residual add (paper) | pre.
    # learned: position table (paper) | alibi: attention penalised by distance, no table.
    model.position = "learned"
    model.surrogate = "approx_sign"  # approx_sign | ste_clip | identity.
    model.scale = "per_channel"  # per_channel | per_tensor | none.
    model.detach_scale = False  # Stop the gradient through alpha.
    model.binarize_activations = False  # W1A1 inputs to binarized dense layers.
    # auto (bfloat16 on GPU/TPU, bf16_f32 on CPUs with bf16 dots, else float32) | float32 |
    # bfloat16 | bf16_f32 (bf16 dot operands, float32 accumulation/activations); params float32.
    model.dtype = "auto"
    # auto (block on CPU, none on GPU/TPU) | block (recompute each block's activations in the
    # backward pass instead of saving them) | none. Training only; the outputs are the same.
    model.remat = "auto"
    return model


def optim_config() -> ml_collections.ConfigDict:
    """The `optim` section (shared with configs/pretrain.py)."""
    optim = ml_collections.ConfigDict()
    optim.learning_rate = 1e-3  # Peak learning rate.
    optim.warmup_fraction = 0.06  # Linear warm-up, then cosine decay.
    optim.weight_decay = 0.01  # AdamW decay (not on latent binary weights, biases, norms).
    optim.grad_clip_norm = 1.0  # Global-norm clipping.
    optim.clip_latent = True  # Clip latent binary weights to [-1, 1] after each update.
    # Learning-rate multiplier of the embedding and blocks (exit and MLM heads keep the full
    # rate): below 1, a gentler fine-tuning of a pretrained body (`init_from`).
    optim.body_lr_scale = 1.0
    # Layer-wise learning-rate decay: block i of L gets decay ** (L - i) of the rate, the
    # embedding decay ** (L + 1), the heads 1 (ELECTRA-style fine-tuning of a pretrained body).
    optim.layer_decay = 1.0
    # Learning-rate multiplier of the token embedding table alone (composes with the two above):
    # below 1, fresh blocks learn at the full rate while a pretrained table (word vectors) moves
    # slowly; its latent values sit near 0.02, where a few full-rate Adam steps flip their signs.
    optim.embedding_lr_scale = 1.0
    optim.b1 = 0.9
    optim.b2 = 0.999
    return optim


def add_runtime_fields(config: ml_collections.ConfigDict) -> None:
    """Mesh and multi-host fields (shared with configs/pretrain.py)."""
    config.mesh = ml_collections.ConfigDict()
    config.mesh.model_parallelism = 1  # Size of the `model` mesh axis; `data` takes the rest.
    config.distributed = False  # Call jax.distributed.initialize() (multi-host).
    # Passed to jax.distributed.initialize; None: auto-detected (Cloud TPU, SLURM, ...).
    config.coordinator_address = ml_collections.FieldReference(None, field_type=str)  # host:port.
    config.num_processes = ml_collections.FieldReference(None, field_type=int)
    config.process_id = ml_collections.FieldReference(None, field_type=int)
