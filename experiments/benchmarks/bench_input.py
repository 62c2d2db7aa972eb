"""Input pipeline examples/s over SST-2 train, next to the default model's training step.

Run (3-5 minutes on a busy 2-core CPU; the first run also prepares SST-2 and learns its vocab):

  python experiments/benchmarks/bench_input.py --glue_dir ../shared/data/glue

What is measured, in one process:
  pipeline, cold:  `data.create_input` on prepared SST-2 with its cached learned vocabulary (read
                   all 67,349 train examples with tfds.data_source, tokenize them), then one full
                   epoch of training batches through the grain iterator: examples / total seconds.
  pipeline, warm:  the epoch alone (what the training loop waits on once the input is created).
  step:            the default (`size=small`) SST-2 model's jitted update (`beex_jax.train`:
                   forward through every exit, soft-routing loss, AdamW) on batches of that
                   pipeline (batch 32, bucketed lengths), after compiling every bucket shape;
                   each step waited on with `block_until_ready`. Examples / seconds.
The pipeline must be at least 5x faster than the step, cold start included. Results go to
experiments/results/bench_input.json with the command line that produced them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import jax

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from beex_jax import data, loop, optim, train
from beex_jax.model import BEExformer, ModelConfig, init_params
from configs import glue
from experiments.paths import command_line

RESULTS = Path(__file__).resolve().parents[1] / "results" / "bench_input.json"


def bench_pipeline(config) -> tuple[dict, data.GlueInput]:
    """Times input creation (read + tokenize) and one epoch of batches."""
    start = time.perf_counter()
    input_ = data.create_input(config, process_index=0, process_count=1)
    created = time.perf_counter() - start
    iterator = input_.train_iterator(config.seed)
    real = padded = 0
    shapes: dict[str, int] = {}
    start = time.perf_counter()
    for _ in range(input_.steps_per_epoch):
        batch = next(iterator)
        real += int(batch["mask"].sum())
        padded += batch["mask"].size
        key = "x".join(map(str, batch["input_ids"].shape))
        shapes[key] = shapes.get(key, 0) + 1
    epoch = time.perf_counter() - start
    examples = input_.steps_per_epoch * config.batch_size
    return {
        "train_examples": input_.num_train_examples,
        "examples_per_epoch": examples,
        "create_input_s": round(created, 3),
        "epoch_s": round(epoch, 3),
        "cold_examples_per_s": round(examples / (created + epoch), 1),
        "warm_examples_per_s": round(examples / epoch, 1),
        "batch_shapes": dict(sorted(shapes.items())),
        "real_token_fraction": round(real / padded, 3),
    }, input_


def bench_step(config, input_: data.GlueInput, steps: int) -> dict:
    """Times the default model's jitted training step on the pipeline's batches."""
    config = config.copy_and_resolve_references()
    config.model.vocab_size = input_.vocab_size
    model_config = ModelConfig.from_config(config.model)
    tx, schedule = optim.create_optimizer(config, steps)
    init_rng, dropout_rng = jax.random.split(jax.random.PRNGKey(config.seed))
    params = init_params(model_config, init_rng)
    state = loop.TrainState(jax.numpy.int32(0), params, tx.init(params), dropout_rng)
    update = jax.jit(
        train.make_update_fn(
            BEExformer(model_config), tx, schedule, config, input_.special_token_ids()
        ),
        donate_argnums=(0,),
    )
    iterator = input_.train_iterator(config.seed + 1)
    batches = [
        {k: v for k, v in next(iterator).items() if k in train.TRAIN_KEYS} for _ in range(steps)
    ]
    by_shape = {b["input_ids"].shape: b for b in batches}
    start = time.perf_counter()
    for batch in by_shape.values():  # Compile every bucket shape first.
        state, metrics = update(state, batch)
        jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    for batch in batches:
        state, metrics = update(state, batch)
        jax.block_until_ready(metrics)
    seconds = time.perf_counter() - start
    return {
        "model": {
            k: int(config.model[k])
            for k in ("num_layers", "hidden_dim", "num_heads", "slfn_dim", "exit_dim", "vocab_size")
        },
        "batch_size": config.batch_size,
        "steps": steps,
        "compile_s_all_shapes": round(compile_s, 2),
        "step_s": round(seconds / steps, 5),
        "examples_per_s": round(steps * config.batch_size / seconds, 1),
    }


def main() -> None:
    """Runs both halves and writes the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--glue_dir", default=str(Path(__file__).resolve().parents[3] / "shared" / "data" / "glue")
    )
    parser.add_argument("--tfds_dir", default=os.path.join(tempfile.gettempdir(), "beex_tfds"))
    parser.add_argument("--steps", type=int, default=50, help="Timed training steps.")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()

    config = glue.get_config("task=sst2").unlock()  # Default size (small), batch 32.
    config.data.glue_dir = args.glue_dir
    config.data.tfds_dir = args.tfds_dir
    start = time.perf_counter()
    data.prepare("sst2", args.tfds_dir, glue_dir=args.glue_dir)
    data.build_tokenizer(config)  # Learn and cache the vocabulary once, outside the timing.
    setup_s = time.perf_counter() - start

    pipeline, input_ = bench_pipeline(config)
    print(
        f"pipeline: cold {pipeline['cold_examples_per_s']:.0f} examples/s "
        f"(create_input {pipeline['create_input_s']:.1f} s + epoch {pipeline['epoch_s']:.2f} s),"
        f" warm {pipeline['warm_examples_per_s']:.0f} examples/s; "
        f"shapes {pipeline['batch_shapes']}, real tokens {pipeline['real_token_fraction']:.0%}"
    )
    step = bench_step(config, input_, args.steps)
    print(
        f"step: {step['examples_per_s']:.0f} examples/s ({1000 * step['step_s']:.1f} ms/step, "
        f"batch {step['batch_size']}, {jax.devices()[0].platform})"
    )
    ratio_cold = pipeline["cold_examples_per_s"] / step["examples_per_s"]
    ratio_warm = pipeline["warm_examples_per_s"] / step["examples_per_s"]
    print(
        f"pipeline / step: {ratio_cold:.1f}x cold, {ratio_warm:.1f}x warm "
        f"({'PASS' if ratio_cold >= 5 else 'FAIL'}: at least 5x required)"
    )
    result = {
        "command": command_line(sys.argv),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.machine(),
            "cpu_count": os.cpu_count(),
            "jax_backend": jax.default_backend(),
            "devices": [str(d) for d in jax.devices()],
        },
        "setup_s_prepare_and_vocab": round(setup_s, 2),
        "pipeline": pipeline,
        "step": step,
        "pipeline_over_step_cold": round(ratio_cold, 2),
        "pipeline_over_step_warm": round(ratio_warm, 2),
        "pass_5x": ratio_cold >= 5,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
