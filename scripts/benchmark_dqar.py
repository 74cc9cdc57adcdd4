"""The reference scaffold's benchmark command: `python -m dqar_lib.benchmark` under the scaffold's name.

    python scripts/benchmark_dqar.py --model facebook/DiT-XL-2-256 --dtype fp16 --steps 30 --guidance 7.5 \
        --conditioning class --class-ids 207,233,472,898 --output-dir outputs/dit-xl
    python scripts/benchmark_dqar.py --conditioning text --prompt-dataset-url URL --prompt-dataset-format jsonl \
        --prompt-dataset-field prompt --num-prompts 64

Every flag is `dqar_lib.benchmark`'s (`--help`); the outputs are its: baseline/ and dqar/ (PNGs),
benchmark_results.json and benchmark_plot.png in --output-dir (default benchmark_outputs/).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's dqar_lib, installed or not

from dqar_lib.benchmark import main  # noqa: E402

if __name__ == "__main__":
    main(prog="python scripts/benchmark_dqar.py")
