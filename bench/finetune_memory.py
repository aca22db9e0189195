"""Fine-tuning: seconds per step and resident memory over the steps, per restriction.

    python bench/finetune_memory.py --model results/models/gemma --variant neurons --steps 12
    python bench/finetune_memory.py --variant full --steps 12
    python bench/finetune_memory.py --variant lora --steps 12

The same batch every step (so every step does the same work), through the workflow's one
training loop (``continued_pretraining``) with the variant's restriction: ``neurons`` (the
first ``--units`` FFN neurons of every layer), ``full`` or ``lora`` (the projections of
``--parts``). Prints each step's seconds and the process's resident memory (RSS) after it,
then RSS after the first and after the last step: the optimizer state is allocated at the
first step, so bounded memory means the two are close. Never run two benchmarks (or other
busy jobs) at once on 2 cores.
"""

from __future__ import annotations

import time

import psutil
from common import parser, texts_of

from workflow_scripts.models.anatomy import decoder_layers
from workflow_scripts.models.loading import load_model
from workflow_scripts.models.padding import pad_id
from workflow_scripts.training.loop import continued_pretraining, training_documents
from workflow_scripts.training.restrictions import (
    AllParameters,
    LoRA,
    NeuronMask,
    Restriction,
    projection_names,
)


def rss_mb() -> float:
    return psutil.Process().memory_info().rss / 2**20


class Timed(Restriction):
    """Wraps a restriction: records seconds and RSS after every optimizer step."""

    def __init__(self, inner: Restriction):
        self.inner, self.kind = inner, inner.kind
        self.times: list[float] = []
        self.rss: list[float] = []
        self.t0 = time.perf_counter()

    def check(self, model, settings=None):
        self.inner.check(model, settings)

    def prepare(self, model):
        return self.inner.prepare(model)

    def parameters(self, model, settings):
        return self.inner.parameters(model, settings)

    def param_groups(self, params, weight_decay):
        return self.inner.param_groups(params, weight_decay)

    def after_step(self):
        self.inner.after_step()
        now = time.perf_counter()
        self.times.append(now - self.t0)
        self.rss.append(rss_mb())
        self.t0 = now
        print(f"step {len(self.times)}: {self.times[-1]:.2f} s, rss {self.rss[-1]:.0f} MB")

    def finish(self, trained):
        return self.inner.finish(trained)

    def describe(self):
        return self.inner.describe()


def main() -> None:
    ap = parser(__doc__, lang="fr", docs=4, max_length=256, batch_size=4)
    ap.add_argument("--variant", choices=["neurons", "full", "lora"], default="neurons")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--units", type=int, default=40, help="neurons: FFN neurons per layer")
    ap.add_argument("--parts", nargs="+", default=["ffn", "v", "o"])
    args = ap.parse_args()
    model, tok = load_model(args.model, threads=args.threads)
    docs = training_documents(tok, texts_of(args.corpus, args.lang, args.docs), args.max_length)
    batch = docs[: args.batch_size]
    if args.variant == "neurons":
        n_layers = len(decoder_layers(model))
        units = [(layer, "mlp", i) for layer in range(n_layers) for i in range(args.units)]
        inner: Restriction = NeuronMask(units)
    elif args.variant == "lora":
        inner = LoRA(8, 16, projection_names(model, args.parts))
    else:
        inner = AllParameters()
    timed = Timed(inner)
    settings = {"steps": args.steps, "batch_size": len(batch), "lr": 1e-4, "seed": 0}
    print(f"{args.model}: {args.variant}, batch of {len(batch)} documents, rss {rss_mb():.0f} MB")
    continued_pretraining(model, batch, settings, pad_id(tok), None, timed)
    steady = sorted(timed.times[1:])[len(timed.times[1:]) // 2] if len(timed.times) > 1 else 0
    print(f"median step after the first {steady:.2f} s")
    print(f"rss after the first step {timed.rss[0]:.0f} MB, after the last {timed.rss[-1]:.0f} MB")


if __name__ == "__main__":
    main()
