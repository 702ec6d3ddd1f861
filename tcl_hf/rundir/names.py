"""The names of everything a run writes in its folder: no other module spells them."""

CONFIG_FILE = "config.yaml"

METRICS_FILE = "metrics.jsonl"

SUMMARY_FILE = "summary.json"

LABEL_ISSUES_FILE = "label_issues.csv"

LABEL_REVIEW_FILE = "label_issues.html"  # the report's most suspect images, a page to look at

CHECKPOINTS_DIR = "checkpoints"

HUB_DIR = "hub"

PLOTS_DIR = "plots"

LOCK_FILE = ".tcl_hf.lock"

LOCK_PID_FILE = ".tcl_hf.pid"  # stands in for the lock where the file system has no flock

# Written only by tcl_hf, when a run starts: it makes the folder a tcl_hf run and lists the files the run wrote.
RUN_MARKER_FILE = ".tcl_hf_run.json"

MANIFEST_FILE = "manifest.json"

REPAIRED_DIR = "repaired"  # the training split with corrected labels (python -m tcl_hf.repair)

# Where a run writes; `overwrite=true` removes, under these names only, the files the marker lists and the
# checkpoints, nothing else the folder holds. The repaired dataset is derived from label_issues.csv: beside a new
# run's report it would be another run's labels.
RUN_OUTPUTS = (CONFIG_FILE, METRICS_FILE, SUMMARY_FILE, LABEL_ISSUES_FILE, LABEL_REVIEW_FILE, CHECKPOINTS_DIR, HUB_DIR,
               PLOTS_DIR, REPAIRED_DIR)

# The files the trainer writes itself, listed in the marker when the run starts (the rest when it releases the lock).
RUN_FILES = (CONFIG_FILE, METRICS_FILE, SUMMARY_FILE)

# tcl_hf's own bookkeeping: a folder holding only these is as good as empty.
BOOKKEEPING = (LOCK_FILE, LOCK_PID_FILE, RUN_MARKER_FILE)
