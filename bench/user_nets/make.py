"""Train the user nets of bench/user_nets/nets.py by a seeded recipe and bring them in as a user would:

    .venv/bin/python bench/user_nets/make.py [NAME ...]    # writes bench/user_nets/<name>.pt (+ .json)

The training is plain torch (a user's own loop: AdamW 1e-3, weight decay 5e-4, cosine, batch 128, +-2 px shifts,
seed 0, on all 60k Fashion-MNIST training images, one thread), the weights are saved as a state_dict, and
`trimflow import <state_dict> --class bench/user_nets/nets.py:<Class> --dataset fashion-mnist` converts them (the
checkpoint carries the class's source). The benchmark then takes them with bench/trim_zoo.py --add (see
bench/results/trim-user-commands.txt).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from trimflow.data import load_dataset  # noqa: E402
from trimflow.train import TrainConfig, evaluate, train  # noqa: E402

HERE = Path(__file__).resolve().parent
NETS = {"incepnet": ("IncepNet", 4), "plainnobn": ("PlainNoBN", 12)}  # class, epochs (PlainNoBN: 86.7 % after 4)


def make(name: str) -> None:
    sys.path.insert(0, str(HERE))
    import nets

    cls, epochs = NETS[name]
    torch.manual_seed(0)
    model = getattr(nets, cls)()
    recipe = TrainConfig(epochs=epochs, lr=1e-3, optimizer="adamw", weight_decay=5e-4, batch_size=128, seed=0)
    start = time.perf_counter()
    train(model, load_dataset("fashion-mnist", "train"), recipe, progress=False)
    seconds = time.perf_counter() - start
    model.eval()
    state = HERE / f"{name}-state.pt"
    torch.save(model.state_dict(), state)
    out = HERE / f"{name}.pt"
    subprocess.run([str(Path(sys.executable).parent / "trimflow"), "import", str(state.relative_to(ROOT)),
                    "--class", f"bench/user_nets/nets.py:{cls}", "--dataset", "fashion-mnist",
                    "--out", str(out.relative_to(ROOT))], cwd=ROOT, check=True)
    state.unlink()
    info = json.loads(out.with_suffix(".json").read_text())
    info["recipe"] = {"class": cls, "epochs": epochs, "lr": 1e-3, "optimizer": "adamw", "weight_decay": 5e-4,
                      "batch_size": 128, "seed": 0, "train_seconds": round(seconds)}
    out.with_suffix(".json").write_text(json.dumps(info, indent=1))
    print(f"{name}: test accuracy {info['test_accuracy']:.4f} after {seconds:.0f} s of training", flush=True)


if __name__ == "__main__":
    torch.set_num_threads(1)
    for n in sys.argv[1:] or list(NETS):
        make(n)
