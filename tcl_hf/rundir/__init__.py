"""The run folder (``output_dir``): every path a run writes, and the rules that keep it safe.

A run writes only into a new or empty folder or a tcl_hf run's (one carrying tcl_hf's marker), never
through a symbolic link. One run at a time holds the folder (an exclusive lock for the run's lifetime); a
new run never replaces another run's outputs unless told to, and then only the files a marked run wrote
and only once the new run is ready to train; a resumed run must be the same run; ``metrics.jsonl``
grows a whole line at a time; checkpoints appear atomically and carry a manifest, so an incomplete or
damaged one is never mistaken for a good one.
"""
from .checkpoints import (checkpoint_dirs, checkpoint_name, checkpoint_of_step, checkpoint_problem, load_checkpoint,
                          load_newest_checkpoint, newest_intact, remove_checkpoints_after, write_checkpoint,
                          write_manifest)
from .files import atomic_write_text
from .folder import (FELL_BACK_KEY, OUTCOME_NEUTRAL, append_metrics, check_reuse, check_writable,
                     clear_previous_outputs, existing_outputs, read_metrics, read_saved_config, run_differences,
                     trajectory_records, trim_metrics)
from .lock import RunLock, run_folder_lock, shared_run_lock
from .marker import mark_run
from .names import (CHECKPOINTS_DIR, CONFIG_FILE, HUB_DIR, LABEL_ISSUES_FILE, LABEL_REVIEW_FILE, LOCK_FILE,
                    MANIFEST_FILE, METRICS_FILE, PLOTS_DIR, REPAIRED_DIR, RUN_MARKER_FILE, RUN_OUTPUTS, SUMMARY_FILE)

__all__ = ["OUTCOME_NEUTRAL", "CHECKPOINTS_DIR", "CONFIG_FILE", "HUB_DIR", "LABEL_ISSUES_FILE", "LABEL_REVIEW_FILE", "LOCK_FILE", "MANIFEST_FILE",
           "METRICS_FILE", "PLOTS_DIR", "REPAIRED_DIR", "RUN_MARKER_FILE", "RUN_OUTPUTS", "SUMMARY_FILE", "RunLock",
           "append_metrics", "atomic_write_text",
           "check_reuse", "check_writable", "checkpoint_dirs", "checkpoint_name", "checkpoint_of_step",
           "checkpoint_problem", "load_checkpoint",
           "clear_previous_outputs", "existing_outputs", "load_newest_checkpoint", "mark_run",
           "newest_intact", "read_metrics", "read_saved_config", "run_differences", "run_folder_lock",
           "shared_run_lock", "trajectory_records", "trim_metrics",
           "remove_checkpoints_after", "FELL_BACK_KEY",
           "write_checkpoint", "write_manifest"]
