"""Hugging Face Hub handles for model folders: `hf://org/name[@revision]`, through `huggingface_hub`
(`pip install "kseg[hub]"`), imported only when a handle needs it.

    kseg.models.hub.local_folder("hf://org/name@v1")   # the cached snapshot (downloaded when online)
    kseg.models.hub.push("my-model", "hf://org/name")   # upload_folder, with the token huggingface_hub has

`HF_HUB_OFFLINE=1` reads the cache alone (`HF_HUB_CACHE`, default ~/.cache/huggingface/hub), both read when
the handle is resolved, not when huggingface_hub was imported.
"""

import os

from kseg import files
from kseg.errors import KsegError, first_line

PREFIX = "hf://"


def is_hub(handle: str) -> bool:
    return handle.startswith(PREFIX)


def parse(handle: str) -> tuple[str, str | None]:
    """("org/name", revision or None) of `hf://org/name[@revision]`; a KsegError for anything else."""
    if not is_hub(handle):
        raise KsegError(f"{handle}: not a Hub handle (hf://org/name[@revision])")
    repo, _, revision = handle[len(PREFIX):].partition("@")
    parts = repo.split("/")
    if len(parts) != 2 or not all(parts) or (revision == "" and handle.endswith("@")):
        raise KsegError(f"{handle}: a Hub handle is hf://org/name or hf://org/name@revision")
    return repo, revision or None


def _library():
    try:
        import huggingface_hub
    except ImportError:
        raise KsegError('hf:// handles need huggingface_hub: pip install "kseg[hub]"') from None
    return huggingface_hub


def offline() -> bool:
    """HF_HUB_OFFLINE as set now (huggingface_hub reads it once, at import)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def local_folder(handle: str) -> str:
    """The local folder of `handle`: itself for a path, the downloaded (or cached) snapshot for `hf://`."""
    if not is_hub(handle):
        return handle
    repo, revision = parse(handle)
    library = _library()
    try:
        return library.snapshot_download(repo, revision=revision, cache_dir=os.environ.get("HF_HUB_CACHE") or None,
                                         local_files_only=offline())
    except Exception as error:
        where = "in the Hub cache (HF_HUB_OFFLINE is set)" if offline() else "on the Hub or in its cache"
        raise KsegError(f"{handle}: not found {where}: {first_line(error)}") from error


def push(folder: str, handle: str, *, token: str | None = None, private: bool = False) -> str:
    """Uploads a model folder (`kseg.models.save_pretrained`'s) to the Hub repository of `handle` (created when
    missing; `@revision` names a branch); returns the commit's URL. The token: `token`, else huggingface_hub's
    (`HF_TOKEN`, or `hf auth login`).

    Example:

        kseg.models.hub.push("my-model", "hf://me/my-model", private=True)
    """
    repo, revision = parse(handle)
    config = files.read_json(os.path.join(folder, "config.json"))
    if not isinstance(config, dict) or config.get("format") != "kseg-model":
        raise KsegError(f"{folder}: not a kseg model folder (write one with kseg.models.save_pretrained)")
    library = _library()
    token = token or library.get_token()
    if not token:
        raise KsegError(f"{handle}: no Hugging Face token: set HF_TOKEN or run `hf auth login`")
    api = library.HfApi(token=token)
    try:
        api.create_repo(repo, repo_type="model", private=private, exist_ok=True)
        if revision:
            api.create_branch(repo, branch=revision, repo_type="model", exist_ok=True)
        commit = api.upload_folder(repo_id=repo, folder_path=folder, repo_type="model", revision=revision,
                                   commit_message=f"kseg model folder {os.path.basename(os.path.abspath(folder))}")
    except Exception as error:
        raise KsegError(f"{handle}: upload failed: {first_line(error)}") from error
    return str(getattr(commit, "commit_url", None) or commit)
