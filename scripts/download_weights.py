"""Download a model into the weights folder so minillama can load it offline.

    python scripts/download_weights.py smollm2-135m                 # a preset (the default chat model)
    python scripts/download_weights.py Qwen/Qwen2.5-0.5B-Instruct   # any Hugging Face repo id
    python scripts/download_weights.py llama-3.2-1b-instruct --token hf_...   # gated repos need a token

Only what minillama reads is fetched (config, *.safetensors, tokenizer files); an interrupted download resumes.
Prints the model's path on stdout, so `MODEL=$(python scripts/download_weights.py NAME)` works.
Exit codes: 0 done, 1 failed (message on stderr), 2 bad arguments, 130 interrupted.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

# Runs from a source checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from minillama.errors import MinillamaError  # noqa: E402
from minillama.loading.sources import default_weights_dir, download_model, preset_list  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Download a model (a preset or a Hugging Face repo id) into the weights folder.",
        epilog=f"presets:\n{preset_list()}",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", metavar="NAME_OR_REPO", help="a preset name or a Hugging Face repo id (owner/name)")
    parser.add_argument("--dest", type=Path, default=None,
                        help="the weights folder (default: $MINILLAMA_WEIGHTS, else ./weights)")
    parser.add_argument("--token", default=None,
                        help="Hugging Face token for gated or private repos (default: $HF_TOKEN or a saved login)")
    args = parser.parse_args(argv)
    try:
        path = download_model(args.name, weights_dir=args.dest or default_weights_dir(), token=args.token)
    except MinillamaError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
