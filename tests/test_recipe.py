"""The training recipe: routing gradient, label smoothing, word/embedding dropout, GLUE score,
checkpoint choice, corpus-sized vocabulary, and that the real optimizer learns a real rule."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from beex_jax import corruption, evaluate, losses, metrics, optim
from beex_jax.data import tokenizer as tokenizer_lib
from beex_jax.model import BEExformer, Embedder, ModelConfig, init_params
from configs import glue


def _logits(key: jax.Array, num_layers: int = 4, batch: int = 8, classes: int = 2) -> jax.Array:
    return jax.random.normal(key, (num_layers, batch, classes))


@pytest.mark.parametrize("num_classes", [1, 3])
def test_detach_routing_keeps_only_the_per_exit_loss_gradient(num_classes):
    """Detached: the gradient equals that of sum_i stopgrad(q_i) CE_i + lam * mean; not detached,
    it differs (the q path carries gradient of its own)."""
    logits = _logits(jax.random.PRNGKey(0), classes=num_classes)
    labels = jnp.arange(8) % max(num_classes, 2) if num_classes > 1 else jnp.linspace(0, 5, 8)
    weights = jnp.ones(8)

    def loss(x, detach):
        return losses.exit_loss(x, labels, weights, num_classes=num_classes, detach_routing=detach)[
            0
        ]

    def reference(x):
        q = jax.lax.stop_gradient(
            losses.soft_exit_probabilities(losses.exit_signals(x), delta=0.1, tau=0.1)
        )
        per_exit = losses.per_exit_losses(x, labels, num_classes)
        return jnp.mean(losses.soft_routing_loss(per_exit, q, 1.0))

    detached = jax.grad(loss)(logits, True)
    chex.assert_trees_all_close(detached, jax.grad(reference)(logits), atol=1e-6)
    assert not np.allclose(jax.grad(loss)(logits, False), detached, atol=1e-4)
    # The value of the loss is the same either way: only the gradient changes.
    np.testing.assert_allclose(loss(logits, True), loss(logits, False), rtol=1e-6)


def test_label_smoothing_matches_its_definition():
    logits = _logits(jax.random.PRNGKey(1), classes=3)
    labels = jnp.array([0, 1, 2, 0, 1, 2, 0, 1])
    smoothed = losses.per_exit_losses(logits, labels, 3, label_smoothing=0.3)
    log_p = jax.nn.log_softmax(logits)
    target = 0.7 * jax.nn.one_hot(labels, 3)[None] + 0.1
    np.testing.assert_allclose(smoothed, -jnp.sum(target * log_p, -1), rtol=1e-5)
    plain = losses.per_exit_losses(logits, labels, 3)
    np.testing.assert_allclose(losses.per_exit_losses(logits, labels, 3, 0.0), plain)


def test_word_dropout_replaces_only_words_at_its_rate():
    ids = jnp.tile(jnp.array([[2, 7, 8, 9, 10, 11, 12, 3, 0, 0]]), (2000, 1))
    mask = (ids != 0).astype(jnp.int32)
    out = corruption.word_dropout(
        jax.random.PRNGKey(0), ids, mask, rate=0.25, unk_id=1, special_ids=(2, 3, 0)
    )
    changed = np.asarray(out != ids)
    assert not changed[:, [0, 7, 8, 9]].any()  # [CLS], [SEP], padding never change.
    assert set(np.unique(np.asarray(out)[changed])) == {1}
    assert abs(changed[:, 1:7].mean() - 0.25) < 0.01
    same = corruption.word_dropout(
        jax.random.PRNGKey(0), ids, mask, rate=0.0, unk_id=1, special_ids=(2, 3, 0)
    )
    assert same is ids


def test_embedding_dropout_drops_whole_token_vectors():
    config = ModelConfig(
        vocab_size=50,
        num_classes=2,
        num_layers=1,
        hidden_dim=16,
        num_heads=2,
        slfn_dim=16,
        exit_dim=8,
        dropout_rate=0.0,
        embedding_dropout_rate=0.5,
        max_length=32,
    )
    ids = jnp.arange(1, 33)[None] % 50
    params = init_params(config, jax.random.PRNGKey(0), length=32)

    embed = {"params": params["embed"]}
    zeros = jnp.zeros_like(ids)
    kept = Embedder(config).apply(embed, ids, zeros, deterministic=True)
    dropped = Embedder(config).apply(
        embed, ids, zeros, deterministic=False, rngs={"dropout": jax.random.PRNGKey(3)}
    )
    positions = params["embed"]["position_embedding"][None, :32]
    token_kept, token_dropped = kept - positions, dropped - positions
    gone = np.all(np.abs(np.asarray(token_dropped)) < 1e-6, axis=-1)[0]
    assert 0 < gone.sum() < 32  # Some whole vectors are zero...
    np.testing.assert_allclose(  # ...the others are scaled by 1 / (1 - rate).
        token_dropped[0, ~gone], 2 * token_kept[0, ~gone], rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize(
    ("task", "values", "expected"),
    [
        ("mrpc", {"f1": 0.8, "accuracy": 0.7}, 0.75),
        ("stsb", {"pearson": 0.4, "spearman": 0.2}, 0.3),
        ("cola", {"matthews_corr": 0.1, "accuracy": 0.7}, 0.1),
        ("sst2", {"accuracy": 0.8}, 0.8),
    ],
)
def test_glue_score(task, values, expected):
    assert metrics.glue_score(task, values) == pytest.approx(expected)


def test_majority_class_mrpc_model_is_not_kept_over_a_learned_one():
    """F1 alone keeps the all-"paraphrase" epoch (F1 81.2, accuracy 68.4); GLUE's mean does not."""
    majority = {"f1": 0.8122, "accuracy": 0.6838}
    learned = {"f1": 0.7960, "accuracy": 0.7500}
    records = [
        {"step": 1, "loss": 0.7},
        _record(1, majority, {"f1": 0.80, "accuracy": 0.70}),
        _record(2, learned, {"f1": 0.81, "accuracy": 0.74}),
        _record(3, {"f1": 0.70, "accuracy": 0.70}, {"f1": 0.82, "accuracy": 0.76}),
    ]
    report = evaluate.selection_report(records, "mrpc", num_layers=6)
    assert report["kept_step"] == 2
    assert report["early_exit"] == pytest.approx((0.7960 + 0.75) / 2)
    assert report["last_exit"] == pytest.approx((0.81 + 0.74) / 2)
    assert report["last_exit_best_step"] == 3
    assert report["last_exit_best"] == pytest.approx((0.82 + 0.76) / 2)


