"""The PyTorch side of experiments/benchmarks/bench_peers.py, run in the torch venv (no JAX needed).

  ../torchvenv/bin/python experiments/benchmarks/peers/torch_worker.py --export DIR \
      --inputs inputs.npz

Loads the export into `beexformer_torch.BEExformer`, eager, `torch.compile`d, and compiled under
bfloat16 autocast (the peer's best numerics on CPU), and the input cases of inputs.npz
(`<case>/<i>/input_ids`, `segment_ids`, `mask`: each case is a list of batches). Then it answers
commands on stdin, one JSON line on stdout each:

  {"cmd": "logits", "out": PATH[, "variant": NAME]}
                                   float32 logits of every case's batches -> PATH (.npz), of the
                                   variant (default torch_eager)
  {"cmd": "warmup"}                compiles every shape (torch.compile), runs eager once
  {"cmd": "time", "repeats": N}    per case and variant: median seconds of N passes over it
  {"cmd": "quit"}
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import beexformer_torch  # The sibling file, found through sys.path above.


def read_cases(path: str) -> dict[str, list[tuple[torch.Tensor, ...]]]:
    """{case: [(input_ids, segment_ids, mask), ...]} as int64 tensors."""
    stored = np.load(path)
    cases: dict[str, dict[int, dict[str, np.ndarray]]] = {}
    for key in stored.files:
        case, index, name = key.split("/")
        cases.setdefault(case, {}).setdefault(int(index), {})[name] = stored[key]
    return {
        case: [
            tuple(
                torch.from_numpy(b[k].astype(np.int64))
                for k in ("input_ids", "segment_ids", "mask")
            )
            for _, b in sorted(batches.items())
        ]
        for case, batches in cases.items()
    }


class Autocast(torch.nn.Module):
    """`model` under torch.autocast("cpu", bfloat16): matmuls in bf16, logits back in float32."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        """The model's logits [L, B, C] computed under bf16 autocast, as float32."""
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return self.model(*inputs).float()


def run_case(model, batches) -> float:
    """Seconds for one pass over a case's batches."""
    start = time.perf_counter()
    for batch in batches:
        model(*batch)
    return time.perf_counter() - start


def main() -> None:
    """Serves the commands of bench_peers.py."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--export", required=True)
    parser.add_argument("--inputs", required=True)
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    eager = beexformer_torch.load(args.export)
    # dynamic=False: a graph specialised to each shape, the fastest torch.compile offers here.
    variants = {
        "torch_eager": eager,
        "torch_compile": torch.compile(eager, dynamic=False),
        "torch_compile_bf16": torch.compile(Autocast(eager), dynamic=False),
    }
    cases = read_cases(args.inputs)
    info = {
        "torch_version": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "compile": "torch.compile(model, dynamic=False): inductor, one graph per shape",
        "compile_bf16": 'the same under torch.autocast("cpu", dtype=torch.bfloat16)',
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }
    print(json.dumps(info), flush=True)
    for line in sys.stdin:
        command = json.loads(line)
        with torch.inference_mode():
            if command["cmd"] == "logits":
                model = variants[command.get("variant", "torch_eager")]
                logits = {
                    f"{case}/{i}": model(*batch).float().numpy()
                    for case, batches in cases.items()
                    for i, batch in enumerate(batches)
                }
                np.savez(command["out"], **logits)
                reply = {"ok": True}
            elif command["cmd"] == "warmup":
                start = time.perf_counter()
                for model in variants.values():
                    for batches in cases.values():
                        run_case(model, batches)
                reply = {"seconds": time.perf_counter() - start}
            elif command["cmd"] == "time":
                reply = {}
                for case, batches in cases.items():
                    for name, model in variants.items():
                        seconds = [run_case(model, batches) for _ in range(command["repeats"])]
                        reply[f"{case}/{name}"] = statistics.median(seconds)
            else:
                break
        print(json.dumps(reply), flush=True)


if __name__ == "__main__":
    main()
