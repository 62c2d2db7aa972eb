"""Self-supervised MLM pretraining of the BEExformer body on unlabeled text.

Run (offline; the corpus is the train text of every GLUE task in the local folder):

  python -m beex_jax.main --mode=pretrain --config configs/pretrain.py --workdir runs/pretrain \
      --config.data.glue_dir=../shared/data/glue --config.data.tfds_dir=runs/tfds

then fine-tune from it (its vocabulary, embedding and blocks are used):

  python -m beex_jax.main --config configs/glue.py:task=sst2 --workdir runs/sst2-pretrained \
      --config.data.glue_dir=../shared/data/glue --config.data.tfds_dir=runs/tfds \
      --config.init_from=runs/pretrain

Measured on the 2-core CPU (experiments/results/pretrain_long.json; `python
experiments/sweeps/pretrain.py --root=runs/pretrain-long --steps=5000 --stages=pretrain-float
--record=pretrain_long`: full precision, pre-LN, batch 16 rows of 128): 5000 steps = 10.2M tokens
in 55 minutes, held-out masked-token accuracy 12.3% (loss 6.38 nats; word frequencies alone
6.4%, 7.06). Fine-tuning from it did not beat training from scratch on SST-2 or STS-B
(experiments/results/topic_self_pretraining.md). `--config.objective=electra` (replaced-token
detection; experiments/results/pretrain_electra.json, 2500 steps in 42 minutes) did not either:
its detector stayed at answering "original" for every token. `--config.model.position=alibi`
(experiments/results/pretrain_alibi.json) reaches 11.6% in 1000 steps (9 minutes), about what
learned positions reach in 4000, and its attention reads context. For 5000 steps
(experiments/results/pretrain_alibi_long.json, 41 minutes) it reaches 21.2% (loss 5.66), and
fine-tuning from it gives SST-2 81.31 on two seeds against 79.35 from scratch (+1.95, 1.8 paired
standard errors: not yet a measured gain) and STS-B +0.76 (noise).

Word vectors for the embedding alone (`--config.objective=word_vectors`, beex_jax/word_vectors.py;
experiments/results/word_vector_stages.json): over GLUE train text plus the IMDB reviews
(`--config.data.text_files=../shared/data/text/imdb/imdb_*.txt.xz`, 29.9M tokens) the stage takes
18.7 minutes here. Fine-tuned with `--config.init_from` and `--config.optim.embedding_lr_scale=0.1`,
SST-2 (one epoch) +1.55 and STS-B +1.27 over scratch with the same vocabulary: not yet two SEs
(experiments/results/topic_word_vectors.md).

Variants after the colon: `size=tiny|small|base` (the GLUE config's sizes). More text:
`--config.data.text_files=a.txt,b.txt`, or a TFDS text dataset (`--config.data.tfds_text=
wikipedia/20230601.en --config.data.text_key=text`), which is what an accelerator run would use.
"""

from __future__ import annotations

import ml_collections

