"""The sampler lab: do the seeds' claims hold? Diversity, coherence, collapse and cost of every sampler and dose,
measured the same way on the same prompts and seeds (`python -m minillama lab`).

    from minillama.lab import run_lab, LabSettings, select, load_prompts
    report = run_lab(engine, select("greedy,temp-1.0,drugs-K-0.3"), load_prompts()[:4], LabSettings(n=4))
"""
from .configs import CONFIGS, FAMILIES, LabConfig, select
from .longrun import ARMS, DEFAULT_ARMS, NoEos, format_long_table, long_run, plot_long_run, select_arms
from .run import LabSettings, format_table, load_prompts, plot_frontier, run_lab, write_json

__all__ = ["ARMS", "CONFIGS", "DEFAULT_ARMS", "FAMILIES", "LabConfig", "LabSettings", "NoEos", "format_long_table",
           "format_table", "load_prompts", "long_run", "plot_frontier", "plot_long_run", "run_lab", "select",
           "select_arms", "write_json"]
