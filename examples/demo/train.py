"""A pretend training loop: prints progress for a few epochs, like a real job would.

    python3 train.py --epochs 5
"""
import argparse
import math
import os
import time

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--epochs", type=int, default=3, help="number of epochs (default 3)")
args = parser.parse_args()

samples = sorted(os.listdir(os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")))
print(f"training on {len(samples)} data files: {', '.join(samples)}", flush=True)
for epoch in range(1, args.epochs + 1):
    time.sleep(0.2)
    loss = 2.0 * math.exp(-0.5 * epoch)
    print(f"epoch {epoch}/{args.epochs}  loss {loss:.4f}", flush=True)
print("done", flush=True)
