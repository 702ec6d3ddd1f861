"""The Hugging Face Hub side of publishing: the push of an exported folder, the early token check, and
loading a published TCL state back from a Hub repo.

Every failure is one ``TCLError`` line naming the repo and what to do; nothing local is touched.
"""
from __future__ import annotations

from pathlib import Path

from huggingface_hub import HfApi, constants, get_token, hf_hub_download
from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

from .errors import TCLError
from .tcl_state import TCL_CONFIG, TCL_WEIGHTS, TCLPretrained, load_tcl_state, read_tcl_files

# The HTTP client's own base error (refused connection, DNS, timeout) is HfHubHTTPError's parent,
# whichever client this huggingface_hub version is built on.
_CLIENT_ERROR = HfHubHTTPError.__bases__[0]

# ---- push ------------------------------------------------------------------------------------------------------
def _reason(exc: Exception) -> str:
    if isinstance(exc, OfflineModeIsEnabled):
        return "offline mode is on: HF_HUB_OFFLINE=1"
    if isinstance(exc, HfHubHTTPError) and getattr(exc, "response", None) is not None:
        status = exc.response.status_code
        hint = " (check that the token has write access to this repo)" if status in (401, 403) else ""
        detail = exc.server_message or str(exc)
        return f"HTTP {status}: {detail.strip().splitlines()[0]}{hint}"
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__

def push_folder(folder: str | Path, repo_id: str, *, private: bool = False, revision: str | None = None,
                commit_message: str = "Upload TCL classifier (tcl_hf)", repo_type: str = "model") -> str:
    """Create the repo (a model repo, or ``repo_type="dataset"``) if needed and upload ``folder``; returns the
    commit URL.

    The token comes from the usual places (HF_TOKEN, ``hf auth login``). Any failure raises TCLError with one
    line saying that the push failed and where the local export is; nothing local is touched.
    """
    folder = Path(folder)
    where = f"the local export is intact in {folder}"
    token = get_token()
    if token is None:
        raise TCLError(f"hub push to {repo_id!r} failed: no Hugging Face token (set HF_TOKEN or run "
                       f"`hf auth login`); {where}")
    api = HfApi(token=token, library_name="tcl_hf")
    try:
        repo_id = api.create_repo(repo_id, private=private, exist_ok=True, repo_type=repo_type).repo_id
        if revision:
            # Uploading to a branch that does not exist yet would fail.
            api.create_branch(repo_id, branch=revision, exist_ok=True, repo_type=repo_type)
        commit = api.upload_folder(repo_id=repo_id, folder_path=str(folder), revision=revision,
                                   commit_message=commit_message, repo_type=repo_type)
    except (HfHubHTTPError, _CLIENT_ERROR, OSError, ValueError) as exc:
        raise TCLError(f"hub push to {repo_id!r} failed ({_reason(exc)}); {where}") from None
    return commit.commit_url

def check_push_token(repo_id: str | None) -> None:
    """Before training, when the run is to push: a token must exist and the Hub must accept it, so
    hours of training do not end in a push that was bound to fail.

    Skipped offline (HF_HUB_OFFLINE=1): the push at the end then fails in one line, after every local
    output is written. Any other failure to check (no network, Hub down) stops the run too: the push
    would meet it as well.
    """
    if not repo_id or constants.HF_HUB_OFFLINE:
        return
    instead = ("or set HF_HUB_OFFLINE=1 to train now and push later with "
               "`python -m tcl_hf.export RUN_DIR --push REPO`")
    token = get_token()
    if token is None:
        raise TCLError(f"hub.repo_id: pushing to {repo_id!r} needs a Hugging Face token: set HF_TOKEN or run "
                       f"`hf auth login`, {instead}")
    try:
        info = HfApi(token=token, library_name="tcl_hf").whoami()
    except (HfHubHTTPError, _CLIENT_ERROR, OSError, ValueError) as exc:
        raise TCLError(f"hub.repo_id: cannot push to {repo_id!r}: the token check failed ({_reason(exc)}); "
                       f"fix the token or network, {instead}") from None
    if info.get("auth", {}).get("accessToken", {}).get("role") == "read":
        raise TCLError(f"hub.repo_id: cannot push to {repo_id!r}: the token is read-only; use a token with write "
                       f"access, {instead}")

# ---- full TCL state for continued training -----------------------------------------------------------------
def load_tcl_pretrained(source: str | Path, revision: str | None = None) -> TCLPretrained:
    """(TCLModel, prototypes, config) from a run's hub/ folder or a Hub repo id (``hf-hub:`` optional) that holds
    the full TCL state (tcl_hf/tcl_state.py)."""
    source = str(source)
    if Path(source).is_dir():
        return load_tcl_state(source)
    repo_id = source.removeprefix("hf-hub:")
    try:
        paths = [Path(hf_hub_download(repo_id, name, revision=revision)) for name in (TCL_WEIGHTS, TCL_CONFIG)]
    except (HfHubHTTPError, _CLIENT_ERROR, OSError, ValueError) as exc:
        raise TCLError(f"cannot load TCL state from {source!r}: not a local folder, and the Hub download failed "
                       f"({_reason(exc)})") from None
    return read_tcl_files(*paths)