def _record(step: int, early: dict, last: dict) -> dict:
    """A logged evaluation without glue_score keys (as older runs wrote them)."""
    out = {"step": step}
    out.update({f"validation/early_exit/{k}": v for k, v in early.items()})
    out.update({f"validation/exit_6/{k}": v for k, v in last.items()})
    return out


def test_learned_vocabulary_follows_the_corpus():
    words = [f"w{i:03d}" for i in range(300)]
    # Word i appears i % 4 + 1 times: a quarter of the words once.
    texts = [" ".join(w for i, w in enumerate(words) for _ in range(i % 4 + 1))]
    texts += ["common words repeat " * 20]
    unlimited = tokenizer_lib.learn_vocab(texts, 2000)
    limited = tokenizer_lib.learn_vocab(texts, 2000, min_frequency=3)
    assert len(limited) < len(unlimited)
    assert "w001" in unlimited and "w001" not in limited  # Seen once.
    assert "w003" in limited  # Seen four times.
    assert limited[: len(tokenizer_lib.SPECIAL_TOKENS)] == list(tokenizer_lib.SPECIAL_TOKENS)


def test_learned_vocabulary_cache_names_its_minimum_frequency(tmp_path):
    config = glue.get_config("task=rte")
    config.data.tfds_dir = str(tmp_path)
    plain = tokenizer_lib.learned_vocab_path(config)
    config.data.vocab_min_frequency = 3
    assert tokenizer_lib.learned_vocab_path(config) != plain
    assert tokenizer_lib.learned_vocab_path(config).endswith("wordpiece-16000-min3.txt")


def test_real_optimizer_and_loss_learn_a_rule_not_a_memory():
    """Binarized tiny BEExformer, the project's optimizer and soft-routing loss: a sentiment-like
    rule (more "positive" than "negative" tokens) on fresh random sequences. Held-out sequences
    are new, so only a learned rule scores well above the 50% chance level."""
    vocab, length, batch = 40, 16, 32
    positive, negative = jnp.arange(4, 10), jnp.arange(10, 16)

    def sample(key, n):
        ids = jax.random.randint(key, (n, length), 4, vocab)
        score = jnp.sum(jnp.isin(ids, positive), -1) - jnp.sum(jnp.isin(ids, negative), -1)
        ids = jnp.where(score[:, None] == 0, ids.at[:, 0].set(4), ids)  # No ties.
        score = jnp.where(score == 0, 1, score)
        return ids, (score > 0).astype(jnp.int32)

    config = glue.get_config("task=sst2,size=tiny")
    config.model.vocab_size = vocab
    config.model.max_length = length
    config.optim.learning_rate = 3e-3
    num_steps = 250
    model_config = ModelConfig.from_config(config.model)
    model = BEExformer(model_config)
    tx, _ = optim.create_optimizer(config, num_steps)
    params = init_params(model_config, jax.random.PRNGKey(0), length)
    opt_state = tx.init(params)
    ones = jnp.ones((batch, length), jnp.int32)

    @jax.jit
    def step(params, opt_state, key):
        data_key, dropout_key = jax.random.split(key)
        ids, labels = sample(data_key, batch)

        def loss_fn(p):
            logits = model.apply(
                {"params": p},
                ids,
                ones * 0,
                ones,
                deterministic=False,
                rngs={"dropout": dropout_key},
            )
            return losses.exit_loss(logits, labels, jnp.ones(batch), num_classes=2)[0]

        grads = jax.grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    for i in range(num_steps):
        params, opt_state = step(params, opt_state, jax.random.PRNGKey(100 + i))
    ids, labels = sample(jax.random.PRNGKey(7), 512)
    logits = model.apply({"params": params}, ids, jnp.zeros_like(ids), jnp.ones_like(ids))
    accuracy = float(jnp.mean(jnp.argmax(logits[-1], -1) == labels))
    assert accuracy > 0.8, accuracy
