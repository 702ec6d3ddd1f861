"""The names of everything a run writes in its folder: no other module spells them."""

CONFIG_FILE = "config.yaml"

METRICS_FILE = "metrics.jsonl"

SUMMARY_FILE = "summary.json"

LABEL_ISSUES_FILE = "label_issues.csv"

CHECKPOINTS_DIR = "checkpoints"

HUB_DIR = "hub"

PLOTS_DIR = "plots"

LOCK_FILE = ".tcl_hf.lock"

MANIFEST_FILE = "manifest.json"

REPAIRED_DIR = "repaired"  # the training split with corrected labels (python -m tcl_hf.repair)

# What a run writes; `overwrite=true` removes exactly these, nothing else the folder holds. The repaired
# dataset is derived from label_issues.csv: beside a new run's report it would be another run's labels.
RUN_OUTPUTS = (CONFIG_FILE, METRICS_FILE, SUMMARY_FILE, LABEL_ISSUES_FILE, CHECKPOINTS_DIR, HUB_DIR, PLOTS_DIR,
               REPAIRED_DIR)