from configs import glue


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    """Returns the pretraining config for `size=...`."""
    args = glue.parse_arg(arg)
    unknown = set(args) - {"size"}
    if unknown:
        raise ValueError(f"Unknown config variant keys {sorted(unknown)}; valid: size.")
    size = args.get("size", "small")

    config = ml_collections.ConfigDict()
    config.task = "pretrain"  # Not a GLUE task: no labels, no exit heads.
    config.seed = 0  # Seeds parameter init, dropout, masking and data order.

    config.data = ml_collections.ConfigDict()
    # Local GLUE folder: the train text of its tasks is the default corpus.
    config.data.glue_dir = ml_collections.FieldReference(None, field_type=str)
    config.data.manual_dir = ml_collections.FieldReference(None, field_type=str)  # TFDS archives.
    config.data.tfds_dir = "~/tensorflow_datasets"  # Prepared GLUE (and tfds_text) data.
    # GLUE tasks whose train text is read: "auto" (every local one) or "sst2,cola,...".
    config.data.corpus_tasks = "auto"
    # Unlabeled text files, one document or sentence a line: comma-separated paths or globs,
    # plain, .gz or .xz (e.g. "../shared/data/text/imdb/imdb_train_*.txt.xz").
    config.data.text_files = ""
    # A TFDS dataset with a text feature (e.g. "wikipedia/20230601.en"); None: none.
    config.data.tfds_text = ml_collections.FieldReference(None, field_type=str)
    config.data.tfds_split = "train"  # Its split.
    config.data.text_key = "text"  # Its text feature.
    config.data.drop_contained_texts = True  # Drop texts found inside longer ones (sub-phrases).
    # WordPiece vocabulary file; None learns one from the corpus (saved as WORKDIR/vocab.txt).
    config.data.vocab_file = ml_collections.FieldReference(None, field_type=str)
    config.data.vocab_size = 16000  # Largest size of the learned vocabulary.
    config.data.vocab_min_frequency = 0  # Merge only pairs seen this often (0: no minimum).
    # Tokens per packed row: covers the longest fine-tuning task (pairs use 128).
    config.data.max_length = 128
    config.data.heldout_rows = 256  # Rows of GLUE dev text for masked-token accuracy.
    config.data.prefetch = 4  # Batches grain prepares ahead in a background thread.

    config.model = glue.model_config(size, num_classes=2, type_vocab_size=2)
    config.model.num_classes = 2  # Unused here (no exit heads); kept for the shared schema.
    config.model.max_length = config.data.get_ref("max_length")
    config.model.vocab_size = config.data.get_ref("vocab_size")  # Set from the tokenizer.

    # "mlm": BERT's masked-token prediction by the body. "electra": a small generator fills the
    # masked positions and the body learns to tell, for every token, whether it was replaced
    # (replaced-token detection: a loss on every token, not 15%; beex_jax/electra.py).
    config.objective = "mlm"
    config.electra = ml_collections.ConfigDict()
    config.electra.generator_layers = 2  # The generator's blocks (the body has model.num_layers).
    config.electra.rtd_weight = 50.0  # Weight of the detection loss against the generator's MLM.
    config.electra.temperature = 1.0  # Of the generator's samples.

    # "word_vectors": skip-gram vectors of the corpus's tokens (gensim Word2Vec) become the
    # latent token embedding; no body is trained (beex_jax/word_vectors.py). Its dimension is
    # model.hidden_dim.
    config.word_vectors = ml_collections.ConfigDict()
    config.word_vectors.window = 5  # Context tokens on each side of a token.
    config.word_vectors.negative = 5  # Negative samples per context token.
    config.word_vectors.epochs = 10  # Passes over the corpus.
    config.word_vectors.min_count = 1  # Tokens seen fewer times get no vector (fresh init row).
    config.word_vectors.subsample = 1e-3  # Down-sampling threshold of frequent tokens.
    config.word_vectors.learning_rate = 0.025  # Initial; decays linearly to near zero.
    config.word_vectors.workers = 0  # Threads (0: every core); >1 is not bitwise repeatable.

    config.mlm = ml_collections.ConfigDict()
    config.mlm.mask_rate = 0.15  # Share of the tokens of a row predicted.
    config.mlm.mask_token_rate = 0.8  # ...of which replaced by [MASK],
    config.mlm.random_token_rate = 0.1  # ...by a random token (the rest kept as they are).
    config.mlm.every_exit = False  # Also predict from every block's output (mean loss).
    # The output bias starts at the log word frequencies of the corpus (else at zero).
    config.mlm.frequency_bias = True

    config.optim = glue.optim_config()

    # A pretraining workdir to continue from (e.g. a full-precision first stage): its vocabulary
    # and weights; None: from scratch.
    config.init_from = ml_collections.FieldReference(None, field_type=str)
    config.init_from_step = -1  # Its checkpoint step (-1: latest).

    config.batch_size = 64  # Global batch of packed rows.
    config.eval_batch_size = 64  # Held-out batch.
    config.num_epochs = 10  # Passes over the packed corpus.
    config.num_train_steps = -1  # Stop after this many steps (-1: num_epochs).
    config.eval_every_steps = 500  # Held-out masked-token accuracy this often.
    config.checkpoint_every_steps = 500  # Save the latest state this often, and at the end.
    config.keep_checkpoints = 2  # Most recent checkpoints kept...
    config.keep_period = 1000  # ...and every step that is a multiple of this (0: none).
    config.log_every_steps = 50  # Training metrics cadence.

    glue.add_runtime_fields(config)
    return config.lock()
